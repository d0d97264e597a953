"""Label-free knowledge distillation: the student ONNX graph learns the teacher's outputs.

The teacher (the original model) runs in onnxruntime; the student (the pruned or rewritten
graph) runs as an :class:`~graphslim.bridge.interpreter.OnnxModule` whose parameters are the
student's float initializers. Both see the *same* augmented input, so augmentation needs no
label or box bookkeeping. After training the best epoch's values (by validation agreement,
the untrained student counting as epoch 0) are written back into the student graph.

Loss, per graph output ``o`` with teacher value ``t`` and student value ``s``:

* ``mse``: ``mean((s - t)^2) / scale_o`` where ``scale_o = mean(t^2)`` over the validation
  inputs, fixed before training (so box coordinates in pixels and logits weigh alike);
* ``l1``: ``mean|s - t| / mean|t|`` (same idea);
* ``kl``: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the class axis (1 for 2-D/4-D
  outputs); an output that already holds probabilities is turned back into log-probabilities
  first;
* ``bce``: ``BCE(s, t)`` for per-element probabilities (sigmoid outputs);
* ``logit``: for an output made by a Sigmoid or Softmax node, the loss on the tensor that
  node reads (the logits, tapped in both graphs), which keeps its gradient where the
  student's probabilities are saturated (:mod:`graphslim.bridge.logits`: Bernoulli KL for
  Sigmoid, ``T^2`` softmax KL for Softmax);
* ``detect``: on a YOLOv8 ``[B, 4 + nc, N]`` / YOLOX ``[B, N, 5 + nc]`` head, score BCE plus
  box L1 weighted by the teacher's confidence (:mod:`graphslim.bridge.task_losses`);
* ``dice``: ``1 - 2|s.g| / (|s| + |g|)`` over the batch, ``g`` the teacher's map thresholded
  at 0.5 (the IoU the dense task metric measures), for [0, 1] maps;
* with a ``task`` and ``auto``: ``detect`` on the 3-D head of a detector; ``kl`` with
  temperature (on the logits under a Softmax) on a classifier's ``[N, C]`` output; on a
  dense map the logit loss under a Sigmoid, else ``bce`` on a [0, 1] map, plus ``dice``
  (else ``mse``);
* ``auto`` (default, no task): ``logit`` on outputs made by a Sigmoid (a dense map: the loss on
  probabilities vanishes where the student saturates); ``mse`` + ``kl`` on outputs that
  look like probabilities (values in [0, 1] summing to 1 along the class axis), the ``kl``
  taken on the tapped logits when a Softmax makes the output; ``mse`` elsewhere.

Before training, an output that is constant over the validation inputs while the teacher's
varies is reported (``dead``): ``saturated`` (its logits vary; the logit loss moves it) or
``constant`` (its logits are constant too; no gradient reaches the weights through it).

``recalibrate_bn`` first re-estimates every BatchNormalization's mean and variance on the
training inputs (pruning leaves the original statistics wrong for the channels that remain);
the new statistics are written back with the trained values. With class labels
(:mod:`graphslim.bridge.labels`: class folders, CSV, ``.npy``) a supervised term is added:
cross-entropy on the first 2-D ``[N, C]`` output (classifiers), weighted by
``task_weight``. YOLO box labels (detect) only evaluate: a sound box loss on a raw head
needs the head's own anchor assignment (ultralytics' task-aligned assigner), which an
exported graph does not carry; distilling the teacher's head does that job. Optimizer: SGD
(lr 1e-3, momentum 0.9, weight decay 5e-4) with cosine annealing by default; ``adam`` is
AdamW (decoupled weight decay).
Augmentation (``augmenter``): ``tensor`` runs on the preprocessed batch in torch, seeded per
sample (``seed, epoch, sample index``), so the result does not depend on how the batch is
split over processes: horizontal flip, random resized crop, brightness/contrast, 3x3 blur,
small rotation; ``albumentations`` runs on the uint8 image before preprocessing, as the
image is read (:mod:`graphslim.bridge.augment`, same seeding), image folders only.

The best epoch is chosen by one validation metric, named in every record (``metric``):
with validation labels, against them (the user's own ground truth beats agreement with the
teacher): ``accuracy`` on a classifier, ``label_map50_95`` with YOLO boxes and task
detect; else, against the teacher: with ``task``
the task's own (``detect``: ``map50`` of the student's
detections against the teacher's; ``classify``: ``top1`` agreement; ``dense``: ``iou`` of
the maps thresholded at 0.5, :mod:`graphslim.tasks`); without it ``top1`` agreement on the
first 2-D ``[N, C]`` output, or else ``cosine``, the mean cosine similarity of the flattened
outputs. The output cosine is recorded in every case.

Bridge parity: before training, the student module is compared with onnxruntime on the
first validation inputs with ``parity_tolerances`` (:class:`graphslim.validate.Tolerance`
strings, default ``max-rel=1e-4|max-abs=1e-6``); a failure stops with the figures and the
first diverging node, unless ``force`` (then it is logged and recorded).

Data-parallel: started under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the loop joins a
``gloo`` (CPU) or ``nccl`` (CUDA) process group, wraps the student in
``DistributedDataParallel`` and gives each process an equal slice of every global batch;
gradients are averaged, so a step equals one process on the full batch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphslim.bridge import BridgeError, require_torch
from graphslim.bridge.data import Rows, stack_batch
from graphslim.bridge.labels import YoloLabels, read_labels
from graphslim.bridge.logits import dead_outputs, find_logits, logit_loss, matching_logits
from graphslim.bridge.task_losses import detect_loss

log = logging.getLogger(__name__)

LOSSES = ("auto", "mse", "l1", "kl", "bce", "logit", "detect", "dice")
# Dense maps: the soft Dice term's smoothing (pixels), so a batch whose teacher map is empty
# asks for an empty student map instead of dividing by zero.
DICE_SMOOTH = 1.0
# The task metric that picks the best epoch (graphslim.tasks), per task.
TASK_METRIC = {"detect": "map50", "classify": "top1", "dense": "iou"}
AUGMENTATIONS = ("flip", "crop", "color", "blur", "rotate")
TEACHER_RUNTIMES = ("auto", "onnxruntime", "torch")
# EMA decay ramps up as decay * (1 - exp(-updates / EMA_RAMP)) (ultralytics' ModelEMA), so
# the average follows the fast-moving early weights instead of the untrained start.
EMA_RAMP = 2000.0
# The augmentation names each augmenter knows (graphslim.bridge.augment for albumentations).
AUGMENTERS = {
    "tensor": AUGMENTATIONS,
    "albumentations": ("flip", "crop", "scale", "rotate", "color", "blur"),
}


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """Settings of one fine-tune run (the CLI's options map onto these fields)."""

    epochs: int = 5
    batch: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd | adam
    schedule: str = "cosine"  # cosine | constant
    loss: str = "auto"
    loss_per_output: Mapping[str, str] = field(default_factory=dict)
    temperature: float = 4.0
    task_weight: float = 1.0
    augment: tuple[str, ...] = AUGMENTATIONS
    augmenter: str = "tensor"  # tensor (built in, on the batch) | albumentations (uint8 images)
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    checkpoint: str | None = None
    resume: bool = False
    parity_tolerances: tuple[str, ...] = ()  # Tolerance strings; () = the pipeline's default
    force: bool = False  # go on when bridge parity fails (the figures are still recorded)
    task: str | None = None  # detect | classify | dense: the metric that picks the best epoch
    recalibrate_bn: bool = False  # re-estimate BatchNorm mean/var on the training inputs first
    val_limit: int = 256  # at most this many validation samples (they are held in memory)
    workers: int = 0  # DataLoader worker processes decoding streamed images ahead
    teacher_runtime: str = "auto"  # auto (torch on CUDA, else onnxruntime) | onnxruntime | torch
    teacher_cache: str | None = None  # folder of the teacher's outputs per input (teacher_cache)
    warmup: float = 0.0  # epochs of linear learning-rate warm-up (from lr/10) before the schedule
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off)
    time_budget: float | None = None  # minutes for the epochs; epochs becomes an upper bound
    features: tuple[str, ...] = ()  # feature distillation: tensor names, ("auto",), or none
    feature_weight: float = 0.1  # weight of the (per feature, relative) loss against the outputs

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1:
            raise BridgeError("fine-tune needs epochs >= 1 and batch >= 1")
        if self.optimizer not in ("sgd", "adam"):
            raise BridgeError(f"optimizer '{self.optimizer}' is not one of sgd, adam")
        if self.schedule not in ("cosine", "constant"):
            raise BridgeError(f"schedule '{self.schedule}' is not one of cosine, constant")
        for name in [self.loss, *self.loss_per_output.values()]:
            if name not in LOSSES:
                raise BridgeError(f"loss '{name}' is not one of {', '.join(LOSSES)}")
        if self.augmenter not in AUGMENTERS:
            raise BridgeError(f"augmenter '{self.augmenter}' is not one of {', '.join(AUGMENTERS)}")
        known = AUGMENTERS[self.augmenter]
        bad = [a for a in self.augment if a not in known]
        if bad:
            raise BridgeError(
                f"augmentation '{bad[0]}' is not one of {', '.join(known)} (or none) with the "
                f"{self.augmenter} augmenter"
            )
        if self.val_limit < 1 or self.workers < 0:
            raise BridgeError("val_limit must be >= 1 and workers >= 0")
        if not 0 <= self.val_fraction < 1:
            raise BridgeError("val_fraction must be in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise BridgeError(f"device '{self.device}' is not one of auto, cpu, cuda")
        if self.teacher_runtime not in TEACHER_RUNTIMES:
            raise BridgeError(
                f"teacher runtime '{self.teacher_runtime}' is not one of "
                f"{', '.join(TEACHER_RUNTIMES)}"
            )
        if self.warmup < 0 or not 0 <= self.ema < 1:
            raise BridgeError("warmup must be >= 0 epochs and ema a decay in [0, 1)")
        if self.feature_weight < 0:
            raise BridgeError("feature weight must be >= 0")
        if self.time_budget is not None and self.time_budget <= 0:
            raise BridgeError("time budget must be > 0 minutes")
        if self.task is not None and self.task not in TASK_METRIC:
            raise BridgeError(f"task '{self.task}' is not one of {', '.join(TASK_METRIC)}")
        self.tolerances()  # a bad tolerance string fails here, before any work

    def tolerances(self) -> list:
        """``parity_tolerances`` parsed (:class:`graphslim.validate.Tolerance`)."""
        from graphslim.errors import OptionsError
        from graphslim.validate import DEFAULT_TOLERANCES, Tolerance

        try:
            return [Tolerance.parse(t) for t in self.parity_tolerances] or list(DEFAULT_TOLERANCES)
        except OptionsError as exc:
            raise BridgeError(f"parity tolerance: {exc}") from None


@dataclass
class EpochRecord:
    epoch: int
    loss: float  # mean training loss (nan for epoch 0, the untrained student)
    val_loss: float  # distillation loss on the validation inputs
    metric: str  # what ``value`` measures: map50 | top1 | iou (vs the teacher) | cosine
    value: float  # validation ``metric`` against the teacher; picks the best epoch
    cosine: float  # mean cosine similarity of the outputs with the teacher's
    accuracy: float | None  # validation accuracy against labels, when given
    seconds: float
    task: dict | None = None  # every task metric against the teacher, with a task


@dataclass
class FinetuneResult:
    model: onnx.ModelProto  # the student with the best epoch's values written back
    history: list[EpochRecord]
    best_epoch: int
    parity: dict  # graphslim.validate.Comparison.to_dict() of the bridge check, + "forced"
    outputs: dict[str, str]  # output name -> loss kind used
    dead: dict[str, str] = field(default_factory=dict)  # output -> saturated | constant
    teacher_runtime: str = "onnxruntime"  # where the teacher ran: onnxruntime | torch
    teacher_cache: dict | None = None  # folder, hits, misses (options.teacher_cache)

    @property
    def metric(self) -> str:
        return self.history[0].metric

    def to_dict(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "metric": self.metric,
            "parity": self.parity,
            "losses": self.outputs,
            "dead_at_start": self.dead,
            "epochs_run": len(self.history) - 1,
            "teacher_runtime": self.teacher_runtime,
            "teacher_cache": self.teacher_cache,
            "history": [asdict(h) for h in self.history],
        }


# ------------------------------------------------------------------------------- data


def load_image_inputs(
    folder: str | os.PathLike,
    model: onnx.ModelProto,
    preprocess,
    *,
    limit: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> np.ndarray:
    """Preprocessed images of ``folder`` as one float32 ``[N, C, H, W]`` array (sorted)."""
    from graphslim.feeds import image_folder_feeds, input_specs

    specs = input_specs(model)
    if len(specs) != 1:
        raise BridgeError(
            f"fine-tuning takes single-input models; this one has {[s.name for s in specs]}"
        )
    spec = specs[0]
    # a symbolic batch dim becomes 1 (feeds.resolve_shapes); a static one gives N-image feeds
    feeds = image_folder_feeds(folder, model, preprocess, limit=limit, shapes=shapes)
    return np.concatenate([f[spec.name] for f in feeds]).astype(np.float32)


def dataset_labels(path: str | os.PathLike, dataset, task: str | None):
    """The labels of ``dataset``'s images at ``path``: YOLO boxes (:class:`YoloLabels`) for
    ``task`` detect, else class indices (:func:`read_labels`)."""
    if task == "detect":
        return YoloLabels.for_dataset(path, dataset)
    return read_labels(path, dataset.files)


# ------------------------------------------------------------------------------ trainer


def validation_subset(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``n`` samples: all of them, or a seeded sample."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng((seed, n)).choice(n, size=limit, replace=False))


def dice_loss(s, target):
    """Soft Dice of the student's map ``s`` (probabilities) against a boolean ``target``, over
    the whole batch (the task metric's IoU pools every pixel too): ``1 - (2|s.g| + k) /
    (|s| + |g| + k)`` with ``k = DICE_SMOOTH``."""
    g = target.to(s.dtype)
    inter = (s * g).sum()
    return 1 - (2 * inter + DICE_SMOOTH) / (s.sum() + g.sum() + DICE_SMOOTH)


def _looks_like_probabilities(t: np.ndarray) -> bool:
    if t.ndim < 2 or t.shape[1] < 2 or t.min() < -1e-6 or t.max() > 1 + 1e-6:
        return False
    return bool(np.allclose(t.sum(axis=1), 1.0, atol=1e-3))


def output_cosine(student: Mapping, teacher: Mapping, names: Sequence[str]) -> float:
    """Mean over outputs and samples of the cosine similarity of the flattened values (two
    all-zero samples count as 1.0, one all-zero sample against another as 0.0)."""
    cos = []
    for n in names:
        a = np.asarray(student[n]).reshape(len(student[n]), -1).astype(np.float64)
        b = np.asarray(teacher[n]).reshape(len(a), -1).astype(np.float64)
        norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        same = (norm == 0) & np.all(a == b, axis=1)
        c = np.sum(a * b, axis=1) / np.maximum(norm, 1e-12)
        cos.append(np.mean(np.where(same, 1.0, c)))
    return float(np.mean(cos))


@dataclass
class Scores:
    """One validation pass: ``value`` of ``metric`` against the teacher picks the epoch."""

    metric: str
    value: float
    cosine: float
    accuracy: float | None
    loss: float
    task: dict | None

    @property
    def key(self) -> tuple[float, float]:
        """Sort key: higher metric first, then lower loss (NaN ranks last)."""
        return (-math.inf if math.isnan(self.value) else self.value, -self.loss)


class Distiller:
    """Student module, teacher session, data and optimizer of one fine-tune run."""

    def __init__(
        self,
        student: onnx.ModelProto,
        teacher: onnx.ModelProto,
        inputs: np.ndarray,
        options: FinetuneOptions,
        *,
        labels: np.ndarray | None = None,
        val_inputs: np.ndarray | None = None,
        val_labels: np.ndarray | None = None,
        check_parity: bool = True,
    ) -> None:
        """The steps below, in order; each sets the attributes its docstring names."""
        self.torch = torch = require_torch()
        self.options = options
        self.student_proto = student
        self._check_inputs(student, teacher)
        self.rank, self.world = _init_distributed(torch, options)
        self.device = _device(torch, options, self.rank)
        torch.manual_seed(options.seed)
        self._split(inputs, labels, val_inputs, val_labels)
        student, teacher = self._unchunk(student, teacher)
        self._build_student(student, check_parity)
        self._build_teacher(teacher)
        if options.recalibrate_bn:
            self._recalibrate_bn()
        self.module.to(self.device)
        self._match_outputs()
        self._build_adapters()
        self._build_optimizer()

    # -- construction steps

    def _check_inputs(self, student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
        """``input_name`` (one input, the same in both models) and ``chunk`` (a static batch
        dimension: the graph then runs in chunks of it)."""
        from graphslim.feeds import input_specs

        specs = input_specs(student)
        if len(specs) != 1:
            raise BridgeError(
                f"fine-tuning takes single-input models; the student has {[s.name for s in specs]}"
            )
        self.input_name = specs[0].name
        teacher_inputs = [s.name for s in input_specs(teacher)]
        if teacher_inputs != [self.input_name]:
            raise BridgeError(
                f"teacher inputs {teacher_inputs} differ from the student's [{self.input_name}]"
            )
        dim0 = specs[0].shape[0] if specs[0].shape else None
        self.chunk = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    def _unchunk(self, student: onnx.ModelProto, teacher: onnx.ModelProto):
        """Both graphs as batch-of-N copies (:func:`graphslim.bridge.batch.batched`, checked
        against onnxruntime) when exported with a fixed batch of 1, so a batch runs at once
        instead of one sample at a time; ``chunk`` becomes None and ``student_proto`` the
        copy. Either copy failing its check keeps both originals (and the chunks). What is
        written back is the user's graph, batch and all (:func:`finetune`)."""
        from graphslim.bridge.batch import batched

        self.batched = False
        if self.chunk != 1 or len(self.val_inputs) < 2:
            return student, teacher
        s = batched(student, 1, self.val_inputs[:2])
        t = batched(teacher, 1, self.val_inputs[:2]) if s is not None else None
        if s is None or t is None:
            return student, teacher
        self.student_proto, self.chunk, self.batched = s, None, True
        return s, t

    def _split(self, inputs, labels, val_inputs, val_labels) -> None:
        """``inputs``/``labels`` (training) and ``val_inputs``/``val_labels`` (in memory, at
        most ``val_limit`` samples): a seeded ``val_fraction`` of ``inputs`` when no
        validation set is given. An array is held in memory; anything else with
        ``__len__``/``__getitem__`` (an ImageFolderDataset) is read sample by sample through
        :class:`~graphslim.bridge.data.Rows`."""
        options = self.options
        streamed = not isinstance(inputs, np.ndarray)
        if not streamed:
            inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        if len(inputs) == 0:
            raise BridgeError("no training inputs")
        if labels is not None and len(labels) != len(inputs):
            raise BridgeError(f"{len(labels)} labels for {len(inputs)} inputs")
        if val_labels is not None and val_inputs is not None and len(val_labels) != len(val_inputs):
            raise BridgeError(f"{len(val_labels)} validation labels for {len(val_inputs)} inputs")
        if val_inputs is None:
            order = np.random.default_rng(options.seed).permutation(len(inputs))
            n_val = int(round(len(inputs) * options.val_fraction))
            n_val = min(max(n_val, 1), len(inputs) - 1, options.val_limit) if len(inputs) > 1 else 0
            val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            if not n_val:
                val_idx = train_idx
            val_inputs = Rows(inputs, val_idx)[:]
            val_labels = labels[val_idx] if labels is not None else None
            labels = labels[train_idx] if labels is not None else None
            inputs = Rows(inputs, train_idx) if streamed else inputs[train_idx]
        elif streamed or len(val_inputs) > options.val_limit:
            # a seeded sample, not the first ``val_limit``: a sorted folder of class folders
            # would otherwise give the first classes only
            keep = validation_subset(len(val_inputs), options.val_limit, options.seed)
            val_inputs = Rows(val_inputs, keep)[:]
            val_labels = val_labels[keep] if val_labels is not None else None
        if streamed and not isinstance(inputs, Rows):  # batches index it with arrays
            inputs = Rows(inputs, np.arange(len(inputs)))
        self.augments_on_read = isinstance(inputs, Rows) and inputs.augments
        if options.augmenter == "albumentations" and options.augment and not self.augments_on_read:
            raise BridgeError(
                "albumentations augments the uint8 images before preprocessing: train on an "
                "image folder (graphslim finetune --images), or use --augmenter tensor"
            )
        self.inputs, self.labels = inputs, labels
        self.val_inputs = np.ascontiguousarray(val_inputs, dtype=np.float32)
        self.val_labels = val_labels
        # class indices feed a cross-entropy term; YOLO boxes (YoloLabels) only evaluate
        self.class_labels = isinstance(labels, np.ndarray)
        self.box_labels = isinstance(val_labels, YoloLabels)
        if self.box_labels and options.task != "detect":
            raise BridgeError("YOLO box labels need task detect (--task detect)")
        self.val_box_labels = val_labels.all() if self.box_labels else None

    def _build_student(self, student: onnx.ModelProto, check_parity: bool) -> None:
        """``module`` (the student as torch) and ``parity`` (its check against onnxruntime
        on the first validation inputs; a failure raises unless ``force``)."""
        from graphslim.bridge.interpreter import OnnxModule, parity_check

        self.module = OnnxModule(student)
        self.parity: dict = {}
        if check_parity:
            feeds = [{self.input_name: self.val_inputs[: self.chunk or 2]}]
            comparison = parity_check(
                student, self.module, feeds, self.options.tolerances(), force=self.options.force
            )
            self.parity = comparison.to_dict() | {"forced": not comparison.passed}

    def _build_teacher(self, teacher: onnx.ModelProto) -> None:
        """``logits`` (the Sigmoid/Softmax inputs tapped in both graphs,
        :mod:`graphslim.bridge.logits`), ``features`` (the tensors distilled too,
        :mod:`graphslim.bridge.features`), ``teacher`` (an onnxruntime session, or the teacher
        graph as a torch module on the student's device: ``teacher_runtime``) and
        ``teacher_runtime`` (which of the two)."""
        from graphslim.bridge.features import resolve_features

        self.logits = matching_logits(self.student_proto, teacher)
        self.features = resolve_features(self.options.features, self.student_proto, teacher)
        self.module.tap([*(lg.tensor for lg in self.logits.values()), *self.features])
        taps = {
            ("logit", o): lg.tensor for o, lg in find_logits(teacher).items() if o in self.logits
        } | {("feature", f): f for f in self.features}
        runtime = self.options.teacher_runtime
        if runtime == "auto":  # on a GPU the CPU teacher would be the bottleneck of every step
            runtime = "torch" if self.device.type == "cuda" else "onnxruntime"
        self.teacher_runtime = runtime
        if runtime == "torch":
            feeds = [{self.input_name: self.val_inputs[: self.chunk or 2]}]
            self.teacher = _TorchTeacher(
                teacher, taps, self.device, feeds, self.options.tolerances(), self.options.force
            )
        else:
            self.teacher = _Teacher(teacher, taps)
        if self.options.teacher_cache:
            from graphslim.bridge.teacher_cache import CachedTeacher

            self.teacher = CachedTeacher(self.teacher, self.options.teacher_cache, teacher, taps)

    def _recalibrate_bn(self) -> None:
        """BatchNorm mean/var re-estimated on the training inputs, one batch at a time."""
        torch = self.torch
        step = self.chunk or 32
        starts = range(0, len(self.inputs) - step + 1, step)
        # a generator: streamed inputs are decoded one batch at a time
        batches = (
            (torch.from_numpy(self.inputs[i : i + step]) for i in starts)
            if len(starts)
            else [torch.from_numpy(self.inputs[:])]
        )
        updated = self.module.recalibrate_batchnorm(batches)
        log.info("recalibrated %d BatchNorm statistics", len(updated))

    def _match_outputs(self) -> None:
        """``output_names`` (the same in both models), ``val_teacher`` (the teacher on the
        validation inputs), ``kinds``/``scales`` (the loss per output), ``task`` and
        ``class_output`` (the first 2-D output: labels and top-1 use it)."""
        self.output_names = list(self.module.output_names)
        if self.teacher.output_names != self.output_names:
            raise BridgeError(
                f"teacher outputs {self.teacher.output_names} differ from the student's "
                f"{self.output_names}; distillation matches outputs by name"
            )
        self.val_teacher = self._teacher(self.val_inputs)
        self.kinds, self.scales = self._choose_losses()
        self.task = None
        if self.options.task is not None:
            from graphslim.tasks import Task

            self.task = Task(self.options.task)
        self.class_output = next(
            (n for n in self.output_names if self.val_teacher[n].ndim == 2), None
        )

    def _build_adapters(self) -> None:
        """``adapters`` (:class:`graphslim.bridge.features.Adapters` on the device, the
        least-squares channel maps on up to 16 validation inputs) when features are
        distilled, else None."""
        self.adapters = None
        if not self.features:
            return
        from graphslim.bridge.features import Adapters

        self.adapters = Adapters(self.torch, *self._feature_pairs())
        self.adapters.module.to(self.device)
        log.info("feature distillation on %s", ", ".join(self.features))

    def _feature_pairs(self, n: int = 16) -> tuple[dict, dict]:
        """The student's and the teacher's features on the first ``n`` validation inputs."""
        torch = self.torch
        n = min(n, len(self.val_inputs))
        self.module.eval()
        with torch.no_grad():
            x = torch.from_numpy(self.val_inputs[:n]).to(self.device)
            got = dict(zip(self.keys, self.module(x)))
        student = {f: got[("feature", f)].float().cpu().numpy() for f in self.features}
        teacher = {f: self.val_teacher[("feature", f)][:n] for f in self.features}
        return student, teacher

    def refit_adapters(self) -> None:
        """Each adapter fitted again to the student as it is now (once an epoch)."""
        if self.adapters is not None:
            self.adapters.fit(*self._feature_pairs())
            self.adapters.module.to(self.device)

    def _build_optimizer(self) -> None:
        """``net`` (DDP-wrapped with several processes), ``opt``, ``steps_per_epoch`` and
        ``sched`` (cosine over every step, or constant)."""
        torch, options = self.torch, self.options
        self.net = self.module
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = list(self.module.parameters())
        if not params:
            raise BridgeError(
                "the student has no trainable initializers (Constant-node weights?); run the "
                "constants-to-initializers pass first"
            )
        if options.optimizer == "adam":
            # AdamW: decoupled decay. Adam's L2 term is normalized with the gradient, so a
            # weight with a small task gradient shrinks by ~lr every step whatever its size:
            # a pruned YOLOv8n's label mAP50-95 fell 0.167 -> 0.018 over 4 epochs of it
            self.opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
        else:
            self.opt = torch.optim.SGD(
                params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay
            )
        self.steps_per_epoch = max(1, len(self.inputs) // options.batch)
        self.warmup_steps = round(options.warmup * self.steps_per_epoch)
        self.plan(options.epochs)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.ema = None
        if options.ema:
            from torch.optim.swa_utils import AveragedModel

            decay = options.ema

            def average(avg, new, n):
                d = decay * (1 - math.exp(-float(n) / EMA_RAMP))
                return avg * d + new * (1 - d)

            # torch's AveragedModel keeps the copy; the ramped decay is ultralytics' ModelEMA
            # parameters only: buffers hold graph constants (shapes, BatchNorm statistics) that
            # training does not change and an average would round (int64 shapes)
            self.ema = AveragedModel(self.module, avg_fn=average, use_buffers=False)

    def plan(self, epochs: int) -> None:
        """Run ``epochs`` epochs: the schedule's length follows (a time budget re-plans it)."""
        self.epochs = epochs
        self.total_steps = self.steps_per_epoch * epochs

    def _lr_factor(self, step: int) -> float:
        """Learning-rate factor at optimizer step ``step``: a linear warm-up from 1/10 over
        ``warmup_steps``, then cosine to 0 over the rest of :attr:`total_steps` (or 1)."""
        w = self.warmup_steps
        if step < w:
            return 0.1 + 0.9 * step / w
        if self.options.schedule != "cosine":
            return 1.0
        t = min(1.0, (step - w) / max(1, self.total_steps - w))
        return 0.5 * (1 + math.cos(math.pi * t))

    def step(self) -> None:
        """The optimizer and schedule step after :meth:`backward`, and the EMA update."""
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)

    @property
    def eval_module(self):
        """What validation scores and what is written back: the EMA of the weights when on."""
        return self.module if self.ema is None else self.ema.module

    # -- pieces

    def _teacher(self, x: np.ndarray) -> dict[str, np.ndarray]:
        step = self.chunk or max(1, min(len(x), 64))
        parts = [
            self.teacher.run({self.input_name: x[i : i + step]}) for i in range(0, len(x), step)
        ]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    @property
    def keys(self) -> list:
        """Output names, then ``("logit", output)`` for each tapped logit, then
        ``("feature", tensor)`` for each distilled feature (forward's order)."""
        return [
            *self.output_names,
            *(("logit", o) for o in self.logits),
            *(("feature", f) for f in self.features),
        ]

    def _student(self, x):
        if self.chunk is None:
            return dict(zip(self.keys, self.net(x)))
        parts = [self.net(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)]
        return {n: self.torch.cat([p[k] for p in parts]) for k, n in enumerate(self.keys)}

    def _choose_losses(self) -> tuple[dict[str, list[str]], dict[str, float]]:
        kinds, scales = {}, {}
        self.heads: dict[str, tuple[str, float, bool]] = {}  # detect: layout, box scale, probs
        for name in self.output_names:
            t = self.val_teacher[name]
            chosen = self.options.loss_per_output.get(name, self.options.loss)
            logit = self.logits.get(name)
            if chosen == "auto" and self.options.task is not None:
                kinds[name] = self._task_loss(name, t, logit)
            elif chosen == "detect":
                kinds[name] = self._task_loss(name, t, logit, "detect")
            elif chosen == "auto":
                if logit is not None and logit.activation == "Sigmoid":
                    kinds[name] = [logit.loss]
                else:
                    probs = _looks_like_probabilities(t)
                    kl = logit.loss if logit is not None else "kl"
                    kinds[name] = ["mse"] + ([kl] if probs else [])
            elif chosen == "logit":
                if logit is None:
                    raise BridgeError(
                        f"loss 'logit' on output '{name}': no Sigmoid/Softmax node makes it in "
                        "both the student and the teacher; choose mse, l1, kl or bce"
                    )
                kinds[name] = [logit.loss]
            else:
                if chosen == "dice" and not (
                    t.size and float(t.min()) >= -1e-6 and float(t.max()) <= 1 + 1e-6
                ):
                    raise BridgeError(
                        f"loss 'dice' on output '{name}': its values leave [0, 1] "
                        f"({float(t.min()):.3g}..{float(t.max()):.3g}); Dice compares maps of "
                        "probabilities: choose mse, l1 or logit"
                    )
                kinds[name] = [chosen]
            scales[name] = float(np.mean(np.square(t.astype(np.float64)))) + 1e-8
            if "l1" in kinds[name]:
                scales[name] = float(np.mean(np.abs(t.astype(np.float64)))) + 1e-8
        log.info("distillation losses per output: %s", kinds)
        return kinds, scales

    def _task_loss(self, name: str, t: np.ndarray, logit, task: str | None = None) -> list[str]:
        """The loss of output ``name`` chosen from the task (:mod:`graphslim.bridge.task_losses`):
        detect -> ``detect`` on a 3-D head (``mse`` on other outputs); classify -> ``kl``
        (on the logits when a Softmax makes the output) on a 2-D output; dense -> the logit
        loss under a Sigmoid, else ``bce`` on [0, 1] maps, else ``mse``."""
        from graphslim.bridge.task_losses import boxes_decoded, detect_layout, head_stats

        task = task or self.options.task
        if task == "detect":
            if t.ndim != 3:
                if self.options.loss == "detect":
                    raise BridgeError(
                        f"loss 'detect' on output '{name}' of shape {list(t.shape)}: a detection "
                        "head is [B, 4 + nc, N] (YOLOv8) or [B, N, 5 + nc] (YOLOX)"
                    )
                return ["mse"]
            layout = detect_layout(t.shape)
            self.heads[name] = (layout, *head_stats(t, layout), boxes_decoded(t, layout))
            return ["detect"]
        if task == "classify":
            if t.ndim == 2 and logit is not None and logit.activation == "Softmax":
                return [logit.loss]
            return ["kl"] if t.ndim == 2 else ["mse"]
        in_unit = t.size and float(t.min()) >= -1e-6 and float(t.max()) <= 1 + 1e-6
        # dense: the map's own loss plus Dice against the teacher's map thresholded at 0.5, the
        # IoU the task metric measures: the per-pixel loss is dominated by the background, which
        # most pixels of a text or mask map are; Dice weighs the foreground (as DBNet's own
        # training does, PaddleOCR's DBLoss)
        if logit is not None and logit.activation == "Sigmoid":
            return [logit.loss, "dice"]
        return ["bce", "dice"] if in_unit else ["mse"]

    def loss(self, student: Mapping, teacher: Mapping, labels=None):
        torch, F = self.torch, self.torch.nn.functional
        T = self.options.temperature
        total = 0.0
        for name in self.output_names:
            s = student[name].float()
            t = torch.as_tensor(teacher[name], device=s.device).float()
            for kind in self.kinds[name]:
                if kind == "detect":
                    layout, box_scale, probs, decoded = self.heads[name]
                    total = total + detect_loss(torch, s, t, layout, box_scale, probs, decoded)
                elif kind in ("bce-logit", "kl-logit"):
                    key = ("logit", name)
                    z_s = student[key].float()
                    z_t = torch.as_tensor(teacher[key], device=z_s.device).float()
                    total = total + logit_loss(torch, self.logits[name], z_s, z_t, T)
                elif kind == "mse":
                    total = total + F.mse_loss(s, t) / self.scales[name]
                elif kind == "l1":
                    total = total + F.l1_loss(s, t) / self.scales[name]
                elif kind == "bce":
                    total = total + F.binary_cross_entropy(s.clamp(1e-6, 1 - 1e-6), t.clamp(0, 1))
                elif kind == "dice":
                    total = total + dice_loss(s, t > 0.5)
                else:  # kl over axis 1
                    probs = _looks_like_probabilities(teacher[name])
                    ls = torch.log(s.clamp_min(1e-8)) if probs else s
                    lt = torch.log(t.clamp_min(1e-8)) if probs else t
                    total = total + F.kl_div(
                        F.log_softmax(ls / T, dim=1),
                        F.log_softmax(lt / T, dim=1),
                        reduction="batchmean",
                        log_target=True,
                    ) * (T * T)
        for f in self.features if self.adapters is not None else ():
            key = ("feature", f)
            t = torch.as_tensor(teacher[key])
            total = total + self.options.feature_weight * self.adapters.loss(f, student[key], t)
        if labels is not None and self.class_output is not None:
            s = student[self.class_output].float()
            if _looks_like_probabilities(teacher[self.class_output]):
                s = torch.log(s.clamp_min(1e-8))
            total = total + self.options.task_weight * F.cross_entropy(s, labels)
        return total

    def augment(self, x: np.ndarray, index: np.ndarray, epoch: int) -> np.ndarray:
        """Per-sample augmentation seeded by (seed, epoch, sample index), applied batched."""
        if not self.options.augment:
            return x
        draws = [_draw(self.options.augment, (self.options.seed, epoch, int(i))) for i in index]
        return _apply(self.torch, x, draws)

    def read(self, positions: np.ndarray, epoch: int) -> np.ndarray:
        """Training samples ``positions`` as a batch; augmented as read (albumentations on
        the uint8 images) when the data does that, else as stored."""
        if self.augments_on_read:
            return self.inputs.take(positions, epoch)
        return self.inputs[positions]

    def local_share(self, batch: np.ndarray) -> np.ndarray:
        """This process's equal slice of a global batch."""
        if self.world == 1:
            return batch
        if len(batch) % self.world:
            raise BridgeError(f"batch {len(batch)} does not split over {self.world} processes")
        per = len(batch) // self.world
        return batch[self.rank * per : (self.rank + 1) * per]

    def batches(self, epoch: int):
        """``(index, samples)`` of this process's share of every global batch of ``epoch``,
        in the seeded order; streamed inputs are decoded ahead by ``options.workers``
        DataLoader processes (none: in this process, one batch at a time)."""
        order = self.epoch_order(epoch)
        b = self.options.batch
        shares = [self.local_share(order[k * b : (k + 1) * b]) for k in range(self.steps_per_epoch)]
        if isinstance(self.inputs, np.ndarray) or self.options.workers == 0:
            for mine in shares:
                yield mine, self.read(mine, epoch)
            return
        # keys (position, epoch) make the dataset augment as it reads (augments_on_read)
        loader = self.torch.utils.data.DataLoader(
            self.inputs,
            batch_sampler=[
                [(int(i), epoch) if self.augments_on_read else int(i) for i in m] for m in shares
            ],
            num_workers=self.options.workers,
            collate_fn=stack_batch,
        )
        yield from zip(shares, loader)

    def backward(self, index: np.ndarray, epoch: int, samples: np.ndarray | None = None) -> float:
        """Forward + backward on this process's share of the global batch ``index``
        (``samples``: those inputs already loaded, see :meth:`batches`)."""
        torch = self.torch
        mine = np.asarray(index) if samples is not None else self.local_share(np.asarray(index))
        x = self.read(mine, epoch) if samples is None else samples
        if not self.augments_on_read:
            x = self.augment(x, mine, epoch)
        teacher = self._teacher(x)
        labels = None
        if self.labels is not None and self.class_labels:
            labels = torch.as_tensor(self.labels[mine], device=self.device)
        self.net.train()
        out = self._student(torch.from_numpy(x).to(self.device))
        loss = self.loss(out, teacher, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach())

    def gradients(self) -> dict[str, np.ndarray]:
        """``{initializer name: gradient}`` after :meth:`backward`."""
        return {
            n: self.module.parameter_for(n).grad.detach().cpu().numpy()
            for n in self.module.param_names
            if self.module.parameter_for(n).grad is not None
        }

    def predict(self) -> dict:
        """The student's outputs and tapped logits on the validation inputs (no gradient)."""
        torch = self.torch
        self.net.eval()
        module = self.eval_module
        module.eval()
        outs: dict = {k: [] for k in self.keys}
        step = self.chunk or max(1, min(64, len(self.val_inputs)))
        with torch.no_grad():
            for i in range(0, len(self.val_inputs), step):
                x = torch.from_numpy(self.val_inputs[i : i + step]).to(self.device)
                for k, v in zip(self.keys, module(x)):
                    outs[k].append(v.float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in outs.items()}

    def dead_start(self, student: Mapping | None = None) -> dict[str, str]:
        """Outputs constant over the validation inputs while the teacher's vary
        (:func:`graphslim.bridge.logits.dead_outputs`)."""
        student = self.predict() if student is None else student
        names = self.output_names
        logits = {o: (student[("logit", o)], self.val_teacher[("logit", o)]) for o in self.logits}
        return dead_outputs(
            {n: student[n] for n in names}, {n: self.val_teacher[n] for n in names}, logits
        )

    @property
    def metric(self) -> str:
        """The name of the metric that picks the best epoch (see the module doc)."""
        if self.box_labels:
            return "label_map50_95"
        if self.val_labels is not None and self.class_output is not None:
            return "accuracy"
        if self.task is not None:
            return TASK_METRIC[self.task.kind]
        return "top1" if self.class_output is not None else "cosine"

    def evaluate(self, student: Mapping | None = None) -> Scores:
        """Validation scores of the student (``student``: a :meth:`predict` result)."""
        torch = self.torch
        student = self.predict() if student is None else student
        with torch.no_grad():
            loss = float(
                self.loss({k: torch.from_numpy(v) for k, v in student.items()}, self.val_teacher)
            )
        accuracy, task_metrics = None, None
        if self.class_output is not None and self.val_labels is not None and not self.box_labels:
            pred = student[self.class_output].argmax(1)
            accuracy = float(np.mean(pred == np.asarray(self.val_labels)))
        if self.task is not None:
            n = len(self.val_inputs)

            def per_sample(d: Mapping) -> list[dict]:
                return [{k: d[k][i : i + 1] for k in self.output_names} for i in range(n)]

            feeds = [{self.input_name: self.val_inputs[:1]}]
            if self.box_labels:  # boxes in network-input pixels (YoloLabels): no letterboxes
                self.task.labels = self.val_box_labels
            got = self.task.evaluate(per_sample(self.val_teacher), per_sample(student), feeds)
            task_metrics = dict(got.metrics)
            value = float(task_metrics[self.metric])
        elif self.class_output is not None:
            pred = student[self.class_output].argmax(1)
            value = float(np.mean(pred == self.val_teacher[self.class_output].argmax(1)))
        else:
            value = math.nan  # the cosine below
        cosine = output_cosine(student, self.val_teacher, self.output_names)
        if self.task is None and self.class_output is None:
            value = cosine
        if self.metric == "accuracy":
            value = float(accuracy)
        return Scores(self.metric, value, cosine, accuracy, loss, task_metrics)

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng((self.options.seed, epoch))
        return rng.permutation(len(self.inputs))


class _Teacher:
    """onnxruntime CPU session for the teacher whose idle threads do not spin.

    :class:`graphslim.runtime.Session` lets onnxruntime's threads spin between runs (best for
    latency); here they would take the cores torch's backward pass needs between teacher
    runs (4x slower on a 2-core machine), so this session turns spinning off."""

    def __init__(self, model: onnx.ModelProto, extra: Mapping | None = None) -> None:
        """``extra``: ``{key: tensor name}`` of intermediate tensors returned under ``key``."""
        import tempfile

        import onnxruntime as ort

        from graphslim.errors import RuntimeFailure
        from graphslim.model_io import serialize_for_runtime
        from graphslim.runtime import with_outputs

        self.extra = dict(extra or {})
        if self.extra:
            model = with_outputs(model, list(self.extra.values()))

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._tmp = tempfile.TemporaryDirectory(prefix="graphslim-teacher-")
        try:
            self.session = ort.InferenceSession(
                serialize_for_runtime(model, self._tmp.name),
                sess_options=opts,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            self._tmp.cleanup()
            raise RuntimeFailure(f"onnxruntime cannot load the teacher: {exc}") from exc
        taps = set(self.extra.values())
        self._fetch = [o.name for o in self.session.get_outputs()]
        self.output_names = [n for n in self._fetch if n not in taps]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict:
        """The outputs by name, and the ``extra`` tensors under their keys."""
        got = dict(zip(self._fetch, self.session.run(self._fetch, dict(feed))))
        return {n: got[n] for n in self.output_names} | {k: got[t] for k, t in self.extra.items()}

    def close(self) -> None:
        self.session = None
        self._tmp.cleanup()


class _TorchTeacher:
    """The teacher graph as an :class:`~graphslim.bridge.interpreter.OnnxModule` on
    ``device`` (no gradient), checked against onnxruntime on ``feeds`` first like the
    student (:func:`~graphslim.bridge.interpreter.parity_check`). Same interface as
    :class:`_Teacher`; outputs come back as numpy (a YOLO head is a few KB a sample)."""

    def __init__(self, model, extra: Mapping, device, feeds, tolerances, force: bool) -> None:
        import torch

        from graphslim.bridge.interpreter import OnnxModule, parity_check

        self.torch = torch
        self.extra = dict(extra)
        self.module = OnnxModule(model)
        self.module.tap(list(self.extra.values()))
        parity_check(model, self.module, feeds, tolerances, force=force)
        self.module.requires_grad_(False).eval().to(device)
        self.device = device
        self.output_names = list(self.module.output_names)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict:
        """The outputs by name, and the ``extra`` tensors under their keys."""
        (x,) = feed.values()
        with self.torch.no_grad():
            got = self.module(self.torch.from_numpy(np.asarray(x)).to(self.device))
        keys = [*self.output_names, *self.extra]
        return {k: v.float().cpu().numpy() for k, v in zip(keys, got)}

    def close(self) -> None:
        self.module = None


def _draw(kinds: Sequence[str], seed: tuple) -> dict:
    """The random choices for one sample; every draw comes from ``seed``."""
    rng = np.random.default_rng(seed)
    theta = np.eye(3)
    flip = "flip" in kinds and rng.random() < 0.5
    if "crop" in kinds:  # random resized crop: area 0.6..1, aspect 3/4..4/3
        area = rng.uniform(0.6, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        sw, sh = min(1.0, math.sqrt(area * aspect)), min(1.0, math.sqrt(area / aspect))
        tx, ty = rng.uniform(-(1 - sw), 1 - sw), rng.uniform(-(1 - sh), 1 - sh)
        theta = theta @ np.array([[sw, 0, tx], [0, sh, ty], [0, 0, 1]])
    if "rotate" in kinds:  # +-10 degrees
        a = math.radians(rng.uniform(-10, 10))
        c, s = math.cos(a), math.sin(a)
        theta = theta @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    contrast, brightness = 1.0, 0.0
    if "color" in kinds:
        contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
    blur = "blur" in kinds and rng.random() < 0.3
    return {"flip": flip, "theta": theta[:2], "contrast": contrast, "brightness": brightness,
            "blur": blur}  # fmt: skip


def _apply(torch, x: np.ndarray, draws: Sequence[dict]) -> np.ndarray:
    """Apply per-sample draws to a ``[N, C, H, W]`` batch: flip, crop/rotation (one affine
    resampling, border padding), contrast about the sample mean and brightness in units of
    the sample's spread (the input is already normalized), 3x3 box blur."""
    F = torch.nn.functional
    t = torch.from_numpy(np.ascontiguousarray(x))
    n, c = t.shape[:2]
    flips = torch.tensor([d["flip"] for d in draws])
    if flips.any():
        t = torch.where(flips[:, None, None, None], t.flip(3), t)
    theta = np.stack([d["theta"] for d in draws])
    if not np.allclose(theta, np.eye(2, 3)):
        grid = F.affine_grid(torch.tensor(theta, dtype=t.dtype), list(t.shape), align_corners=False)
        t = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = torch.tensor([d["contrast"] for d in draws], dtype=t.dtype)[:, None, None, None]
    brightness = torch.tensor([d["brightness"] for d in draws], dtype=t.dtype)[:, None, None, None]
    if (contrast != 1).any() or (brightness != 0).any():
        mean = t.mean(dim=(2, 3), keepdim=True)
        spread = t.flatten(1).std(dim=1)[:, None, None, None].clamp_min(1e-6)
        t = (t - mean) * contrast + mean + brightness * spread
    blur = torch.tensor([d["blur"] for d in draws])
    if blur.any():
        kernel = torch.full((c, 1, 3, 3), 1 / 9, dtype=t.dtype)
        blurred = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
        t = torch.where(blur[:, None, None, None], blurred, t)
    return t.numpy()


def _init_distributed(torch, options: FinetuneOptions) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if _device(torch, options, 0).type == "cuda" else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(torch, options: FinetuneOptions, rank: int):
    if options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise BridgeError("device cuda was asked for but torch sees no CUDA device")
        local = int(os.environ.get("LOCAL_RANK", rank))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


# ----------------------------------------------------------------------------- the loop


def finetune(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    inputs: np.ndarray,
    options: FinetuneOptions | None = None,
    *,
    labels: np.ndarray | None = None,
    val_inputs: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    on_step: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Distil ``teacher`` into ``student`` on ``inputs`` (preprocessed ``[N, ...]`` float32).

    ``on_start(info)`` is called before the first epoch with the bridge parity, the losses,
    the selection metric and the outputs found dead (``{output: saturated | constant}``);
    ``on_step(epoch, step, steps, loss)`` and ``on_epoch(record)`` report progress. With
    ``options.checkpoint`` the state is saved after every epoch (atomically) and, with
    ``options.resume``, training continues from it. Returns the student with the best
    epoch's values written back.
    """
    options = options or FinetuneOptions()
    d = Distiller(
        student,
        teacher,
        inputs,
        options,
        labels=labels,
        val_inputs=val_inputs,
        val_labels=val_labels,
    )
    torch = d.torch
    from graphslim.bridge.writeback import write_back

    history: list[EpochRecord] = []
    start = 1
    # best: ((metric, -val loss), epoch, state): ties on the metric go to the lower loss
    best = ((-math.inf, -math.inf), 0, None)
    dead: dict[str, str] = {}
    ckpt = Path(options.checkpoint) if options.checkpoint else None
    if ckpt is not None and options.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=d.device, weights_only=False)
        d.module.load_state_dict(state["model"])
        d.opt.load_state_dict(state["optimizer"])
        d.sched.load_state_dict(state["scheduler"])
        if d.ema is not None and state.get("ema") is not None:
            d.ema.load_state_dict(state["ema"])
        if d.adapters is not None and state.get("adapters") is not None:
            d.adapters.module.load_state_dict(state["adapters"])
        d.plan(state.get("epochs", options.epochs))
        history = [EpochRecord(**h) for h in state["history"]]
        best = (tuple(state["best_key"]), state["best_epoch"], state["best_state"])
        start = state["epoch"] + 1
        log.info("resumed from %s after epoch %d", ckpt, state["epoch"])
    if start == 1:
        t0 = time.perf_counter()
        prediction = d.predict()
        dead = d.dead_start(prediction)
        for name, why in dead.items():
            log.warning("%s", _dead_message(name, why, d.kinds[name]))
        scores = d.evaluate(prediction)
        rec = _record(0, math.nan, scores, time.perf_counter() - t0)
        history.append(rec)
        best = (scores.key, 0, _state_copy(d.eval_module))
    if on_start:
        on_start(
            {
                "parity": d.parity,
                "losses": {k: "+".join(v) for k, v in d.kinds.items()},
                "metric": d.metric,
                "dead": dead,
                "teacher": d.teacher_runtime,
                "features": list(d.features),
                "device": str(d.device),
            }
        )
    if start == 1 and on_epoch:
        on_epoch(history[0])
    budget = _TimeBudget(options.time_budget, start)
    epoch = start
    while epoch <= d.epochs:
        t0 = time.perf_counter()
        losses = []
        d.refit_adapters()
        for step, (mine, samples) in enumerate(d.batches(epoch)):
            losses.append(d.backward(mine, epoch, samples))
            d.step()
            if on_step:
                on_step(epoch, step + 1, d.steps_per_epoch, losses[-1])
        scores = d.evaluate()
        rec = _record(epoch, float(np.mean(losses)), scores, time.perf_counter() - t0)
        history.append(rec)
        if scores.key > best[0]:
            best = (scores.key, epoch, _state_copy(d.eval_module))
        planned = budget.epochs(epoch, options.epochs, d.world)
        if planned is not None and planned != d.epochs:
            log.info("time budget: %d epochs fit in %.1f min", planned, options.time_budget)
            d.plan(planned)
        if ckpt is not None and d.rank == 0:
            _save_checkpoint(torch, ckpt, d, epoch, history, best)
        if on_epoch:
            on_epoch(rec)
        epoch += 1
    d.module.load_state_dict(best[2])
    from graphslim.bridge.writeback import trained_values

    model = write_back(student, trained_values(d.module))
    d.teacher.close()
    return FinetuneResult(
        model,
        history,
        best[1],
        d.parity,
        {k: "+".join(v) for k, v in d.kinds.items()},
        dead,
        teacher_runtime=d.teacher_runtime,
        teacher_cache=d.teacher.stats() if hasattr(d.teacher, "stats") else None,
    )


class _TimeBudget:
    """How many epochs fit in ``minutes`` of training (None: no budget), re-estimated after
    every epoch from the mean epoch time so far, as ultralytics' ``time`` does; at least the
    epochs already run, at most the asked ``epochs``. Every process of a data-parallel run
    takes process 0's answer (they must stop together)."""

    def __init__(self, minutes: float | None, first_epoch: int) -> None:
        self.seconds = None if minutes is None else minutes * 60
        self.first = first_epoch
        self.t0 = time.perf_counter()

    def epochs(self, done: int, asked: int, world: int) -> int | None:
        if self.seconds is None:
            return None
        per_epoch = (time.perf_counter() - self.t0) / (done - self.first + 1)
        fit = self.first - 1 + int(self.seconds // per_epoch)
        planned = min(asked, max(done, fit))
        if world > 1:
            import torch
            import torch.distributed as dist

            t = torch.tensor([planned], dtype=torch.int64)
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.broadcast(t, 0)
            planned = int(t.item())
        return planned


def _record(epoch: int, loss: float, s: Scores, seconds: float) -> EpochRecord:
    return EpochRecord(
        epoch, loss, s.loss, s.metric, s.value, s.cosine, s.accuracy, seconds, s.task
    )


def _dead_message(name: str, why: str, kinds: Sequence[str]) -> str:
    if why == "saturated":
        fix = (
            "the logit loss moves it"
            if any(k.endswith("-logit") for k in kinds)
            else f"its loss ({'+'.join(kinds)}) has no gradient there; use --loss logit"
        )
        return (
            f"student output '{name}' is constant at the start (its activation is saturated; "
            f"the logits under it still vary): {fix}"
        )
    return (
        f"student output '{name}' is constant at the start, logits included (dead: no "
        "gradient reaches the weights through it); prune with calibration data (--calib) or "
        "re-estimate BatchNorm (--recalibrate-bn) first"
    )


def _state_copy(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _save_checkpoint(torch, path: Path, d: Distiller, epoch: int, history, best) -> None:
    import tempfile

    state = {
        "epoch": epoch,
        "model": d.module.state_dict(),
        "optimizer": d.opt.state_dict(),
        "scheduler": d.sched.state_dict(),
        "ema": d.ema.state_dict() if d.ema is not None else None,
        "adapters": d.adapters.module.state_dict() if d.adapters is not None else None,
        "epochs": d.epochs,
        "history": [asdict(h) for h in history],
        "best_key": best[0],
        "best_epoch": best[1],
        "best_state": best[2],
        "options": asdict(d.options),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ files


def finetune_files(
    student_path: str | os.PathLike,
    teacher_path: str | os.PathLike,
    images: str | os.PathLike,
    output: str | os.PathLike,
    options: FinetuneOptions | None = None,
    *,
    preprocess: str | None = None,
    labels: str | os.PathLike | None = None,
    val_images: str | os.PathLike | None = None,
    val_labels: str | os.PathLike | None = None,
    limit: int | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    on_step: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """:func:`finetune` from files: the images of ``images`` (recursively) streamed through
    :class:`graphslim.bridge.data.ImageFolderDataset`, preprocessed by ``preprocess`` (a
    :meth:`graphslim.feeds.Preprocess.parse` string, default ``resize,scale=1/255`` to the
    model's input size), labels from ``labels`` (class folders, CSV or ``.npy``, see
    :mod:`graphslim.bridge.labels`; with ``options.task`` detect, a folder of YOLO ``.txt``
    files), augmented with albumentations on the uint8 image when ``options.augmenter`` says
    so (:mod:`graphslim.bridge.augment`), the result saved
    atomically at ``output`` (never over the student or the teacher; by process 0 only)."""
    require_torch()
    from graphslim.bridge.data import ImageFolderDataset
    from graphslim.errors import ModelSaveError
    from graphslim.feeds import Preprocess
    from graphslim.model_io import load_model, same_file, save_model

    for src in (student_path, teacher_path):
        if same_file(Path(output), Path(src)):
            raise ModelSaveError(f"{output}: output path is an input model; choose another -o path")
    student = load_model(student_path)
    teacher = load_model(teacher_path)
    spec = Preprocess.parse(preprocess or "resize,scale=1/255")
    # streamed: decoded batch by batch, never the whole folder in memory
    options = options or FinetuneOptions()
    augment = None
    if options.augmenter == "albumentations" and options.augment:
        from graphslim.bridge.augment import ImageAugment

        augment = ImageAugment(options.augment, options.seed)  # missing package: fails here
    inputs = ImageFolderDataset(images, teacher, spec, limit=limit, shapes=shapes, augment=augment)
    y = dataset_labels(labels, inputs, options.task) if labels else None
    vx = vy = None
    if val_images:
        vx = ImageFolderDataset(val_images, teacher, spec, shapes=shapes)
        vy = dataset_labels(val_labels, vx, options.task) if val_labels else None
    result = finetune(
        student,
        teacher,
        inputs,
        options,
        labels=y,
        val_inputs=vx,
        val_labels=vy,
        on_step=on_step,
        on_epoch=on_epoch,
        on_start=on_start,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        save_model(result.model, output, protect=student_path)
    return result

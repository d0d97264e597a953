"""finetune: knowledge distillation from the pipeline's input model, as a pipeline step.

The same loop as ``graphslim finetune`` (:func:`graphslim.bridge.finetune.finetune`), fed
from the pipeline: the student is the model as it arrives (pruned, rewritten), the teacher
is the model the pipeline started from (``ctx.reference``), the training inputs are the
calibration feeds (``--calib``), and the best epoch on a seeded share of them is written back
into the same graph (same nodes and names, new float values). The best epoch is picked by
the task metric against the teacher with ``task`` (``detect``: map50, ``classify``: top1,
``dense``: iou), else by top-1 agreement on a ``[N, C]`` output, else by the output cosine;
the counters name it (``val_iou_before`` / ``val_iou_after``, ...).

It is a step a recipe can always list: without torch, without calibration feeds or with
nothing to recover (the student is the teacher), it leaves the model as it is and says why
in a note (``required=true`` makes a missing torch an error instead). Place it after the
lossy structural passes and before ``quantize-int8``: a QDQ model is fine-tuned as float and
quantized again, never the other way round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.feeds import input_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = option(5, help="passes over the calibration feeds")
    lr: float = option(1e-3, help="learning rate (cosine annealed)")
    optimizer: str = option("sgd", help="sgd (momentum 0.9) or adam (AdamW: decoupled decay)")
    batch: int = option(4, help="samples per step")
    weight_decay: float = option(5e-4, help="L2 weight decay")
    augment: tuple[str, ...] = option(
        ("flip", "crop", "color", "blur"),
        help="flip, crop, color, blur, rotate; the teacher sees the same augmented input",
    )
    loss: str = option("auto", help="auto (per output), mse, l1, kl, bce, logit, detect, dice")
    temperature: float = option(4.0, help="softmax temperature of the kl loss")
    val_fraction: float = option(0.2, help="share of the feeds that picks the best epoch")
    task: str = option("", help="detect | classify | dense: pick the epoch by map50/top1/iou")
    warmup: float = option(
        0.0, help="epochs of linear learning-rate warm-up (from lr/10) before the cosine"
    )
    ema: float = option(
        0.0,
        help="decay of an exponential moving average of the weights, evaluated and written "
        "(0: off; e.g. 0.999)",
    )
    time: float = option(
        0.0, help="minutes for the epochs (epochs becomes an upper bound; 0: no limit)"
    )
    teacher_cache: str = option(
        "",
        help="folder caching the teacher's outputs per input (reruns with the same seed and "
        "feeds read them); empty: no cache",
    )
    recalibrate_bn: bool = option(
        False,
        help="re-estimate BatchNorm mean/var on the feeds first (plain pruning leaves them "
        "wrong; pplcnet-cls at ratio 0.3: 55% -> 75.5% accuracy before any training)",
    )
    force: bool = option(False, help="go on when torch and onnxruntime differ (bridge parity)")
    required: bool = option(False, help="fail when torch is not installed instead of skipping")

    def validate(self) -> None:
        from graphslim.bridge import BridgeError

        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.time < 0:
            raise ValueError("time must be >= 0 minutes (0: no limit)")
        try:  # the loop's options check the rest (one set of rules for CLI and pass)
            self.loop_options(seed=0, samples=self.batch)
        except BridgeError as exc:
            raise ValueError(str(exc)) from None

    def loop_options(self, *, seed: int, samples: int):
        """These options as :class:`graphslim.bridge.finetune.FinetuneOptions` for
        ``samples`` training inputs."""
        from graphslim.bridge.finetune import FinetuneOptions as LoopOptions

        return LoopOptions(
            epochs=self.epochs,
            batch=min(self.batch, max(1, samples)),
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            augment=tuple(self.augment),
            loss=self.loss,
            temperature=self.temperature,
            val_fraction=self.val_fraction if samples > 1 else 0.0,
            seed=seed,
            task=self.task or None,
            force=self.force,
            recalibrate_bn=self.recalibrate_bn,
            warmup=self.warmup,
            ema=self.ema,
            time_budget=self.time or None,
            teacher_cache=self.teacher_cache or None,
        )


class Finetune(Pass):
    name = "finetune"
    summary = "knowledge distillation from the pipeline's input model on the --calib feeds"
    numerics = "lossy"
    in_place = False  # returns a new model; the input is left as it was
    Options = FinetuneOptions
    after = ("prune-channels", "factorize-conv", "depthwise-separable", "dynamic-conv")
    before = ("quantize-int8",)

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        o = self.options
        skip = _why_skip(model, ctx, o.required)
        if skip:
            log.warning("finetune: %s", skip)
            return PassResult(model, False, {"epochs_run": 0}, notes=[f"skipped: {skip}"])
        from graphslim.bridge.finetune import finetune

        (spec,) = input_specs(model)
        inputs = np.concatenate([np.asarray(f[spec.name], dtype=np.float32) for f in ctx.feeds])
        loop = o.loop_options(seed=ctx.seed, samples=len(inputs))
        result = finetune(model, ctx.reference, inputs, loop)
        start, best = result.history[0], result.history[result.best_epoch]
        metric = result.metric  # map50 | top1 | iou (vs the teacher) | cosine (outputs)
        counters = {
            "epochs_run": o.epochs,
            "best_epoch": result.best_epoch,
            "samples": len(inputs),
            f"val_{metric}_before": round(start.value, 4),
            f"val_{metric}_after": round(best.value, 4),
            "val_loss_before": round(start.val_loss, 6),
            "val_loss_after": round(best.val_loss, 6),
        }
        if metric != "cosine":
            counters["val_cosine_before"] = round(start.cosine, 4)
            counters["val_cosine_after"] = round(best.cosine, 4)
        details = [
            {"epoch": r.epoch, "loss": r.loss, "val_loss": r.val_loss, r.metric: r.value}
            | ({"cosine": r.cosine} if r.metric != "cosine" else {})
            for r in result.history
        ]
        notes = [f"best epoch chosen by validation {metric} against the teacher"]
        notes += [f"output '{n}' constant at the start ({why})" for n, why in result.dead.items()]
        if result.parity.get("forced"):
            notes.append("bridge parity failed and was forced (force=true)")
        if result.best_epoch == 0:
            # No epoch beat the untrained student: the graph goes on exactly as it came.
            notes.append("no epoch improved; unchanged")
            return PassResult(model, False, counters, notes=notes, details=details)
        return PassResult(result.model, True, counters, notes=notes, details=details)


def _why_skip(model: onnx.ModelProto, ctx: PassContext, required: bool) -> str | None:
    """Why the step cannot train here (None when it can)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        from graphslim.bridge import INSTALL_HINT, TorchMissing

        if required:
            raise TorchMissing(f"finetune: torch is not installed; {INSTALL_HINT}") from None
        return f"torch is not installed ({INSTALL_HINT})"
    if ctx.reference is None:
        return "no teacher: run it in a pipeline (ctx.reference is the pipeline's input)"
    if not ctx.feeds:
        return "no calibration feeds to train on (give --calib IMAGES)"
    names = [s.name for s in input_specs(model)]
    if len(names) != 1 or any(names[0] not in f for f in ctx.feeds):
        return f"fine-tuning takes single-input models fed by --calib; inputs are {names}"
    if _still_matches(model, ctx.reference, ctx.feeds[:2]):
        return "the model still answers like the pipeline's input: nothing to recover"
    return None


def _still_matches(model: onnx.ModelProto, reference: onnx.ModelProto, feeds) -> bool:
    """Within the pipeline's exactness tolerance of the reference (only exact passes ran, or a
    task gate rolled the lossy ones back)."""
    from graphslim.runtime import run_model
    from graphslim.validate import DEFAULT_TOLERANCES, compare_outputs

    got, ref = run_model(model, feeds), run_model(reference, feeds)
    return compare_outputs(ref, got, DEFAULT_TOLERANCES).passed

"""Task metrics: does the candidate *answer like the original* on its task?

Element-wise error misleads both ways (an INT8 model fails a 1e-5 check with its mAP intact; a
small max-abs error can flip a detection), so these metrics judge decisions, not tensors. All
of them take the outputs of both models on the same feeds (``reference`` = original,
``candidate``; one ``{output name: array}`` per feed, a batch axis first) and return a
:class:`TaskMetrics` whose ``metrics`` are the gateable numbers.

Classification (``classify``; logits or probabilities ``[B, C]``, trailing 1-dims dropped):

* ``top1`` -- share of samples whose candidate argmax equals the original's;
* ``top5`` -- share whose original argmax is among the candidate's 5 best (``min(5, C)``);
* ``accuracy`` / ``accuracy_original`` -- against labels, when given.

Detection (``detect``): both outputs are decoded (:mod:`graphslim.detect`; ``yolox`` rows
``[1, N, 5 + nc]`` or ``yolov8`` columns ``[1, 4 + nc, N]``, guessed from the shape, raw YOLOX
grid offsets recognised), NMS'd class-aware, and mapped back to original-image pixels through
each image's :class:`~graphslim.feeds.Letterbox` when one is given. The original's detections
are the ground truth:

* ``map50``, ``map50_95`` -- COCO-style mAP of the candidate's detections (see
  :func:`mean_average_precision`);
* ``recall`` / ``precision`` -- greedy one-to-one matches at IoU >= 0.5, same class, over the
  original's / the candidate's detections; ``missed`` and ``extra`` detections;
* ``iou_mean`` / ``iou_min`` -- IoU of the matched box pairs;
* ``label_map50`` / ``label_map50_95`` (and their ``*_original``) -- against YOLO-format
  label files, when given.

Dense maps (``dense``; text/segmentation heads): both maps thresholded at ``threshold``:

* ``agreement`` -- share of pixels on the same side of the threshold;
* ``iou`` -- ``|A & B| / |A | B|`` of the foregrounds (1.0 when both are empty).
"""

from graphslim.tasks.gate import (
    DEFAULT_MINIMUM,
    UNKNOWN_TASK,
    GateSpec,
    GateVerdict,
    Task,
    TaskGate,
    TaskGateFailed,
    evaluate_models,
    gate_task,
    task_from_outputs,
)
from graphslim.tasks.infer import detection_head, detector_layout, infer_task
from graphslim.tasks.labels import (
    csv_labels,
    image_geometry,
    labeled_images,
    load_yolo_labels,
    make_task,
    parse_min_metric,
)
from graphslim.tasks.map import COCO_IOUS, average_precision, mean_average_precision
from graphslim.tasks.metrics import (
    METRICS,
    TASKS,
    TaskMetrics,
    classify_metrics,
    dense_metrics,
    detect_metrics,
)

__all__ = [
    "COCO_IOUS",
    "DEFAULT_MINIMUM",
    "GateSpec",
    "GateVerdict",
    "detection_head",
    "detector_layout",
    "infer_task",
    "METRICS",
    "TASKS",
    "Task",
    "TaskGate",
    "TaskGateFailed",
    "TaskMetrics",
    "average_precision",
    "classify_metrics",
    "csv_labels",
    "dense_metrics",
    "detect_metrics",
    "evaluate_models",
    "image_geometry",
    "labeled_images",
    "load_yolo_labels",
    "make_task",
    "mean_average_precision",
    "parse_min_metric",
    "UNKNOWN_TASK",
    "gate_task",
    "task_from_outputs",
]

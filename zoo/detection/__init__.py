"""Object detection and instance segmentation: torchvision's Faster R-CNN, SSD and Mask R-CNN (``zoo.detection.models``,
:class:`InstanceDetector`), detection
metrics (IoU, TP/FP matching, PR curves, confusion matrix, COCO mAP), :class:`ObjectDetector` and the figures
its validation grid, its predictions and the detection report draw (``zoo.detection.plots``).

>>> from zoo.detection import ObjectDetector, box_iou, match_detections, coco_map
"""

from zoo.detection.instances import InstanceDetector
from zoo.detection.metrics import (
    COCOMetrics,
    PRCurve,
    box_iou,
    coco_map,
    detection_confusion_matrix,
    format_coco_table,
    match_detections,
    precision_recall_curves,
)
from zoo.detection.models import load_backbone_weights, load_detector_weights
from zoo.detection.module import ObjectDetector
from zoo.detection.plots import draw_detections, plot_pr_curves

__all__ = [
    "COCOMetrics",
    "InstanceDetector",
    "ObjectDetector",
    "PRCurve",
    "box_iou",
    "coco_map",
    "detection_confusion_matrix",
    "draw_detections",
    "format_coco_table",
    "load_backbone_weights",
    "load_detector_weights",
    "match_detections",
    "plot_pr_curves",
    "precision_recall_curves",
]

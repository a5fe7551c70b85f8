"""Checkpoint evaluation: the report written by ``train.py test`` (:class:`EvaluationReport`), per-family
report writers, and the registry they plug into (:func:`register_report_writer`).

Importing this package registers the classification, segmentation, detection, instance and generative writers; the
writers of other families register themselves in their own module under ``zoo/evaluation/`` (import it here).
"""

from zoo.evaluation import classification as _classification  # noqa: E402,F401  (registers its writer)
from zoo.evaluation import detection as _detection  # noqa: E402,F401  (by import path: imports no detection code)
from zoo.evaluation import generative as _generative  # noqa: E402,F401  (by import path, likewise)
from zoo.evaluation import instances as _instances  # noqa: E402,F401  (InstanceDetector, InstanceSegmenter)
from zoo.evaluation import segmentation as _segmentation  # noqa: E402,F401
from zoo.evaluation.report import (
    EvaluationReport,
    FamilyReport,
    Figure,
    ReportDirError,
    ReportWriter,
    Section,
    Table,
    register_report_writer,
    report_writer_for,
)

__all__ = [
    "EvaluationReport",
    "FamilyReport",
    "Figure",
    "ReportDirError",
    "ReportWriter",
    "Section",
    "Table",
    "register_report_writer",
    "report_writer_for",
]

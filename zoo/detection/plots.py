"""Detection figures: images with their true and detected boxes, per-class precision/recall curves.

Used by :class:`~zoo.detection.ObjectDetector` (the validation grid in TensorBoard, predict's ``<image>_boxes.png``)
and by the detection report (:mod:`zoo.evaluation.detection`), which writes the test figures.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.detection.metrics import PRCurve, class_name


def draw_detections(
    image: torch.Tensor,
    pred: dict[str, torch.Tensor],
    class_names: list[str],
    score_threshold: float = 0.5,
    target: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(3, H, W)`` uint8: the image with true boxes (green) and detections scoring at least
    ``score_threshold`` (red, ``name score``)."""
    from torchvision.utils import draw_bounding_boxes

    canvas = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if canvas.shape[0] == 1:
        canvas = canvas.expand(3, -1, -1)
    if target is not None and len(target["boxes"]):
        canvas = draw_bounding_boxes(canvas, target["boxes"].float(), colors="lime", width=1)
    keep = pred["scores"] >= score_threshold
    if keep.any():
        labels = [
            f"{class_name(int(lab), class_names)} {s:.2f}"
            for lab, s in zip(pred["labels"][keep], pred["scores"][keep].tolist(), strict=True)
        ]
        canvas = draw_bounding_boxes(canvas, pred["boxes"][keep].float(), labels=labels, colors="red", width=1)
    return canvas


def plot_pr_curves(curves: dict[int, PRCurve], class_names: list[str], iou_threshold: float = 0.5) -> Any:
    """Per-class precision/recall curves (matplotlib figure), AP in the legend, which is built from the drawn lines
    (one colour per class: ``tab10``/``tab20``, then line styles, so no two classes look alike). Classes without
    objects have no curve; the title says how many; more than 20 curves get no legend (the title says so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [(label, curve) for label, curve in curves.items() if curve.num_gt > 0]
    palette = matplotlib.colormaps["tab10" if len(drawn) <= 10 else "tab20"]
    styles = ("-", "--", ":", "-.")
    fig, ax = plt.subplots(figsize=(6, 5))
    lines = []
    for i, (label, curve) in enumerate(drawn):
        (line,) = ax.plot(
            curve.recall.numpy(),
            curve.precision.numpy(),
            color=palette(i % palette.N),
            linestyle=styles[(i // palette.N) % len(styles)],
            label=f"{class_name(label, class_names)} (AP {curve.ap:.3f})",
        )
        lines.append(line)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    notes = []
    empty = [class_name(label, class_names) for label, curve in curves.items() if curve.num_gt == 0]
    if empty:
        listed = ", ".join(empty[:8]) + (", ..." if len(empty) > 8 else "")
        notes.append(f"no objects, no curve: {len(empty)} class{'es' if len(empty) > 1 else ''} ({listed})")
    if len(lines) > 20:
        notes.append(f"{len(lines)} curves: no legend, AP per class in the table")
    title = f"Precision / recall per class (IoU >= {iou_threshold})"
    ax.set_title(title + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    if 0 < len(lines) <= 20:
        ax.legend(handles=lines, labels=[line.get_label() for line in lines], fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


__all__ = ["draw_detections", "plot_pr_curves"]

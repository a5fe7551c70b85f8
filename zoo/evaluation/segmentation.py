"""The segmenter's report: per-class IoU and Dice, pixel and Rand error, a per-image table (also
``per_image.csv``), and overlays of the best and worst images (ranked by their mean IoU over classes).

Which images were evaluated is said in the report's overview: the folder datamodules (ISBI 2012, DSB2018, an
image / mask folder) have no labelled test split, and their ``test_dataloader`` serves the validation images
(ISBI 2012: the challenge's test labels were never published), so the report names those slices, how they were
chosen (``val_size``, ``split_seed``) and how many of them the test loop ran on.

Per-image scores are computed here from the predicted class maps that ``SemanticSegmenter.test_step``
returns; the data-set numbers in the report are the module's logged (torchmetrics) ones.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.evaluation import report
from zoo.segmentation import SemanticSegmenter
from zoo.segmentation.metrics import rand_error
from zoo.segmentation.plots import OVERLAY_COLOURS, class_colours, tint


def per_image_scores(
    pred: torch.Tensor, mask: torch.Tensor, num_classes: int, foreground_class: int | None
) -> dict[str, Any]:
    """Pixel error, per-class IoU and Dice (NaN for a class absent from both maps), their means, and the Rand error
    of one predicted class map against the true one."""
    pred, mask = pred.flatten().long(), mask.flatten().long()
    inter = torch.bincount(mask[pred == mask], minlength=num_classes).double()
    area_pred = torch.bincount(pred, minlength=num_classes).double()
    area_true = torch.bincount(mask, minlength=num_classes).double()
    union = area_pred + area_true - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))
    total = area_pred + area_true
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, float("nan")))
    scores: dict[str, Any] = {
        "pixel_error": float((pred != mask).double().mean()),
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "mean_iou": float(iou.nanmean()),
        "mean_dice": float(dice.nanmean()),
    }
    return scores


@report.register_report_writer(SemanticSegmenter)
class SegmentationReport(report.ReportWriter):
    """Scores every test image; keeps the ``examples`` best and worst images (by mean IoU) for the overlays."""

    examples = 3

    def __init__(self, module: SemanticSegmenter) -> None:
        super().__init__(module)
        self.rows: list[dict[str, Any]] = []
        self.kept: list[
            tuple[float, str, torch.Tensor, torch.Tensor, torch.Tensor]
        ] = []  # (mean IoU, name, image, mask, pred)

    def collect(self, module: Any, batch: dict[str, Any], outputs: Any) -> None:
        preds = outputs if isinstance(outputs, torch.Tensor) else module(batch["image"]).argmax(dim=1)
        fg = module.hparams.get("foreground_class")
        for i, (pred, mask) in enumerate(zip(preds.cpu(), batch["mask"].cpu(), strict=True)):
            name = batch["name"][i] if "name" in batch else f"image_{self.num_samples}"
            scores = per_image_scores(pred, mask, module.num_classes, fg)
            if fg is not None:
                scores["rand_error"] = rand_error(pred, mask, fg)
            self.rows.append({"name": str(name), **scores})
            self.num_samples += 1
            self.kept.append((scores["mean_iou"], str(name), batch["image"][i].cpu(), mask, pred))
            # keep only the best and worst few: images can be large
            ranked = sorted(self.kept, key=lambda k: (math.isnan(k[0]), k[0]))
            if len(ranked) > 2 * self.examples:
                ranked = ranked[: self.examples] + ranked[-self.examples :]
            self.kept = ranked

    def write(self, module: Any, metrics: dict[str, float], report_dir: Path) -> report.FamilyReport:
        import matplotlib

        matplotlib.use("Agg")
        names = list(module.class_names)
        fg = module.hparams.get("foreground_class")
        class_rows = [
            [name, metrics.get(f"test/iou_{name}", float("nan")), metrics.get(f"test/dice_{name}", float("nan"))]
            for name in names
        ]
        summary = [
            ["mean IoU", metrics.get("test/iou", float("nan"))],
            ["mean Dice", metrics.get("test/dice", float("nan"))],
            ["pixel error", metrics.get("test/pixel_error", float("nan"))],
        ]
        if fg is not None:
            summary.append([f"Rand error (foreground: {names[fg]})", metrics.get("test/rand_error", float("nan"))])
            summary.append(
                [
                    "ISBI challenge pixel error (1 - best F-score over thresholds)",
                    metrics.get("test/isbi_pixel_error", float("nan")),
                ]
            )
        evaluated_split, evaluated_on = evaluated_images(
            report.attached_datamodule(module), [r["name"] for r in self.rows]
        )
        summary.append(["evaluated images" if evaluated_on else "test images", self.num_samples])
        headers = [
            "image",
            "pixel error",
            "mean IoU",
            "mean Dice",
            *[f"IoU {n}" for n in names],
            *[f"Dice {n}" for n in names],
        ]
        if fg is not None:
            headers.insert(2, "Rand error")
        table_rows = []
        for row in sorted(self.rows, key=lambda r: r["mean_iou"] if not math.isnan(r["mean_iou"]) else -1):
            cells = [row["name"], row["pixel_error"], row["mean_iou"], row["mean_dice"], *row["iou"], *row["dice"]]
            if fg is not None:
                cells.insert(2, row["rand_error"])
            table_rows.append(cells)
        with (report_dir / "per_image.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([headers, *table_rows])
        figures = [
            report.Figure(
                report.save_figure(_class_bars(names, class_rows), report_dir / "per_class_iou_dice.png"),
                "IoU and Dice per class",
            )
        ]
        ranked = self.kept
        best = list(reversed(ranked[-self.examples :])) if ranked else []
        worst = ranked[: self.examples]
        colours = class_colours(module.num_classes, OVERLAY_COLOURS) / 255.0  # on the [0, 1] scale of the images
        for label, chosen in (("best", best), ("worst", worst)):
            if chosen:
                fig = _overlay_figure(chosen, colours, f"{label} images by mean IoU", names)
                figures.append(
                    report.Figure(
                        report.save_figure(fig, report_dir / f"{label}_overlays.png"),
                        f"The {len(chosen)} {label} test images: image | ground truth | prediction | errors (red); "
                        f"class colours in the legend ({names[0]}: not tinted)",
                    )
                )
        sections = [
            report.Section("Summary", tables=[report.Table(["metric", "value"], summary)]),
            report.Section(
                "Per-class IoU and Dice",
                tables=[report.Table(["class", "IoU", "Dice"], class_rows)],
                figures=figures[:1],
            ),
            report.Section(
                "Per image",
                text="Sorted from the worst mean IoU up; also in per_image.csv.",
                tables=[report.Table(headers, table_rows)],
            ),
            report.Section("Best and worst images", figures=figures[1:]),
        ]
        data = {
            "per_image": self.rows,
            "best": [b[1] for b in best],
            "worst": [w[1] for w in worst],
            "figures": [f.path.name for f in figures],
        }
        return report.FamilyReport(sections, data, evaluated_on=evaluated_on, evaluated_split=evaluated_split)


def _is_a(obj: Any, class_name: str) -> bool:
    """Whether ``obj``'s class or a base of it is called ``class_name`` (the library imports no datamodule)."""
    return any(cls.__name__ == class_name for cls in type(obj).__mro__)


def evaluated_images(datamodule: Any, names: list[str]) -> tuple[str, str]:
    """``(short, long)``: what the test loop evaluated, in words, when it was not a held-out test split (``("", "")``
    when it was, or when the datamodule does not say). The datamodule's own ``test_split_description`` when it has
    one; else, when every evaluated image is one of its validation images (``val_samples``), those images by name,
    how they were chosen and how many of them were evaluated."""
    if datamodule is None:
        return "", ""
    stated = getattr(datamodule, "test_split_description", None)
    val = [str(getattr(s, "name", s)) for s in (getattr(datamodule, "val_samples", None) or [])]
    isbi = _is_a(datamodule, "ISBI2012DataModule")
    kind = "slices" if isbi else "images"
    data = type(datamodule).__name__
    if isinstance(stated, str) and stated.strip():
        what = stated.strip()
    elif val and names and set(names) <= set(val):
        what = f"the validation {kind}, not a test set: {data}'s test split is its validation split " + (
            "(the ISBI 2012 challenge's test labels are not public)" if isbi else "(it has no labelled test split)"
        )
    else:
        return "", ""
    short = f"validation {kind}, not a test split" if val else "not a test split"
    if not val:
        return short, what
    seen = set(names)
    train = getattr(datamodule, "train_samples", None)
    chosen = ", ".join(
        f"{key}={getattr(datamodule, key):g}" if isinstance(getattr(datamodule, key), (int, float)) else
        f"{key}={getattr(datamodule, key)}"
        for key in ("val_size", "split_seed") if hasattr(datamodule, key)
    )  # fmt: skip
    count = f"all {len(val)}" if len(seen) == len(val) else f"{len(seen)} of the {len(val)}"
    source = f", chosen from the {len(train) + len(val)} labelled ones" if train is not None else ""
    return short, (
        f"{what}. {kind.capitalize()} evaluated: {count} validation {kind} "
        f"({', '.join(n for n in val if n in seen)}){source}" + (f" by {chosen}" if chosen else "")
    )


def _class_bars(names: list[str], rows: list[list[Any]]) -> Any:
    """IoU and Dice bars per class ('n/a' where the class is in neither map); the legend is made from the bars."""
    import matplotlib.pyplot as plt

    x = np.arange(len(names))
    iou = np.array([r[1] for r in rows], dtype=float)
    dice = np.array([r[2] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    handles = [
        ax.bar(x - 0.2, np.nan_to_num(iou), width=0.4, color="C0", label="IoU"),
        ax.bar(x + 0.2, np.nan_to_num(dice), width=0.4, color="C1", label="Dice"),
    ]
    for i in x:
        for offset, value in ((-0.2, iou[i]), (0.2, dice[i])):
            if np.isnan(value):
                ax.text(i + offset, 0.01, "n/a", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles])
    fig.tight_layout()
    return fig


def _overlay_figure(
    chosen: list[tuple[float, str, torch.Tensor, torch.Tensor, torch.Tensor]],
    colours: np.ndarray,
    title: str,
    class_names: list[str] | None = None,
) -> Any:
    """Rows of image | ground truth | prediction (tinted with ``colours``, on the [0, 1] scale) | errors (red), and a
    legend of the class colours made by the same :func:`tint` that colours the maps (class 0 is not tinted)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(chosen), 4, figsize=(12, 3.1 * len(chosen)), squeeze=False)
    for row, (score, name, image, mask, pred) in zip(axes, chosen, strict=True):
        shown = report.display_image(image)
        base = np.repeat(shown[..., None], 3, axis=-1) if shown.ndim == 2 else shown
        errors = base.copy()
        wrong = (pred != mask).numpy()
        errors[wrong] = [1.0, 0.0, 0.0]
        for ax, panel, caption in zip(
            row,
            (base, tint(base, mask.numpy(), colours), tint(base, pred.numpy(), colours), errors),
            (f"{report.shorten(name, 28)} (mean IoU {score:.3f})", "ground truth", "prediction", "errors"),
            strict=True,
        ):
            ax.imshow(panel)
            ax.set_title(caption, fontsize=9)
            ax.axis("off")
    if class_names:
        # each class's swatch is what tint() makes of a mid-grey pixel of that class: the colour drawn in the panels
        swatches = tint(np.full((1, len(colours), 3), 0.5), np.arange(len(colours))[None], colours)[0]
        handles = [
            Patch(facecolor=tuple(swatches[k]), edgecolor="0.4", label=class_names[k]) for k in range(1, len(colours))
        ]
        handles.insert(0, Patch(facecolor=(0.5, 0.5, 0.5), edgecolor="0.4", label=f"{class_names[0]} (not tinted)"))
        handles.append(Patch(facecolor=(1.0, 0.0, 0.0), edgecolor="0.4", label="error (wrong class)"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04 if class_names else 0, 1, 1))
    return fig

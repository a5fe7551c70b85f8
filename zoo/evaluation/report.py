"""The evaluation report: ``metrics.json``, ``report.md``, ``report.html`` and PNG figures, written by ``test``.

:class:`EvaluationReport` is a Lightning callback (``train.py test`` adds it; plain-Python users pass it to
their ``Trainer``). At the end of ``trainer.test`` it writes, into its report folder,

* ``metrics.json``: every metric the LightningModule logged during the test (the numbers of
  ``trainer.callback_metrics``, unchanged), plus what the family's report computed, the checkpoint,
  the data, timings, software versions and the git commit;
* ``report.md`` and ``report.html`` (the same content; the HTML embeds the figures) and the figures.

**Per-family report writers.** What goes into the report besides the metrics is decided by a
:class:`ReportWriter` registered for the LightningModule's class::

    @register_report_writer("zoo.detection.ObjectDetector")   # a class or its import path
    class DetectionReport(ReportWriter):
        def collect(self, module, batch, outputs):             # every test batch (rank 0)
            ...                                                # keep what the figures need
        def write(self, module, metrics, report_dir):          # once, at the end
            ...                                                # save PNGs into report_dir
            return FamilyReport(sections=[Section(...)], data={...})  # data -> metrics.json["report"]

The most specific registered class of the module's MRO wins (``DistillationClassifier`` uses the
classifier's writer); a module with no writer gets the metrics table only. ``outputs`` is what the
module's ``test_step`` returned (the classifier returns logits, the segmenter class maps); a writer
whose module returns nothing can run ``module(batch)`` itself.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from zoo.core.checkpoint import class_path, git_commit, import_class, software_versions
from zoo.core.errors import ZooUserError
from zoo.core.module import is_weights_argument


class ReportDirError(ZooUserError, OSError):
    """The report folder cannot be created or written."""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    path: Path  # a PNG inside the report folder
    caption: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class FamilyReport:
    """What a :class:`ReportWriter` adds: sections of the report, data for ``metrics.json["report"]`` and, when the
    test loop did not evaluate a held-out test split (a datamodule whose ``test_dataloader`` serves the validation
    images), ``evaluated_on``: what it did evaluate, in words, shown at the top of the report's overview and in
    ``metrics.json["data"]["evaluated_on"]``, and ``evaluated_split``: the same in a few words, for the overview's
    data row (default: "test split"). ``metric_notes``: how the "Logged metrics" table shows a logged value that
    is not a number to read as one (COCO's -1: no objects); ``metrics.json`` keeps the value as logged."""

    sections: list[Section] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    evaluated_on: str = ""
    evaluated_split: str = ""
    metric_notes: dict[str, str] = field(default_factory=dict)


DEFAULT_EVALUATED_ON = "the datamodule's test split (test_dataloader)"


class ReportWriter:
    """Base of the per-family report writers (see the module docstring). One instance per test run."""

    def __init__(self, module: pl.LightningModule) -> None:
        self.num_samples = 0

    def collect(self, module: pl.LightningModule, batch: Any, outputs: Any) -> None:
        """Keep what the report needs from one test batch (called on global rank 0 only)."""

    def write(self, module: pl.LightningModule, metrics: dict[str, float], report_dir: Path) -> FamilyReport:
        """Write the family's figures into ``report_dir``; return the sections and the data for metrics.json."""
        return FamilyReport()


_WRITERS: dict[str, type[ReportWriter]] = {}


def register_report_writer(module_class: type | str) -> Callable[[type[ReportWriter]], type[ReportWriter]]:
    """Decorator: use this :class:`ReportWriter` for ``module_class`` (a LightningModule class or its import
    path, e.g. ``"zoo.detection.ObjectDetector"``, so the family need not be imported to register)
    and its subclasses."""
    key = module_class if isinstance(module_class, str) else class_path(module_class)

    def decorator(writer: type[ReportWriter]) -> type[ReportWriter]:
        _WRITERS[key] = writer
        return writer

    return decorator


def _resolve(path: str) -> type | None:
    if path.split(".")[0] not in sys.modules:
        return None  # a family nobody imported cannot be the module being evaluated
    try:
        return import_class(path)
    except ValueError:
        return None


def report_writer_for(module: pl.LightningModule) -> type[ReportWriter]:
    """The writer registered for the most specific class of ``module``'s MRO (the base writer when none is)."""
    import zoo.evaluation  # noqa: F401  (registers the built-in family writers)

    registered = {cls: writer for key, writer in _WRITERS.items() if (cls := _resolve(key)) is not None}
    for cls in type(module).__mro__:
        if cls in registered:
            return registered[cls]
    return ReportWriter


def check_writable(report_dir: Path) -> None:
    """Create ``report_dir`` and write a probe file; else a :class:`ReportDirError` naming the folder and the fix."""
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        probe = report_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ReportDirError(
            f"report directory {report_dir} is not writable ({type(error).__name__}: {error}). "
            "Fix: pass --report_dir with a folder you can write to."
        ) from error


def default_report_dir(ckpt_path: str | None, datamodule: Any, log_dir: str | None) -> Path:
    """Beside the checkpoint, one folder per (checkpoint, data set): ``<ckpt dir>/report_<ckpt stem>_<DataModule>``;
    without a checkpoint file, ``<log dir>/report``."""
    data_name = type(datamodule).__name__ if datamodule is not None else "data"
    if ckpt_path and Path(ckpt_path).is_file():
        ckpt = Path(ckpt_path)
        return ckpt.parent / f"report_{ckpt.stem}_{data_name}"
    return Path(log_dir or ".") / "report"


def _number(value: Any) -> float | int | None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None  # JSON has no NaN
    return value


def json_numbers(value: Any) -> Any:
    """``value`` with every NaN (a metric undefined on this data, e.g. the IoU of a class absent from an image and
    its prediction) replaced by null, in nested dicts and lists: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_numbers(v) for v in value]
    return _number(value) if isinstance(value, (float, torch.Tensor)) and getattr(value, "ndim", 0) == 0 else value


def logged_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The metrics the module logged during the test, as plain numbers (``trainer.callback_metrics``)."""
    return {
        k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if isinstance(v, (torch.Tensor, float, int))
    }


def _hparams(obj: Any) -> dict[str, Any]:
    """The saved hyperparameters; for objects without (the datamodules), their small public attributes."""
    hparams = (
        dict(getattr(obj, "hparams", {}) or {})
        or {k: v for k, v in vars(obj).items() if isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))}
        if obj is not None
        else {}
    )
    return {k: v for k, v in hparams.items() if not k.startswith("_") and _jsonable(v) and len(json.dumps(v)) < 2000}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class EvaluationReport(pl.Callback):
    """Writes ``metrics.json`` and the report (markdown, HTML, PNG figures) at the end of ``trainer.test``.

    Args:
        report_dir: the report folder; None: beside the checkpoint (:func:`default_report_dir`).
        title: the report's heading; None: the module's class and network.
        ckpt_path: the checkpoint being evaluated, when known before ``trainer.test`` restores it (Lightning sets
            ``trainer.ckpt_path`` only after the ``setup`` hooks, where the report folder is checked).
    """

    def __init__(
        self, report_dir: str | Path | None = None, title: str | None = None, ckpt_path: str | None = None
    ) -> None:
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.ckpt_path = ckpt_path
        self.title = title
        self.resolved_dir: Path | None = None
        self.writer: ReportWriter | None = None
        self.timing: dict[str, float] = {}
        self.metrics_path: Path | None = None

    def resolve_dir(self, trainer: pl.Trainer) -> Path:
        if self.report_dir is not None:
            return self.report_dir
        return default_report_dir(
            self.ckpt_path or trainer.ckpt_path, getattr(trainer, "datamodule", None), trainer.log_dir
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "test" and trainer.is_global_zero:
            self.resolved_dir = self.resolve_dir(trainer)
            check_writable(self.resolved_dir)  # fail before the evaluation, not after it

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer = report_writer_for(pl_module)(pl_module)
        self.timing = {"collect_s": 0.0}
        self._start = time.perf_counter()

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.writer is None or not trainer.is_global_zero:
            return
        start = time.perf_counter()
        with torch.no_grad():
            self.writer.collect(pl_module, batch, outputs)
        self.timing["collect_s"] += time.perf_counter() - start

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.writer is None or not trainer.is_global_zero:
            return
        end_of_test = time.perf_counter()
        report_dir = self.resolved_dir or self.resolve_dir(trainer)
        check_writable(report_dir)
        metrics = logged_metrics(trainer)
        start = time.perf_counter()
        family = self.writer.write(pl_module, metrics, report_dir)
        self.timing["test_s"] = end_of_test - self._start - self.timing["collect_s"]
        self.timing["write_s"] = time.perf_counter() - start
        self.timing["report_overhead"] = (self.timing["collect_s"] + self.timing["write_s"]) / max(
            self.timing["test_s"], 1e-9
        )
        datamodule = getattr(trainer, "datamodule", None)
        summary = {
            # a NaN (a metric undefined on this data: mAP of a test set without positives) is null: JSON has no NaN
            "metrics": {k: _number(v) for k, v in metrics.items()},
            "report": json_numbers(family.data),
            "num_samples": self.writer.num_samples,
            "model": {"class_path": class_path(type(pl_module)), "hparams": _hparams(pl_module)},
            "data": {
                "class_path": class_path(type(datamodule)) if datamodule is not None else None,
                "hparams": _hparams(datamodule),
                "evaluated_on": family.evaluated_on or DEFAULT_EVALUATED_ON,
            },
            "checkpoint": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else None,
            "timing": self.timing,
            "versions": software_versions(),
            "git_commit": git_commit(),
        }
        self.metrics_path = report_dir / "metrics.json"
        self.metrics_path.write_text(json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n")
        title = self.title or f"Evaluation of {type(pl_module).__name__} ({_network_name(pl_module)})"
        if not trainer.ckpt_path:  # said in the first line: numbers of untrained weights must not pass for results
            title = f"{title}: NO CHECKPOINT, {_initial_weights(pl_module)}"
        count = self.writer.num_samples
        evaluated = f"{family.evaluated_split or 'test split'}, {count} sample{'' if count == 1 else 's'}"
        overview = Section(
            "Overview",
            text=f"Evaluated on {family.evaluated_on}." if family.evaluated_on else "",
            tables=[
                Table(
                    ["", ""],
                    [
                        ["checkpoint", summary["checkpoint"] or "(none: the model as it is)"],
                        ["model", summary["model"]["class_path"]],
                        ["data", f"{summary['data']['class_path']} ({evaluated})"],
                        ["git commit", summary["git_commit"] or "unknown"],
                    ],
                )
            ],
        )
        metrics_section = Section(
            "Logged metrics",
            tables=[Table(["metric", "value"], [[k, family.metric_notes.get(k, _fmt(v))] for k, v in metrics.items()])],
        )
        write_report_files(report_dir, title, [overview, *family.sections, metrics_section])
        self.timing["write_s"] = time.perf_counter() - start


def _initial_weights(module: pl.LightningModule) -> str:
    """What the weights of a module evaluated without a checkpoint are."""
    hp = getattr(module, "hparams", {}) or {}
    given = {**hp, **(hp.get("network_kwargs") or {})}
    files = [f"{k}={v}" for k, v in given.items() if v and (k == "pretrained" or is_weights_argument(k))]
    return f"the initial weights ({', '.join(files)})" if files else "random initial weights (untrained)"


def _network_name(module: pl.LightningModule) -> str:
    hp = getattr(module, "hparams", {}) or {}
    return str(hp.get("network", "")) or type(getattr(module, "net", module)).__name__


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(table: Table) -> str:
    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    return ("" if not table.caption else table.caption + "\n\n") + "\n".join(lines)


def write_report_files(report_dir: Path, title: str, sections: Sequence[Section]) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` (figures referenced by relative path) of ``sections``."""
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        md += [f"## {section.title}", ""]
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            md += [section.text, ""]
            body.append(f"<p>{html.escape(section.text)}</p>")
        for table in section.tables:
            md += [markdown_table(table), ""]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in table.rows
            )
            caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
            body.append(f"<table>{caption}<tr>{head}</tr>{rows}</table>")
        for figure in section.figures:
            rel = Path(os.path.relpath(figure.path, report_dir)).as_posix()
            md += [f"![{figure.caption}]({rel})", "", f"*{figure.caption}*", ""]
            body.append(
                f'<figure><img src="{html.escape(rel)}" alt="{html.escape(figure.caption)}">'
                f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}"
    )
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    page = f"<!DOCTYPE html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"
    md_path, html_path = report_dir / "report.md", report_dir / "report.html"
    md_path.write_text("\n".join(md))
    html_path.write_text(page)
    return md_path, html_path


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its head and tail around an ellipsis when longer (a figure title
    of an image id that would overlap its neighbours; the full text belongs in a table beside the figure)."""
    text = str(text)
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    tail = (limit - 1) // 3
    return text[: limit - 1 - tail] + "…" + (text[-tail:] if tail else "")


def attached_datamodule(module: pl.LightningModule) -> Any:
    """The datamodule of the trainer ``module`` is attached to, or None (no trainer, or no datamodule)."""
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer
        return None
    return getattr(trainer, "datamodule", None) if trainer is not None else None


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def panel_grid(count: int, max_cols: int, panel_size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure of ``count`` image panels, ``max_cols`` to a row, every axis off: ``(figure, axes.flat)``
    (the grids of misclassified images and of detections)."""
    import matplotlib.pyplot as plt

    cols = max(1, min(max_cols, count))
    rows = max(1, (count + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def display_image(image: torch.Tensor) -> Any:
    """A normalized ``(C, H, W)`` tensor as an array matplotlib shows (min-max scaled; gray for one channel)."""
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-6)
    return image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()

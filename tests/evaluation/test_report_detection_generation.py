"""``train.py test`` from a checkpoint writes metrics.json (the logged numbers, unchanged) and the family's report with
valid PNG figures, for a detector (COCO metrics, per-class AP, PR curves, confusion matrix with background, the
detections grid) and for generative models (samples, interpolation, reconstructions, FID and the 1-NN test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _assert_report(report_dir: Path, logged: dict, figures: list[str]) -> dict:
    """metrics.json holds exactly the logged metrics with their values; each figure is a PNG that PIL opens and
    that report.md and report.html show."""
    summary = json.loads((report_dir / "metrics.json").read_text())
    assert summary["metrics"].keys() == set(logged)
    for key, value in logged.items():
        assert summary["metrics"][key] == pytest.approx(float(value), abs=0, rel=1e-7), key
    markdown, page = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    for name in figures:
        path = report_dir / name
        assert path.read_bytes()[:8] == PNG, name
        with Image.open(path) as image:
            image.verify()  # a complete, undamaged PNG
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 50, (name, image.size)
        assert f"]({name})" in markdown and f'src="{name}"' in page, name
    assert sorted(summary["report"]["figures"]) == sorted(figures)
    return summary


def test_detector_test_writes_coco_metrics_per_class_ap_pr_curves_confusion_and_detections(
    digits_detection_run, tmp_path
):
    ckpt, config = digits_detection_run
    cli = main(["test", "--config", str(config), f"--ckpt_path={ckpt}", *QUIET, f"--report_dir={tmp_path}"])
    logged = cli.trainer.callback_metrics
    assert {"test/map", "test/map_50", "test/map_75", "test/mar_1", "test/mar_100"} <= logged.keys()
    figures = ["per_class_ap.png", "pr_curves.png", "confusion_matrix.png", "detections.png"]
    summary = _assert_report(tmp_path, logged, figures)
    report = summary["report"]
    assert summary["num_samples"] == 6  # the six validation canvases (the test split)
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"):
        assert report["coco"][key] == pytest.approx(float(logged[f"test/{key}"]), rel=1e-7), key
    for name, values in report["per_class"].items():
        if f"test/ap_{name}" in logged:  # logged for the classes with objects
            assert values["ap"] == pytest.approx(float(logged[f"test/ap_{name}"]), rel=1e-7), name
    # every true object is in exactly one cell of rows 1..K (matched to some class, or missed: column 0)
    annotations = json.loads((ckpt.parents[3] / "canvases" / "instances_val.json").read_text())["annotations"]
    confmat = torch.tensor(report["confusion_matrix"])
    assert confmat.shape == (11, 11) and report["confusion_labels"][:2] == ["background", "0"]
    assert int(confmat[1:].sum()) == len(annotations)
    assert sum(v["objects"] for v in report["per_class"].values()) == len(annotations)
    assert len(report["grid_images"]) == 6
    markdown = (tmp_path / "report.md").read_text()
    assert "## COCO metrics" in markdown and "| AP | 0.50:0.95 | all | 100 |" in markdown


GENERATIVE = {
    # config, the report's figures, whether it samples (FID and the 1-NN test)
    "vae": ("mnist_vae.yaml", ["samples.png", "interpolation.png", "reconstructions.png"], True),
    "gan": ("mnist_gan.yaml", ["samples.png", "interpolation.png"], True),
    "dae": ("mnist_dae.yaml", ["interpolation.png", "reconstructions.png"], False),
}


@pytest.mark.parametrize("name", list(GENERATIVE))
def test_generative_test_writes_metrics_json_samples_interpolation_and_reconstructions(
    name, mnist_run, data_root, tmp_path
):
    config_file, figures, samples = GENERATIVE[name]
    # FID on the MNIST run's classifier features (576 of them: 600 samples keep the covariance full rank)
    quality = [f"--model.init_args.fid_classifier={mnist_run[0]}", "--model.init_args.metric_samples=600"]
    fit = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/generative" / config_file),
            f"--data.init_args.data_dir={data_root}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            *(quality if samples else []),
            *QUIET,
        ]
    )
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    config = Path(fit.trainer.log_dir) / "config.yaml"
    report_dir = tmp_path / "report"
    cli = main(
        ["test", "--config", str(config), f"--ckpt_path={ckpt}", "--trainer.limit_test_batches=1", *QUIET,
         f"--report_dir={report_dir}"]
    )  # fmt: skip
    logged = cli.trainer.callback_metrics
    summary = _assert_report(report_dir, logged, figures)
    report = summary["report"]
    assert summary["num_samples"] == 1000  # one test batch
    markdown = (report_dir / "report.md").read_text()
    if samples:
        assert {"test/fid", "test/nn_accuracy"} <= logged.keys()
        assert report["fid"] == pytest.approx(float(logged["test/fid"]), rel=1e-7)
        assert report["nn_accuracy"] == pytest.approx(float(logged["test/nn_accuracy"]), rel=1e-7)
        assert "FID (lower is better)" in markdown and str(mnist_run[0]) in report["features"]
    else:
        assert "test/fid" not in logged and report["fid"] is None and report["nn_accuracy"] is None
        assert "Not measured: DenoisingAutoEncoder has no prior or generator to sample from" in markdown
    if "reconstructions.png" in figures:
        assert 0 <= report["reconstruction_mse"] <= 1
        assert "test/mse" in logged


def _fake_detector_result(per_class: dict[int, dict[str, float]], num_gt: dict[int, int]) -> dict:
    """A ``last_test_result`` as ``ObjectDetector`` keeps it: COCO's numbers (-1 where there are no objects)."""
    from zoo.detection.metrics import COCO_SUMMARY, PRCurve

    result = {key: 0.25 for key, *_ in COCO_SUMMARY}
    result.update(map_large=-1.0, mar_large=-1.0)
    result["per_class"] = per_class
    result["pr_curves"] = {
        label: PRCurve(torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5]) if n else torch.zeros(2),
                       torch.tensor([0.9, 0.8]), n, 1 if n else 0, 1 if n else 2)
        for label, n in num_gt.items()
    }  # fmt: skip
    result["confusion_matrix"] = None
    return result


def test_per_class_ap_marks_classes_without_ground_truth_and_never_shows_minus_one_as_zero(tmp_path):
    from types import SimpleNamespace

    from zoo.evaluation.detection import NO_GROUND_TRUTH, DetectionReport, _ap_bars

    names = ["cat", "dog", "eel"]  # cat: objects, none found (AP 0); dog: no objects (COCO's -1); eel: AP 0.5
    per_class = {1: {"ap": 0.0, "ap_50": 0.0, "ar_100": 0.0}, 2: {"ap": -1.0, "ap_50": -1.0, "ar_100": -1.0},
                 3: {"ap": 0.5, "ap_50": 0.75, "ar_100": 0.6}}  # fmt: skip
    module = SimpleNamespace(
        class_names=names, hparams={"iou_threshold": 0.5, "score_threshold": 0.5},
        last_test_result=_fake_detector_result(per_class, {1: 2, 2: 0, 3: 1}),
    )  # fmt: skip
    family = DetectionReport(module).write(module, {"test/map": 0.25, "test/map_large": -1.0}, tmp_path)
    data = family.data["per_class"]
    assert data["dog"]["ap"] is None and data["dog"]["ground_truth"] is False and data["dog"]["objects"] == 0
    assert data["cat"]["ap"] == 0.0 and data["cat"]["ground_truth"] is True
    table = next(t for s in family.sections if s.title == "Per-class AP" for t in s.tables)
    rows = {row[0]: row for row in table.rows}
    assert rows["dog"][2:5] == [NO_GROUND_TRUTH] * 3 and rows["dog"][6] == 2  # its detections: false positives
    assert rows["cat"][2:5] == [0.0, 0.0, 0.0]
    coco = next(t for s in family.sections if s.title == "COCO metrics" for t in s.tables)
    assert [r[-1] for r in coco.rows if r[2] == "large"] == [NO_GROUND_TRUTH] * 2
    assert family.metric_notes == {"test/map_large": f"-1 ({NO_GROUND_TRUTH})"}

    fig = _ap_bars(names, {n: {k: v for k, v in data[n].items() if k != "ground_truth"} for n in names})
    ax = fig.axes[0]
    bars = [c for c in ax.containers]
    ap_bars, ap50_bars, no_gt_bars = bars
    # dog (x = 1) has no AP bar at all, neither of height 0 nor -1; it has the hatched "no objects" bar
    assert [round(p.get_x() + p.get_width() / 2, 1) for p in ap_bars.patches] == [-0.2, 1.8]
    assert all(p.get_height() >= 0 for c in (ap_bars, ap50_bars) for p in c.patches)
    (hatched,) = no_gt_bars.patches
    assert hatched.get_x() + hatched.get_width() / 2 == 1 and hatched.get_hatch() == "//" and hatched.get_height() == 1
    texts = [(round(t.get_position()[0], 1), t.get_text()) for t in ax.texts]
    assert (1, "no objects") in texts and (-0.2, "0") in texts and (0.2, "0") in texts  # cat's AP 0 is written
    # the legend is made from the drawn bars: same colours and hatch, one entry per kind of bar
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [c.get_label() for c in bars]
    for handle, container in zip(legend.legend_handles, bars, strict=True):
        assert {p.get_facecolor() for p in container.patches} == {handle.get_facecolor()}
        assert handle.get_hatch() == container.patches[0].get_hatch()


def test_detections_grid_titles_of_long_image_ids_do_not_overlap_and_the_table_has_the_full_ids(tmp_path):
    import hashlib

    from zoo.evaluation.detection import TITLE_CHARS, DetectionReport, _detections_figure

    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(8)]  # 64-character image ids
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
    pred = {"boxes": torch.tensor([[5.0, 5.0, 28.0, 31.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1])}  # fmt: skip
    kept = [(name, torch.rand(3, 64, 64), target, pred) for name in ids]
    fig = _detections_figure(kept, ["digit"], 0.5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert len(titles) == 8
    for i, title in enumerate(titles, start=1):
        first_line = title.get_text().splitlines()[0]
        assert first_line.startswith(f"#{i} ") and len(first_line) <= len(f"#{i} ") + TITLE_CHARS
    boxes = [t.get_window_extent(renderer) for t in titles]
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[i + 1 :], start=i + 1):
            assert not a.overlaps(b), (titles[i].get_text(), titles[j].get_text())
    report = DetectionReport(None)
    report.kept = kept
    table = report._grid_table(0.5)
    assert [row[:2] for row in table.rows] == [[f"#{i}", name] for i, name in enumerate(ids, start=1)]


def test_pr_curves_of_many_classes_have_distinct_colours_and_the_legend_is_made_from_the_lines():
    from zoo.detection.metrics import PRCurve
    from zoo.detection.plots import plot_pr_curves

    curves = {label: PRCurve(torch.tensor([1.0, 0.5]), torch.tensor([0.1, 0.2]) * label / 12, torch.tensor([0.9, 0.8]),
                             0 if label == 5 else 3, 1, 1) for label in range(1, 14)}  # fmt: skip
    fig = plot_pr_curves(curves, [f"class {i}" for i in range(1, 14)])
    ax = fig.axes[0]
    styles = {(line.get_color(), line.get_linestyle()) for line in ax.lines}
    assert len(ax.lines) == len(styles) == 12  # one curve per class with objects; no two look alike
    legend = ax.get_legend()
    for handle, line in zip(legend.legend_handles, ax.lines, strict=True):
        assert (handle.get_color(), handle.get_linestyle()) == (line.get_color(), line.get_linestyle())
        assert handle.get_label() == line.get_label()
    assert "class 5" in ax.get_title() and "no curve" in ax.get_title()

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

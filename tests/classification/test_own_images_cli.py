"""fit, test and predict through the CLI on a user's own images: a folder per class (single-label) and a CSV of
0/1 columns (multi-label), both made here of real MNIST digits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import shared_data_dir
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--model.init_args.network", "convnet", "--data.init_args.image_size", "32", "--data.init_args.num_workers",
         "0", "--data.init_args.batch_size", "8", "--data.init_args.verify_images", "header",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
FIT = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def own_images(tmp_path_factory) -> Path:
    from datamodules.mnist import MNISTDataModule

    root = tmp_path_factory.mktemp("own")
    images, labels = MNISTDataModule(data_dir=str(shared_data_dir()), download=False).load_split(train=False)
    rows = [["image", "even", "large"]]
    for digit in (1, 4, 8):
        (root / "folder" / f"digit{digit}").mkdir(parents=True)
        for i in (labels == digit).nonzero().flatten()[:12].tolist():
            picture = Image.fromarray((images[i, 0] * 0.3081 + 0.1307).clamp(0, 1).mul(255).byte().numpy())
            picture.save(root / "folder" / f"digit{digit}" / f"{i}.png")
            rows.append([f"folder/digit{digit}/{i}.png", str(int(digit % 2 == 0)), str(int(digit > 4))])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def round_trip(config: str, data: list[str], work: Path) -> tuple[Path, Path, Path]:
    """fit, then test and predict from the fit's last checkpoint; returns (checkpoint, report, predictions)."""
    common = ["--config", str(ROOT / config), *data, *SMALL]
    fit = main(["fit", *common, *FIT, f"--trainer.logger.init_args.save_dir={work}"])
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    assert ckpt.is_file()
    main(["test", *common, f"--ckpt_path={ckpt}"])
    main(["predict", *common, f"--ckpt_path={ckpt}"])
    data_name = fit.datamodule.__class__.__name__
    return ckpt, ckpt.parent / f"report_{ckpt.stem}_{data_name}", ckpt.parent / f"predict_{ckpt.stem}_{data_name}"


def test_a_folder_of_class_folders_fits_tests_and_predicts_through_the_cli(own_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt, report, predictions = round_trip("configs/classification/imagefolder_resnet18.yaml",
                                           [f"--data.init_args.data_dir={own_images / 'folder'}"], tmp_path)
    assert (report / "confusion_matrix.png").is_file() and "digit8" in (report / "report.md").read_text()
    with open(predictions / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["class_name"] for r in rows} <= {"digit1", "digit4", "digit8"}


def test_a_multilabel_table_fits_tests_and_predicts_through_the_cli(own_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt, report, predictions = round_trip("configs/classification/csv_multilabel_densenet121.yaml",
                                           [f"--data.init_args.csv={own_images / 'labels.csv'}",
                                            f"--data.init_args.image_dir={own_images}"], tmp_path)  # fmt: skip
    assert (report / "pr_curves.png").is_file() and not (report / "confusion_matrix.png").exists()
    with open(predictions / "predictions.csv") as f:
        header = next(csv.reader(f))
    assert {"prob_even", "prob_large", "labels"} <= set(header)

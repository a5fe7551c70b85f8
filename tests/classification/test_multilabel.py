"""ImageClassifier(task="multilabel"): metrics against a hand-computed case, the test report, a tiny fit on real
MNIST images (labels "even" and "greater than 4"), predictions, checkpoints, and the errors of mismatched targets."""

from __future__ import annotations

import csv
import json
import math
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from zoo.classification import ImageClassifier
from zoo.evaluation import EvaluationReport

ROOT = Path(__file__).resolve().parents[2]
TINY = {"network": "convnet", "network_kwargs": {"width": 4}}
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}

# 4 test images x 4 labels; label d has no positive (its AP / AUROC are undefined).
PROBS = torch.tensor([[0.9, 0.2, 0.3, 0.1], [0.8, 0.6, 0.1, 0.2], [0.3, 0.7, 0.2, 0.3], [0.1, 0.4, 0.6, 0.4]])
TARGETS = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]])
NAMES = ["a", "b", "c", "d"]
# By hand. a: ranked 0.9(+) 0.8(-) 0.3(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3; AUROC = 3 of 4 (pos, neg) pairs in order.
# b and c: every positive ranks above every negative: AP = AUROC = 1. d: undefined, left out of the means.
AP = {"a": 0.5 + 0.5 * 2 / 3, "b": 1.0, "c": 1.0}
AUROC = {"a": 0.75, "b": 1.0, "c": 1.0}
# At threshold 0.5 the predictions are a: 1100, b: 0110, c: 0001, d: 0000. F1 a: 2*1 / (2*1 + 1 + 1) = 0.5; b, c: 1;
# d: no positive and none predicted, 0 (torchmetrics' zero_division) in the macro mean. Exact match: images 1 and 4.
F1, EXACT = (0.5 + 1 + 1 + 0) / 4, 0.5


class LogitsAreTheImage(torch.nn.Module):
    """A 'network' whose logits are the image's pixels: a test batch says what the model outputs."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def _fixed_output_model(**kwargs) -> ImageClassifier:
    model = ImageClassifier(**TINY, num_classes=4, task="multilabel", class_names=NAMES, **kwargs)
    model.net = LogitsAreTheImage()
    return model


def _fixed_output_loader() -> DataLoader:
    logits = torch.logit(PROBS).view(4, 1, 1, 4)
    return DataLoader(TensorDataset(logits, TARGETS.float()), batch_size=2)


@pytest.fixture(scope="module")
def hand_case(tmp_path_factory) -> tuple[dict[str, float], Path]:
    report_dir = tmp_path_factory.mktemp("multilabel_report")
    trainer = pl.Trainer(callbacks=[EvaluationReport(report_dir)], **QUIET)
    trainer.test(_fixed_output_model(), _fixed_output_loader(), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, report_dir


def test_multilabel_test_metrics_equal_the_hand_computation(hand_case):
    logged, _ = hand_case
    assert logged["test/map"] == pytest.approx(sum(AP.values()) / 3, abs=1e-5)  # torchmetrics' macro: 0.7083
    assert logged["test/auroc"] == pytest.approx(sum(AUROC.values()) / 3, abs=1e-5)
    assert logged["test/f1"] == pytest.approx(F1, abs=1e-6)
    assert logged["test/exact_match"] == pytest.approx(EXACT, abs=1e-6)
    p, t = PROBS.double(), TARGETS.double()
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert logged["test/loss"] == pytest.approx(float(bce), abs=1e-5)
    for name in AP:
        assert logged[f"test/ap_class/{name}"] == pytest.approx(AP[name], abs=1e-5)
        assert logged[f"test/auroc_class/{name}"] == pytest.approx(AUROC[name], abs=1e-5)
    assert "test/auroc_class/d" not in logged and "test/ap_class/d" not in logged  # undefined: not logged as 0
    assert "test/acc" not in logged and "test/ece" not in logged


def test_the_threshold_argument_sets_the_predicted_labels():
    trainer = pl.Trainer(**QUIET)
    logged = trainer.test(_fixed_output_model(threshold=0.65), _fixed_output_loader(), verbose=False)[0]
    # at 0.65: a: 1100 (F1 0.5), b: 0010 (tp 1, fn 1: 2/3), c, d: nothing predicted (0)
    assert logged["test/f1"] == pytest.approx((0.5 + 2 / 3) / 4, abs=1e-6)


def test_multilabel_report_has_per_class_auroc_and_curves_and_no_confusion_matrix(hand_case):
    _, report_dir = hand_case
    for name in ("pr_curves.png", "roc_curves.png", "misclassified.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (report_dir / "confusion_matrix.png").exists()
    assert not (report_dir / "reliability_diagram.png").exists()
    summary = json.loads((report_dir / "metrics.json").read_text())  # writes with a class whose AUROC is undefined
    per_class = {row["class"]: row for row in summary["report"]["per_class"]}
    assert list(per_class) == NAMES
    assert per_class["a"]["auroc"] == pytest.approx(0.75, abs=1e-5) and per_class["a"]["positives"] == 2
    assert per_class["d"]["auroc"] is None and per_class["d"]["ap"] is None
    assert summary["report"]["map"] == pytest.approx(summary["metrics"]["test/map"])
    markdown = (report_dir / "report.md").read_text()
    table = markdown.split("## Per-class AUROC and AP")[1].split("##")[0]
    assert all(f"| {name} |" in table for name in NAMES) and "undefined" in table
    assert "No confusion matrix" in markdown and "confusion_matrix.png" not in markdown


def test_targets_that_do_not_fit_the_task_are_refused_with_the_fix():
    images = torch.randn(4, 1, 28, 28)
    multilabel = ImageClassifier(**TINY, num_classes=3, task="multilabel")
    with pytest.raises(ValueError, match=r"integer class labels of shape \(4,\).*task=multilabel.*set model "
                                         r"task=multiclass"):
        multilabel.training_step((images, torch.tensor([0, 1, 2, 1])), 0)
    with pytest.raises(ValueError, match=r"multi-label target values \[0\.5\].*0 or 1"):
        ImageClassifier(**TINY, num_classes=3, task="multilabel").validation_step(
            (images, torch.tensor([[1, 0, 0.5], [0, 1, 0], [0, 0, 0], [1, 1, 1.0]])), 0)
    with pytest.raises(ValueError, match=r"float targets of shape \(4, 10\).*Fix: set model task=multilabel"):
        ImageClassifier(**TINY).training_step((images, torch.zeros(4, 10)), 0)
    with pytest.raises(ValueError, match=r"task='multi' .* Fix: set task to one of multiclass, multilabel"):
        ImageClassifier(**TINY, task="multi")


# -- a tiny fit on real MNIST images ----------------------------------------------------------------------------


class EvenAndLarge(pl.LightningDataModule):
    """MNIST test-split images with two labels: the digit is even; the digit is greater than 4."""

    task, num_classes, in_channels, class_names = "multilabel", 2, 1, ["even", "gt4"]

    def __init__(self, images: torch.Tensor, digits: torch.Tensor) -> None:
        super().__init__()
        targets = torch.stack([digits % 2 == 0, digits > 4], dim=1).float()
        self.train = TensorDataset(images[:640], targets[:640])
        self.val = TensorDataset(images[640:896], targets[640:896])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=64, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=128)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val.tensors[0][:10]), batch_size=10)


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def even_and_large(data_root) -> EvenAndLarge:
    from datamodules import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(data_root), download=False)
    dm.setup("test")
    return EvenAndLarge(dm.test_set.images[:896], dm.test_set.labels[:896])


def _model(**kwargs) -> ImageClassifier:
    return ImageClassifier(
        network="convnet", network_kwargs={"width": 8}, num_classes=2, task="multilabel", class_names=["even", "gt4"],
        optimizer=partial(torch.optim.AdamW, lr=3e-3), **kwargs,
    )  # fmt: skip


def test_a_multilabel_fit_on_mnist_lowers_the_loss_and_reloads(even_and_large, tmp_path, capsys):
    torch.manual_seed(0)
    model, recorder = _model(mixup_alpha=0.2, cutmix_alpha=1.0, class_weights=[1.0, 1.0]), LossRecorder()
    even_and_large.class_weights = [1.0, 1.0]  # what a datamodule's balance: loss sets; the model's agree
    trainer = pl.Trainer(max_epochs=3, callbacks=[recorder], num_sanity_val_steps=0, **QUIET)
    before = trainer.validate(model, even_and_large, verbose=False)[0]["val/loss"]  # about log 2
    trainer.fit(model, even_and_large)
    first, last = sum(recorder.losses[:4]) / 4, sum(recorder.losses[-4:]) / 4  # mixed batches: a noisy loss
    assert len(recorder.losses) == 30 and last < 0.85 * first, (first, last)
    metrics = trainer.callback_metrics
    assert float(metrics["val/loss"]) < 0.85 * before, (before, float(metrics["val/loss"]))  # unmixed BCE
    assert {"train/f1", "val/loss", "val/map", "val/auroc", "val/f1", "val/exact_match"} <= metrics.keys()
    assert float(metrics["val/map"]) > 0.75, float(metrics["val/map"])  # chance: about 0.5 (the positive share)
    assert model.checkpoint_monitor == ("val/map", "max")

    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt").eval()
    assert restored.task == "multilabel" and restored.hparams.cutmix_alpha == 1.0
    assert restored.class_weights == [1.0, 1.0]
    images = even_and_large.val.tensors[0][:8]
    torch.testing.assert_close(restored(images), model.eval()(images))

    restored.hparams.output_dir = str(tmp_path / "pred")
    outputs = pl.Trainer(**QUIET).predict(restored, datamodule=even_and_large)
    assert outputs[0]["prediction"].shape == (10, 2) and outputs[0]["prediction"].dtype == torch.bool
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == 10 and list(rows[0]) == ["index", "labels", "prob_even", "prob_gt4"]
    for row, probs in zip(rows, outputs[0]["probabilities"].tolist(), strict=True):
        assert [float(row["prob_even"]), float(row["prob_gt4"])] == pytest.approx(probs, abs=1e-5)
        above = [n for n, p in zip(["even", "gt4"], probs, strict=True) if p >= 0.5]
        assert row["labels"] == ";".join(above)


def test_a_model_that_does_not_fit_the_multilabel_data_stops_before_training(even_and_large):
    even_and_large.class_weights = None
    trainer = pl.Trainer(max_epochs=1, **{**QUIET, "enable_checkpointing": True},
                         callbacks=[ModelCheckpoint(monitor="val/acc", mode="max")])
    with pytest.raises(ValueError, match=r"monitors 'val/acc', which a task=multilabel classifier does not log.*"
                                         r"Fix: set the callback's monitor to val/map \(mode: max\)"):
        trainer.fit(_model(), even_and_large)
    trainer = pl.Trainer(max_epochs=1, **QUIET)
    with pytest.raises(ValueError, match=r"model task=multiclass but the data \(EvenAndLarge\) has task=multilabel"):
        trainer.fit(ImageClassifier(**TINY, num_classes=2), even_and_large)
    even_and_large.class_weights = [1.0, 3.0]
    with pytest.raises(ValueError, match=r"has class_weights=\[1, 3\].*the model has class_weights=None"):
        trainer.fit(_model(), even_and_large)
    even_and_large.class_weights = None


def test_the_cli_reads_the_new_arguments_typed_from_yaml(tmp_path, capsys):
    from zoo.cli import main
    from zoo.core.errors import ZooUserError

    # task and class_weights are linked from the datamodule (train.py), the others are set in the config
    (tmp_path / "extra.yaml").write_text(
        "model:\n  init_args:\n    threshold: 0.3\n    mixup_alpha: 0.2\n    cutmix_alpha: 1\n"
        "    mix_switch_prob: 0.25\n    mix_prob: 0.5\n"
    )
    digits = str(ROOT / "configs/classification/digits.yaml")
    args = ["--config", digits, "--config", str(tmp_path / "extra.yaml")]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert init_args["threshold"] == 0.3 and isinstance(init_args["cutmix_alpha"], float)
    assert (init_args["mixup_alpha"], init_args["cutmix_alpha"]) == (0.2, 1.0)
    assert (init_args["mix_switch_prob"], init_args["mix_prob"]) == (0.25, 0.5)
    model = main([*args, "--trainer.logger=false"], run=False).model
    assert (model.mixer.mixup_alpha, model.mixer.cutmix_alpha, model.mixer.switch_prob) == (0.2, 1.0, 0.25)
    assert model.task == "multiclass" and model.class_weights is None  # the digits' (linked)
    with pytest.raises((SystemExit, ZooUserError)) as error:  # the CLI's one-paragraph error, or argparse's exit
        main(["fit", "--config", digits, "--model.init_args.mixup_alpha=abc", "--print_config"])
    assert "mixup_alpha" in (str(error.value) + capsys.readouterr().err)


def test_multilabel_mean_metrics_are_nan_when_no_label_is_defined():
    from zoo.classification.metrics import MultilabelMeanAveragePrecision

    metric = MultilabelMeanAveragePrecision(2)
    metric.update(torch.tensor([[0.2, 0.7]]), torch.tensor([[0, 0]]))
    assert math.isnan(float(metric.compute()))

"""Knowledge distillation: the loss, a teacher network, a black-box logits file, student checkpoints."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules import DigitsDataModule, MNISTDataModule
from zoo.classification import DistillationClassifier, ImageClassifier
from zoo.classification.distill import distillation_loss, write_teacher_logits
from zoo.classification.distill.__main__ import main as write_logits_cli
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
DISTILL_CONFIG = str(ROOT / "configs/classification/mnist_distill.yaml")
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
         "enable_model_summary": False, "accelerator": "cpu"}
SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True)
ONE_CYCLE = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, pct_start=0.25)


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def agreement(trainer: pl.Trainer, model: pl.LightningModule, datamodule) -> float:
    return trainer.validate(model, datamodule, verbose=False)[0]["val/agreement"]


@pytest.fixture(scope="module")
def mnist_teacher(tmp_path_factory, data_root) -> Path:
    """A convnet trained for 60 steps on real MNIST (about 95% accurate), as a zoo checkpoint."""
    pl.seed_everything(0)
    teacher = ImageClassifier(network="convnet", optimizer=SGD, lr_scheduler=ONE_CYCLE)
    trainer = pl.Trainer(max_steps=60, limit_val_batches=0, **QUIET)
    trainer.fit(teacher, MNISTDataModule(data_dir=str(data_root), download=False))
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_the_loss_is_hintons_weighted_sum_of_softened_kl_and_cross_entropy():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(16, 10), torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    loss, kd, ce = distillation_loss(student, teacher, labels, temperature=4.0, alpha=0.7)
    p_t = F.softmax(teacher / 4, dim=1)
    manual_kl = (p_t * (p_t.log() - F.log_softmax(student / 4, dim=1))).sum(dim=1).mean()
    torch.testing.assert_close(kd, 16 * manual_kl)  # T^2 = 16
    torch.testing.assert_close(ce, F.cross_entropy(student, labels))
    torch.testing.assert_close(loss, 0.7 * kd + 0.3 * ce)
    assert float(distillation_loss(teacher, teacher, labels)[1]) == pytest.approx(0.0, abs=1e-6)


def test_distillation_on_real_mnist_lowers_the_loss_and_raises_the_agreement_with_the_teacher(
    mnist_teacher, data_root
):
    cli = main([
        "--config", DISTILL_CONFIG, f"--data.init_args.data_dir={data_root}",
        f"--model.init_args.teacher_checkpoint={mnist_teacher}",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=60", "--trainer.limit_val_batches=2",
        "--trainer.logger=false", "--trainer.callbacks=null", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ], run=False)
    student = cli.model
    assert isinstance(student, DistillationClassifier) and student.hparams.network_kwargs == {"width": 4}
    before = agreement(cli.trainer, student, cli.datamodule)
    recorder = LossRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(student, cli.datamodule)
    after = float(cli.trainer.callback_metrics["val/agreement"])

    first, last = sum(recorder.losses[:5]) / 5, sum(recorder.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert before < 0.4 and after > 0.8, (before, after)
    assert {"train/loss_kd", "train/loss_ce", "val/loss_kd"} <= set(cli.trainer.callback_metrics)
    # the teacher is frozen, in eval mode, and neither trained nor saved with the student
    assert not student.teacher.training and not any(p.requires_grad for p in student.teacher.parameters())
    assert all(key.startswith("net.") for key in student.state_dict())
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.net.parameters()}


def test_black_box_distillation_from_a_logits_file(mnist_teacher, data_root, tmp_path):
    # The teacher's logits for the 2,000 training and 1,000 validation images this run uses (rows of
    # the 60,000-image official split; --only-used spares the test the other 57,000 forward passes).
    logits_file = tmp_path / "teacher_logits.pt"
    write_logits_cli(["--teacher", str(mnist_teacher), "--data", "MNISTDataModule",
                      "--data-dir", str(data_root), "--arg", "train_subset=2000", "--arg", "val_size=1000",
                      "--only-used", "--output", str(logits_file)])
    stored = torch.load(logits_file)
    assert stored["logits"].shape == (60_000, 10) and stored["labels"].shape == (60_000,)
    assert int((~stored["logits"].isnan().any(dim=1)).sum()) == 3000

    pl.seed_everything(0)
    student = DistillationClassifier(
        network="convnet", network_kwargs={"width": 4}, teacher_logits=str(logits_file),
        optimizer=SGD, lr_scheduler=ONE_CYCLE,
    )
    assert student.teacher is None  # no teacher network: only its outputs
    datamodule = MNISTDataModule(data_dir=str(data_root), download=False, augment=False, train_subset=2000,
                                 val_size=1000)
    assert datamodule.return_indices is False
    trainer = pl.Trainer(max_steps=60, limit_val_batches=2, **QUIET)
    before = agreement(trainer, student, datamodule)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(student, datamodule)
    after = agreement(trainer, student, datamodule)

    assert datamodule.return_indices is True  # switched on by the student
    assert sum(recorder.losses[-5:]) < 0.5 * sum(recorder.losses[:5])
    assert before < 0.4 and after > 0.65, (before, after)  # 60 steps on 2,000 images


@pytest.fixture()
def digits_teacher(tmp_path) -> Path:
    teacher = ImageClassifier(network="convnet", network_kwargs={"width": 8})
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, **QUIET)
    trainer.fit(teacher, DigitsDataModule())
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    return tmp_path / "teacher.ckpt"


def test_a_logits_file_that_does_not_line_up_with_the_data_is_refused(digits_teacher, tmp_path):
    good = write_teacher_logits(digits_teacher, DigitsDataModule(), tmp_path / "good.pt")
    stored = torch.load(good)
    torch.save({**stored, "labels": stored["labels"].roll(1)}, tmp_path / "shifted.pt")
    torch.save(stored["logits"][:100], tmp_path / "short.pt")  # a bare tensor is accepted too
    write_teacher_logits(digits_teacher, DigitsDataModule(train_subset=50), tmp_path / "partial.pt",
                         only_used=True)
    cases = [("shifted.pt", "does not line up"), ("short.pt", "has 100 rows"),
             ("partial.pt", "has no logits for sample")]
    for name, message in cases:
        student = DistillationClassifier(teacher_logits=str(tmp_path / name))
        with pytest.raises(ValueError, match=message):
            pl.Trainer(max_steps=1, limit_val_batches=0, **QUIET).fit(student, DigitsDataModule())


def test_a_student_checkpoint_reloads_without_the_teacher_and_as_a_plain_classifier(digits_teacher, tmp_path):
    teacher_copy = tmp_path / "teacher_copy.ckpt"
    shutil.copy(digits_teacher, teacher_copy)
    student = DistillationClassifier(teacher_checkpoint=str(teacher_copy), optimizer=SGD)
    trainer = pl.Trainer(max_steps=3, limit_val_batches=0, **QUIET)
    trainer.fit(student, DigitsDataModule())
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    teacher_copy.unlink()

    images = torch.randn(4, 1, 8, 8)
    expected = student.eval()(images)
    for cls in (DistillationClassifier, ImageClassifier):
        reloaded = cls.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=False).eval()
        torch.testing.assert_close(reloaded(images), expected)
    # validating the reloaded student still works; the agreement is skipped with a warning
    with pytest.warns(UserWarning, match="No val/agreement"):
        metrics = pl.Trainer(limit_val_batches=1, **QUIET).validate(
            DistillationClassifier.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=False),
            DigitsDataModule(), verbose=False,
        )
    assert "val/acc" in metrics[0] and "val/agreement" not in metrics[0]


def test_teacher_and_student_must_share_classes_and_training_needs_a_teacher(digits_teacher):
    with pytest.raises(ValueError, match="teacher .* has num_classes=10, the student num_classes=5"):
        DistillationClassifier(num_classes=5, teacher_checkpoint=str(digits_teacher))
    with pytest.raises(ValueError, match="not both"):
        DistillationClassifier(teacher_checkpoint=str(digits_teacher), teacher_logits="x.pt")
    with pytest.raises(ValueError, match="needs a teacher to train"):
        pl.Trainer(max_steps=1, **QUIET).fit(DistillationClassifier(), DigitsDataModule())

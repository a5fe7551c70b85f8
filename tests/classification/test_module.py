"""ImageClassifier through the CLI and in plain Python, on slices of real MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from datamodules import DigitsDataModule, MNISTDataModule
from zoo.classification import ImageClassifier
from zoo.cli import main
from zoo.core.registry import UnknownModelError

ROOT = Path(__file__).resolve().parents[2]
MNIST_CONFIG = str(ROOT / "configs/classification/mnist.yaml")
QUICK = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=40",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_cli_fit_on_real_mnist_lowers_the_loss_and_writes_checkpoints(data_root):
    cli = main(["--config", MNIST_CONFIG, f"--data.init_args.data_dir={data_root}", *QUICK], run=False)
    recorder = LossRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule)
    first, last = sum(recorder.losses[:5]) / 5, sum(recorder.losses[-5:]) / 5
    assert len(recorder.losses) == 40
    assert last < 0.7 * first, (first, last)
    assert cli.model.num_classes == 10 and cli.model.in_channels == 1  # linked from the data
    assert cli.model.class_names == [str(d) for d in range(10)]
    ckpt_dir = Path(cli.trainer.checkpoint_callback.dirpath)
    assert (ckpt_dir / "last.ckpt").is_file()
    assert cli.trainer.checkpoint_callback.best_model_path


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, data_root) -> Path:
    work = tmp_path_factory.mktemp("run")
    cli = main(
        ["fit", "--config", MNIST_CONFIG, f"--data.init_args.data_dir={data_root}",
         f"--trainer.logger.init_args.save_dir={work}", *QUICK],
    )
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.is_file()
    assert (Path(cli.trainer.log_dir) / "config.yaml").is_file()  # resolved config beside the logs
    return best


def test_cli_test_from_checkpoint_reports_metrics_and_a_confusion_matrix(trained_checkpoint, data_root, tmp_path):
    cli = main(
        ["test", "--config", MNIST_CONFIG, f"--data.init_args.data_dir={data_root}",
         f"--ckpt_path={trained_checkpoint}", f"--trainer.logger.init_args.save_dir={tmp_path}",
         f"--report_dir={tmp_path / 'report'}", *QUICK],
    )
    metrics = cli.trainer.callback_metrics
    assert 0.5 < float(metrics["test/acc"]) <= 1.0  # 40 steps of training already beat chance (0.1) by far
    assert float(metrics["test/acc_top5"]) >= float(metrics["test/acc"])
    assert "test/acc_class/7" in metrics
    # the figure is the evaluation report's (zoo.evaluation); the LightningModule only logs metrics
    png = tmp_path / "report" / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (Path(cli.trainer.log_dir) / "confusion_matrix.png").exists()


def test_load_from_checkpoint_in_a_fresh_process_gives_the_same_predictions(trained_checkpoint, data_root, tmp_path):
    dm = MNISTDataModule(data_dir=str(data_root), download=False)
    dm.setup("test")
    images = dm.test_set.images[:64]
    model = ImageClassifier.load_from_checkpoint(trained_checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        here = model(images)
    torch.save(images, tmp_path / "images.pt")
    script = (
        "import sys, torch; from zoo.classification import ImageClassifier; "
        "m = ImageClassifier.load_from_checkpoint(sys.argv[1], map_location='cpu').eval(); "
        "x = torch.load(sys.argv[2]); torch.save(m(x).detach(), sys.argv[3])"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(trained_checkpoint), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path,
    )
    there = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(here, there)
    assert (here.argmax(1) == dm.test_set.labels[:64]).float().mean() > 0.5


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", MNIST_CONFIG, "--print_config"])
    first = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(first)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    second = capsys.readouterr().out
    assert yaml.safe_load(first) == yaml.safe_load(second)
    config = yaml.safe_load(first)
    assert config["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert config["data"]["class_path"] == "datamodules.MNISTDataModule"


def test_digits_config_trains_offline_to_high_accuracy():
    cli = main(
        ["fit", "--config", str(ROOT / "configs/classification/digits.yaml"),
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"],
    )
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.9


def test_cli_unknown_network_lists_close_names():
    with pytest.raises(UnknownModelError, match=r"'lenet_5'.*Did you mean: lenet5"):
        main(["--config", MNIST_CONFIG, "--model.init_args.network=lenet_5"], run=False)


def test_wrong_num_classes_or_in_channels_for_the_data_is_named(data_root):
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    dm = DigitsDataModule()
    with pytest.raises(ValueError, match=r"model num_classes=5 but the data \(DigitsDataModule\) has num_classes=10"):
        trainer.fit(ImageClassifier(num_classes=5), dm)
    with pytest.raises(ValueError, match=r"model in_channels=3 .* in_channels=1"):
        trainer.fit(ImageClassifier(in_channels=3), dm)


def test_labels_beyond_num_classes_in_a_plain_dataloader_are_named():
    images, labels = torch.randn(8, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5, 6, 12])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"labels in \[0, 12\].*num_classes=10.*at least 13"):
        trainer.fit(ImageClassifier(), loader)


@pytest.mark.parametrize(
    "optimizer, scheduler, interval",
    [
        ("torch.optim.SGD --model.init_args.optimizer.init_args.lr=0.1 "
         "--model.init_args.optimizer.init_args.momentum=0.9 --model.init_args.optimizer.init_args.nesterov=true",
         "torch.optim.lr_scheduler.StepLR --model.init_args.lr_scheduler.init_args.step_size=2", "epoch"),
        ("torch.optim.Adagrad", "torch.optim.lr_scheduler.CosineAnnealingLR "
         "--model.init_args.lr_scheduler.init_args.T_max=5", "epoch"),
        ("torch.optim.RMSprop", "torch.optim.lr_scheduler.OneCycleLR "
         "--model.init_args.lr_scheduler.init_args.max_lr=0.01", "step"),
        ("torch.optim.Adam", "torch.optim.lr_scheduler.ReduceLROnPlateau", "epoch"),
        ("torch.optim.AdamW", None, None),
    ],
)
def test_any_torch_optimizer_and_scheduler_from_the_command_line(optimizer, scheduler, interval):
    args = ["fit", "--config", str(ROOT / "configs/classification/digits.yaml"),
            "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.logger=false", "--trainer.callbacks=null", "--trainer.enable_checkpointing=false"]
    args += f"--model.init_args.optimizer={optimizer}".split()
    if scheduler:
        args += f"--model.init_args.lr_scheduler={scheduler}".split()
    else:
        args.append("--model.init_args.lr_scheduler=null")
    cli = main(args)
    opt = cli.trainer.optimizers[0]
    assert type(opt).__name__ == optimizer.split()[0].rsplit(".", 1)[1]
    configs = cli.trainer.lr_scheduler_configs
    if scheduler is None:
        assert configs == []
    else:
        assert type(configs[0].scheduler).__name__ == scheduler.split()[0].rsplit(".", 1)[1]
        assert configs[0].interval == interval
    if "OneCycleLR" in (scheduler or ""):
        assert configs[0].scheduler.total_steps == cli.trainer.estimated_stepping_batches


def test_checkpoint_hparams_are_plain_data(trained_checkpoint):
    hparams = torch.load(trained_checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["network"] == "convnet"
    json.dumps({k: v for k, v in hparams.items() if not k.startswith("_")}, default=str)


def test_validate_and_predict_subcommands_run_from_a_checkpoint(trained_checkpoint, data_root, tmp_path, capsys):
    common = ["--config", MNIST_CONFIG, f"--data.init_args.data_dir={data_root}", f"--ckpt_path={trained_checkpoint}",
              "--trainer.logger=false", "--trainer.limit_val_batches=2", "--trainer.limit_predict_batches=2",
              "--trainer.enable_progress_bar=false"]
    cli = main(["validate", *common])
    assert 0.5 < float(cli.trainer.callback_metrics["val/acc"]) <= 1.0
    cli = main(["predict", *common, f"--model.init_args.output_dir={tmp_path / 'out'}"])
    outputs = cli.trainer.predict_loop.predictions
    assert len(outputs) == 2 and outputs[0]["prediction"].shape == (1000,)
    torch.testing.assert_close(outputs[0]["probabilities"].sum(1), torch.ones(1000))
    # predict saves what it predicted, where the user asked, and says so
    import csv

    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    written = tmp_path / "out" / "predictions.csv"
    assert len(rows) == 2000 and f"wrote 2000 predictions to {written}" in capsys.readouterr().out
    first = outputs[0]
    assert int(rows[0]["class"]) == int(first["prediction"][0])
    assert abs(float(rows[0]["confidence"]) - float(first["confidence"][0])) < 1e-5
    top5 = rows[0]["top5"].split(";")
    assert top5[0].startswith(rows[0]["class_name"] + ":") and len(top5) == 5


def test_googlenet_aux_losses_are_weighted_in_training_only():
    torch.manual_seed(0)
    model = ImageClassifier(network="googlenet", num_classes=10, in_channels=3, aux_loss_weight=0.3)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    model.train()
    output = model.net(images)
    main, aux1, aux2 = (torch.nn.functional.cross_entropy(o, labels) for o in output)
    torch.testing.assert_close(model.compute_loss(output, labels), main + 0.3 * (aux1 + aux2))
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(model.compute_loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels))


def test_checkpoint_of_a_module_built_in_python_loads_with_weights_only(tmp_path):
    from functools import partial

    model = ImageClassifier(
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DigitsDataModule())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    hparams = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}}
    restored = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    optimizer = restored.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def test_validate_before_fit_leaves_the_evaluation_metrics_usable_in_fit():
    # trainer.validate resets metrics under inference mode; fit's validation must still update them.
    dm = DigitsDataModule(batch_size=64)
    model = ImageClassifier(network="convnet", num_classes=10, in_channels=1)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    first = trainer.validate(model, dm, verbose=False)[0]["val/loss"]
    trainer.fit(model, dm)
    assert torch.isfinite(torch.tensor(first)) and "val/loss" in trainer.callback_metrics

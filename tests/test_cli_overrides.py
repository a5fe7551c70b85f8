"""What the user gives on the command line takes effect, or stops the run with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl

from zoo.classification import ImageClassifier
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/classification/digits.yaml")
MNIST = str(ROOT / "configs/classification/mnist.yaml")
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_changing_the_network_on_the_command_line_leaves_out_the_previous_networks_arguments():
    # mnist.yaml sets network_kwargs {width: 16} for its convnet; lenet5 takes no width
    with pytest.warns(UserWarning, match=r"network_kwargs \{width: 16\} of the config are not arguments of 'lenet5'"):
        cli = main(["--config", MNIST, "--model.init_args.network", "lenet5", *QUIET], run=False)
    assert type(cli.model.net).__name__ == "LeNet5"
    assert cli.model.hparams.network_kwargs is None


def test_network_kwargs_that_the_network_does_not_take_are_an_error_naming_them_and_its_arguments():
    with pytest.raises(ValueError, match=r"network_kwargs \['widht'\] are not arguments of 'convnet'.*width"):
        main(["--config", MNIST, "--model.init_args.network_kwargs", "{widht: 8}", *QUIET], run=False)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("digits")
    model = ImageClassifier(network="convnet", num_classes=10, in_channels=1, network_kwargs={"width": 4})
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(work / "digits.ckpt")
    return work / "digits.ckpt"


def test_arguments_given_with_a_checkpoint_win_over_the_checkpoints(digits_checkpoint):
    cli = main(["validate", "--config", DIGITS, f"--ckpt_path={digits_checkpoint}",
                "--model.init_args.label_smoothing", "0.3", "--trainer.limit_val_batches=1", *QUIET])
    assert cli.model.hparams.label_smoothing == 0.3  # the checkpoint says 0.0
    assert cli.model.hparams.network_kwargs == {"width": 4}  # not given: the checkpoint's


def test_a_weight_shape_argument_that_differs_from_the_checkpoints_is_an_error(digits_checkpoint):
    with pytest.raises(ValueError, match=r"network_kwargs .*differs from the checkpoint's network_kwargs="
                                         r"\{'width': 4\}.*Fix: leave network_kwargs out"):
        main(["validate", "--config", DIGITS, f"--ckpt_path={digits_checkpoint}", "--model.init_args.network_kwargs",
              "{width: 8}", "--trainer.limit_val_batches=1", *QUIET])


@pytest.mark.parametrize("argument", [["--model.init_args.num_classes", "5"], ["--model.init_args.in_channels", "3"]])
def test_a_linked_argument_given_on_the_command_line_that_disagrees_with_the_data_stops(argument):
    name, value = argument[0].rsplit(".", 1)[1], argument[1]
    with pytest.raises(ValueError, match=rf"model {name}={value} but the data \(DigitsDataModule\) has {name}="):
        main(["--config", DIGITS, *argument, *QUIET], run=False)


def test_a_linked_argument_that_agrees_with_the_data_is_accepted():
    cli = main(["--config", DIGITS, "--model.init_args.num_classes", "10", *QUIET], run=False)
    assert cli.model.num_classes == 10


def test_resuming_with_a_longer_one_cycle_schedule_is_refused_before_the_first_step(tmp_path):
    run = ["--config", DIGITS, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
           f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.limit_train_batches=3",
           "--trainer.limit_val_batches=1", "--model.init_args.network_kwargs", "{width: 4}"]
    first = main(["fit", *run, "--trainer.max_epochs=1"])
    last = Path(first.trainer.checkpoint_callback.last_model_path)
    assert last.is_file()
    with pytest.raises(ValueError, match=r"OneCycleLR was built for 3 optimizer steps.*asks for 6.*Fix: resume with "
                                         r"the original --trainer.max_epochs"):
        main(["fit", *run, "--trainer.max_epochs=2", f"--ckpt_path={last}"])
    # the same length resumes (here: nothing left to do)
    again = main(["fit", *run, "--trainer.max_epochs=1", f"--ckpt_path={last}"])
    assert again.trainer.global_step == 3


def test_test_without_a_checkpoint_warns_and_the_report_says_so_first(tmp_path):
    with pytest.warns(UserWarning, match="test without --ckpt_path evaluates ImageClassifier as it was just built"):
        main(["test", "--config", DIGITS, *QUIET, "--trainer.limit_test_batches=1", f"--report_dir={tmp_path}"])
    first_line = (tmp_path / "report.md").read_text().splitlines()[0]
    assert first_line.endswith("NO CHECKPOINT, random initial weights (untrained)")

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


def config_with(tmp_path: Path, **model_args: object) -> str:
    """digits.yaml with ``model_args`` set in its model's init_args (a user's edited copy)."""
    import yaml

    config = yaml.safe_load(Path(DIGITS).read_text())
    config["model"]["init_args"].update(model_args)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_config_file_value_given_with_a_checkpoint_wins_over_the_checkpoints(tmp_path, digits_checkpoint):
    config = config_with(tmp_path, label_smoothing=0.2, network_kwargs={"width": 4})
    cli = main(["validate", "--config", config, f"--ckpt_path={digits_checkpoint}",
                "--trainer.limit_val_batches=1", *QUIET])  # fmt: skip
    assert cli.model.hparams.label_smoothing == 0.2  # the checkpoint says 0.0


def test_a_config_file_weight_shape_value_that_differs_from_the_checkpoints_names_the_file(tmp_path, digits_checkpoint):
    config = config_with(tmp_path, network_kwargs={"width": 16})
    with pytest.raises(ValueError, match=r"model.init_args.network_kwargs of .*edited.yaml \{'width': 16\} differs "
                                         r"from the checkpoint's network_kwargs=\{'width': 4\}"):
        main(["validate", "--config", config, f"--ckpt_path={digits_checkpoint}", *QUIET])


# -- typos and wrong types: the bad key, where it was given, its close matches -----------------------------------
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["--model.init_args.label_smothing", "0.1"],
         ["model.init_args.label_smothing: ImageClassifier has no argument", "(on the command line)",
          "did you mean 'label_smoothing'?"]),
        (["--trainer.max_epohcs", "3"], ["unknown option 'trainer.max_epohcs'", "did you mean 'trainer.max_epochs'"]),
        (["--data.init_args.batchsize", "3"], ["DigitsDataModule has no argument 'batchsize'", "'batch_size'"]),
        (["--trainer.max_epochs", "many"], ["trainer.max_epochs: expected int or null, got many"]),
        (["--model.init_args.optimizer.lr", "fast"], ["model.init_args.optimizer.lr: expected float, got fast"]),
        (["--trainer.precision", "bf17"], ["trainer.precision: expected one of 'auto', ", "'bf16-mixed'", "got bf17"]),
    ],
    ids=["model-key", "trainer-key", "data-key", "trainer-type", "nested-type", "precision-choice"],
)
def test_a_mistyped_key_or_value_is_one_line_naming_it_and_its_close_matches(words, expected):
    from zoo.cli import CommandLineError

    with pytest.raises(CommandLineError) as caught:
        main(["--config", DIGITS, *words, *QUIET], run=False)
    message = str(caught.value)
    assert "\n" not in message and "Given value" not in message and "usage:" not in message, message
    for text in expected:
        assert text in message, message


def test_a_mistyped_key_in_a_config_file_names_the_file(tmp_path):
    from zoo.cli import CommandLineError

    config = config_with(tmp_path, label_smothing=0.1)
    with pytest.raises(CommandLineError, match=rf"label_smothing.*\(in {tmp_path}/edited.yaml\).*'label_smoothing'"):
        main(["--config", config, *QUIET], run=False)


def test_an_error_inside_a_link_is_printed_as_the_datamodules_own_message(tmp_path):
    from zoo.cli import user_error_paragraph

    config = str(ROOT / "configs/detection/coco_fasterrcnn_resnet50.yaml")
    with pytest.raises(ValueError) as caught:
        main(["--config", config, f"--data.init_args.train_annotations={tmp_path}/nope.json", *QUIET], run=False)
    paragraph = user_error_paragraph(caught.value)
    assert paragraph.startswith(f"error: COCO annotation file {tmp_path}/nope.json not found. Fix:"), paragraph
    assert "compute_fn" not in paragraph and "dataloader" not in paragraph


# -- outputs: evaluation writes only its outputs, in one printed folder; fast_dev_run writes nothing --------------
def test_test_and_predict_write_only_their_outputs_beside_the_checkpoint(tmp_path, digits_checkpoint, monkeypatch,
                                                                           capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    common = ["--config", DIGITS, f"--ckpt_path={digits_checkpoint}", "--trainer.enable_progress_bar=false"]
    main(["test", *common, "--trainer.limit_test_batches=2"])
    main(["predict", *common, "--trainer.limit_predict_batches=2"])
    assert list(work.iterdir()) == []  # no runs/, no config.yaml, no checkpoints/ where the user works
    report = digits_checkpoint.parent / "report_digits_DigitsDataModule"
    predictions = digits_checkpoint.parent / "predict_digits_DigitsDataModule"
    assert (report / "report.md").is_file() and (report / "metrics.json").is_file()
    assert not list(report.glob("events.out.tfevents*")) and not (report / "checkpoints").exists()
    assert sorted(p.name for p in predictions.iterdir()) == ["config.yaml", "predictions.csv"]
    out = capsys.readouterr().out
    assert f"test: report in {report}/report.html" in out and f"predict: outputs in {predictions}" in out
    assert "the config's logger is fit's: no TensorBoard run" in out  # the left-out logger is said, not silent


def test_fast_dev_run_writes_nothing_where_the_user_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", DIGITS, "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"])
    assert list(tmp_path.iterdir()) == []
    assert Path(cli.trainer.default_root_dir).name.startswith("zoo-fast-dev-run-")


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_validate_and_predict_without_a_checkpoint_warn_that_the_weights_are_untrained(subcommand, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=rf"{subcommand} without --ckpt_path .*ImageClassifier as it was just built"):
        limit = "limit_val_batches" if subcommand == "validate" else "limit_predict_batches"
        main([subcommand, "--config", DIGITS, *QUIET, f"--trainer.{limit}=1"])

"""Bad input to test / export / card: a checkpoint of another family or of an incompatible older version, a missing
config, a report folder that cannot be written: each a clear error naming what and the fix."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.cli import main
from zoo.core.checkpoint import CheckpointError
from zoo.evaluation import ReportDirError
from zoo.export import export_checkpoint


def test_checkpoint_of_another_family_names_expected_and_found_classes(mnist_run, isbi_run):
    seg_ckpt, _ = isbi_run
    _, cls_config = mnist_run
    with pytest.raises(
        CheckpointError,
        match=r"holds a zoo\.segmentation\.SemanticSegmenter, but zoo\.classification\.ImageClassifier was expected",
    ):
        main(["test", "--config", str(cls_config), f"--ckpt_path={seg_ckpt}", "--trainer.limit_test_batches=1"])


def test_older_incompatible_checkpoint_names_the_keys_and_the_version(mnist_run, tmp_path):
    ckpt, config = mnist_run
    old = torch.load(ckpt, map_location="cpu", weights_only=False)
    del old["zoo"]  # saved before the zoo entry existed
    old["state_dict"] = {k.replace("net.", "backbone.", 1): v for k, v in old["state_dict"].items()}  # old layer names
    old_path = tmp_path / "old.ckpt"
    torch.save(old, old_path)
    with pytest.raises(
        CheckpointError, match=r"no zoo format version.*missing \(\d+\): net\..*unexpected \(\d+\): backbone\."
    ):
        main(["test", "--config", str(config), f"--ckpt_path={old_path}", "--trainer.limit_test_batches=1"])


def test_missing_config_is_named(mnist_run, tmp_path, capsys):
    ckpt, _ = mnist_run
    from zoo.cli import CommandLineError

    with pytest.raises(CommandLineError, match=rf"^config file {tmp_path}/nowhere.yaml does not exist .*Fix: "):
        main(["test", "--config", str(tmp_path / "nowhere.yaml"), f"--ckpt_path={ckpt}"])
    lone = tmp_path / "lone.ckpt"  # a checkpoint copied away from its run folder has no config.yaml beside it
    lone.write_bytes(ckpt.read_bytes())
    with pytest.raises(CheckpointError, match=r"no config\.yaml beside checkpoint .*lone\.ckpt.*Fix: pass --config"):
        export_checkpoint(lone, "onnx")


def test_unwritable_report_dir_fails_before_the_evaluation(mnist_run, tmp_path):
    ckpt, config = mnist_run
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a folder below a regular file cannot be created, even by root
    with pytest.raises(
        ReportDirError, match=r"report directory .*a_file/report is not writable.*Fix: pass --report_dir"
    ):
        main(
            [
                "test",
                "--config",
                str(config),
                f"--ckpt_path={ckpt}",
                f"--report_dir={blocker / 'report'}",
                "--trainer.limit_test_batches=1",
                "--trainer.enable_progress_bar=false",
            ]
        )
    assert not list(tmp_path.rglob("metrics.json"))


def test_missing_checkpoint_file_is_named(mnist_run, tmp_path):
    _, config = mnist_run
    with pytest.raises((FileNotFoundError, SystemExit, CheckpointError)) as info:
        main(["test", "--config", str(config), f"--ckpt_path={tmp_path / 'gone.ckpt'}"])
    assert json.dumps(str(info.value)) and ("gone.ckpt" in str(info.value) or info.type is SystemExit)

"""A mistake in what the user gives is one paragraph (what, where, the fix) and exit code 2, not a traceback;
``--debug`` shows the traceback. Each case runs ``train.py`` as a user does, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs/classification/mnist.yaml")
DIGITS = str(ROOT / "configs/classification/digits.yaml")


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)  # fmt: skip


def assert_user_error(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    paragraph = done.stderr[done.stderr.index("error: "):]
    assert len(paragraph.splitlines()) <= 4, paragraph
    for text in expected:
        assert text in paragraph, paragraph


@pytest.fixture(scope="module")
def segmenter_checkpoint(tmp_path_factory) -> Path:
    from zoo.segmentation import SemanticSegmenter

    path = tmp_path_factory.mktemp("ckpt") / "segmenter.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(SemanticSegmenter(network="unet", network_kwargs={"base_channels": 4, "depth": 1}))
    trainer.save_checkpoint(path)
    return path


def test_an_unknown_network_name_is_one_paragraph_with_the_close_names(tmp_path):
    done = train("fit", "--config", MNIST, "--model.init_args.network", "lenet_5", cwd=tmp_path)
    assert_user_error(done, "Unknown classification model 'lenet_5'", "lenet5")


def test_a_missing_checkpoint_is_one_paragraph_naming_it(tmp_path):
    done = train("test", "--config", DIGITS, "--ckpt_path", str(tmp_path / "nope.ckpt"), cwd=tmp_path)
    assert_user_error(done, "nope.ckpt does not exist", "Fix:")


def test_a_checkpoint_of_another_class_names_both(tmp_path, segmenter_checkpoint):
    done = train("test", "--config", DIGITS, "--ckpt_path", str(segmenter_checkpoint), cwd=tmp_path)
    assert_user_error(done, "holds a zoo.segmentation.SemanticSegmenter", "zoo.classification.ImageClassifier")


def test_missing_data_is_one_paragraph_naming_the_folders(tmp_path):
    done = train("fit", "--config", MNIST, "--data.init_args.data_dir", str(tmp_path / "empty"),
                 "--data.init_args.download", "false", "--trainer.logger", "false", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and str(tmp_path / "empty") in done.stderr


def test_a_linked_argument_that_disagrees_with_the_data_is_one_paragraph(tmp_path):
    done = train("fit", "--config", DIGITS, "--model.init_args.num_classes", "5", cwd=tmp_path)
    assert_user_error(done, "model num_classes=5 but the data (DigitsDataModule) has num_classes=10", "Fix:")


def test_debug_shows_the_traceback(tmp_path):
    done = train("fit", "--config", MNIST, "--model.init_args.network", "lenet_5", "--debug", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" in done.stderr and "UnknownModelError" in done.stderr


def test_a_key_typo_in_a_config_file_is_one_paragraph_with_the_file_and_the_close_match(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(Path(DIGITS).read_text().replace("label_smoothing", "label_smothing"))
    assert "label_smothing" in typo.read_text()
    done = train("fit", "--config", str(typo), cwd=tmp_path)
    assert_user_error(done, "model.init_args.label_smothing", f"(in {typo})", "did you mean 'label_smoothing'?")
    assert "usage:" not in done.stderr


def test_a_run_prints_no_library_noise(tmp_path):
    done = train("fit", "--config", DIGITS, "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    for noise in ("GPU available: False", "TPU available", "💡 Tip", "LeafSpec", "FLOPs", "v_num"):
        assert noise not in output, noise
    assert "Params: " in output  # the summary itself is kept
    assert list(tmp_path.iterdir()) == []  # and fast_dev_run wrote nothing here


# -- the audit: values out of range, each one paragraph naming the argument and the fix ---------------------------
@pytest.mark.parametrize(
    ("config", "argument", "expected"),
    [
        (MNIST, ["--data.init_args.val_size", "70000"], "val_size=70,000 but the training split has 60,000 images"),
        (MNIST, ["--data.init_args.batch_size", "0"], "batch_size=0. Fix: --data.init_args.batch_size >= 1"),
        (MNIST, ["--data.init_args.train_subset", "100000"], "train_subset must be between the number of classes"),
        (str(ROOT / "configs/segmentation/isbi_unet.yaml"), ["--data.init_args.val_size", "40"],
         "val_size=40.0 leaves no training images out of 24"),
        (str(ROOT / "configs/segmentation/isbi_unet.yaml"), ["--model.init_args.tile_size", "100"],
         "Fix: --model.init_args.tile_size 204 or more"),
        (str(ROOT / "configs/detection/digits_ssdlite.yaml"), ["--data.init_args.train_count", "0"],
         "count must be >= 1, got 0. Fix:"),
    ],
    ids=["val_size", "batch_size", "train_subset", "segmentation-val_size", "tile_size", "canvas-count"],
)
def test_an_argument_out_of_range_is_one_paragraph_with_the_fix(tmp_path, config, argument, expected):
    done = train("fit", "--config", config, *argument, "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert_user_error(done, expected, "Fix:")

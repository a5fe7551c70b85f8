"""Checkpoints of tiny runs, trained once per session through the CLI (so each has the run's config.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _fit(work: Path, config: str, data_dir: Path, *overrides: str) -> tuple[Path, Path]:
    """(last.ckpt, config.yaml) of a one-epoch run of ``configs/<config>`` on ``data_dir``, logged under ``work``."""
    cli = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / config),
            f"--data.init_args.data_dir={data_dir}",
            f"--trainer.logger.init_args.save_dir={work}",
            "--trainer.max_epochs=1",
            *overrides,
            *QUIET,
        ]
    )
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    return ckpt, Path(cli.trainer.log_dir) / "config.yaml"


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """(last.ckpt, config.yaml) of a 10-step MNIST convnet run."""
    work = tmp_path_factory.mktemp("mnist_run")
    # float32: the reports' own computations (the ECE's binning) are compared with the logged metrics to 1e-6, which
    # the config's precision auto (bf16 autocast on a CPU with native bf16) would round differently
    return _fit(work, "classification/mnist.yaml", data_root, "--trainer.limit_train_batches=10",
                "--trainer.limit_val_batches=1", "--trainer.precision=32-true")


@pytest.fixture(scope="session")
def isbi_run(tmp_path_factory, isbi_root) -> tuple[Path, Path]:
    """(last.ckpt, config.yaml) of a 2-step run of a 4-channel same-padded U-Net on ISBI crops."""
    work = tmp_path_factory.mktemp("isbi_run")
    return _fit(
        work,
        "segmentation/isbi_unet.yaml",
        isbi_root,
        "--model.init_args.network_kwargs={base_channels: 4, depth: 2, padding: same, batch_norm: false, "
        "dropout: 0.0}",
        "--model.init_args.tile_size=null",
        "--model.init_args.loss=ce",
        f"--model.init_args.output_dir={work}/pred",
        "--data.init_args.weight_maps=false",
        "--data.init_args.crop_size=64",
        "--data.init_args.pad=0",
        "--data.init_args.elastic=false",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
    )


@pytest.fixture(scope="session")
def digits_detection_run(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """(last.ckpt, config.yaml) of a 2-step run of a half-width SSDlite on eight 64x64 MNIST digit canvases (six more
    for validation and test)."""
    work = tmp_path_factory.mktemp("digits_detection_run")
    return _fit(
        work,
        "detection/digits_ssdlite.yaml",
        data_root,
        f"--data.init_args.canvas_dir={work / 'canvases'}",
        "--data.init_args.train_count=8",
        "--data.init_args.val_count=6",
        "--data.init_args.canvas_size=64",
        "--data.init_args.digit_scale=[1.0, 1.5]",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--model.init_args.image_size=64",
        "--model.init_args.network_kwargs={score_thresh: 0.01, detections_per_img: 100, width_mult: 0.5}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.limit_train_batches=2",
    )

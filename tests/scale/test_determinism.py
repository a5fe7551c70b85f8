"""``--seed_everything`` + ``--trainer.deterministic true``: two ``train.py fit`` runs end with the same weights,
bit for bit, on the CPU (shuffling, augmentation streams, dropout and initialisation all seeded), for every
family. On the CPU every op these runs use has a deterministic kernel (``torch.use_deterministic_algorithms``,
which ``deterministic=True`` switches on, raises on one that has not): torchvision's RoIAlign, NMS and box
coder, transposed convolutions, batch norm, dropout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cpu_run(config: str, data_dir: Path, *overrides: str) -> list[str]:
    """``fit`` arguments of a one-epoch run of ``configs/<config>`` on the CPU trainer with the data in ``data_dir``,
    then ``overrides``."""
    return ["--config", str(ROOT / "configs" / config), "--config", str(ROOT / "configs/trainer/cpu.yaml"),
            "--trainer.max_epochs", "1", "--data.init_args.data_dir", str(data_dir), *overrides]


def fit_weights(args: list[str], seed: int = 3) -> dict[str, torch.Tensor]:
    cli = main(["fit", *args, "--seed_everything", str(seed), "--trainer.deterministic", "true",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    assert cli.trainer.global_step > 0
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ between two seeded deterministic runs: {different[:5]}"


def assert_reproducible(config: str, data_dir: Path, *overrides: str) -> None:
    """Two seeded deterministic runs of ``cpu_run(config, data_dir, *overrides)`` end with the same weights."""
    args = cpu_run(config, data_dir, *overrides)
    assert_same_weights(fit_weights(args), fit_weights(args))


def test_two_seeded_deterministic_classification_runs_give_identical_weights(data_root: Path) -> None:
    args = cpu_run("classification/mnist.yaml", data_root,
        "--trainer.limit_val_batches", "1",
        "--data.init_args.download", "false",
        "--data.init_args.train_subset", "320", "--data.init_args.val_size", "200",
        "--data.init_args.batch_size", "32", "--data.init_args.eval_batch_size", "200",
        "--model.init_args.network_kwargs.width", "4",
    )  # fmt: skip
    first, second = fit_weights(args), fit_weights(args)
    assert_same_weights(first, second)
    # and the seed matters: the check can tell two different runs apart
    other = fit_weights(args, seed=4)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_two_seeded_deterministic_segmentation_runs_give_identical_weights(isbi_root: Path) -> None:
    # elastic deformation, flips, rotations, gray values and the weight map all on: the albumentations
    # streams are seeded from torch's seed (datamodules.segmentation.SegmentationCrops)
    assert_reproducible("segmentation/isbi_unet.yaml", isbi_root,
        "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--model.init_args.network", "unet_same",
        "--model.init_args.network_kwargs", '{"base_channels": 4, "depth": 2, "dropout": 0.5}',
        "--model.init_args.tile_size", "null", "--model.init_args.output_dir", "predictions",
        "--data.init_args.crop_size", "64", "--data.init_args.pad", "0",
        "--data.init_args.crops_per_image", "1", "--data.init_args.batch_size", "2",
    )  # fmt: skip


def test_two_seeded_deterministic_detection_runs_give_identical_weights(data_root: Path) -> None:
    # Faster R-CNN (MobileNetV3-FPN, from scratch) on 4 digit canvases generated into the test's folder: random
    # scale augmentation, the RPN's and the RoI heads' random sampling of anchors and proposals, RoIAlign and
    # NMS, AdamW and the one-cycle schedule
    assert_reproducible("detection/digits_fasterrcnn_mobilenet320.yaml", data_root,
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.train_count", "4",
        "--data.init_args.val_count", "3", "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "3",
        "--data.init_args.num_workers", "0", "--data.init_args.scale_range", "[0.8, 1.2]",
    )  # fmt: skip


def test_two_seeded_deterministic_vae_runs_give_identical_weights(data_root: Path) -> None:
    # the convolutional VAE: reparameterisation noise in training, fixed per-image noise and prior samples
    # (1-NN on pixels) in validation
    assert_reproducible("generative/mnist_vae.yaml", data_root,
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--model.init_args.latent_dim", "4", "--model.init_args.conv_channels", "[4, 8]",
        "--model.init_args.metric_samples", "50", "--model.init_args.fid_classifier", "null",
        "--data.init_args.download", "false",
        "--data.init_args.train_subset", "256", "--data.init_args.val_size", "100",
        "--data.init_args.batch_size", "64", "--data.init_args.eval_batch_size", "100",
    )  # fmt: skip


@pytest.mark.parametrize("config", ["mnist_gan", "mnist_dcgan"])
def test_two_seeded_deterministic_gan_runs_give_identical_weights(data_root: Path, config: str) -> None:
    # the alternating updates (manual optimisation) with the generator's noise, the discriminator's dropout (GAN)
    # or batch norm and transposed convolutions (DCGAN). No validation: its checkpoint monitors val/fid, which
    # needs the FID feature classifier file.
    assert_reproducible(f"generative/{config}.yaml", data_root,
        "--trainer.limit_val_batches", "0",
        "--model.init_args.latent_dim", "8", "--model.init_args.fid_classifier", "null",
        *(["--model.init_args.width", "8"] if config == "mnist_dcgan" else []),
        "--data.init_args.download", "false",
        "--data.init_args.train_subset", "256", "--data.init_args.val_size", "100", "--data.init_args.batch_size", "64",
    )  # fmt: skip

"""Checkpoints in the format of commit 59b440c (checkpoint format 1, before the registry-name argument was
``network`` everywhere), written from today's modules so that no binary file is kept in the repository.

What changes against today's checkpoints, and nothing else (checked key for key against files that 59b440c itself
saved, a LightningCLI classifier run and a VAE saved in plain Python, when this module was written):

- the ``"zoo"`` entry says ``format_version: 1``;
- the classifier's ``network`` / ``network_kwargs`` hyperparameters were ``backbone`` / ``backbone_kwargs``, in the
  same place among the others, and ``output_dir`` did not exist;
- a generative model's network parts were top-level (``encoder.*``, not ``net.encoder.*``), its ``arch``
  (``mlp`` / ``conv``) named the network, and it took ``num_classes`` / ``class_names``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FORMAT_1_CLASSIFIER_NAMES = {"network": "backbone", "network_kwargs": "backbone_kwargs"}
ADDED_SINCE_FORMAT_1 = ("output_dir",)  # ImageClassifier arguments that 59b440c did not have


def as_format_1(checkpoint: dict[str, Any], hparams: dict[str, Any], network_prefix: bool = False) -> dict[str, Any]:
    """``checkpoint`` with the format-1 ``hparams`` and, with ``network_prefix``, its ``net.`` prefix removed."""
    checkpoint["hyper_parameters"] = hparams
    checkpoint.setdefault("zoo", {})["format_version"] = 1
    if network_prefix:
        checkpoint["state_dict"] = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
    return checkpoint


def old_classifier_checkpoint(path: Path) -> Path:
    """What ``train.py fit --config configs/classification/digits.yaml --model.init_args.backbone convnet
    --model.init_args.backbone_kwargs '{width: 4}' --trainer.max_steps 2`` saved at 59b440c: a LightningCLI
    checkpoint (``_class_path``, ``_instantiator``, ``backbone``, ``backbone_kwargs``)."""
    from zoo.cli import main

    root = Path(__file__).resolve().parents[1]
    cli = main(["fit", "--config", str(root / "configs/classification/digits.yaml"),
                "--model.init_args.network_kwargs", "{width: 4}", "--trainer.max_steps", "2",
                "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false", f"--trainer.logger.init_args.save_dir={path.parent}"])
    checkpoint = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=False)
    hparams = {FORMAT_1_CLASSIFIER_NAMES.get(k, k): v for k, v in checkpoint["hyper_parameters"].items()
               if k not in ADDED_SINCE_FORMAT_1}
    torch.save(as_format_1(checkpoint, hparams), path)
    return path


def old_vae_checkpoint(path: Path) -> Path:
    """What ``VAE(arch="mlp", latent_dim=2, hidden_dims=[8], in_channels=1, image_size=8)`` saved by
    ``Trainer.save_checkpoint`` in plain Python at 59b440c."""
    import pytorch_lightning as pl

    from zoo.generative import VAE

    model = VAE(network="vae_mlp", latent_dim=2, hidden_dims=[8], in_channels=1, image_size=8)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    hparams = {
        "arch": "mlp", "latent_dim": 2, "beta": 1.0, "loss": "bce", "hidden_dims": [8], "conv_channels": None,
        "optimizer": {"class_path": "torch.optim.adam.Adam", "init_args": {}}, "in_channels": 1, "image_size": 8,
        "image_range": "unit", "metric_samples": 1000, "fid_classifier": None, "fid_inception_weights": None,
        "num_classes": None, "class_names": None,
    }  # fmt: skip
    torch.save(as_format_1(torch.load(path, weights_only=False), hparams, network_prefix=True), path)
    return path

"""Checks shared by the LightningModules of every family."""

from __future__ import annotations

import pytorch_lightning as pl


def check_model_fits_data(module: pl.LightningModule, attrs: tuple[str, ...] = ("num_classes", "in_channels")) -> None:
    """Raise a ``ValueError`` naming the argument and the fix when the model's ``num_classes`` /
    ``in_channels`` differ from those of the trainer's datamodule (plain-Python use, where
    ``train.py``'s links do not apply)."""
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer else None
    for attr in attrs:
        expected = getattr(datamodule, attr, None)
        if expected is not None and expected != getattr(module, attr):
            raise ValueError(
                f"model {attr}={getattr(module, attr)} but the data ({type(datamodule).__name__}) has "
                f"{attr}={expected}. Fix: set model {attr} to {expected}, or leave it out of the config: "
                f"train.py links it from the data."
            )

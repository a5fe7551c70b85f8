"""Checks shared by the LightningModules of every family."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torchmetrics import Metric


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


def release_inference_metric_states(module: torch.nn.Module) -> None:
    """Reset every torchmetrics metric of ``module`` whose state tensors are inference tensors.

    ``trainer.validate``/``test`` run under ``torch.inference_mode``, and a metric reset there gets
    inference-tensor states; a later evaluation outside inference mode (``fit``'s validation under DDP,
    or user code) then fails on torchmetrics' in-place update. Called at the start of an evaluation
    epoch, before any update, so nothing is lost.
    """
    if torch.is_inference_mode_enabled():
        return
    for metric in module.modules():
        if isinstance(metric, Metric) and any(
            isinstance(value, torch.Tensor) and value.is_inference() for value in metric.metric_state.values()
        ):
            metric.reset()

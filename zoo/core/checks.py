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
            raise ValueError(model_data_mismatch(attr, getattr(module, attr), expected, type(datamodule).__name__))


def model_data_mismatch(attr: str, model_value: object, data_value: object, data_name: str) -> str:
    """The message of a model argument that disagrees with the datamodule's (the API's check and the CLI's)."""
    return (
        f"model {attr}={model_value} but the data ({data_name}) has {attr}={data_value}. Fix: set model {attr} "
        f"to {data_value}, or leave it out of the config and the command line: train.py links it from the data."
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

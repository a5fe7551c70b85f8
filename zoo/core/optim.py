"""Optimizers and LR schedulers chosen from YAML/CLI, for every LightningModule of the zoo.

Modules take ``optimizer: OptimizerCallable`` and ``lr_scheduler: LRSchedulerCallable | None``
(LightningCLI's dependency injection: ``class_path`` + ``init_args`` in YAML). This file turns
them into what ``configure_optimizers`` returns, filling in what only the trainer knows (the
number of optimizer steps that OneCycleLR needs) and choosing the scheduler's interval.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau

from zoo.core.checkpoint import import_class

PER_STEP_SCHEDULERS = (OneCycleLR, CyclicLR)


def target_class(factory: Callable[..., Any]) -> type | None:
    """The class a factory builds: the class itself, or the class bound in a (jsonargparse) partial."""
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        for arg in (factory.func, *factory.args):
            if isinstance(arg, type):
                return arg
    return None


def factory_spec(factory: Any) -> Any:
    """``{"class_path": ..., "init_args": {...}}`` for a class or a partial of one (what YAML holds),
    so that hyperparameters saved in a checkpoint are plain data that ``torch.load(weights_only=True)``
    reads; anything else (already a spec, ``None``, a lambda) is returned unchanged."""
    cls = target_class(factory) if factory is not None and not isinstance(factory, dict) else None
    if cls is None:
        return factory
    init_args = dict(factory.keywords) if isinstance(factory, functools.partial) else {}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def as_factory(spec: Any) -> Any:
    """The inverse of :func:`factory_spec`: a ``{"class_path", "init_args"}`` dict becomes a partial."""
    if not isinstance(spec, dict):
        return spec
    if "class_path" not in spec:
        raise ValueError(f"an optimizer/scheduler given as a dict needs a 'class_path' key, got {sorted(spec)}")
    return functools.partial(import_class(spec["class_path"]), **(spec.get("init_args") or {}))


def build_optimizers(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    optimizer: Callable[..., torch.optim.Optimizer],
    lr_scheduler: Callable[..., Any] | None,
    total_steps: Callable[[], int],
    interval: Literal["auto", "step", "epoch"] = "auto",
    monitor: str = "val/loss",
) -> Any:
    """``configure_optimizers``' return value for one optimizer and an optional scheduler.

    ``total_steps`` is called only when the scheduler needs it (OneCycleLR without
    ``total_steps`` / ``epochs``), because ``trainer.estimated_stepping_batches`` may load data.
    """
    opt = optimizer(params)
    if lr_scheduler is None:
        return opt
    cls = target_class(lr_scheduler)
    kwargs: dict[str, Any] = {}
    if cls is not None and "total_steps" in inspect.signature(cls).parameters:
        bound = lr_scheduler.keywords if isinstance(lr_scheduler, functools.partial) else {}
        if bound.get("total_steps") is None and bound.get("epochs") is None:
            kwargs["total_steps"] = int(total_steps())
    scheduler = lr_scheduler(opt, **kwargs)
    if interval == "auto":
        interval = "step" if isinstance(scheduler, PER_STEP_SCHEDULERS) else "epoch"
    config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
    if isinstance(scheduler, ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": opt, "lr_scheduler": config}

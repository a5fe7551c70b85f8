"""One registry for every family of networks (classification, segmentation, detection, generative).

Shaped after timm's ``register_model`` / ``create_model`` / ``list_models``: a builder
function is registered under a unique name and a family, ``create_model`` calls it with
keyword overrides, ``list_models`` filters names with shell-style wildcards.

This module imports no family: each family's ``models`` package registers its builders when it is
imported, and ``import zoo`` imports them all (``zoo/__init__.py``).

Convention: a builder argument named ``weights`` or ``*_weights`` is the path of a weights file
(``ZooModule.build_network`` leaves it out while restoring a checkpoint, which holds the weights).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.nn as nn

from zoo.core.errors import ZooUserError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


class UnknownModelError(ZooUserError, ValueError):
    """A model name that no builder was registered under."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder: its name, family, and where the implementation comes from."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    source: str  # "zoo" (hand-written here), "torchvision", "timm", "smp"

    @property
    def parameters(self) -> list[str]:
        """The builder's named arguments."""
        return [n for n, p in inspect.signature(self.builder).parameters.items()
                if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]

    @property
    def takes_any_keyword(self) -> bool:
        """The builder passes unknown keywords on (``**kwargs``: smp's architectures, torchvision's detectors)."""
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(self.builder).parameters.values())


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    family: str, name: str | None = None, *, source: str = "zoo"
) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name`` (default: the function's name)."""

    def decorator(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY and _REGISTRY[key].builder is not builder:
            raise ValueError(
                f"Model name {key!r} is registered twice "
                f"({_REGISTRY[key].builder.__module__} and {builder.__module__}); pick another name."
            )
        _REGISTRY[key] = ModelEntry(key, family, builder, source)
        return builder

    return decorator


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Sorted names matching a shell-style ``pattern`` (``"resnet*"``), optionally in one family."""
    return sorted(
        n
        for n, e in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and (family is None or e.family == family)
    )


def get_model_entry(name: str, family: str | None = None) -> ModelEntry:
    """The entry registered under ``name``; an :class:`UnknownModelError` listing close names otherwise."""
    entry = _REGISTRY.get(name)
    if entry is not None and (family is None or entry.family == family):
        return entry
    candidates = list_models(family=family)
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    what = f"{family} model" if family else "model"
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if entry is not None:
        hint = f" {name!r} is a {entry.family} model, not a {family} one." + hint
    raise UnknownModelError(
        f"Unknown {what} {name!r}.{hint} "
        f"zoo.list_models(family={family!r}) lists all {len(candidates)} names."
    )


def create_model(name: str, family: str | None = None, **kwargs: Any) -> nn.Module:
    """Build the network registered under ``name`` with keyword overrides.

    >>> create_model("lenet5", num_classes=10, in_channels=1)  # doctest: +SKIP
    """
    entry = get_model_entry(name, family)
    unknown = [k for k in kwargs if k not in entry.parameters]
    if unknown and not entry.takes_any_keyword:
        raise TypeError(
            f"Model {name!r} does not take {', '.join(map(repr, unknown))}; "
            f"its arguments are: {', '.join(entry.parameters)}."
        )
    return entry.builder(**kwargs)


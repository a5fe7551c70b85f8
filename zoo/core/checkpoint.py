"""What a zoo checkpoint holds besides the weights, and reading it back with clear errors.

Every zoo LightningModule is a :class:`zoo.core.module.ZooModule`, which stores under the checkpoint's
``"zoo"`` key (:func:`checkpoint_identity`) the LightningModule's class path, the checkpoint format version,
the software versions and the project's git commit at save time. Lightning already stores
``hyper_parameters`` (and, when the module was built by LightningCLI, ``hyper_parameters["_class_path"]``);
the class path is stored again here because a module built in plain Python has no ``_class_path``.

:func:`read_checkpoint_info` reads that back from any checkpoint (older ones included, falling back to
``_class_path`` and then to the hyperparameter names), and :func:`load_zoo_module` rebuilds the
LightningModule, with errors that name the file, the expected and the found class, and the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.core.errors import ZooUserError

# Bumped when what a checkpoint must hold for the current code to load it changes. 2: the registry-name
# argument is ``network`` in every family (ZooModule.renamed_arguments maps the older names when reading).
CHECKPOINT_FORMAT_VERSION = 2
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Checkpoints without a stored class path (saved in plain Python before every module wrote the "zoo" entry) are
# recognised by init arguments only their class takes; the first rule whose arguments are all there wins.
_CLASS_BY_ARGUMENTS = (
    (("backbone",), "zoo.classification.ImageClassifier"),  # the classifier's name argument before format 2
    (("network", "map_backend"), "zoo.detection.ObjectDetector"),
    (("network", "loss", "tile_size"), "zoo.segmentation.SemanticSegmenter"),
)


class CheckpointError(ZooUserError, ValueError):
    """A checkpoint that cannot be used as asked: another family, an incompatible version, a missing file."""


# -- the restore guard ------------------------------------------------------------------------------------------
_RESTORING = contextvars.ContextVar("zoo_restoring_from_checkpoint", default=False)


@contextlib.contextmanager
def restoring_from_checkpoint() -> Iterator[None]:
    """While active, zoo modules read no weight file in ``__init__`` (``pretrained``, ``weights``,
    ``*_weights``, a distillation teacher): the checkpoint being restored holds the trained weights, and the
    files named in its hyperparameters need not exist any more. ``ZooModule.load_from_checkpoint`` uses it."""
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


def is_restoring_from_checkpoint() -> bool:
    return _RESTORING.get()


@functools.cache
def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """The project's ``HEAD`` commit (with ``+dirty`` when the tree has changes), or None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def software_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a result depends on."""
    import pytorch_lightning
    import torchmetrics
    import torchvision

    from zoo.core import __version__

    # str(): torch.__version__ is a TorchVersion, which torch.load(weights_only=True) (LightningCLI's
    # reading of --ckpt_path) refuses to unpickle; the checkpoint must hold plain types only.
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "pytorch_lightning": str(pytorch_lightning.__version__),
        "torchmetrics": str(torchmetrics.__version__),
        "vision_zoo": str(__version__),
    }


def class_path(cls: type) -> str:
    """The public import path of a class (``zoo.classification.ImageClassifier``, not ``...module.ImageClassifier``)
    when its package re-exports it; else its defining module's path."""
    package = cls.__module__.rpartition(".")[0]
    if package and getattr(importlib.import_module(package), cls.__name__, None) is cls:
        return f"{package}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(path: str) -> Any:
    """The object a dotted path names (``torch.optim.SGD``, ``zoo.classification.ImageClassifier``); a
    ``ValueError`` naming the path and the reason otherwise. The one way the zoo turns a path into a class."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"cannot import {path!r}: not a dotted path (module.Name).")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {path!r} ({error}).") from error


def checkpoint_identity(module: Any) -> dict[str, Any]:
    """The ``"zoo"`` entry of a checkpoint written by ``module``: class path, format version, versions, git commit."""
    return {
        "class_path": class_path(type(module)),
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "versions": software_versions(),
        "git_commit": git_commit(),
    }


@dataclass
class CheckpointInfo:
    """What :func:`read_checkpoint_info` found in a checkpoint file."""

    path: Path
    class_path: str | None  # the LightningModule's class; None when nothing says
    hyper_parameters: dict[str, Any]
    format_version: int | None  # None: saved before the zoo entry existed
    lightning_version: str | None
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    epoch: int | None = None
    global_step: int | None = None
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    callbacks: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def monitored_scores(self) -> dict[str, float]:
        """``{monitor: best score}`` of the ModelCheckpoint callbacks that saved this file."""
        scores = {}
        for key, state in self.callbacks.items():
            if str(key).startswith("ModelCheckpoint") and isinstance(state, dict):
                score, monitor = state.get("best_model_score"), state.get("monitor")
                if monitor and score is not None:
                    scores[monitor] = float(score)
        return scores


def checkpoint_model_class(checkpoint: dict[str, Any]) -> str | None:
    """The class path of the LightningModule that wrote a loaded checkpoint: ``checkpoint["zoo"]["class_path"]``
    (:func:`checkpoint_identity`), else ``_class_path`` (LightningCLI), else the class whose init arguments the
    hyperparameters hold (an older checkpoint saved in plain Python); None when nothing says."""
    hparams = checkpoint.get("hyper_parameters") or {}
    found = (checkpoint.get("zoo") or {}).get("class_path") or hparams.get("_class_path")
    if found is None:
        found = next((cls for args, cls in _CLASS_BY_ARGUMENTS if all(a in hparams for a in args)), None)
    return found


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read a checkpoint's class, hyperparameters and provenance (a clear error for a missing or foreign file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist. "
            "Fix: pass the path of a .ckpt file (runs/<name>/version_<n>/checkpoints/)."
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  (pickle, zip and EOF errors all mean: not a readable checkpoint)
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})."
        ) from error
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no 'state_dict' entry; found "
            f"{sorted(raw)[:6] if isinstance(raw, dict) else type(raw).__name__}). "
            "Fix: pass a checkpoint written by train.py (ModelCheckpoint), not a bare state dict."
        )
    hparams = dict(raw.get("hyper_parameters") or {})
    zoo_entry = raw.get("zoo") or {}
    return CheckpointInfo(
        path=path,
        class_path=checkpoint_model_class(raw),
        hyper_parameters=hparams,
        format_version=zoo_entry.get("format_version"),
        lightning_version=raw.get("pytorch-lightning_version"),
        versions=dict(zoo_entry.get("versions") or {}),
        git_commit=zoo_entry.get("git_commit"),
        epoch=raw.get("epoch"),
        global_step=raw.get("global_step"),
        state_dict=raw["state_dict"],
        callbacks=dict(raw.get("callbacks") or {}),
    )


def _same_class(found: str, expected: type) -> bool:
    try:
        found_cls = import_class(found)
    except ValueError:
        return False
    return isinstance(found_cls, type) and issubclass(found_cls, expected)


def check_checkpoint_class(found: str | None, expected: type, path: str | Path | None = None) -> None:
    """Raise :class:`CheckpointError` naming the file and both classes when the checkpoint at ``path``, written by
    the class ``found`` (:func:`checkpoint_model_class`), holds another LightningModule than ``expected`` (or a
    subclass). The one class check of the zoo: ``load_from_checkpoint``, ``--ckpt_path`` and every tool use it."""
    where = f"checkpoint {path}" if path is not None else "the checkpoint being restored"
    if found is None:
        raise CheckpointError(
            f"{where} does not say which LightningModule saved it (no 'zoo' entry, no "
            f"_class_path, no network/backbone hyperparameter); expected {class_path(expected)}. "
            "Fix: pass a checkpoint written by this project's train.py."
        )
    if not _same_class(found, expected):
        raise CheckpointError(
            f"{where} holds a {found}, but {class_path(expected)} was expected. "
            "Fix: use the config saved with that run (runs/<name>/version_<n>/config.yaml, model.class_path), "
            f"or a checkpoint of a {expected.__name__}."
        )


def check_state_dict_compatible(info: CheckpointInfo, model: torch.nn.Module) -> None:
    """Raise :class:`CheckpointError` when the checkpoint's weights do not fit ``model`` (another network, or a
    checkpoint of an older, incompatible version of the code): names the first differing keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in info.state_dict]
    unexpected = [k for k in info.state_dict if k not in own]
    reshaped = [
        f"{k} {tuple(info.state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in info.state_dict and tuple(info.state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or reshaped):
        return
    details = "; ".join(
        f"{what} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
        if keys
    )
    version = (
        f"zoo checkpoint format {info.format_version}"
        if info.format_version is not None
        else "no zoo format version (an older checkpoint)"
    )
    raise CheckpointError(
        f"checkpoint {info.path} does not fit {class_path(type(model))} as configured "
        f"(current checkpoint format {CHECKPOINT_FORMAT_VERSION}; the file has {version}, saved by Lightning "
        f"{info.lightning_version}): {details}. Fix: use the config saved with that run "
        "(runs/<name>/version_<n>/config.yaml), or retrain with the current code."
    )


def load_zoo_module(path: str | Path, expected: type | None = None, map_location: str = "cpu") -> Any:
    """The LightningModule stored in a checkpoint, rebuilt from its hyperparameters, in eval mode.

    ``expected`` (a class): the checkpoint must hold it or a subclass (else a :class:`CheckpointError`
    naming both). Weights that do not fit the rebuilt network are an error naming the keys.
    """
    import pytorch_lightning as pl

    info = read_checkpoint_info(path)
    check_checkpoint_class(info.class_path, expected or pl.LightningModule, info.path)
    cls = import_class(info.class_path)  # type: ignore[arg-type]
    kwargs = {k: v for k, v in info.hyper_parameters.items() if not k.startswith("_")}
    try:
        # Lightning's own restore path: the hyperparameters rebuild the network, then the state dict loads.
        model = cls.load_from_checkpoint(str(path), map_location=map_location, strict=False)
    except RuntimeError as error:  # shapes that differ: load_state_dict raises even with strict=False
        raise CheckpointError(
            f"checkpoint {info.path} does not fit {info.class_path} built from its own hyperparameters (an older, "
            f"incompatible version of the code?): {str(error).strip()[:600]}. Fix: retrain with the current code."
        ) from error
    except TypeError as error:
        raise CheckpointError(
            f"checkpoint {info.path} has hyperparameters {sorted(kwargs)} that {info.class_path} no longer takes "
            f"({error}). Fix: retrain with the current code, or edit the checkpoint's hyper_parameters."
        ) from error
    check_state_dict_compatible(info, model)
    return model.eval()


def find_run_config(ckpt_path: str | Path) -> Path | None:
    """The resolved ``config.yaml`` that LightningCLI saved for the run of a checkpoint
    (``runs/<name>/version_<n>/config.yaml`` for ``.../version_<n>/checkpoints/x.ckpt``), or None."""
    ckpt_path = Path(ckpt_path).resolve()
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            return candidate
    return None

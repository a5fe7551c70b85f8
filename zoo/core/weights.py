"""Reading weight files and loading them into any network of any family.

- :func:`read_weights_file`: the object in a local ``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin`` (``torch.save``)
  or ``.safetensors`` file.
- :func:`extract_state_dict`: the tensors of a state dict, whatever wraps them (a plain state dict,
  ``{"state_dict": ...}`` as Lightning writes it, ``{"model": ...}`` as torchvision's reference scripts do).
- :func:`match_prefix`: strip the wrapper prefix (``net.``, ``module.``, ``model.``) that makes the file's
  keys the network's.
- :func:`load_weights`: load a file into a network, in place, and return a :class:`LoadReport`. Keys named as
  ``tolerant`` (a classifier head, a detector's class layers) may be absent or of another shape in the file and
  keep their fresh initialisation; any other mismatch is a :class:`PretrainedWeightsError` naming the first
  key, both shapes and the file.

Every family loads weights through here: classifiers (``pretrained``, with the head as the tolerant keys),
detectors (``backbone_weights``, ``weights``), smp encoders (``encoder_weights``). What comes from the libraries:
``torch.load`` and ``safetensors``; the key matching across file formats is written here, because no library
offers it for arbitrary torchvision / timm / zoo networks.
"""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from zoo.core.errors import PretrainedWeightsError
from zoo.core.weight_sources import ResolvedWeights, resolve_weights

# Key prefixes that wrap a network's own keys in other files: a zoo LightningModule keeps its network under
# ``net``; DataParallel / DDP save ``module.``; many training scripts ``model.``.
WRAPPER_PREFIXES = ("net.", "module.", "model.")


def read_weights_file(path: str | Path) -> Any:
    """The object stored in a local weights file (``torch.save`` output or ``.safetensors``).

    Tries ``torch.load(weights_only=True)`` first; a Lightning checkpoint whose hyperparameters hold Python
    objects needs the full unpickler, which is used then (like Lightning's own ``load_from_checkpoint``: load
    only files you trust).
    """
    path = Path(path)
    if not path.is_file():
        where = "a folder" if path.exists() else "missing"
        raise FileNotFoundError(
            f"Weights file {path} is {where}. Fix: give the path of a .pth/.pt/.ckpt/.safetensors file that "
            "exists, a URL, or a name (torchvision:<Weights enum member>, timm:<tag>; see zoo.core.weight_sources)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001  (safetensors raises its own error types for a damaged file)
            raise PretrainedWeightsError(f"Cannot read weights file {path}: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError) as err:
        raise PretrainedWeightsError(f"Cannot read weights file {path}: {err}") from err


def extract_state_dict(obj: Any, path: str | Path = "<object>") -> dict[str, torch.Tensor]:
    """The tensors of a state dict, whatever wraps them: a plain state dict, ``{"state_dict": ...}``
    (Lightning checkpoints and others) or ``{"model": ...}`` (torchvision's reference scripts)."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "model_state"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return extract_state_dict(inner, path)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict())
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise PretrainedWeightsError(
        f"{path} holds no state dict: expected a dict of tensors, or a dict with one under "
        f"'state_dict' or 'model' (got {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
        + ")."
    )


def match_prefix(state: dict[str, torch.Tensor], expected: Iterable[str]) -> dict[str, torch.Tensor]:
    """``state`` with the wrapper prefix (``net.``, ``module.``, ``model.``) removed that makes the most of its
    keys names of ``expected``; keys outside the chosen prefix are dropped (a zoo checkpoint's other entries)."""
    expected = set(expected)
    best, best_hits = state, sum(k in expected for k in state)
    for prefix in WRAPPER_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = sum(k in expected for k in stripped)
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def read_state_dict(path: str | Path, expected: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a weights file (:func:`read_weights_file` + :func:`extract_state_dict`), with its wrapper
    prefix matched to the ``expected`` keys when given (:func:`match_prefix`)."""
    state = extract_state_dict(read_weights_file(path), path)
    return state if expected is None else match_prefix(state, expected)


def as_local_file(spec: str | Path | ResolvedWeights) -> Path:
    """The verified local file of a weights argument: a :class:`ResolvedWeights` as resolved, anything else through
    :func:`zoo.core.weight_sources.resolve_weights` (a local path stays as it is)."""
    return spec.path if isinstance(spec, ResolvedWeights) else resolve_weights(spec).path


@dataclass
class LoadReport:
    """What :func:`load_weights` did."""

    path: str
    loaded: list[str] = field(default_factory=list)  # keys copied from the file
    skipped_head: list[str] = field(default_factory=list)  # tolerant keys left as initialised (absent / other shape)
    ignored: list[str] = field(default_factory=list)  # keys left alone because ``ignore`` named them
    missing: list[str] = field(default_factory=list)  # network keys the file lacks (strict=False)
    unexpected: list[str] = field(default_factory=list)  # file keys not in the network (strict=False)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.path}"]
        if self.skipped_head:
            parts.append(f"head left freshly initialised: {', '.join(self.skipped_head)}")
        for what in ("ignored", "missing", "unexpected"):
            keys = getattr(self, what)
            if keys:
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        return "; ".join(parts)


def load_weights(
    net: nn.Module,
    path: str | Path | ResolvedWeights,
    *,
    tolerant: Collection[str] = (),
    hints: Mapping[str, str] | None = None,
    strict: bool = True,
    ignore: Sequence[str] = (),
    contents: Any = None,
) -> LoadReport:
    """Load the weights file ``path`` into ``net`` (in place) and report what was loaded.

    Args:
        net: the network, built with the architecture that saved the file.
        path: a local file: a plain state dict (torchvision / timm format), a dict with the state dict under
            ``"state_dict"`` or ``"model"``, or a zoo Lightning checkpoint (its ``net.`` prefix is removed).
            ``.safetensors`` files work too. A URL or a full library name (``torchvision:ResNet50_Weights.
            IMAGENET1K_V2``, ``timm:seresnet50.a1_in1k``) is resolved first by
            :func:`zoo.core.weight_sources.resolve_weights`, as is a :class:`ResolvedWeights` the caller resolved.
        tolerant: network keys that may be absent from the file or of another shape there (a classifier head for
            another number of classes): they keep their fresh initialisation and are listed in
            ``report.skipped_head``.
        hints: ``{key: (what the key is, the fix)}`` for keys whose mismatch the caller explains better (a
            classifier head loaded with ``strict_head``); other keys get the generic fix.
        strict: every other key of the network must be in the file and every key of the file in the network;
            ``False`` loads the common keys and reports the rest.
        ignore: shell-style patterns of keys to leave as they are, in the network and in the file (e.g.
            ``["conv1.weight"]`` to load ImageNet weights into a ``small_input=True`` network).
        contents: the file's contents (or its state dict) when the caller has read it already (``path`` then
            only names it in messages).

    Raises:
        FileNotFoundError: the file does not exist (its path is named).
        PretrainedWeightsError: a tensor that is not ``tolerant`` has another shape in the file than in the
            network: the first such key (in the network's order) is named with both shapes and the file; also
            unreadable files, files sharing no key with the network and, with ``strict``, missing or unexpected
            keys.
    """
    path = as_local_file(path) if contents is None else getattr(path, "path", path)
    target = net.state_dict()
    state = match_prefix(extract_state_dict(read_weights_file(path) if contents is None else contents, path), target)
    tolerant = set(tolerant)
    report = LoadReport(path=str(path))

    def ignored(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore)

    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in target.items():  # the network's order: the first mismatch is reported
        if ignored(key):
            report.ignored.append(key)
            continue
        if key not in state:
            (report.skipped_head if key in tolerant else report.missing).append(key)
            continue
        value = state[key]
        if value.shape != tensor.shape:
            if key in tolerant:
                report.skipped_head.append(key)
                continue
            what, hint = (hints or {}).get(key) or ("", (
                "The file was saved by another configuration of the network (other in_channels, num_classes, "
                "small_input, width or depth?). Build the network the way the file's network was built, "
                f"or leave this tensor out with ignore=[{key!r}]."
            ))
            raise PretrainedWeightsError(
                f"{path} does not fit {type(net).__name__}: {what}{key!r} has shape {tuple(value.shape)} in "
                f"the file but {tuple(tensor.shape)} in the network. {hint}"
            )
        to_load[key] = value
        report.loaded.append(key)
    report.unexpected = [k for k in state if k not in target and not ignored(k)]
    if not to_load:
        raise PretrainedWeightsError(
            f"{path} shares no tensor with {type(net).__name__}: the file's keys "
            f"({', '.join(list(state)[:4])}, ...) are not the network's "
            f"({', '.join(list(target)[:4])}, ...). "
            f"Is it the weights of another architecture?"
        )
    if strict and (report.missing or report.unexpected):
        details = []
        if report.missing:
            details.append(f"missing from the file: {', '.join(report.missing[:5])}")
        if report.unexpected:
            details.append(f"not in the network: {', '.join(report.unexpected[:5])}")
        raise PretrainedWeightsError(
            f"{path} and {type(net).__name__} have different keys ({'; '.join(details)}). "
            f"Pass strict=False to load the {len(to_load)} common tensors anyway."
        )
    net.load_state_dict(to_load, strict=False)
    return report

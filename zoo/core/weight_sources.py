"""Where weights come from: a local file, a URL, or a name of torchvision, timm or smp; download, cache, hash.

Every weights argument of every family (a classifier's ``pretrained``, a detector's ``weights`` and
``backbone_weights``, an smp or PSPNet ``encoder_weights``, the FID network's ``fid_inception_weights``) goes
through :func:`resolve_weights`, which turns what the user wrote into a verified local file:

- a **local path** (``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin`` / ``.safetensors``), used as it is;
- a **URL** (``https://``, ``http://``, ``file://``), optionally ending in ``#sha256=<hex>`` (the file's sha256,
  or a prefix of at least 8 hex digits);
- ``torchvision:<Weights enum member>`` (``torchvision:ResNet50_Weights.IMAGENET1K_V2``, or
  ``torchvision:IMAGENET1K_V2`` / ``torchvision:DEFAULT`` when the network is a torchvision network of that
  name): URL, hash and metadata from torchvision's own weights enums;
- ``timm:<tag>`` (``timm:a1_in1k``, or ``timm:seresnet50.a1_in1k``): timm's pretrained config, downloaded with
  the Hugging Face hub client (its cache, ``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` apply);
- an **smp encoder weights name** (``imagenet``, ``ssl``, ... for ``encoder_weights``; ``smp:imagenet`` too):
  smp's own table of hub repositories and pinned revisions, downloaded with the hub client.

**The cache** is ``$ZOO_CACHE``, by default torch hub's ``checkpoints`` folder (``$TORCH_HOME/hub/checkpoints``),
so files torchvision downloaded before are reused. A download goes to a temporary name in the cache and is renamed
only after its hash checked out: an interrupted download never leaves a file that looks valid. A cached file is
verified by its hash before every use (torchvision's and timm's file names carry a sha256 prefix, as torch hub
checks them; a URL's ``#sha256=``; for a URL without a hash, the sha256 recorded at download in ``<file>.sha256``);
hub files by the sha256 the hub recorded as the blob's name.

**Offline**: ``ZOO_OFFLINE=1`` forbids any network access (``HF_HUB_OFFLINE=1`` does for hub names); a file that
is not in the cache is then a :class:`WeightsNotAvailableError` naming the URL, the exact cache path to put the
file at, and its expected hash. ``ZOO_WEIGHTS_MIRROR=<base URL>`` downloads every URL's file from
``<base URL>/<file name>`` instead (a company mirror: one folder of the files under their original names); the
hash expected stays the original's.

Nothing here touches the network at import time. The downloader is written here (urllib + tqdm) rather than
``torch.hub.download_url_to_file`` because that one checks a hash prefix only when the caller passes it, writes
no record of a hash-less file's sha256, and cannot be pointed at a mirror; the hub client is huggingface_hub's.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import http.client
import inspect
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from zoo.core.errors import PretrainedWeightsError, ZooUserError

SourceKind = Literal["file", "url", "torchvision", "timm", "smp"]
Library = Literal["torchvision", "timm", "smp"]

ENV_CACHE = "ZOO_CACHE"
ENV_OFFLINE = "ZOO_OFFLINE"
ENV_MIRROR = "ZOO_WEIGHTS_MIRROR"
SCHEMES = ("torchvision:", "timm:", "smp:")
URL_SCHEMES = ("http://", "https://", "file://")
# torch hub's convention (torch.hub.HASH_REGEX): ``<name>-<sha256 prefix>.<ext>``.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
MIN_HASH_PREFIX = 8
HUB_URL = "https://huggingface.co/{repo}/resolve/{revision}/{filename}"
CHUNK = 1 << 20


class WeightsNotAvailableError(ZooUserError, FileNotFoundError):
    """Weights that are neither in the cache nor downloadable (offline, unreachable, or an unknown name)."""


class WeightsHashError(PretrainedWeightsError):
    """A downloaded or cached file whose sha256 is not the expected one."""


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """``ZOO_OFFLINE`` is set (``1`` / ``true`` / ``yes`` / ``on``): no network access at all."""
    return _truthy(os.environ.get(ENV_OFFLINE))


def hub_offline() -> bool:
    """No hub access: ``ZOO_OFFLINE`` or the hub's own ``HF_HUB_OFFLINE``."""
    return is_offline() or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def cache_dir() -> Path:
    """``$ZOO_CACHE``, else torch hub's ``checkpoints`` folder (where torchvision keeps its downloads)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_cache_dir() -> Path:
    """The Hugging Face hub client's cache (``HF_HUB_CACHE`` / ``HF_HOME``), where timm and smp names live."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def mirrored(url: str) -> str:
    """``url`` as downloaded: from ``$ZOO_WEIGHTS_MIRROR/<file name>`` when the mirror is set."""
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if not mirror or url.startswith("file://"):
        return url
    return f"{mirror.rstrip('/')}/{Path(urllib.parse.urlparse(url).path).name}"


# ---------------------------------------------------------------------------------------------------------------
# What a weights argument names
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation transform the weights were trained for: resize the shorter side to ``resize``, center-crop
    ``crop`` x ``crop``, normalize with ``mean`` / ``std`` (pixels in [0, 1]); ``interpolation`` of the resize."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class WeightsSource:
    """What a weights argument names, read from the spec and the libraries' metadata (no network access).

    ``sha256`` is the expected hash (the full hex digest, or a prefix of at least 8 digits) or None when nothing
    states one; ``url`` where the file is downloaded from (for hub names, the hub's address of the file);
    ``hub`` ``(repo_id, revision, filenames to try)`` for hub names; ``categories`` the class names of the
    weights' head; ``info`` the rest of the libraries' metadata (parameters, metrics, licence, ...)."""

    spec: str
    kind: SourceKind
    name: str | None = None
    url: str | None = None
    sha256: str | None = None
    path: Path | None = None  # a local file's path, or where the cache keeps a URL's file
    hub: tuple[str, str | None, tuple[str, ...]] | None = None
    categories: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.url or str(self.path or self.spec)


@dataclass(frozen=True)
class ResolvedWeights:
    """A verified local file and where it came from."""

    path: Path
    source: WeightsSource
    sha256: str  # the file's full sha256, as found

    def record(self) -> dict[str, Any]:
        """Provenance for checkpoints and model cards: the spec, name, URL, the file and its sha256."""
        return {
            "spec": self.source.spec,
            "kind": self.source.kind,
            "name": self.source.name,
            "url": self.source.url,
            "path": str(self.path),
            "sha256": self.sha256,
            "preprocessing": asdict(self.source.preprocessing) if self.source.preprocessing else None,
        }


def is_named(spec: str) -> bool:
    """``spec`` is a library name or a URL rather than a local path."""
    return spec.startswith(SCHEMES + URL_SCHEMES)


def parse_weights(
    spec: str | os.PathLike, *, network: str | None = None, library: Library | None = None
) -> WeightsSource:
    """What ``spec`` names (see the module docstring), without touching the network.

    Args:
        spec: a local path, a URL (optionally ``#sha256=<hex>``), ``torchvision:...``, ``timm:...``, or an smp
            encoder weights name.
        network: the network the weights are for (the torchvision / timm model name, or the smp encoder name):
            needed for the short forms ``torchvision:IMAGENET1K_V2``, ``timm:a1_in1k`` and smp names.
        library: the library that builds the network (``smp`` lets a bare name like ``imagenet`` mean smp's
            weights, as smp's own ``encoder_weights`` does).
    """
    text = os.fspath(spec).strip()
    if text.startswith("torchvision:"):
        return _torchvision_source(text, text[len("torchvision:"):], network)
    if text.startswith("timm:"):
        return _timm_source(text, text[len("timm:"):], network)
    if text.startswith("smp:"):
        return _smp_source(text, text[len("smp:"):], network)
    if text.startswith(URL_SCHEMES):
        return _url_source(text)
    path = Path(text).expanduser()
    if library == "smp" and not path.exists() and not any(c in text for c in "/\\.") and text:
        return _smp_source(text, text, network)
    return WeightsSource(spec=text, kind="file", path=path)


def _checked_hash(value: str, where: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(rf"[0-9a-f]{{{MIN_HASH_PREFIX},64}}", value):
        raise PretrainedWeightsError(
            f"{where}: sha256={value!r} is not a sha256 in hex. Fix: give the 64 hex digits of the file's sha256 "
            f"(`sha256sum FILE`), or a prefix of at least {MIN_HASH_PREFIX} of them."
        )
    return value


def hash_in_file_name(name: str) -> str | None:
    """The sha256 prefix a torch-hub-style file name carries (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``)."""
    match = HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def _cache_path_for(url: str) -> Path:
    """Where the cache keeps ``url``'s file: under its own name when the name carries its hash (torch hub's
    convention, so torchvision's downloads are shared), else in a folder named after the URL (two URLs with the
    same file name never overwrite each other)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "weights"
    if hash_in_file_name(name):
        return cache_dir() / name
    return cache_dir() / f"url-{hashlib.sha256(url.encode()).hexdigest()[:12]}" / name


def _url_source(spec: str) -> WeightsSource:
    url, _, fragment = spec.partition("#")
    sha = None
    if fragment:
        key, _, value = fragment.partition("=")
        if key != "sha256" or not value:
            raise PretrainedWeightsError(
                f"weights URL {spec!r}: the part after '#' must be sha256=<hex>, got {fragment!r}. "
                "Fix: end the URL with #sha256=<the file's sha256>, or leave the '#' part out."
            )
        sha = _checked_hash(value, f"weights URL {spec!r}")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        return WeightsSource(spec=spec, kind="url", url=url, sha256=sha, path=path)
    sha = sha or hash_in_file_name(Path(parsed.path).name)
    return WeightsSource(spec=spec, kind="url", url=url, sha256=sha, path=_cache_path_for(url))


# -- torchvision --------------------------------------------------------------------------------------------------
def _torchvision_enum_member(text: str, network: str | None) -> Any:
    from torchvision import models

    if "." in text:
        try:
            return models.get_weight(text)
        except (ValueError, KeyError, AttributeError) as err:
            enum_name = text.split(".")[0]
            raise WeightsNotAvailableError(
                f"torchvision has no weights {text!r} ({err}). Fix: name a member of a torchvision weights enum, "
                f"e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2; `python -m zoo.weights list <network>` lists "
                f"a network's names{'' if enum_name.endswith('_Weights') else ' (enums end in _Weights)'}."
            ) from None
    if not network:
        raise WeightsNotAvailableError(
            f"torchvision:{text} names a member without its weights enum, and no torchvision network is known "
            "here. Fix: write the whole name, e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2."
        )
    try:
        enum = models.get_model_weights(network)
    except (ValueError, KeyError):
        raise WeightsNotAvailableError(
            f"torchvision:{text}: {network!r} is not a torchvision model name, so its weights enum is unknown. "
            "Fix: write the whole name, e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2 "
            "(`python -m zoo.weights list <network>` lists them)."
        ) from None
    member = enum.__members__.get(text)
    if member is None:
        raise WeightsNotAvailableError(
            f"torchvision has no weights {text!r} for {network} (its {enum.__name__} has "
            f"{', '.join(enum.__members__)}). Fix: pick one of those."
        )
    return member


def _torchvision_preprocessing(weights: Any) -> Preprocessing | None:
    """The resize / crop / mean / std of an image-classification weights entry (torchvision's
    ``ImageClassification`` preset with the entry's arguments); None for detection presets."""
    transforms = weights.transforms
    preset = getattr(transforms, "func", None)
    if preset is None or preset.__name__ != "ImageClassification":
        return None
    arguments = {
        name: p.default for name, p in inspect.signature(preset).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    arguments.update(transforms.keywords)
    interpolation = arguments.get("interpolation")
    return Preprocessing(
        resize=int(arguments["resize_size"] if not isinstance(arguments["resize_size"], list)
                   else arguments["resize_size"][0]),
        crop=int(arguments["crop_size"]),
        mean=tuple(float(v) for v in arguments["mean"]),
        std=tuple(float(v) for v in arguments["std"]),
        interpolation=str(getattr(interpolation, "value", interpolation or "bilinear")),
    )


def _torchvision_source(spec: str, text: str, network: str | None) -> WeightsSource:
    member = _torchvision_enum_member(text, network)
    meta = dict(member.meta)
    categories = meta.get("categories")
    return replace(
        _url_source(member.url),
        spec=spec,
        kind="torchvision",
        name=f"torchvision:{type(member).__name__}.{member.name}",
        categories=tuple(categories) if categories else None,
        preprocessing=_torchvision_preprocessing(member),
        info={k.lstrip("_"): v for k, v in meta.items() if k not in ("categories", "_docs")},
    )


# -- timm ---------------------------------------------------------------------------------------------------------


def _timm_source(spec: str, text: str, network: str | None) -> WeightsSource:
    import timm
    from timm.data import ImageNetInfo, infer_imagenet_subset

    full = text if "." in text else (f"{network}.{text}" if network else text)
    architecture = full.split(".")[0]
    try:
        cfg = timm.models.get_pretrained_cfg(full, allow_unregistered=True) if "." in full else None
    except RuntimeError:  # timm's answer to a tag the architecture does not have
        cfg = None
    if cfg is None:
        known = timm.list_pretrained(f"{architecture}.*") if architecture else []
        raise WeightsNotAvailableError(
            f"timm has no pretrained weights {full!r} (spec {spec!r}). Fix: name one of timm's tags for "
            f"{architecture or 'the network'}: {', '.join('timm:' + k.split('.', 1)[1] for k in known) or 'none'}"
            " (`python -m zoo.weights list <network>`)."
        )
    subset = infer_imagenet_subset(cfg)
    categories = None
    if subset and cfg.num_classes:
        labels = ImageNetInfo(subset).label_descriptions()
        if len(labels) == cfg.num_classes:
            categories = tuple(label.split(",")[0].strip() for label in labels)
    crop = int(cfg.input_size[-1])
    preprocessing = Preprocessing(
        resize=int(math.floor(crop / (cfg.crop_pct or 1.0))),
        crop=crop,
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        interpolation=str(cfg.interpolation or "bilinear"),
    )
    info = {k: v for k, v in cfg.to_dict().items()
            if k in ("architecture", "tag", "num_classes", "input_size", "license", "paper_ids", "origin_url")}
    base: dict[str, Any] = {
        "spec": spec, "kind": "timm", "name": f"timm:{full}", "categories": categories,
        "preprocessing": preprocessing, "info": info,
    }
    if cfg.hf_hub_id:
        # timm loads hub weights first (timm.models._builder._resolve_pretrained_source), safetensors preferred.
        repo, _, revision = cfg.hf_hub_id.partition("@")
        filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        url = HUB_URL.format(repo=repo, revision=revision or "main", filename=filenames[0])
        return WeightsSource(url=url, hub=(repo, revision or None, filenames), **base)
    if cfg.url:
        return replace(_url_source(cfg.url), **base)
    raise WeightsNotAvailableError(f"timm's config for {full!r} names no file to download (no hub id, no URL).")


# -- smp ----------------------------------------------------------------------------------------------------------


def _smp_source(spec: str, text: str, encoder: str | None) -> WeightsSource:
    from segmentation_models_pytorch.encoders import encoders

    if not encoder or encoder not in encoders:
        raise WeightsNotAvailableError(
            f"encoder weights {spec!r}: smp names weights per encoder, and {encoder!r} is not one of smp's "
            "encoders (a 'tu-' timm encoder takes timm's weights through its own name). Fix: give a local file or "
            "URL, or an encoder_name from segmentation_models_pytorch.encoders.get_encoder_names()."
        )
    settings = encoders[encoder].get("pretrained_settings") or {}
    if text not in settings:
        raise WeightsNotAvailableError(
            f"smp has no weights {text!r} for the encoder {encoder!r}; it has: {', '.join(settings) or 'none'}. "
            "Fix: pick one of those, or give a local file or URL."
        )
    entry = settings[text]
    repo, revision = entry["repo_id"], entry.get("revision")
    url = HUB_URL.format(repo=repo, revision=revision or "main", filename="model.safetensors")
    return WeightsSource(
        spec=spec, kind="smp", name=f"smp:{encoder}.{text}", url=url, hub=(repo, revision, ("model.safetensors",)),
        info={"encoder": encoder, "repo_id": repo, "revision": revision},
    )


# ---------------------------------------------------------------------------------------------------------------
# Names a network accepts
# ---------------------------------------------------------------------------------------------------------------


def weight_names(network: str, library: Library) -> list[WeightsSource]:
    """Every weights name ``library`` offers for ``network`` (a torchvision model name, a timm architecture or an
    smp encoder name), read from the library's metadata."""
    if library == "torchvision":
        from torchvision import models

        try:
            enum = models.get_model_weights(network)
        except (ValueError, KeyError):
            return []
        return [_torchvision_source(f"torchvision:{m}", m, network) for m in enum.__members__ if m != "DEFAULT"]
    if library == "timm":
        import timm

        return [_timm_source(f"timm:{name.split('.', 1)[1]}", name, network)
                for name in timm.list_pretrained(f"{network}.*")]
    from segmentation_models_pytorch.encoders import encoders

    if network not in encoders:
        return []
    return [_smp_source(name, name, network) for name in encoders[network].get("pretrained_settings") or {}]


# ---------------------------------------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_hash(path: Path) -> str | None:
    """The sha256 written beside a downloaded file (``<file>.sha256``), if any."""
    record = path.with_name(path.name + ".sha256")
    if not record.is_file():
        return None
    text = record.read_text().split()
    return text[0].lower() if text and re.fullmatch(r"[0-9a-f]{64}", text[0].lower()) else None


def expected_hash(path: Path, stated: str | None = None) -> str | None:
    """The hash a cached file must have: the stated one, else the recorded one, else the one in its name."""
    return stated or recorded_hash(path) or hash_in_file_name(path.name)


def check_hash(path: Path, expected: str | None, *, what: str, fix: str) -> str:
    """The file's sha256, after checking that it starts with ``expected`` (when given)."""
    found = file_sha256(path)
    if expected and not found.startswith(expected.lower()):
        raise WeightsHashError(
            f"{what} {path} has sha256 {found}, but {expected} was expected: the file is damaged, incomplete or "
            f"not the one named. {fix}"
        )
    return found


def _hub_blob_hash(path: Path) -> str | None:
    """The sha256 the hub recorded for a cached hub file: the name of the blob it links to (an LFS file's ETag
    is its sha256)."""
    blob = Path(os.path.realpath(path)).name
    return blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None


# ---------------------------------------------------------------------------------------------------------------
# Resolving: cache, download, verify
# ---------------------------------------------------------------------------------------------------------------

_RECORDS: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("zoo_weights", default=None)


@contextlib.contextmanager
def recording_weights() -> Iterator[list[dict[str, Any]]]:
    """Collect :meth:`ResolvedWeights.record` of every weights file resolved inside the block (a LightningModule
    wraps building its network in it, to write which weights a run started from into its checkpoints)."""
    records: list[dict[str, Any]] = []
    token = _RECORDS.set(records)
    try:
        yield records
    finally:
        _RECORDS.reset(token)


def resolve_weights(
    spec: str | os.PathLike, *, network: str | None = None, library: Library | None = None, progress: bool = True
) -> ResolvedWeights:
    """The verified local file ``spec`` names (see the module docstring): a local file as it is (hashed for the
    record), a ``file://`` URL checked against its ``#sha256``, anything else from the cache (verified) or
    downloaded into it (unless offline).

    Raises:
        FileNotFoundError: a local path that does not exist.
        WeightsNotAvailableError: not cached and offline, unreachable, or an unknown name.
        WeightsHashError: a cached or downloaded file of another sha256 than expected.
    """
    source = spec if isinstance(spec, WeightsSource) else parse_weights(spec, network=network, library=library)
    if source.kind == "file" or (source.kind == "url" and source.url and source.url.startswith("file://")):
        path = source.path
        assert path is not None
        if not path.is_file():
            where = "a folder" if path.exists() else "missing"
            raise FileNotFoundError(
                f"Weights file {path} is {where}. Fix: give the path of a .pth/.pt/.ckpt/.safetensors file that "
                "exists, a URL (https://...#sha256=<hex>), or a name: torchvision:<Weights enum member>, "
                "timm:<tag> (`python -m zoo.weights list <network>` lists a network's names)."
            )
        found = check_hash(path, source.sha256, what="weights file",
                           fix="Fix: give the file whose sha256 the URL states, or correct the #sha256= part.")
        resolved = ResolvedWeights(path, source, found)
    elif source.hub is not None:
        resolved = _resolve_hub(source, progress)
    else:
        resolved = _resolve_url(source, progress)
    records = _RECORDS.get()
    if records is not None:
        records.append(resolved.record())
    return resolved


def _fetch_hint(source: WeightsSource) -> str:
    return f"`python -m zoo.weights download {source.name or source.spec}` on a machine that is online"


def _resolve_url(source: WeightsSource, progress: bool) -> ResolvedWeights:
    path, url = source.path, source.url
    assert path is not None and url is not None
    expected = source.sha256
    if path.is_file():
        found = check_hash(
            path, expected_hash(path, expected), what="cached weights file",
            fix=f"Fix: delete it (rm {path}) to download it again, or put the right file there.",
        )
        return ResolvedWeights(path, source, found)
    hash_note = f"sha256 {expected}{'...' if expected and len(expected) < 64 else ''}" if expected else "no hash stated"
    if is_offline():
        raise WeightsNotAvailableError(
            f"Weights {source.label} are not in the cache and {ENV_OFFLINE}=1 forbids downloading them. Fix: put "
            f"the file from {url} at {path} ({hash_note}), e.g. with {_fetch_hint(source)} and the cache folder "
            f"({cache_dir()}) copied here; or set {ENV_CACHE} to a folder that holds it."
        )
    found = download(mirrored(url), path, expected, progress=progress, label=source.label)
    return ResolvedWeights(path, source, found)


def download(url: str, dest: Path, expected: str | None, *, progress: bool = True, label: str | None = None) -> str:
    """Download ``url`` to ``dest`` through a temporary file in the same folder, renamed to ``dest`` only after
    the download is complete and its sha256 starts with ``expected`` (when given); the sha256 is recorded in
    ``<dest>.sha256``. Returns the sha256. Nothing is left at ``dest`` on any failure."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    label = label or url
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "vision-zoo"})
        digest, received = hashlib.sha256(), 0
        with urllib.request.urlopen(request, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            show = progress and os.environ.get("LOCAL_RANK", "0") == "0"
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {dest.name}",
                      disable=not show, mininterval=0.5) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise WeightsNotAvailableError(
                f"Downloading {label} from {url} stopped after {received} of {total} bytes (the connection "
                f"closed); nothing was kept. Fix: run again (or {_fetch_hint_plain(label)})."
            )
        found = digest.hexdigest()
        if expected and not found.startswith(expected.lower()):
            raise WeightsHashError(
                f"The file downloaded from {url} for {label} has sha256 {found}, but {expected} was expected; it "
                f"was deleted, nothing is in the cache at {dest}. Fix: check that the URL (or {ENV_MIRROR}) serves "
                f"the original file, or correct the stated hash."
            )
        partial.replace(dest)
        dest.with_name(dest.name + ".sha256").write_text(f"{found}  {url}\n")
        return found
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", None) or err
        raise WeightsNotAvailableError(
            f"Cannot download {label} from {url}: {reason}. Fix: check the network (or {ENV_MIRROR}), or put the "
            f"file at {dest}{f' (sha256 {expected}...)' if expected else ''} by hand; {ENV_OFFLINE}=1 makes "
            "this machine never try."
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def _fetch_hint_plain(label: str) -> str:
    return f"`python -m zoo.weights download {label}`"


def _resolve_hub(source: WeightsSource, progress: bool) -> ResolvedWeights:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    assert source.hub is not None
    repo, revision, filenames = source.hub
    offline = hub_offline()
    problems = []
    for filename in filenames:
        try:
            path = Path(hf_hub_download(repo, filename, revision=revision, local_files_only=offline))
        except EntryNotFoundError:
            problems.append(f"{filename}: not in the repository")
            continue
        except LocalEntryNotFoundError as err:
            problems.append(f"{filename}: {str(err).splitlines()[0]}")
            continue
        except (HfHubHTTPError, OSError) as err:
            raise WeightsNotAvailableError(
                f"Cannot download {source.label} from the Hugging Face hub ({repo}, {filename}): "
                f"{str(err).splitlines()[0]}. Fix: check the network (HF_ENDPOINT for a hub mirror), or set "
                f"{ENV_OFFLINE}=1 and copy a hub cache that holds it to {hub_cache_dir()}."
            ) from None
        found = check_hash(
            path, _hub_blob_hash(path), what="cached hub file",
            fix=f"Fix: delete {os.path.realpath(path)} and {path} to download it again.",
        )
        return ResolvedWeights(path, source, found)
    why = f"{ENV_OFFLINE}=1" if is_offline() else ("HF_HUB_OFFLINE=1" if offline else "the hub")
    raise WeightsNotAvailableError(
        f"Weights {source.label} ({source.url}) are not in the hub cache {hub_cache_dir()} and {why} "
        f"{'forbids downloading them' if offline else 'could not provide them'} ({'; '.join(problems)}). Fix: "
        f"run {_fetch_hint(source)} and copy {hub_cache_dir()} here (the hub checks the file against the sha256 "
        "it records as the blob's name); or set HF_HUB_CACHE to a copy that holds it."
    )

"""Classification data from a user's own image files: a folder per class, or a CSV / TSV of paths and labels.

* :class:`ImageFolderDataModule`: ``<data_dir>/<class>/<image>`` (the split into train / val / test is made here:
  deterministic, stratified, seeded), or ``<data_dir>/{train,val,test}/<class>/<image>`` when a ``train/`` folder
  exists (``val/`` and ``test/`` optional: a missing one is held out of ``train/`` the same way). Class names are
  the folder names, sorted. Images in sub-folders of a class folder belong to that class.
* :class:`ImageCSVDataModule`: a CSV or TSV with a column of image paths (relative to ``image_dir``) and labels:
  one label column (single-label), several 0/1 columns (multi-label; the class names are the column names) or one
  column of separated labels (multi-label, ``"cat|dog"`` with ``label_separator: "|"``), and an optional split
  column (``train`` / ``val`` / ``test``).

Batches are ``(images, targets)``: images ``(N, in_channels, H, W)`` float32, normalized; targets ``(N,)`` int64
class indices (``task = "multiclass"``) or ``(N, num_classes)`` float32 multi-hot rows (``task = "multilabel"``).

**Attributes for the CLI links**: ``num_classes``, ``in_channels``, ``class_names``, ``task``, ``class_counts``
(training images per class; positives per class for multi-label) and ``class_weights`` (with ``balance: loss``
the inverse class frequency normalized to mean 1, else None). Reading any of them (other than ``in_channels``)
lists and checks the data, once.

**The split** (a split that the layout or the split column does not give): ``val_size`` / ``test_size`` are
fractions (< 1; a fraction > 0 holds out at least one image) or counts of the training images. Each class gives
its share, so that every class's count in val and test is within one image of its exact proportion (largest
remainders; a class keeps at least one training image); which images go is drawn per class from
``split_seed`` (its own generator: the same on every machine and process, independent of the training seed).
Multi-label rows are stratified by their rarest label (rows without a label form their own group).

**Every image mode becomes** ``in_channels`` (1 or 3) **as follows** (one note per kind is logged at setup, lossy
ones say so):

=================  ==============================================  ===========================================
mode               ``in_channels: 3``                              ``in_channels: 1``
=================  ==============================================  ===========================================
RGB                as is                                           ITU-R 601 luma (lossy unless R = G = B)
L (8-bit gray)     repeated into 3 equal channels                  as is
1 (bilevel)        0 / 255, repeated                               0 / 255
P (palette)        its colours (RGB)                               its colours, then luma
P + transparency   its colours, **alpha dropped** (lossy)          idem, then luma
RGBA, LA           **alpha dropped** (lossy): the stored colour    idem, then luma
                   of transparent pixels, not composited
CMYK, YCbCr, LAB   converted to RGB by PIL (**lossy**, no ICC)     idem, then luma
I;16 (16-bit)      float in [0, 1] (value / 65535), repeated:      float in [0, 1]: precision kept
                   precision kept
RGB;16 (PNG)       float in [0, 1]: precision kept                 luma of that
RGB;16 (TIFF)      **read at 8 bits per channel** by PIL (lossy)   idem, then luma
I, F (32-bit)      refused: the value range is unknown             refused
=================  ==============================================  ===========================================

Images are decoded with their EXIF orientation applied (as photo viewers show them); multi-frame files (TIFF,
animated WEBP) use their first frame (noted). The file's content decides its format, not its extension.

**The decoder**: ``torchvision.io.decode_image`` for JPEG, PNG and WEBP, PIL for the rest (BMP, TIFF, palette,
bilevel and CMYK images, multi-frame files). Measured on this project's shared data (one CPU thread, decode to an
RGB ``(3, H, W)`` uint8 tensor, identical pixels): 10 COCO JPEGs of 640x480, 1.8 ms with torchvision vs 2.9 ms
with PIL (``open`` + ``convert`` + ``asarray``); 10 DSB2018 PNGs of 360x360, 1.6 ms vs 2.1 ms. torchvision is 1.3x
to 1.6x faster and hands over a ``(C, H, W)`` tensor without a copy; it also keeps 16-bit colour PNGs at 16 bits,
which PIL reduces to 8. It cannot read BMP or TIFF, and returns palette indices instead of colours and CMYK
instead of RGB, hence PIL for those.

**Bad input** (every case an error naming the file or row and the fix, or, with ``bad_input: skip``, skipped,
counted and logged): an unreadable (corrupt, truncated, zero-byte) image, an image mode that cannot be converted,
a non-image file in a class folder, an empty class folder, a class in ``val/`` or ``test/`` that ``train/``
lacks, an image outside any class folder; in a CSV a row naming a missing file, a malformed row (wrong number of
fields), an unknown label (a 0/1 column holding 2, a label of a val/test row that no train row has, not exactly
one label for ``task: multiclass``), an empty label, an unknown split value and a duplicate path (the first row is
kept). Hidden files and folders (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints/``, ``__MACOSX/``,
``Thumbs.db``, ``desktop.ini``) are always skipped, counted in the log. Other files beside the class folders (a
README) are not data: listed in the log, not used. A missing CSV label column names the columns present.

Images are checked at setup before the first step (``verify_images: header``: PIL reads each header and verifies
what it can without decoding: PNG chunk checksums, a JPEG's end marker, which a truncated JPEG lacks, then decoded
to be sure; ``decode``: every image is decoded once), in threads, with a progress bar for large sets. A file
that only fails when decoded during training stops the run with its name.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageOps
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from datamodules.distributed import ResumableDataLoader, make_dataloader
from datamodules.errors import DataError
from datamodules.photo_transforms import (
    as_size,
    normalization_stats,
    photo_eval_transform,
    photo_pixels_transform,
    photo_train_transform,
)
from datamodules.segmentation import natural_key

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP")  # MPO: a camera's multi-picture JPEG
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
SYSTEM_FOLDERS = frozenset({"__macosx", "$recycle.bin", "system volume information"})
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}  # fmt: skip
PATH_COLUMNS = ("image", "image_path", "image_file", "image_name", "img", "path", "filepath", "file_path", "file",
                "filename", "file_name")  # fmt: skip
PROGRESS_MIN_FILES = 2000  # a progress bar for sets at least this large

BadInput = Literal["error", "skip"]
Balance = Literal["none", "sampler", "loss"]
Task = Literal["multiclass", "multilabel"]

# Decoded by torchvision.io (faster, see the module docstring); every other (format, mode) by PIL.
TORCHVISION_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})
TORCHVISION_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I;16", "LA;16", "RGB;16", "RGBA;16"})
PIL_TO_RGB_MODES = frozenset({"1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"})

# (conversion for in_channels 3, lossy) per mode label; in_channels 1 adds the luma of colour images (lossy).
CONVERSIONS: dict[str, tuple[str, bool]] = {
    "RGB": ("as is", False),
    "L": ("grayscale repeated into 3 equal channels", False),
    "1": ("bilevel: 0 / 255 gray", False),
    "P": ("palette expanded to its RGB colours", False),
    "P+transparency": ("palette expanded to RGBA colours, alpha channel dropped", True),
    "PA": ("palette expanded to RGBA colours, alpha channel dropped", True),
    "RGBA": ("alpha channel dropped (the stored colour of transparent pixels is used, not composited)", True),
    "LA": ("alpha channel dropped (the stored gray of transparent pixels is used, not composited)", True),
    "La": ("alpha channel dropped", True),
    "RGBa": ("alpha channel dropped", True),
    "RGBX": ("padding channel dropped", False),
    "CMYK": ("converted to RGB by PIL (no colour profile)", True),
    "YCbCr": ("converted to RGB by PIL", True),
    "LAB": ("converted to RGB by PIL", True),
    "HSV": ("converted to RGB by PIL", True),
    "I;16": ("16-bit gray read as float in [0, 1] (value / 65535): precision kept", False),
    "I;16B": ("16-bit gray read as float in [0, 1] (value / 65535): precision kept", False),
    "I;16L": ("16-bit gray read as float in [0, 1] (value / 65535): precision kept", False),
    "I;16N": ("16-bit gray read as float in [0, 1] (value / 65535): precision kept", False),
    "LA;16": ("16-bit gray read as float in [0, 1], alpha channel dropped", True),
    "RGB;16": ("16-bit colour read as float in [0, 1] (value / 65535): precision kept", False),
    "RGBA;16": ("16-bit colour read as float in [0, 1], alpha channel dropped", True),
    "RGB;16 TIFF": ("read at 8 bits per channel by PIL (16-bit precision lost; a 16-bit PNG keeps it)", True),
}
GRAY_MODES = frozenset({"L", "1", "I;16", "I;16B", "I;16L", "I;16N", "LA", "La", "LA;16"})


class ImageDataError(DataError, ValueError):
    """Image files or a label table that cannot be used as they are (the message names them and the fix)."""


class ImageDataNotFoundError(DataError, FileNotFoundError):
    """The data folder, image folder or label table does not exist (the message says which, and the fix)."""


# -- reading images ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ImageInfo:
    """What the header of an image file says: enough to choose its decoder and to summarize a data set."""

    path: Path
    format: str
    mode: str  # PIL's mode, refined: "RGB;16" for a 16-bit colour PNG, "P+transparency", "RGB;16 TIFF"
    width: int
    height: int
    frames: int = 1


class BadImageError(Exception):
    """An image file that cannot be used: ``kind`` (a key of :data:`FIXES`) and what is wrong with it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _png_bit_depth(path: Path) -> int:
    with path.open("rb") as f:
        head = f.read(26)
    return head[24] if len(head) >= 26 and head[12:16] == b"IHDR" else 8


def _jpeg_complete(path: Path) -> bool:
    """Whether the file ends in (or near) the JPEG end-of-image marker; a truncated JPEG does not."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        return b"\xff\xd9" in f.read()


_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, Image.DecompressionBombError)


def probe_image(path: Path, decode: bool = False) -> ImageInfo:
    """The header of an image file, verified without decoding where PIL can (``decode``: decoded as well).

    Raises :class:`BadImageError` for an empty, corrupt, truncated or unsupported file.
    """
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BadImageError("missing file", f"{path} cannot be read ({err})") from err
    if size == 0:
        raise BadImageError("unreadable image", f"{path} is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            fmt, mode, (width, height) = im.format or "?", im.mode, im.size
            frames = int(getattr(im, "n_frames", 1) or 1)
            transparent = "transparency" in im.info
            bits = im.tag_v2.get(258) if fmt == "TIFF" and hasattr(im, "tag_v2") else None
            if fmt in SUPPORTED_FORMATS:
                im.verify()
        if fmt in SUPPORTED_FORMATS and (decode or (fmt in ("JPEG", "MPO") and not _jpeg_complete(path))):
            with Image.open(path) as im:
                im.load()
    except _READ_ERRORS as err:
        raise BadImageError(
            "unreadable image", f"{path} cannot be read as an image ({type(err).__name__}: {err}; {size} bytes)"
        ) from err
    if fmt not in SUPPORTED_FORMATS:
        raise BadImageError("unsupported image", f"{path} is a {fmt} image (supported: {', '.join(SUPPORTED_FORMATS)})")
    if fmt == "PNG" and mode in ("RGB", "RGBA", "LA", "I") and _png_bit_depth(path) == 16:
        mode = {"I": "I;16"}.get(mode, f"{mode};16")
    elif fmt == "TIFF" and mode == "RGB" and bits and max(bits) > 8:
        mode = "RGB;16 TIFF"
    elif mode == "P" and transparent:
        mode = "P+transparency"
    if mode not in CONVERSIONS and mode not in PIL_TO_RGB_MODES:
        raise BadImageError(
            "unsupported image", f"{path} has the image mode {mode!r} ({fmt}), whose value range is not known"
        )
    return ImageInfo(path, fmt, mode, width, height, frames)


@functools.cache
def _torchvision_decoder() -> Callable[..., torch.Tensor] | None:
    """``torchvision.io.decode_image``, or None where torchvision no longer has it (deprecated since 0.29 in favour
    of TorchCodec): PIL then decodes every format."""
    try:
        from torchvision.io import decode_image
    except ImportError:
        return None
    return decode_image


def _decode(info: ImageInfo) -> torch.Tensor:
    """``(C, H, W)``: uint8, or float32 in [0, 1] for 16-bit images; C in 1..4 (alpha still there)."""
    decoder = _torchvision_decoder()
    by_torchvision = info.format in TORCHVISION_FORMATS and info.mode in TORCHVISION_MODES and info.frames == 1
    if decoder is not None and by_torchvision:
        x = decoder(str(info.path), apply_exif_orientation=True)  # the file's own channels (UNCHANGED), 8 or 16 bits
        return x.to(torch.float32).div_(65535.0) if x.dtype == torch.uint16 else x
    with Image.open(info.path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16") or im.mode == "I":
            array = np.asarray(im).astype(np.float32) / 65535.0
        else:
            if im.mode in ("1", "La"):
                im = im.convert("L" if im.mode == "1" else "LA")
            elif im.mode in PIL_TO_RGB_MODES or im.mode.startswith("P"):
                alpha = im.mode in ("PA", "RGBa") or "transparency" in im.info
                im = im.convert("RGBA" if alpha else "RGB")
            array = np.asarray(im)
    tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def to_channels(image: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A decoded ``(C, H, W)`` image (C in 1..4) as ``in_channels`` (1 or 3) channels: alpha dropped, gray
    repeated, colour to ITU-R 601 luma (PIL's integer formula for uint8, so equal channels stay exact)."""
    if image.shape[0] in (2, 4):
        image = image[:-1]
    channels = image.shape[0]
    if channels == in_channels:
        return image
    if channels == 1 and in_channels == 3:
        return image.expand(3, -1, -1).contiguous()
    if channels == 3 and in_channels == 1:
        if image.dtype == torch.uint8:
            r, g, b = image.to(torch.int32).unbind(0)
            return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[None]
        return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).clamp_(0, 1)[None]
    raise ValueError(f"cannot convert {channels} channels to in_channels={in_channels}")


def read_photo(info: ImageInfo, in_channels: int) -> torch.Tensor:
    """An image file as ``(in_channels, H, W)``: uint8, or float32 in [0, 1] for 16-bit images (converted as the
    module docstring's table says). An image that cannot be decoded is an :class:`ImageDataError` naming it."""
    try:
        return to_channels(_decode(info), in_channels)
    except (RuntimeError, *_READ_ERRORS) as err:
        raise ImageDataError(
            f"{info.path} cannot be decoded ({type(err).__name__}: {err}). Its header was readable, so it is "
            f"probably truncated or corrupt further in. Fix: replace it with an intact copy or delete it; "
            f"verify_images: decode finds every such file at setup (and bad_input: skip then skips them)."
        ) from err


def conversion_notes(modes: Counter, examples: dict[str, Path], in_channels: int) -> list[str]:
    """One line per kind of conversion the images of ``modes`` (mode label -> count) undergo."""
    notes = []
    for mode, count in sorted(modes.items()):
        what, lossy = CONVERSIONS.get(mode, ("converted to RGB by PIL", True))
        if in_channels == 1:
            if mode in GRAY_MODES:
                what = {"L": "as is", "1": "bilevel: 0 / 255 gray"}.get(mode, what.replace(", repeated", ""))
            else:
                what = (what + ", then " if what != "as is" else "") + "to grayscale by ITU-R 601 luma"
                lossy = True
        if what == "as is":
            continue
        notes.append(f"{count} {mode} image(s) (e.g. {examples[mode]}): {what}{' (lossy)' if lossy else ''}")
    return notes


# -- the split -----------------------------------------------------------------------------------------------------
def holdout_count(size: float, n: int, name: str) -> int:
    """``size`` (a fraction < 1, or a count) of ``n`` items; a fraction > 0 holds out at least one."""
    if size < 0 or (size >= 1 and float(size) != int(size)):
        raise ValueError(f"{name} must be a fraction in [0, 1) or a whole count; got {size}. Fix: e.g. {name}: 0.1.")
    if 0 < size < 1:
        return max(1, round(size * n))
    return int(size)


def _largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """Integer quotas proportional to ``counts`` that sum to ``total`` (each within one of its exact share)."""
    n = counts.sum()
    if n == 0 or total == 0:
        return np.zeros_like(counts)
    exact = counts * total / n
    quota = np.floor(exact).astype(np.int64)
    rest = total - quota.sum()
    order = sorted(range(len(counts)), key=lambda g: (-(exact[g] - quota[g]), g))
    for g in order[:rest]:
        quota[g] += 1
    return quota


def stratified_split(
    groups: Sequence[int], val: int, test: int, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Deterministic ``(train, val, test)`` positions of items in ``groups`` (a class per item): ``val`` and
    ``test`` items, each group contributing its proportional share (within one item), each group keeping at
    least one training item; the items are drawn per group from ``seed`` (independent of the global RNG)."""
    groups = np.asarray(groups, dtype=np.int64)
    n = len(groups)
    if val + test >= n:
        raise ValueError(
            f"val and test take {val} + {test} of {n} images, leaving none for training. Fix: lower val_size / "
            f"test_size (fractions < 1 or counts)."
        )
    ids = np.unique(groups)
    counts = np.array([(groups == g).sum() for g in ids])
    val_q, test_q = _largest_remainder(counts, val), _largest_remainder(counts, test)
    train_idx: list[int] = []
    val_idx: list[int] = []
    test_idx: list[int] = []
    for g, n_g, v, t in zip(ids, counts, val_q, test_q, strict=True):
        while v + t > n_g - 1:  # a class keeps one training image
            if t >= v and t > 0:
                t -= 1
            else:
                v -= 1
        members = np.flatnonzero(groups == g)
        order = members[np.random.default_rng([seed, int(g) + 1]).permutation(len(members))]
        val_idx += order[:v].tolist()
        test_idx += order[v : v + t].tolist()
        train_idx += order[v + t :].tolist()
    return sorted(train_idx), sorted(val_idx), sorted(test_idx)


# -- bad input -------------------------------------------------------------------------------------------------------
FIXES = {
    "unreadable image": "replace each with an intact copy (re-export or copy it again) or delete it",
    "unsupported image": "convert it to 8-bit or 16-bit grayscale or RGB (e.g. PNG) or delete it",
    "missing file": "correct the path (relative to image_dir) or remove the row",
    "non-image file": "move it out of the class folder or delete it (hidden files such as .DS_Store are skipped "
    "by themselves); images must end in " + ", ".join(IMAGE_EXTENSIONS),
    "image outside a class folder": "move it into the folder of its class",
    "empty class folder": "add images of that class or remove the folder",
    "class missing from train": "add training images of that class to train/<class>/, or rename or remove the "
    "folder",
    "malformed row": "give every row as many fields as the header (quote fields that hold the delimiter)",
    "unknown label": "correct the label: 0/1 columns hold 0 or 1, a val/test row's label must occur in a train "
    "row, task: multiclass needs exactly one label per row (or set task: multilabel)",
    "empty label": "give the row its label (task: multilabel allows rows without labels)",
    "unknown split": "use train, val or test in the split column",
    "duplicate path": "keep one row per image (for several labels: task multilabel with label_separator or 0/1 "
    "columns)",
}


@dataclass
class BadInputLog:
    """The problems found in the data: raised as one error (``bad_input: error``) or skipped and counted."""

    policy: BadInput
    owner: str
    problems: dict[str, list[str]] = field(default_factory=dict)
    hidden: int = 0
    ignored: list[str] = field(default_factory=list)

    def add(self, kind: str, detail: str) -> None:
        self.problems.setdefault(kind, []).append(detail)

    def check(self) -> None:
        """Raise every problem found so far as one error, unless ``bad_input: skip``."""
        if self.policy == "skip" or not self.problems:
            return
        parts = []
        for kind, details in self.problems.items():
            shown = "; ".join(details[:5]) + (f"; and {len(details) - 5} more" if len(details) > 5 else "")
            parts.append(f"{len(details)} {kind}(s): {shown}. Fix: {FIXES[kind]}.")
        raise ImageDataError(
            f"{self.owner}: " + " ".join(parts) + " Or set bad_input: skip to skip them (counted and logged)."
        )

    def skipped_summary(self) -> list[str]:
        lines = [
            f"skipped {len(details)} {kind}(s) (bad_input: skip), e.g. {details[0]}"
            for kind, details in self.problems.items()
        ]
        if self.hidden:
            lines.append(f"skipped {self.hidden} hidden or system file(s)/folder(s) (.DS_Store, Thumbs.db, ...)")
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else "")
            lines.append(f"not used: {len(self.ignored)} file(s) outside the class folders ({shown})")
        return lines


def is_hidden(name: str) -> bool:
    """Hidden and operating-system files and folders: never data."""
    low = name.lower()
    return name.startswith(".") or low in SYSTEM_FILES or low in SYSTEM_FOLDERS


# -- datasets ------------------------------------------------------------------------------------------------------
class PhotoDataset(Dataset):
    """Image files read when asked for: ``(transform(image), target)``.

    ``infos``: the files' headers (:func:`probe_image`); ``targets``: ``(N,)`` int64 or ``(N, K)`` float32.
    """

    def __init__(
        self, infos: list[ImageInfo], targets: torch.Tensor, in_channels: int, transform: Callable[[Any], Any]
    ) -> None:
        if len(infos) != len(targets):
            raise ValueError(f"{len(infos)} images but {len(targets)} targets")
        self.infos, self.targets, self.in_channels, self.transform = infos, targets, in_channels, transform

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image = read_photo(self.infos[index], self.in_channels)
        return self.transform(tv_tensors.Image(image)), self.targets[index]


@dataclass
class _Item:
    """One labelled image before its header is read: ``target`` a class index or a tuple of class indices."""

    path: Path
    where: str  # how errors name it: the path, or "line 7 of labels.csv (path)"
    target: int | tuple[int, ...]
    split: str  # train / val / test


@dataclass
class _Collected:
    """What a layout yields: classes, task, labelled files, and which splits to hold out of the training files."""

    class_names: list[str]
    task: Task
    items: list[_Item]
    carve: tuple[str, ...]  # splits held out of the training items by val_size / test_size
    source: str  # the summary's first line
    notes: list[str] = field(default_factory=list)


@dataclass
class _Split:
    infos: list[ImageInfo]
    targets: torch.Tensor


# -- the base ------------------------------------------------------------------------------------------------------
class _PhotoDataModule(pl.LightningDataModule):
    """What both layouts share: checking, splitting, summarizing, normalizing and loading (see the module docstring).

    Subclasses implement :meth:`_collect`.
    """

    def __init__(
        self,
        image_size: int | list[int] = 224,
        in_channels: int = 3,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        persistent_workers: bool | None = None,
        pin_memory: bool | None = None,
        normalize: Literal["imagenet", "data", "weights", "none"] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = True,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        auto_augment: Literal["none", "trivial", "rand"] = "none",
        random_erasing: float = 0.0,
        crop_fraction: float = 0.875,
        bad_input: BadInput = "error",
        verify_images: Literal["header", "decode"] = "header",
        balance: Balance = "none",
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB); got {in_channels}. Fix: in_channels: 3.")
        for name, value, allowed in (
            ("bad_input", bad_input, ("error", "skip")),
            ("verify_images", verify_images, ("header", "decode")),
            ("balance", balance, ("none", "sampler", "loss")),
        ):
            if value not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(allowed)}; got {value!r}. Fix: {name}: {allowed[0]}."
                )
        if num_workers < 0 or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0; got {batch_size}, {num_workers}.")
        if persistent_workers and num_workers == 0:
            raise ValueError(
                "persistent_workers: true needs worker processes. Fix: set num_workers > 0, or leave "
                "persistent_workers unset (on whenever num_workers > 0)."
            )
        if pin_memory and not torch.cuda.is_available():
            raise ValueError(
                "pin_memory: true, but CUDA is not available, so it cannot take effect. Fix: leave pin_memory unset "
                "(on exactly when CUDA is available)."
            )
        for name, size in (("val_size", val_size), ("test_size", test_size)):
            holdout_count(size, 10, name)  # checks the value
        self.image_size = as_size(image_size)
        self.in_channels = in_channels
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.normalize = normalize
        self.augment, self.hflip, self.crop_scale = augment, hflip, tuple(crop_scale)
        self.auto_augment, self.random_erasing, self.crop_fraction = auto_augment, random_erasing, crop_fraction
        self.bad_input, self.verify_images, self.balance = bad_input, verify_images, balance
        # The statistics and transforms are checked now (a wrong value stops here, not at the first batch).
        if normalize in ("data", "weights") and (mean is not None or std is not None):
            normalization_stats(normalize, mean, std, in_channels)  # raises: both set
        self._explicit_stats = (
            None if normalize in ("data", "weights") else normalization_stats(normalize, mean, std, in_channels)
        )
        self.interpolation = "bilinear"  # of the evaluation resize; normalize: weights takes the weights' own
        self.weights_preprocessing: dict[str, Any] | None = None
        # The normalization in use (None: none, or normalize: data before the statistics are computed).
        self.mean: tuple[float, ...] | None = None if self._explicit_stats is None else self._explicit_stats[0]
        self.std: tuple[float, ...] | None = None if self._explicit_stats is None else self._explicit_stats[1]
        self._train_transform(None)
        photo_eval_transform(self.image_size, None, crop_fraction)
        self._index: dict[str, Any] | None = None
        self.train_set: PhotoDataset | None = None
        self.val_set: PhotoDataset | None = None
        self.test_set: PhotoDataset | None = None

    # -- subclasses --------------------------------------------------------------------------------------------------
    def _collect(self, bad: BadInputLog) -> _Collected:
        """List the labelled files (no image is opened); report problems to ``bad``."""
        raise NotImplementedError

    # -- the attributes the CLI links --------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.index["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.index["class_names"])

    @property
    def task(self) -> Task:
        return self.index["task"]

    @property
    def class_counts(self) -> list[int]:
        """Training images per class (multi-label: training images in which the class is present)."""
        return list(self.index["class_counts"])

    @property
    def class_weights(self) -> list[float] | None:
        """``balance: loss``: each class's inverse training frequency, normalized to mean 1; else None."""
        if self.balance != "loss":
            return None
        return self._weights(self.class_counts)

    @property
    def sample_weights(self) -> torch.Tensor:
        """Per training image, the weight that ``balance: sampler`` draws it with: 1 / its class's count
        (multi-label: of its rarest class; images without a label count as one more class)."""
        split = self.index["splits"]["train"]
        counts = torch.tensor(self.class_counts, dtype=torch.float64)
        if self.task == "multiclass":
            return 1.0 / counts[split.targets]
        positive = split.targets > 0
        empty = ~positive.any(dim=1)
        per_class = torch.where(positive, 1.0 / counts.clamp(min=1), torch.zeros(()).double())
        weights = per_class.max(dim=1).values
        weights[empty] = 1.0 / max(int(empty.sum()), 1)
        return weights

    # -- the index: listing, checking, splitting, once ----------------------------------------------------------------
    @property
    def index(self) -> dict[str, Any]:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _build_index(self) -> dict[str, Any]:
        name = type(self).__name__
        bad = BadInputLog(self.bad_input, name)
        collected = self._collect(bad)
        bad.check()
        infos = self._probe(collected.items, bad)
        bad.check()
        items = [(item, info) for item, info in zip(collected.items, infos, strict=True) if info is not None]
        num_classes = len(collected.class_names)
        # hold out the splits that the layout does not give
        pool = [k for k, (item, _) in enumerate(items) if item.split == "train"]
        split_of = {k: item.split for k, (item, _) in enumerate(items)}
        held = {s: holdout_count(getattr(self, f"{s}_size"), len(pool), f"{s}_size") if s in collected.carve else 0
                for s in ("val", "test")}  # fmt: skip
        if held["val"] or held["test"]:
            groups = self._groups([items[k][0].target for k in pool], num_classes, collected.task)
            _, val_pos, test_pos = stratified_split(groups, held["val"], held["test"], self.split_seed)
            for p in val_pos:
                split_of[pool[p]] = "val"
            for p in test_pos:
                split_of[pool[p]] = "test"
        splits = {}
        for s in SPLITS:
            chosen = [items[k] for k in range(len(items)) if split_of[k] == s]
            splits[s] = _Split([info for _, info in chosen], self._targets([i.target for i, _ in chosen], num_classes,
                                                                            collected.task))  # fmt: skip
        train = splits["train"].targets
        if collected.task == "multiclass":
            counts = torch.bincount(train, minlength=num_classes).tolist()
            missing = [collected.class_names[c] for c in range(num_classes) if counts[c] == 0]
            if missing:
                raise ImageDataError(
                    f"{name}: class(es) {', '.join(missing)} have no training image left (every one was skipped or "
                    f"is in val/test). Fix: add training images of them, or remove them from the data."
                )
        else:
            counts = train.sum(dim=0).long().tolist() if len(train) else [0] * num_classes
            empty = [collected.class_names[c] for c in range(num_classes) if counts[c] == 0]
            if empty and self.balance != "none":
                raise ImageDataError(
                    f"{name}: balance: {self.balance} weighs classes by their training positives, but "
                    f"{', '.join(empty)} has none. Fix: add training images of it, or set balance: none."
                )
        index = {
            "class_names": collected.class_names,
            "task": collected.task,
            "splits": splits,
            "class_counts": counts,
        }
        self._log_summary(collected, splits, counts, bad)
        return index

    def _probe(self, items: list[_Item], bad: BadInputLog) -> list[ImageInfo | None]:
        paths = [item.path for item in items]
        decode = self.verify_images == "decode"
        show = len(paths) >= PROGRESS_MIN_FILES and rank_zero_only.rank == 0

        def probe(path: Path) -> ImageInfo | BadImageError:
            try:
                return probe_image(path, decode)
            except BadImageError as err:
                return err

        results: list[ImageInfo | None] = []
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            outcomes: Iterable[ImageInfo | BadImageError] = pool.map(probe, paths)
            if show:
                from tqdm import tqdm

                outcomes = tqdm(outcomes, total=len(paths), desc=f"{type(self).__name__}: checking images")
            for outcome, item in zip(outcomes, items, strict=True):
                if isinstance(outcome, BadImageError):
                    prefix = "" if item.where == str(item.path) else f"{item.where}: "
                    bad.add(outcome.kind, prefix + outcome.detail)
                    results.append(None)
                else:
                    results.append(outcome)
        return results

    @staticmethod
    def _groups(targets: list[Any], num_classes: int, task: str) -> list[int]:
        """Stratification groups: the class (multi-label: the rarest label of the row; none: its own group)."""
        if task == "multiclass":
            return [int(t) for t in targets]
        counts = Counter(c for t in targets for c in t)
        return [min(t, key=lambda c: (counts[c], c)) if t else num_classes for t in targets]

    @staticmethod
    def _targets(targets: list[Any], num_classes: int, task: str) -> torch.Tensor:
        if task == "multiclass":
            return torch.tensor([int(t) for t in targets], dtype=torch.int64)
        hot = torch.zeros(len(targets), num_classes, dtype=torch.float32)
        for row, labels in enumerate(targets):
            hot[row, list(labels)] = 1.0
        return hot

    # -- the summary -------------------------------------------------------------------------------------------------
    def _log_summary(
        self, collected: _Collected, splits: dict[str, _Split], counts: list[int], bad: BadInputLog
    ) -> None:
        names = collected.class_names
        shown = ", ".join(names[:30]) + (f", ... ({len(names) - 30} more)" if len(names) > 30 else "")
        lines = [f"{type(self).__name__}: {collected.source}", f"  {len(names)} classes ({collected.task}): {shown}"]
        for s in SPLITS:
            split = splits[s]
            if not split.infos:
                lines.append(f"  {s}: no images")
                continue
            per_class = (torch.bincount(split.targets, minlength=len(names)).tolist() if collected.task == "multiclass"
                         else split.targets.sum(dim=0).long().tolist())  # fmt: skip
            what = "per class" if collected.task == "multiclass" else "positives per class"
            detail = (", ".join(f"{n} {c}" for n, c in zip(names, per_class, strict=True)) if len(names) <= 30
                      else f"min {min(per_class)}, max {max(per_class)}")  # fmt: skip
            lines.append(f"  {s}: {len(split.infos)} image{'s' if len(split.infos) != 1 else ''} ({what}: {detail})")
        infos = [info for s in SPLITS for info in splits[s].infos]
        if infos:
            widths, heights = [i.width for i in infos], [i.height for i in infos]
            sizes = Counter((i.width, i.height) for i in infos)
            size_text = (", ".join(f"{w}x{h}" for w, h in sorted(sizes)) if len(sizes) <= 5 else
                         f"width {min(widths)}..{max(widths)}, height {min(heights)}..{max(heights)} "
                         f"({len(sizes)} distinct sizes)")  # fmt: skip
            modes = Counter(i.mode for i in infos)
            formats = Counter(i.format for i in infos)
            lines.append(f"  image sizes (width x height): {size_text}")
            lines.append(
                "  modes: " + ", ".join(f"{m} {c}" for m, c in modes.most_common())
                + "; formats: " + ", ".join(f"{f} {c}" for f, c in formats.most_common())
                + f"; read as {self.in_channels} channel(s), {self.image_size[0]}x{self.image_size[1]} crops"
            )
            examples = {}
            for info in infos:
                examples.setdefault(info.mode, info.path)
            notes = conversion_notes(modes, examples, self.in_channels)
            frames = [i for i in infos if i.frames > 1]
            if frames:
                notes.append(f"{len(frames)} multi-frame image(s) (e.g. {frames[0].path}): the first frame is used")
            lines += [f"  note: {n}" for n in collected.notes + notes]
        lines += [f"  {line}" for line in bad.skipped_summary()]
        if self.balance == "loss":
            lines.append("  balance: loss, class_weights " + ", ".join(f"{w:.3g}" for w in self._weights(counts)))
        rank_zero_info("\n".join(lines))

    @staticmethod
    def _weights(counts: list[int]) -> list[float]:
        """Inverse frequencies normalized to mean 1 (every count > 0: checked when the index is built)."""
        inverse = 1.0 / np.maximum(np.asarray(counts, dtype=np.float64), 1)
        return [float(w) for w in inverse / inverse.mean()]

    # -- normalization -----------------------------------------------------------------------------------------------
    def use_weights_preprocessing(
        self, resize: int, crop: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bilinear",
    ) -> None:
        """``normalize: weights``: normalize with the pretrained weights' own ``mean`` / ``std``, and evaluate as
        they were evaluated (the short side resized in the ratio ``resize / crop`` to the crop, with their
        ``interpolation``: ``crop_fraction`` becomes ``crop / resize``). ``image_size`` stays the crop size used
        (a note is logged when it differs from the weights' ``crop``). ``train.py`` calls this with the model's
        ``weights_preprocessing``; in Python: ``dm.use_weights_preprocessing(**model.weights_preprocessing)``."""
        if self.normalize != "weights":
            raise ValueError(
                f"use_weights_preprocessing is for normalize: weights, but normalize is {self.normalize!r}: the "
                "weights' statistics would replace it. Fix: set normalize: weights."
            )
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if self.in_channels == 1 and len(mean) == 3:
            # One-channel images through RGB weights: the average statistics, as the imagenet preset does.
            mean, std = (round(sum(mean) / 3, 3),), (round(sum(std) / 3, 3),)
            rank_zero_info(f"{type(self).__name__}: normalize: weights: in_channels=1, the weights' RGB mean / std "
                           f"averaged to {mean[0]} / {std[0]}")  # fmt: skip
        self._explicit_stats = normalization_stats(None, mean, std, self.in_channels)
        self.mean, self.std = self._explicit_stats
        self.crop_fraction = crop / resize
        self.interpolation = interpolation
        self.weights_preprocessing = {"resize": resize, "crop": crop, "mean": mean, "std": std,
                                      "interpolation": interpolation}  # fmt: skip
        used = min(self.image_size)
        note = "" if used == crop else f" (image_size {used}; the weights were evaluated at {crop})"
        rank_zero_info(
            f"{type(self).__name__}: normalize: weights: mean {list(mean)}, std {list(std)}, evaluation resize "
            f"{round(used / self.crop_fraction)} -> crop {used} ({interpolation}){note}"
        )
        self.train_set = self.val_set = self.test_set = None  # rebuilt with the new transforms at setup

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        if self.normalize == "weights" and self.weights_preprocessing is None:
            raise ValueError(
                f"{type(self).__name__}: normalize: weights needs the preprocessing of the model's pretrained "
                "weights, and none was given. Fix: set the model's pretrained to a torchvision: or timm: name "
                "(train.py passes its preprocessing on), call dm.use_weights_preprocessing(...) in Python, or set "
                "normalize: imagenet / data."
            )
        if self.normalize != "data":
            return self._explicit_stats
        if self.mean is None or self.std is None:
            self.mean, self.std = self.data_statistics()
        return self.mean, self.std

    def data_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training split's images (as the evaluation transform crops them, in
        [0, 1]): computed once and cached in ``$ZOO_CACHE_DIR`` (default ``~/.cache/vision-zoo``) under
        ``image_stats/``, keyed by the file list (paths, sizes, modification times) and the crop settings."""
        infos = self.index["splits"]["train"].infos
        digest = hashlib.sha256()
        digest.update(f"v1 {self.in_channels} {self.image_size} {self.crop_fraction}\n".encode())
        for info in infos:
            stat = info.path.stat()
            digest.update(f"{info.path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        cache = stats_cache_dir() / f"{digest.hexdigest()[:32]}.json"
        if cache.is_file():
            try:
                stored = json.loads(cache.read_text())
                rank_zero_info(f"{type(self).__name__}: normalize: data, statistics from {cache}")
                return tuple(stored["mean"]), tuple(stored["std"])
            except (OSError, ValueError, KeyError):
                pass  # an unreadable cache entry is computed again (and rewritten)
        dataset = PhotoDataset(infos, torch.zeros(len(infos)), self.in_channels,
                               photo_pixels_transform(self.image_size, self.crop_fraction))  # fmt: skip
        loader = DataLoader(dataset, batch_size=64, num_workers=self.num_workers)
        total = torch.zeros(self.in_channels, dtype=torch.float64)
        squares = torch.zeros(self.in_channels, dtype=torch.float64)
        pixels = 0
        batches: Iterable[Any] = loader
        if len(infos) >= PROGRESS_MIN_FILES and rank_zero_only.rank == 0:
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"{type(self).__name__}: image statistics")
        for images, _ in batches:
            x = images.double()
            total += x.sum(dim=(0, 2, 3))
            squares += (x * x).sum(dim=(0, 2, 3))
            pixels += x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / pixels
        std = (squares / pixels - mean * mean).clamp(min=0).sqrt().clamp(min=1e-6)
        result = tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"mean": result[0], "std": result[1], "images": len(infos),
                                   "source": str(self._describe_source())}, indent=1))  # fmt: skip
        os.replace(tmp, cache)
        rank_zero_info(
            f"{type(self).__name__}: normalize: data, mean {list(result[0])}, std {list(result[1])} of "
            f"{len(infos)} training images (cached in {cache})"
        )
        return result

    def _describe_source(self) -> str:
        return ""

    # -- Lightning hooks ---------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Once per node, before setup on every process: the data statistics are computed (and cached) here.
        if self.normalize == "data":
            self._stats()

    def train_transform(self) -> Callable[[Any], Any]:
        """The training split's transform (augmented unless ``augment: false``)."""
        if not self.augment:
            return self.eval_transform()
        return self._train_transform(self._stats())

    def _train_transform(self, stats: tuple[Sequence[float], Sequence[float]] | None) -> Callable[[Any], Any]:
        return photo_train_transform(
            self.image_size, stats, hflip=self.hflip, crop_scale=self.crop_scale, auto_augment=self.auto_augment,
            random_erasing=self.random_erasing,
        )  # fmt: skip

    def eval_transform(self) -> Callable[[Any], Any]:
        """The validation / test / predict transform (resize, center crop, normalize; never random)."""
        return photo_eval_transform(self.image_size, self._stats(), self.crop_fraction, self.interpolation)

    def setup(self, stage: str | None = None) -> None:
        splits = self.index["splits"]
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = PhotoDataset(splits["train"].infos, splits["train"].targets, self.in_channels,
                                          self.train_transform())  # fmt: skip
        if self.val_set is None:
            self.val_set = PhotoDataset(splits["val"].infos, splits["val"].targets, self.in_channels,
                                        self.eval_transform())  # fmt: skip
        if self.test_set is None and stage in (None, "test", "predict"):
            test = splits["test"]
            if not test.infos and splits["val"].infos:
                rank_zero_info(f"{type(self).__name__}: no test images: test and predict use the validation split")
                test = splits["val"]
            self.test_set = PhotoDataset(test.infos, test.targets, self.in_channels, self.eval_transform())

    def _require(self, dataset: PhotoDataset | None, what: str) -> PhotoDataset:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for the {what} dataloader")
        return dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set, "train")
        common = dict(
            batch_size=self.batch_size,
            drop_last=len(dataset) > self.batch_size,  # the zoo's training loaders (make_split_loader)
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
        )
        if self.balance != "sampler":
            # Resumable mid-epoch, shuffled by a RandomSampler (a DistributedSampler under DDP).
            return make_dataloader(dataset, shuffle=True, **common)  # type: ignore[arg-type]
        self._check_sampler_is_distributed()
        # Drawn from the global torch RNG, which ResumableDataLoader stores and restores: a resumed epoch draws the
        # same images. Under DDP Lightning wraps it in a DistributedSamplerWrapper: each process takes its share
        # of the weighted draw (the processes draw the same sequence when seeded alike).
        sampler = WeightedRandomSampler(self.sample_weights, num_samples=len(dataset), replacement=True)
        return ResumableDataLoader(dataset, sampler=sampler, **common)  # type: ignore[arg-type]

    def _check_sampler_is_distributed(self) -> None:
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return
        connector = getattr(trainer, "_accelerator_connector", None)
        if not getattr(connector, "use_distributed_sampler", True):
            raise ValueError(
                f"balance: sampler under {trainer.world_size} processes with the trainer's use_distributed_sampler: "
                "false: every process would draw a whole epoch of the weighted sampler (the epoch would be "
                f"{trainer.world_size}x as long). Fix: leave use_distributed_sampler on (Lightning then shares the "
                "weighted draw out between the processes), or use balance: loss."
            )

    def _eval_loader(self, dataset: PhotoDataset) -> DataLoader:
        # Every image exactly once under DDP (no padding repeats): datamodules.distributed.
        return make_dataloader(
            dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers,
            persistent_workers=self.persistent_workers, pin_memory=self.pin_memory,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require(self.val_set, "val"))

    def test_dataloader(self) -> DataLoader:
        dataset = self._require(self.test_set, "test")
        if not len(dataset):
            raise ImageDataError(
                f"{type(self).__name__}: no test or validation images to test on. Fix: add a test split (test/ "
                f"folder or split column) or set test_size / val_size > 0."
            )
        return self._eval_loader(dataset)

    def predict_dataloader(self) -> DataLoader:
        """The test split (the validation split when there is no test split)."""
        return self.test_dataloader()


def stats_cache_dir() -> Path:
    """``$ZOO_CACHE_DIR/image_stats`` (default ``~/.cache/vision-zoo/image_stats``)."""
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "vision-zoo").expanduser() / "image_stats"


def _resolve_existing(path: str | os.PathLike, what: str, fix: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ImageDataNotFoundError(f"{what} {resolved} does not exist (working directory {Path.cwd()}). Fix: {fix}")
    return resolved


# -- a folder per class ----------------------------------------------------------------------------------------------
class ImageFolderDataModule(_PhotoDataModule):
    """Images in a folder per class: ``<data_dir>/<class>/<image>`` or ``<data_dir>/{train,val,test}/<class>/<image>``
    (see the module docstring for the split, the conversions, bad input and the attributes the CLI links).

    Args:
        data_dir: the folder holding the class folders (or ``train/``, ``val/``, ``test/``). Required.
        image_size: side of the square network input (or ``[height, width]``): training crops and the center crop
            of evaluation.
        in_channels: 1 (grayscale) or 3 (RGB): every image is converted to it (the module docstring's table).
        val_size, test_size: images held out of the training images for validation / test (a fraction < 1 or a
            count), for the splits the layout does not give as folders; 0: none (test then uses the val split).
        split_seed: seed of that split (its own generator: the same everywhere, independent of the training seed).
        batch_size, eval_batch_size: training and evaluation batch sizes (evaluation default: ``batch_size``).
        num_workers: DataLoader worker processes that read and transform the images.
        persistent_workers: keep the workers across epochs (default: whenever ``num_workers > 0``).
        pin_memory: page-locked batches for faster host-to-GPU copies (default: when CUDA is available).
        normalize: ``imagenet`` (default), ``data`` (the training split's own per-channel mean / std, computed
            once and cached, see :meth:`data_statistics`), ``weights`` (the model's pretrained weights' own mean,
            std, evaluation resize ratio and interpolation, e.g. of ``torchvision:IMAGENET1K_V2``; ``train.py`` takes
            them from the model, see :meth:`use_weights_preprocessing`), ``none`` (pixels in [0, 1]); or leave it
            unset and give ``mean`` and ``std``.
        mean, std: explicit per-channel normalization of pixels in [0, 1].
        augment: the training augmentation (:func:`datamodules.photo_transforms.photo_train_transform`); false:
            training images get the evaluation transform. Validation and test are never augmented.
        hflip: probability of a horizontal flip (0: off; keep 0 for text, digits, or anything with a handedness).
        crop_scale: ``RandomResizedCrop``'s range of the crop's area (fraction of the image).
        auto_augment: ``none``, ``trivial`` (TrivialAugmentWide) or ``rand`` (RandAugment, magnitude 9).
        random_erasing: probability of erasing a random rectangle (0: off; 0.25 in the timm / torchvision recipes).
        crop_fraction: evaluation resizes the short side to ``image_size / crop_fraction``, then center-crops.
        bad_input: ``error`` (default: stop naming the files and the fix) or ``skip`` (skip them, count and log).
        verify_images: ``header`` (default, cheap) or ``decode`` (decode every image once at setup).
        balance: ``none``; ``sampler`` (the training loader draws images with probability inverse to their class's
            frequency, with replacement, ``len(train)`` per epoch); ``loss`` (``class_weights`` for the model's
            loss: inverse class frequency, normalized to mean 1).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int | list[int] = 224,
        in_channels: int = 3,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        persistent_workers: bool | None = None,
        pin_memory: bool | None = None,
        normalize: Literal["imagenet", "data", "weights", "none"] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = True,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        auto_augment: Literal["none", "trivial", "rand"] = "none",
        random_erasing: float = 0.0,
        crop_fraction: float = 0.875,
        bad_input: BadInput = "error",
        verify_images: Literal["header", "decode"] = "header",
        balance: Balance = "none",
    ) -> None:
        super().__init__(
            image_size, in_channels, val_size, test_size, split_seed, batch_size, eval_batch_size, num_workers,
            persistent_workers, pin_memory, normalize, mean, std, augment, hflip, crop_scale, auto_augment,
            random_erasing, crop_fraction, bad_input, verify_images, balance,
        )  # fmt: skip
        if not data_dir:
            raise ImageDataNotFoundError(
                "ImageFolderDataModule needs data_dir, the folder of your class folders. Fix: "
                "--data.init_args.data_dir /path/to/my_images (holding <class>/<image> or train/<class>/<image>)."
            )
        self.data_dir = data_dir

    def _describe_source(self) -> str:
        return str(self.data_dir)

    def _collect(self, bad: BadInputLog) -> _Collected:
        root = _resolve_existing(
            self.data_dir, "data_dir",
            "set data_dir to the folder of your class folders (<class>/<image> or train/<class>/<image>).",
        )  # fmt: skip
        if not root.is_dir():
            raise ImageDataNotFoundError(f"data_dir {root} is a file, not a folder. Fix: give the folder of the class "
                                         f"folders (for a CSV of labels use ImageCSVDataModule).")  # fmt: skip
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
        split_folders = {s: [f for f in folders if SPLIT_NAMES.get(f.lower()) == s] for s in SPLITS}
        if split_folders["train"]:
            others = [f for f in folders if f.lower() not in SPLIT_NAMES]
            if others:
                raise ImageDataError(
                    f"{root} holds a train/ folder and also {', '.join(others)}/: the layout is either "
                    f"<data_dir>/<class>/<image> or <data_dir>/train|val|test/<class>/<image>, not both. Fix: move "
                    f"those folders into train/ (if they are classes) or out of {root}."
                )
            for s, found in split_folders.items():
                if len(found) > 1:
                    raise ImageDataError(f"{root} holds {', '.join(found)}: two folders of the {s} split. Fix: merge "
                                         f"them into one.")  # fmt: skip
            split_roots = {s: root / found[0] for s, found in split_folders.items() if found}
            sizes = {"val": self.val_size, "test": self.test_size}
            carve = tuple(s for s in ("val", "test") if s not in split_roots and sizes[s])  # a size 0 holds out none
            layout = "train/val/test folders" + (f" ({', '.join(carve)} held out of train/)" if carve else "")
        else:
            if split_folders["val"] or split_folders["test"]:
                raise ImageDataError(
                    f"{root} holds {', '.join(split_folders['val'] + split_folders['test'])}/ but no train/ folder. "
                    f"Fix: put the training images in {root / 'train'}/<class>/, or (for a folder per class) rename "
                    f"those folders."
                )
            split_roots, carve, layout = {"train": root}, ("val", "test"), "<class>/<image>"
        scanned = {s: self._scan_split(folder, bad) for s, folder in split_roots.items()}
        class_names = sorted(c for c, files in scanned["train"].items() if files)
        classes = {c: i for i, c in enumerate(class_names)}
        items: list[_Item] = []
        for s, per_class in scanned.items():
            for c, files in per_class.items():
                if c not in classes:
                    if s != "train" and files:
                        bad.add("class missing from train",
                                f"{split_roots[s] / c} ({len(files)} images; train/ has no folder {c})")  # fmt: skip
                    continue
                items += [_Item(p, str(p), classes[c], s) for p in files]
        if not class_names:
            raise ImageDataError(
                f"no class folders with images in {split_roots['train']}. Fix: arrange the images as "
                f"{split_roots['train']}/<class>/<image> (one folder per class)."
            )
        held = ", ".join(f"{s}_size={getattr(self, f'{s}_size')}" for s in carve)
        source = f"{root} (layout {layout}{'; split ' + held + f', split_seed={self.split_seed}' if carve else ''})"
        return _Collected(class_names, "multiclass", items, carve, source)

    def _scan_split(self, folder: Path, bad: BadInputLog) -> dict[str, list[Path]]:
        """``{class: image paths}`` of one split folder (class folders, images in any depth below them)."""
        per_class: dict[str, list[Path]] = {}
        for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if is_hidden(entry.name):
                bad.hidden += 1
            elif entry.is_dir():
                files = self._scan_class(entry, bad)
                if not files:
                    bad.add("empty class folder", f"{entry} holds no images")
                per_class[entry.name] = files
            elif entry.suffix.lower() in IMAGE_EXTENSIONS:
                bad.add("image outside a class folder", f"{entry} (directly in {folder}, so it has no class)")
            else:
                bad.ignored.append(str(entry))
        return per_class

    @staticmethod
    def _scan_class(folder: Path, bad: BadInputLog) -> list[Path]:
        files: list[Path] = []
        for current, dirs, names in os.walk(folder, followlinks=True):
            hidden_dirs = [d for d in dirs if is_hidden(d)]
            bad.hidden += len(hidden_dirs)
            dirs[:] = sorted((d for d in dirs if not is_hidden(d)), key=natural_key)
            for name in sorted(names, key=natural_key):
                path = Path(current) / name
                if is_hidden(name):
                    bad.hidden += 1
                elif path.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(path)
                else:
                    bad.add("non-image file", f"{path} (extension {path.suffix or 'none'!s})")
        return files


# -- a CSV / TSV of paths and labels --------------------------------------------------------------------------------
_INTEGER = re.compile(r"^[+-]?\d+$")
_ZERO_ONE = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def read_table(path: Path, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, list[str]]], str]:
    """``(header, [(line number, fields)], delimiter)`` of a CSV / TSV. The delimiter: ``delimiter``, else a tab for
    ``.tsv`` / ``.tab``, else sniffed among comma, tab and semicolon (comma when unclear). Blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ImageDataError(f"{path} is not UTF-8 text ({err}). Fix: save it as UTF-8 (CSV UTF-8).") from err
    if delimiter is None:
        if path.suffix.lower() in (".tsv", ".tab"):
            delimiter = "\t"
        else:
            try:
                delimiter = csv.Sniffer().sniff(text[:65536], delimiters=",\t;").delimiter
            except csv.Error:
                delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
            else:
                rows.append((reader.line_num, fields))
    except csv.Error as err:
        raise ImageDataError(
            f"{path}, line {reader.line_num}: {err}. Fix: close the quote, or quote the field."
        ) from err
    if header is None:
        raise ImageDataError(f"{path} is empty. Fix: give a header row (e.g. image,label) and one row per image.")
    duplicates = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicates:
        raise ImageDataError(f"{path}: the header repeats the column(s) {duplicates}. Fix: give each column its own "
                             f"name.")  # fmt: skip
    return header, rows, delimiter


class ImageCSVDataModule(_PhotoDataModule):
    """Images listed in a CSV or TSV with their labels (see the module docstring for the split, the conversions,
    bad input and the attributes the CLI links).

    Args:
        csv: the label table (CSV; TSV for ``.tsv`` / ``.tab``; else the delimiter is sniffed). Required.
        image_dir: the folder the paths of the table are relative to (absolute paths are used as they are). A
            relative ``image_dir`` is looked up in the working directory, then beside the table; default: the
            table's folder.
        path_column: the column of image paths; ``auto``: the first column named image, image_path, path, file,
            filename, ... (any case), else the first column whose first value ends in an image extension.
        label_column: the column of labels: one per row (single-label), or several per row separated by
            ``label_separator`` (multi-label).
        label_columns: several columns of 0/1 (multi-label; the class names are the column names, in table order).
        label_separator: the separator of several labels in ``label_column`` (e.g. ``"|"``): multi-label.
        split_column: a column of train / val / test (also training, valid, validation, testing); ``auto``: a
            column named ``split`` if there is one; None: none. Splits it does not give are held out of the train
            rows by ``val_size`` / ``test_size``.
        task: ``auto`` (multi-label for ``label_columns`` or ``label_separator``, else multiclass), ``multiclass``
            (every row exactly one label) or ``multilabel`` (targets are multi-hot rows).
        delimiter: the table's delimiter, instead of the extension / sniffing.

    With neither ``label_column`` nor ``label_columns``, the labels are found: the one column left besides the path
    and split columns, or the columns left when they hold 0 / 1 (on the first row). Class names: the 0/1 column
    names; else the labels of the train rows, sorted (numerically when they are all integers). The other arguments
    are :class:`ImageFolderDataModule`'s.
    """

    def __init__(
        self,
        csv: str | None = None,
        image_dir: str | None = None,
        path_column: str = "auto",
        label_column: str | None = None,
        label_columns: list[str] | None = None,
        label_separator: str | None = None,
        split_column: str | None = "auto",
        task: Literal["auto", "multiclass", "multilabel"] = "auto",
        delimiter: str | None = None,
        image_size: int | list[int] = 224,
        in_channels: int = 3,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        persistent_workers: bool | None = None,
        pin_memory: bool | None = None,
        normalize: Literal["imagenet", "data", "weights", "none"] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = True,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        auto_augment: Literal["none", "trivial", "rand"] = "none",
        random_erasing: float = 0.0,
        crop_fraction: float = 0.875,
        bad_input: BadInput = "error",
        verify_images: Literal["header", "decode"] = "header",
        balance: Balance = "none",
    ) -> None:
        super().__init__(
            image_size, in_channels, val_size, test_size, split_seed, batch_size, eval_batch_size, num_workers,
            persistent_workers, pin_memory, normalize, mean, std, augment, hflip, crop_scale, auto_augment,
            random_erasing, crop_fraction, bad_input, verify_images, balance,
        )  # fmt: skip
        if not csv:
            raise ImageDataNotFoundError(
                "ImageCSVDataModule needs csv, the table of image paths and labels. Fix: --data.init_args.csv "
                "labels.csv --data.init_args.image_dir images/."
            )
        if label_column is not None and label_columns is not None:
            raise ValueError("label_column and label_columns are both set. Fix: set label_column (one column of "
                             "labels) or label_columns (0/1 columns), not both.")  # fmt: skip
        if label_separator is not None and label_columns is not None:
            raise ValueError("label_separator applies to label_column, not to 0/1 label_columns. Fix: remove it.")
        if task not in ("auto", "multiclass", "multilabel"):
            raise ValueError(f"task must be auto, multiclass or multilabel; got {task!r}.")
        self.csv, self.image_dir, self.path_column = csv, image_dir, path_column
        self.label_column, self.label_columns, self.label_separator = label_column, label_columns, label_separator
        self.split_column, self.task_arg, self.delimiter = split_column, task, delimiter

    def _describe_source(self) -> str:
        return str(self.csv)

    def _image_root(self, table: Path) -> tuple[Path, str | None]:
        if self.image_dir is None:
            return table.parent, None
        given = Path(self.image_dir).expanduser()
        candidates = [given] if given.is_absolute() else [Path.cwd() / given, table.parent / given]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            raise ImageDataNotFoundError(
                f"image_dir {self.image_dir} does not exist (looked in {' and '.join(str(c) for c in candidates)}). "
                f"Fix: set image_dir to the folder that the paths of {table} are relative to."
            )
        note = None
        if len(found) == 2 and found[0].resolve() != found[1].resolve():
            note = f"image_dir {self.image_dir} exists in the working directory and beside {table.name}: " \
                   f"{found[0]} is used"
        return found[0], note

    def _find_path_column(self, header: list[str], rows: list[tuple[int, list[str]]], table: Path) -> str:
        if self.path_column != "auto":
            if self.path_column not in header:
                raise ImageDataError(f"{table} has no column {self.path_column!r} (path_column); its columns are "
                                     f"{header}. Fix: set path_column to one of them.")  # fmt: skip
            return self.path_column
        lower = {c.lower(): c for c in header}
        for name in PATH_COLUMNS:
            if name in lower:
                return lower[name]
        if rows:
            first = rows[0][1]
            for column, value in zip(header, first, strict=False):
                if value.strip().lower().endswith(IMAGE_EXTENSIONS):
                    return column
        raise ImageDataError(
            f"{table}: no column of image paths found among the columns {header} (looked for a column named "
            f"{', '.join(PATH_COLUMNS[:6])}, ... or values ending in an image extension). Fix: set path_column."
        )

    def _collect(self, bad: BadInputLog) -> _Collected:
        table = _resolve_existing(self.csv, "csv", "set csv to your table of image paths and labels.")
        header, rows, delimiter = read_table(table, self.delimiter)
        root, root_note = self._image_root(table)
        path_col = self._find_path_column(header, rows, table)
        notes = [root_note] if root_note else []
        split_col = self.split_column
        if split_col == "auto":
            split_col = next((c for c in header if c.lower() == "split"), None)
        elif split_col is not None and split_col not in header:
            raise ImageDataError(f"{table} has no column {split_col!r} (split_column); its columns are {header}. "
                                 f"Fix: set split_column to one of them, or to null for no split column.")  # fmt: skip
        # which columns hold the labels
        named = [self.label_column] if self.label_column else list(self.label_columns or [])
        missing = [c for c in named if c not in header]
        if missing:
            which = "label_column" if self.label_column else "label_columns"
            raise ImageDataError(f"{table} has no column(s) {missing} ({which}); its columns are {header}. Fix: set "
                                 f"{which} to column(s) of the table.")  # fmt: skip
        rest = [c for c in header if c not in (path_col, split_col) and c != ""]
        label_column, label_columns = self.label_column, self.label_columns
        if not named:
            if len(rest) == 1:
                label_column = rest[0]
            elif len(rest) >= 2 and rows and all(
                v.strip() in _ZERO_ONE for c, v in zip(header, rows[0][1], strict=False) if c in rest
            ):
                label_columns = rest
            else:
                raise ImageDataError(
                    f"{table}: cannot tell which column holds the labels: besides the path column {path_col!r}"
                    f"{f' and the split column {split_col!r}' if split_col else ''} there are {rest or 'no columns'}. "
                    f"Fix: set label_column (one label per row; several with label_separator) or label_columns "
                    f"(columns of 0/1)."
                )
            notes.append(f"labels: {label_column!r}" if label_column else f"labels: 0/1 columns {label_columns}")
        used = {path_col, split_col, label_column, *(label_columns or [])}
        unused = [c for c in header if c not in used]
        if unused:
            notes.append(f"column(s) {unused} of {table.name} not used")
        multi_source = label_columns is not None or self.label_separator is not None
        task: Task = ("multilabel" if multi_source else "multiclass") if self.task_arg == "auto" else self.task_arg
        col = {c: i for i, c in enumerate(header)}
        # read the rows: path, labels (names), split
        parsed: list[tuple[int, Path, list[str], str]] = []
        seen: dict[str, int] = {}
        splits_given: set[str] = set()  # the split column's splits, also of rows skipped later
        for line, fields in rows:
            where = f"line {line} of {table}"
            if len(fields) != len(header):
                bad.add("malformed row", f"{where} has {len(fields)} field(s), the header {len(header)} "
                                         f"({delimiter!r}-separated)")  # fmt: skip
                continue
            value = fields[col[path_col]].strip()
            if not value:
                bad.add("malformed row", f"{where} has an empty {path_col!r}")
                continue
            path = Path(value).expanduser()
            path = path if path.is_absolute() else root / path
            key = os.path.normpath(str(path))
            if key in seen:
                bad.add("duplicate path", f"{where} repeats {value} of line {seen[key]}")
                continue
            seen[key] = line
            split = "train"
            if split_col is not None:
                raw = fields[col[split_col]].strip()
                split = SPLIT_NAMES.get(raw.lower(), "")
                if not split:
                    bad.add("unknown split", f"{where}: split {raw!r}")
                    continue
                splits_given.add(split)
            if label_columns is not None:
                labels, wrong = [], None
                for c in label_columns:
                    v = fields[col[c]].strip()
                    if v not in _ZERO_ONE:
                        wrong = f"{where} ({value}): column {c!r} holds {v!r}, not 0 or 1"
                        break
                    if _ZERO_ONE[v]:
                        labels.append(c)
                if wrong:
                    bad.add("unknown label", wrong)
                    continue
            else:
                raw = fields[col[label_column]].strip()
                labels = [p.strip() for p in raw.split(self.label_separator)] if self.label_separator else [raw]
                labels = [p for p in labels if p]
                if not labels and task == "multiclass":
                    bad.add("empty label", f"{where} ({value}) has an empty {label_column!r}")
                    continue
                labels = list(dict.fromkeys(labels))
            if task == "multiclass" and len(labels) != 1:
                bad.add("unknown label", f"{where} ({value}) has {len(labels)} labels {labels}; task multiclass "
                                         f"needs exactly one")  # fmt: skip
                continue
            if not path.is_file():
                bad.add("missing file", f"{where}: {path} does not exist")
                continue
            parsed.append((line, path, labels, split))
        # the classes
        if label_columns is not None:
            class_names = list(label_columns)
        else:
            names = {label for _, _, labels, split in parsed if split == "train" for label in labels}
            numeric = bool(names) and all(_INTEGER.match(n) for n in names)
            class_names = sorted(names, key=(lambda n: (int(n), n)) if numeric else None)
        classes = {c: i for i, c in enumerate(class_names)}
        items = []
        for line, path, labels, split in parsed:
            unknown = [label for label in labels if label not in classes]
            if unknown:
                bad.add("unknown label", f"line {line} of {table} ({path.name}, {split}): label(s) {unknown} occur "
                                         f"in no train row")  # fmt: skip
                continue
            target: int | tuple[int, ...] = (classes[labels[0]] if task == "multiclass"
                                             else tuple(sorted(classes[label] for label in labels)))  # fmt: skip
            items.append(_Item(path, f"line {line} of {table}", target, split))
        if not class_names:
            raise ImageDataError(f"{table}: no usable train rows (no labels found). Fix: add rows with labels.")
        carve = tuple(s for s in ("val", "test") if s not in splits_given) if split_col else ("val", "test")
        split_text = (f"split column {split_col!r}" + (f" ({', '.join(carve)} held out of train rows)" if carve else "")
                      if split_col else "split")  # fmt: skip
        held = ", ".join(f"{s}_size={getattr(self, f'{s}_size')}" for s in carve)
        seeded = f" {held}, split_seed={self.split_seed}" if carve else ""
        source = f"{table} (images in {root}; {split_text}{seeded})"
        if task == "multilabel":
            present = {c for i in items if i.split == "train" for c in i.target}  # type: ignore[union-attr]
            no_positive = [c for c in class_names if classes[c] not in present]
            if no_positive:
                notes.append(f"class(es) {no_positive} have no positive train row")
        return _Collected(class_names, task, items, carve, source, notes)


__all__ = [
    "CONVERSIONS",
    "IMAGE_EXTENSIONS",
    "ImageCSVDataModule",
    "ImageDataError",
    "ImageDataNotFoundError",
    "ImageFolderDataModule",
    "ImageInfo",
    "PhotoDataset",
    "probe_image",
    "read_photo",
    "read_table",
    "stratified_split",
    "to_channels",
]

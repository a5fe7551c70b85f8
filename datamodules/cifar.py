"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images", Tech.
report, University of Toronto; https://www.cs.toronto.edu/~kriz/cifar.html) from their original python
batches.

The "python version" of each data set is a tarball of pickled dictionaries:

- CIFAR-10, ``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``
  (10,000 training images each), ``test_batch`` (10,000), ``batches.meta`` (``label_names``: 10 names);
- CIFAR-100, ``cifar-100-python.tar.gz`` -> ``cifar-100-python/``: ``train`` (50,000), ``test`` (10,000),
  ``meta`` (``fine_label_names``: 100, ``coarse_label_names``: 20 superclasses).

Each batch holds ``data``, a ``uint8`` array ``(N, 3072)`` whose rows are one 32x32 image as 1,024 red, then
1,024 green, then 1,024 blue values, each plane row-major, and its labels (``labels``; CIFAR-100:
``fine_labels`` and ``coarse_labels``), lists of ``N`` integers. The files were written by Python 2; they are
read with a restricted unpickler that builds only the numpy arrays, strings and lists such a batch holds
(a pickle can run code, a CIFAR batch never needs to).

Files are looked up, in order, in ``<data_dir>/<base folder>`` (torchvision's layout, which is also where a
download goes), ``<data_dir>/<alias>/<base folder>`` (so that ``data_dir`` may be a shared root holding
``cifar10/`` and ``cifar100/``) and ``<data_dir>`` itself. When no folder holds them all but the tarball
lies in ``<data_dir>`` (or ``<data_dir>/<alias>``), it is extracted beside itself. Else, with ``download``,
torchvision's ``download_url`` fetches the tarball from torchvision's URL (checking its MD5) into
``<data_dir>``, where it is extracted; a failed download says why and leaves no folder it created. Every
batch is checked against the MD5 that torchvision lists for it (``verify_md5``), then for its format; a
file that fails either check is named, with the fix.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datamodules.base import InMemoryClassificationDataModule
from datamodules.errors import DataError, describe_error
from datamodules.mnist import CorruptFileError, DataNotFoundError
from datamodules.paths import resolve_data_dir
from datamodules.transforms import random_affine_batch, random_crop_flip_batch

IMAGE_SHAPE = (3, 32, 32)
ROW_LENGTH = 3 * 32 * 32

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_FINE_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip
CIFAR100_COARSE_CLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
]  # fmt: skip

# What unpickling a CIFAR batch may build: numpy arrays (their reconstructor, class and dtype), numpy scalars,
# and the latin-1 byte strings of a Python 2 pickle. Any other global in a file is refused, not imported.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}  # fmt: skip


class ClassNamesChangedError(DataError, ValueError):
    """The meta file names other classes than the datamodule announced before the files were there."""


class _DownloadFailedError(Exception):
    """Internal: the download did not produce the files; the message is the reason."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: globals outside ``_ALLOWED_GLOBALS`` are refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR batch never holds (refused: unpickling it could "
                "run code)"
            )
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # a pickle of numpy >= 2 (numpy._core) read by numpy 1, or the other way round
            other = module.replace("numpy._core", "numpy.core") if "._core" in module else module.replace(
                "numpy.core", "numpy._core")
            return getattr(importlib.import_module(other), name)


def read_batch(
    path: str | os.PathLike, md5: str | None = None, fix: str | None = None, raw: bytes | None = None
) -> dict[str, Any]:
    """Read one pickled CIFAR batch (or meta file) into a dict with ``str`` keys.

    ``raw``: the file's bytes when they were read already (a member of a tarball; ``path`` then names it).
    With ``md5``, the file's MD5 must equal it first. Decoding: Python 2 pickles are read with
    ``encoding="bytes"`` (what the CIFAR page prescribes); keys that are ``bytes`` are decoded as latin-1.
    A file that cannot be read, is not a pickle, refers to anything but numpy arrays, or does not hold a dict
    is a :class:`~datamodules.mnist.CorruptFileError` naming it and ``fix``.
    """
    path = Path(path)
    fix = fix or f"Fix: delete {path} and download the data set again (or copy an intact copy there)."
    try:
        raw = path.read_bytes() if raw is None else raw
    except OSError as err:
        raise CorruptFileError(f"Cannot read {path}: {describe_error(err)}. {fix}") from err
    if md5 is not None:
        actual = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if actual != md5:
            raise CorruptFileError(
                f"{path} has MD5 {actual}, but the original file {path.name} has MD5 {md5} "
                f"(torchvision.datasets' list): it is damaged, truncated or not the original. {fix} "
                "If you made these batches yourself on purpose, turn the check off with verify_md5=False "
                "(--data.init_args.verify_md5 false)."
            )
    try:
        content = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001  (EOFError, UnpicklingError, ValueError, ...: all mean a bad file)
        raise CorruptFileError(
            f"{path} is not a readable pickled CIFAR batch ({len(raw):,} bytes; {describe_error(err)}). {fix}"
        ) from err
    if not isinstance(content, dict):
        raise CorruptFileError(
            f"{path} holds a pickled {type(content).__name__}, not the dict of a CIFAR batch. {fix}"
        )
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in content.items()}


def _mkdtemp(parent: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def _safe_extract(tar: tarfile.TarFile, to: Path) -> None:
    """``extractall`` that refuses members outside ``to``, links and device files (Python's ``data`` filter
    where it exists; the same rules by hand on Pythons that lack it)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(to, filter="data")
        return
    for member in tar.getmembers():  # pragma: no cover - Python < 3.10.12 / 3.11.4
        target = (to / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(to.resolve()):
            raise tarfile.TarError(f"member {member.name!r} is a link, a device or lies outside the archive")
    tar.extractall(to)  # noqa: S202  (members checked above)


class CIFAR10DataModule(InMemoryClassificationDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test colour images, 32x32, 10 classes.

    The official training set is split deterministically into training and validation (``val_size``
    images, chosen by ``split_seed``; He et al. 2016, sec. 4.2, hold out 5,000 as here); the official test
    set is the test split. Images are normalized once with the per-channel mean and standard deviation of the
    official 50,000 training images (``mean``, ``std``; ``normalization`` as in the base class). Training
    batches are augmented on their device with the standard CIFAR recipe (He et al. 2016, sec. 4.2): a random
    32x32 crop of the image padded by ``crop_padding`` black pixels on each side, and a horizontal flip with
    probability 1/2 (:func:`~datamodules.transforms.random_crop_flip_batch`); a random rotation / shift /
    scaling (the base class's ``rotation_degrees`` / ``translate_px`` / ``scale``) is added after it only
    when one of them is set above 0 (all 0 by default).

    ``num_classes`` and ``class_names`` come from the meta file when the files are there at construction,
    else from the official data set (checked against the meta file once it has been fetched).
    """

    title = "CIFAR-10"
    torchvision_class = "CIFAR10"
    aliases = ("cifar10", "cifar-10")
    train_files: tuple[str, ...] = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
    test_files: tuple[str, ...] = ("test_batch",)
    meta_file = "batches.meta"
    # from torchvision.datasets.CIFAR10 (the download's source and its checksums)
    base_folder = "cifar-10-batches-py"
    filename = "cifar-10-python.tar.gz"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    tgz_md5: str | None = "c58f30108f718f92721af3b95e74349a"
    md5s: dict[str, str] = {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    }
    # per-channel statistics of the 50,000 official training images, pixels in [0, 1]
    mean = (0.49139968, 0.48215841, 0.44653091)
    std = (0.24703223, 0.24348513, 0.26158784)
    in_channels = 3

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = True,
        verify_md5: bool = True,
        in_channels: int = 3,
        crop_padding: int = 4,
        horizontal_flip: bool = True,
        rotation_degrees: float = 0.0,
        translate_px: float = 0.0,
        scale: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            data_dir: folder holding the batches, their folder or the tarball (see the module docstring for
                the layouts searched). Default: ``$ZOO_DATA_DIR``, else ``./data``.
            download: download the tarball into ``data_dir`` when no files are found.
            verify_md5: check every batch file against torchvision's MD5 of the original; turn it off only
                for batches of your own in the CIFAR format.
            in_channels: must be 3 (CIFAR images are RGB; no grayscale conversion is offered).
            crop_padding: training augmentation: pixels of black padding on each side before the random
                32x32 crop (4 in He et al. 2016; 0: no crop).
            horizontal_flip: training augmentation: mirror each image left-right with probability 1/2.
            rotation_degrees, translate_px, scale: an extra random affine warp after the crop and flip
                (off at 0, the default).
            **kwargs: batching, splitting and the other options of
                :class:`~datamodules.base.InMemoryClassificationDataModule`.
        """
        if in_channels != 3:
            raise ValueError(
                f"in_channels={in_channels}: {self.title} images are RGB (3 channels) and {type(self).__name__} "
                "does not convert them to grayscale. Fix: leave in_channels out (or set it to 3); the model "
                "reads in_channels from the datamodule."
            )
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(
                f"crop_padding must be a whole number of pixels >= 0 (4 in He et al. 2016, 0 for no crop); "
                f"got {crop_padding!r}."
            )
        super().__init__(rotation_degrees=rotation_degrees, translate_px=translate_px, scale=scale, **kwargs)
        self.data_dir = resolve_data_dir(data_dir)
        self.download = download
        self.verify_md5 = verify_md5
        self.crop_padding = crop_padding
        self.horizontal_flip = horizontal_flip
        folder = self.find_folder()
        tarball = None if folder else self.find_tarball()
        if folder is not None:
            self.class_names = self.read_class_names(folder / self.meta_file)
        elif tarball is not None and (names := self.class_names_in_tarball(tarball)) is not None:
            self.class_names = names
        else:
            self.class_names = list(self.official_class_names())
        self.num_classes = len(self.class_names)

    # -- what the batches hold ---------------------------------------------------------------------------
    @property
    def labels_key(self) -> str:
        """The key of a batch's labels."""
        return "labels"

    @property
    def names_key(self) -> str:
        """The key of the meta file's class names."""
        return "label_names"

    def official_class_names(self) -> list[str]:
        return CIFAR10_CLASSES

    @property
    def all_files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)

    # -- locating files ------------------------------------------------------------------------------------
    def candidate_dirs(self) -> list[Path]:
        root = self.data_dir
        return [root / self.base_folder] + [root / a / self.base_folder for a in self.aliases] + [root]

    def tarball_candidates(self) -> list[Path]:
        root = self.data_dir
        return [root / self.filename] + [root / a / self.filename for a in self.aliases]

    def find_tarball(self) -> Path | None:
        return next((t for t in self.tarball_candidates() if t.is_file()), None)

    def find_folder(self) -> Path | None:
        """The first folder that holds every file of the data set, or None."""
        for folder in self.candidate_dirs():
            if all((folder / name).is_file() for name in self.all_files):
                return folder
        return None

    def missing_files(self) -> list[str]:
        """The files missing from the most complete folder searched (all of them when none has any)."""
        folders = self.candidate_dirs()
        fullest = max(folders, key=lambda d: sum((d / n).is_file() for n in self.all_files))
        return [n for n in self.all_files if not (fullest / n).is_file()]

    def _refuse_incomplete_folder(self) -> None:
        for folder in self.candidate_dirs()[:-1]:  # data_dir itself may hold any other files
            there = [n for n in self.all_files if (folder / n).is_file()]
            if there:
                missing = [n for n in self.all_files if n not in there]
                raise DataNotFoundError(
                    f"{folder} is an incomplete copy of {self.title}: it has {', '.join(there)} but not "
                    f"{', '.join(missing)}. Fix: delete {folder} and run again (with download=True, or with the "
                    f"tarball {self.url} in {folder.parent}), or copy the missing files into it."
                )

    # -- fetching ------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.find_folder() is not None:
            return
        self._refuse_incomplete_folder()
        tarball = self.find_tarball()
        if tarball is not None:
            self.extract(tarball, tarball.parent)
            if self.find_folder() is None:
                raise CorruptFileError(
                    f"{tarball} was extracted to {tarball.parent / self.base_folder}, but that lacks "
                    f"{', '.join(self.missing_files())}: it is not the {self.title} python tarball. Fix: replace "
                    f"it with {self.url} (delete the extracted folder too)."
                )
            return
        reason, cause = "download=False", None
        if self.download:
            try:
                self.download_files()
                return
            except _DownloadFailedError as err:  # network, permissions, checksum: all end in the same advice
                reason, cause = f"the download from {self.url} failed ({err})", err.__cause__
        where = "\n  ".join(str(d) for d in self.candidate_dirs())
        tarballs = ", ".join(str(t.parent) for t in self.tarball_candidates())
        raise DataNotFoundError(
            f"{self.title} files not found: {', '.join(self.missing_files())} (the python version of the data "
            f"set), and {reason}.\n"
            f"Looked in:\n  {where}\nand for the tarball {self.filename} in {tarballs}.\n"
            f"Fix: download {self.url} by hand and put it (or the {self.base_folder} folder it unpacks to) in "
            f"{self.data_dir}; or run where the internet can be reached with download=True; or point at a "
            f"folder that has them with ZOO_DATA_DIR=... or --data.init_args.data_dir ..."
        ) from cause

    def extract(self, tarball: Path, to: Path) -> None:
        """Extract the tarball's ``base_folder`` into ``to`` (through a temporary folder beside it, so that an
        archive that breaks off midway leaves nothing half-extracted)."""
        fix = f"Fix: delete {tarball} and download it again ({self.url}), or extract it yourself into {to}."
        try:
            scratch = _mkdtemp(to, f".{self.base_folder}-extract-")
        except OSError as err:
            raise DataNotFoundError(
                f"Cannot extract {tarball}: no folder can be written in {to} ({describe_error(err)}). Fix: extract "
                f"it yourself where you can write (tar xzf {tarball.name}) and point data_dir at that folder."
            ) from err
        try:
            try:
                with tarfile.open(tarball, "r:*") as tar:
                    _safe_extract(tar, scratch)
            except Exception as err:  # noqa: BLE001  (TarError, EOFError, BadGzipFile, zlib.error: a bad archive)
                raise CorruptFileError(f"Cannot extract {tarball}: {describe_error(err)}. {fix}") from err
            extracted = scratch / self.base_folder
            if not extracted.is_dir():
                found = sorted(p.name for p in scratch.iterdir())[:5]
                raise CorruptFileError(
                    f"{tarball} holds no {self.base_folder}/ folder (it holds {', '.join(found) or 'nothing'}): it "
                    f"is not the {self.title} python tarball. {fix}"
                )
            target = to / self.base_folder
            try:
                extracted.rename(target)  # replaces an empty folder, never a full one
            except OSError as err:
                raise DataNotFoundError(
                    f"Cannot extract {tarball}: {target} already exists and is not empty ({describe_error(err)}). "
                    f"Fix: move {target} away and run again."
                ) from err
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def download_files(self) -> None:
        """Download the tarball with torchvision's ``download_url`` (which checks ``tgz_md5``) into
        ``data_dir`` and extract it there, as torchvision's ``CIFAR10(download=True)`` does (its URL and MD5
        are the class attributes ``url`` and ``tgz_md5``).

        On failure, raises ``_DownloadFailedError`` with the reason (the exception's type and message) after
        removing what this attempt wrote: its temporary folder and the folders it made (``data_dir`` and
        parents) once they are empty. Files that were there before are never touched.
        """
        from torchvision.datasets.utils import download_url

        made = []  # the folders this download creates, deepest first
        folder = self.data_dir
        while not folder.exists():
            made.append(folder)
            folder = folder.parent
        scratch = None
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            scratch = _mkdtemp(self.data_dir, f".{self.base_folder}-download-")
            download_url(self.url, str(scratch), filename=self.filename, md5=self.tgz_md5)
            self.extract(scratch / self.filename, self.data_dir)
            if not (self.data_dir / self.filename).exists():  # kept, as torchvision keeps it
                (scratch / self.filename).rename(self.data_dir / self.filename)
        except BaseException as err:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
                scratch = None
            for empty in made:
                try:
                    empty.rmdir()  # only when empty: what others put there stays
                except OSError:
                    break
            if isinstance(err, Exception):
                raise _DownloadFailedError(describe_error(err)) from err
            raise
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    # -- reading -------------------------------------------------------------------------------------------
    def read(self, path: Path, raw: bytes | None = None) -> dict[str, Any]:
        """One batch or meta file, MD5-checked when ``verify_md5`` (and torchvision lists the file)."""
        md5 = self.md5s.get(path.name) if self.verify_md5 else None
        return read_batch(path, md5, fix=self._fix(path), raw=raw)

    def _fix(self, path: Path) -> str:
        return (
            f"Fix: delete {path.parent} and download {self.title} again (download=True, or {self.url} by hand), "
            "or copy an intact copy there."
        )

    def class_names_in_tarball(self, tarball: Path) -> list[str] | None:
        """The class names of the meta file inside the tarball (read without extracting anything; None when
        it has none: its extraction then says what is wrong)."""
        member = f"{self.base_folder}/{self.meta_file}"
        try:
            with tarfile.open(tarball, "r:*") as tar:
                for info in tar:  # streams: stops reading at the meta file
                    if info.name == member and info.isfile():
                        stream = tar.extractfile(info)
                        raw = stream.read() if stream is not None else b""
                        return self.read_class_names(tarball / member, raw=raw)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001  (TarError, EOFError, BadGzipFile, zlib.error: a bad archive)
            raise CorruptFileError(
                f"Cannot read {tarball}: {describe_error(err)}. Fix: delete it and download it again ({self.url})."
            ) from err
        return None

    def read_class_names(self, path: Path, raw: bytes | None = None) -> list[str]:
        """The class names (``names_key``) of the meta file ``path``."""
        meta = self.read(path, raw)
        names = meta.get(self.names_key)
        if not isinstance(names, (list, tuple)) or not names:
            raise CorruptFileError(
                f"{path} has no list of class names under {self.names_key!r} (its keys: "
                f"{', '.join(sorted(meta)) or 'none'}). {self._fix(path)}"
            )
        decoded = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
        if len(set(decoded)) != len(decoded):
            raise CorruptFileError(f"{path} names a class twice in {self.names_key!r}: {decoded}. {self._fix(path)}")
        return decoded

    def check_batch(self, path: Path, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(data uint8 (N, 3072), labels int64 (N,))`` of a batch, or a CorruptFileError naming the file."""
        fix = self._fix(path)
        for key in ("data", self.labels_key):
            if key not in batch:
                raise CorruptFileError(
                    f"{path} has no {key!r} entry (its keys: {', '.join(sorted(batch)) or 'none'}). {fix}"
                )
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_LENGTH:
            what = (f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                    else f"a {type(data).__name__}")  # fmt: skip
            raise CorruptFileError(
                f"{path}: 'data' is {what}, not the uint8 array (N, {ROW_LENGTH}) of 32x32 RGB images of a CIFAR "
                f"batch. {fix}"
            )
        try:
            labels = np.asarray(batch[self.labels_key])
        except Exception as err:  # noqa: BLE001  (ragged or mixed lists)
            raise CorruptFileError(f"{path}: {self.labels_key!r} is not a list of integers ({err}). {fix}") from err
        if labels.ndim != 1 or len(labels) != len(data) or (len(labels) and labels.dtype.kind not in "iu"):
            raise CorruptFileError(
                f"{path} has {len(data):,} images but its {self.labels_key!r} holds {labels.size:,} "
                f"{labels.dtype} values of shape {labels.shape}: one integer label per image is the format. {fix}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise CorruptFileError(
                f"{path} has label {bad} in {self.labels_key!r}, but {self.meta_file} names {self.num_classes} "
                f"classes (0..{self.num_classes - 1}). {fix}"
            )
        return data, labels.astype(np.int64)

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()  # cheap when the files exist; gives the clear error when they do not
        folder = self.find_folder()
        assert folder is not None
        names = self.read_class_names(folder / self.meta_file)
        if names != self.class_names:
            raise ClassNamesChangedError(
                f"{folder / self.meta_file} names {len(names)} classes ({', '.join(names[:5])}, ...), but this "
                f"{type(self).__name__} was built with {self.num_classes} ({', '.join(self.class_names[:5])}, ...: "
                f"the official names, as the files were not there yet), and so was the model. Fix: run again: now "
                f"that the files are in place, the names are read from them at the start."
            )
        datas, labels = [], []
        for name in self.train_files if train else self.test_files:
            path = folder / name
            data, y = self.check_batch(path, self.read(path))
            datas.append(data)
            labels.append(y)
        images = np.concatenate(datas)
        if len(images) == 0:
            raise CorruptFileError(
                f"{', '.join(str(folder / n) for n in (self.train_files if train else self.test_files))} hold no "
                f"images: an empty {self.title} split. {self._fix(folder / self.meta_file)}"
            )
        return torch.from_numpy(images).view(-1, *IMAGE_SHAPE), torch.from_numpy(np.concatenate(labels))

    # -- augmentation --------------------------------------------------------------------------------------
    def black(self, like: torch.Tensor) -> torch.Tensor:
        """The normalized black pixel, one value per channel, on ``like``'s device and dtype."""
        zero = torch.zeros(1, len(self.mean), 1, 1, dtype=torch.uint8)
        return self.normalize(zero).flatten().to(device=like.device, dtype=like.dtype)

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Random crop of the padded image and horizontal flip (He et al. 2016, sec. 4.2), then the affine
        warp when ``rotation_degrees``, ``translate_px`` or ``scale`` is above 0."""
        fill = self.black(images)
        out = random_crop_flip_batch(images, self.crop_padding, self.horizontal_flip, fill=fill)
        if self.rotation_degrees or self.translate_px or self.scale:
            # fill broadcasts per channel: random_affine_batch only subtracts and adds it
            out = random_affine_batch(
                out, self.rotation_degrees, self.translate_px, self.scale, fill=fill.view(1, -1, 1, 1)
            )
        return out


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (Krizhevsky 2009): CIFAR-10's format and sizes, 100 classes ("fine" labels) grouped into 20
    superclasses ("coarse" labels); ``label_type`` chooses which the model learns."""

    title = "CIFAR-100"
    torchvision_class = "CIFAR100"
    aliases = ("cifar100", "cifar-100")
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    base_folder = "cifar-100-python"
    filename = "cifar-100-python.tar.gz"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    tgz_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    md5s = {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    }
    mean = (0.50707516, 0.48654887, 0.44091784)
    std = (0.26733429, 0.25643846, 0.27615047)

    def __init__(self, label_type: Literal["fine", "coarse"] = "fine", **kwargs: Any) -> None:
        """
        Args:
            label_type: ``fine`` (100 classes) or ``coarse`` (the 20 superclasses).
            **kwargs: the options of :class:`CIFAR10DataModule`.
        """
        if label_type not in ("fine", "coarse"):
            raise ValueError(
                f"label_type must be 'fine' (100 classes) or 'coarse' (20 superclasses); got {label_type!r}."
            )
        self.label_type = label_type
        super().__init__(**kwargs)

    @property
    def labels_key(self) -> str:
        return f"{self.label_type}_labels"

    @property
    def names_key(self) -> str:
        return f"{self.label_type}_label_names"

    def official_class_names(self) -> list[str]:
        return CIFAR100_FINE_CLASSES if self.label_type == "fine" else CIFAR100_COARSE_CLASSES

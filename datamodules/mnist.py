"""MNIST and Fashion-MNIST from their original IDX files (one shared implementation).

Files are looked up, in order, in ``<data_dir>/<folder>/raw`` (torchvision's layout, which is
also where a download goes), ``<data_dir>/<alias>/<folder>/raw`` (so that ``data_dir`` may be a
shared root holding ``mnist/`` and ``fashion_mnist/``) and ``<data_dir>`` itself; each file may be
gzipped or not. When they are missing and ``download`` is true, torchvision downloads them into
``<data_dir>/<folder>/raw``; when that fails too, one error says which files to put where and why each
mirror failed (the exception's type and message), and the folders the attempt created are removed again.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.base import InMemoryClassificationDataModule
from datamodules.errors import DataError, describe_error
from datamodules.paths import resolve_data_dir

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set's files are not where the datamodule looked, and could not be downloaded."""


class CorruptFileError(DataError, ValueError):
    """A data file exists but its content is not what its format promises."""


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (LeCun's MNIST format, gzipped or not) of unsigned bytes into a tensor.

    Checks the magic number, that the header's sizes match the payload, and names the file and
    the fix otherwise.
    """
    path = Path(path)
    fix = f"Delete {path} and download it again (or copy an intact copy there)."
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise CorruptFileError(f"Cannot read {path}: {err}. {fix}") from err
    if len(raw) < 4:
        raise CorruptFileError(f"{path} is {len(raw)} bytes long, too short for an IDX header. {fix}")
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise CorruptFileError(
            f"{path} is not an IDX file of unsigned bytes (magic {int.from_bytes(raw[:4], 'big')}, "
            f"expected {IDX_LABELS_MAGIC} for labels or {IDX_IMAGES_MAGIC} for images). {fix}"
        )
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise CorruptFileError(
            f"{path} is truncated or padded: its header promises shape {shape} "
            f"({expected:,} bytes) but the file holds {len(raw):,} bytes. {fix}"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy())


class DownloadFailedError(DataError, OSError):
    """A file could not be downloaded from any mirror; the message holds each mirror's reason."""


def _remove_new_files(folder: Path, before: set[str], names: tuple[str, ...]) -> None:
    """Remove the files ``names`` from ``folder`` unless they were there ``before``: what a failed download of
    one file began writing (the archive and what it unpacked to), never a file that someone put there."""
    for name in names:
        if name not in before and (folder / name).is_file():
            (folder / name).unlink(missing_ok=True)


class MNISTDataModule(InMemoryClassificationDataModule):
    """MNIST (LeCun et al. 1998): 60,000 training and 10,000 test digits, 28x28 grayscale.

    The official training set is split deterministically into training and validation
    (``val_size`` images, chosen by ``split_seed``); the official test set is the test split.
    """

    folder = "MNIST"
    aliases = ("mnist",)
    urls_hint = "http://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST)"
    torchvision_class = "MNIST"
    num_classes = 10
    in_channels = 1
    class_names = [str(d) for d in range(10)]
    mean = (0.1307,)
    std = (0.3081,)
    files = {
        True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, data_dir: str | None = None, download: bool = True, **kwargs: Any) -> None:
        """
        Args:
            data_dir: folder holding the IDX files (see the module docstring for the layouts
                searched). Default: ``$ZOO_DATA_DIR``, else ``./data``.
            download: download the files into ``data_dir`` when they are missing.
            **kwargs: batching, splitting, augmentation and the other options of
                :class:`~datamodules.base.InMemoryClassificationDataModule`.
        """
        super().__init__(**kwargs)
        self.data_dir = resolve_data_dir(data_dir)
        self.download = download

    # -- locating files ----------------------------------------------------------------------------
    def candidate_dirs(self) -> list[Path]:
        root = self.data_dir
        return [root / self.folder / "raw"] + [root / a / self.folder / "raw" for a in self.aliases] + [root]

    def find_file(self, name: str) -> Path | None:
        for folder in self.candidate_dirs():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def missing_files(self) -> list[str]:
        return [n for names in self.files.values() for n in names if self.find_file(n) is None]

    def prepare_data(self) -> None:
        missing = self.missing_files()
        if not missing:
            return
        reason, cause = "download=False", None
        if self.download:
            try:
                self.download_files()
                return
            except DownloadFailedError as err:  # network, permissions, checksum: all end in the same advice
                reason, cause = f"the download failed ({err})", err
        where = "\n  ".join(str(d) for d in self.candidate_dirs())
        raise DataNotFoundError(
            f"{self.folder} files not found: {', '.join(missing)} (each may end in .gz), and {reason}.\n"
            f"Looked in:\n  {where}\n"
            f"Fix: put the four IDX files from {self.urls_hint} in {self.data_dir / self.folder / 'raw'}, "
            f"or point at a folder that has them with ZOO_DATA_DIR=... or --data.init_args.data_dir ..."
        ) from cause

    def download_files(self) -> None:
        """Download the files of torchvision's dataset class (its ``resources``, trying each of its ``mirrors``)
        into ``<data_dir>/<folder>/raw``, checked against their MD5 and unpacked, as torchvision does.

        When a file cannot be had from any mirror, raises :class:`DownloadFailedError` with every mirror's
        reason (the exception type and message; the socket error inside a ``URLError``), after removing what
        this attempt created: the files it began writing and the folders it made (``raw``, ``<folder>``,
        ``data_dir``) once they are empty. Files that were there before are never touched.
        """
        import torchvision.datasets
        from torchvision.datasets.utils import download_and_extract_archive

        dataset = getattr(torchvision.datasets, self.torchvision_class)
        raw = self.data_dir / self.folder / "raw"
        made = [d for d in (raw, raw.parent, self.data_dir) if not d.exists()]  # deepest first
        before = {p.name for p in raw.iterdir()} if raw.is_dir() else set()
        try:
            for filename, md5 in dataset.resources:
                failures = []
                for mirror in dataset.mirrors:
                    url = f"{mirror}{filename}"
                    try:
                        download_and_extract_archive(url, download_root=str(raw), filename=filename, md5=md5)
                        break
                    except Exception as err:  # noqa: BLE001  (every reason is reported, then the next mirror)
                        failures.append(f"{url}: {describe_error(err)}")
                        _remove_new_files(raw, before, (filename, Path(filename).stem))
                else:
                    tried = "; ".join(failures) or f"torchvision.datasets.{self.torchvision_class} lists no mirrors"
                    raise DownloadFailedError(f"{filename}: {tried}")
        except BaseException:
            for folder in made:
                try:
                    folder.rmdir()  # only when empty: files already downloaded (or put there by others) stay
                except OSError:
                    break
            raise

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()  # cheap when the files exist; gives the clear error when they do not
        image_name, label_name = self.files[train]
        image_path, label_path = self.find_file(image_name), self.find_file(label_name)
        assert image_path is not None and label_path is not None
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3:
            raise CorruptFileError(f"{image_path} holds labels (1-D), not images. Check the file names.")
        if labels.ndim != 1:
            raise CorruptFileError(f"{label_path} holds images, not labels (1-D). Check the file names.")
        if len(images) != len(labels):
            raise CorruptFileError(
                f"{image_path} has {len(images):,} images but {label_path} has {len(labels):,} labels; "
                "one of them is from another data set or split. Replace them with a matching pair."
            )
        if len(labels) == 0:
            raise CorruptFileError(
                f"{image_path} and {label_path} hold no samples: an empty {self.folder} split. Fix: replace them "
                "with the complete files (delete them and download again)."
            )
        if int(labels.max()) >= self.num_classes:
            raise CorruptFileError(
                f"{label_path} has label {int(labels.max())}, but {self.folder} has "
                f"{self.num_classes} classes."
            )
        return images.unsqueeze(1), labels.long()


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): MNIST's format and sizes, 10 clothing classes."""

    folder = "FashionMNIST"
    aliases = ("fashion_mnist", "fashion-mnist")
    urls_hint = "https://github.com/zalandoresearch/fashion-mnist (or torchvision.datasets.FashionMNIST)"
    torchvision_class = "FashionMNIST"
    class_names = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]
    mean = (0.2860,)
    std = (0.3530,)

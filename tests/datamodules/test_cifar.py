"""CIFAR-10 / CIFAR-100 datamodules on tiny batches in the original format (Krizhevsky 2009), made from real
MNIST digits: the real CIFAR files are not on this machine and there is no internet, so the MD5 check of the
originals is switched off (``verify_md5=False``) or pointed at the hand-made files' MD5s."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import pickle
import re
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules import CIFAR10DataModule, CIFAR100DataModule
from datamodules.cifar import CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES, ClassNamesChangedError
from datamodules.mnist import CorruptFileError, DataNotFoundError, read_idx
from datamodules.transforms import random_crop_flip_batch
from tests.conftest import closed_port_url, local_http_server

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PER_BATCH = 12  # 5 training batches + 1 test batch of 12 images: 60 + 12
CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


# -- tiny CIFAR-format data from real images ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """72 MNIST test digits as 32x32 RGB uint8 (N, 3, 32, 32) (zero-padded; the three planes differ: the digit,
    its negative and half its brightness, so that a wrong plane order fails) and their labels."""
    raw = data_root / "mnist" / "MNIST" / "raw"
    images = read_idx(raw / "t10k-images-idx3-ubyte.gz")[:72].numpy()
    labels = read_idx(raw / "t10k-labels-idx1-ubyte.gz")[:72].numpy().astype(np.int64)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.stack([padded, 255 - padded, padded // 2], axis=1), labels


def batch(images: np.ndarray, **labels: np.ndarray) -> dict:
    """A batch dict as in the original files: bytes keys, ``data`` uint8 (N, 3072), labels as lists of ints."""
    content = {
        b"batch_label": b"hand-made batch",
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"image_{i}.png".encode() for i in range(len(images))],
    }
    content.update({key.encode(): [int(v) for v in values] for key, values in labels.items()})
    return content


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the original batches: every string an 8-bit STRING (read back as
    ``bytes`` with ``encoding="bytes"``), numpy's reconstructor under ``numpy.core``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str8(self, obj: str | bytes) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_str8
    dispatch[type] = save_global


def dump(path: Path, content: object) -> Path:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(content)
    path.write_bytes(buffer.getvalue())
    return path


def write_cifar10(folder: Path, digits: tuple[np.ndarray, np.ndarray], names: list[str] = DIGITS) -> Path:
    images, labels = digits
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CIFAR10_FILES):
        part = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        dump(folder / name, batch(images[part], labels=labels[part]))
    dump(folder / "batches.meta", {b"num_cases_per_batch": PER_BATCH, b"label_names": [n.encode() for n in names],
                                   b"num_vis": 3072})
    return folder


def fine_coarse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fine = labels * 10 + np.arange(len(labels)) % 10  # 0..99
    return fine, fine // 5  # 0..19


def write_cifar100(folder: Path, digits: tuple[np.ndarray, np.ndarray]) -> Path:
    images, labels = digits
    fine, coarse = fine_coarse(labels)
    folder.mkdir(parents=True, exist_ok=True)
    dump(folder / "train", batch(images[:60], fine_labels=fine[:60], coarse_labels=coarse[:60]))
    dump(folder / "test", batch(images[60:], fine_labels=fine[60:], coarse_labels=coarse[60:]))
    dump(folder / "meta", {b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]})
    return folder


def tarball(path: Path, folder: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


def normalized(images: np.ndarray, dm: CIFAR10DataModule) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    return (torch.from_numpy(images).float() / 255 - mean) / std


def cifar10(data_dir: Path, **kwargs) -> CIFAR10DataModule:
    kwargs = {"download": False, "verify_md5": False, "val_size": 10, **kwargs}
    return CIFAR10DataModule(data_dir=str(data_dir), **kwargs)


# -- reading ----------------------------------------------------------------------------------------------------
def test_reads_the_batches_with_labels_class_names_and_normalization(digits, tmp_path):
    images, labels = digits
    write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    dm = cifar10(tmp_path)
    assert dm.class_names == DIGITS and dm.num_classes == 10 and dm.in_channels == 3  # from batches.meta
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 12)
    assert dm.train_set.images.shape == (50, 3, 32, 32) and dm.train_set.images.dtype == torch.float32
    for split in (dm.train_set, dm.val_set):
        index = split.source_indices  # positions in data_batch_1 .. data_batch_5, in that order
        torch.testing.assert_close(split.images, normalized(images[:60][index], dm), rtol=0, atol=1e-6)
        assert split.labels.tolist() == labels[:60][index].tolist()
    torch.testing.assert_close(dm.test_set.images, normalized(images[60:], dm), rtol=0, atol=1e-6)
    assert dm.test_set.labels.tolist() == labels[60:].tolist() and dm.test_set.labels.dtype == torch.int64
    # the planes keep their order: green is the negative of red, blue half of red
    red = dm.test_set.images[:, 0] * dm.std[0] + dm.mean[0]
    green = dm.test_set.images[:, 1] * dm.std[1] + dm.mean[1]
    torch.testing.assert_close(green, 1 - red, rtol=0, atol=1e-5)


def test_official_statistics_and_names_when_the_files_are_not_there_yet(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=False)
    assert dm.class_names == CIFAR10_CLASSES and dm.num_classes == 10
    assert dm.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-4)
    assert dm.std == pytest.approx((0.2470, 0.2435, 0.2616), abs=1e-4)
    fine = CIFAR100DataModule(data_dir=str(tmp_path), download=False)
    coarse = CIFAR100DataModule(data_dir=str(tmp_path), download=False, label_type="coarse")
    assert (fine.num_classes, coarse.num_classes) == (100, 20) and len(set(CIFAR100_FINE_CLASSES)) == 100
    assert fine.class_names[:2] == ["apple", "aquarium_fish"] and coarse.class_names == CIFAR100_COARSE_CLASSES
    assert list(tmp_path.iterdir()) == []  # constructing reads and writes nothing


def test_meta_file_that_disagrees_with_the_names_announced_at_construction_stops(digits, tmp_path):
    dm = cifar10(tmp_path)  # no files yet: the official names
    write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    with pytest.raises(ClassNamesChangedError, match=r"batches.meta names 10 classes \(zero, one.*airplane.*Fix"):
        dm.setup("fit")
    assert cifar10(tmp_path).class_names == DIGITS  # constructed again, it reads them


@pytest.mark.parametrize("layout", ["root", "alias", "folder itself"])
def test_data_dir_may_be_the_root_a_shared_root_or_the_batch_folder(digits, tmp_path, layout):
    target = {"root": tmp_path / "cifar-10-batches-py", "alias": tmp_path / "cifar10" / "cifar-10-batches-py",
              "folder itself": tmp_path / "batches"}[layout]
    write_cifar10(target, digits)
    dm = cifar10(target if layout == "folder itself" else tmp_path)
    assert dm.find_folder() == target and dm.missing_files() == []


@pytest.mark.parametrize(("label_type", "classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_or_coarse_labels_and_names(digits, tmp_path, label_type, classes):
    write_cifar100(tmp_path / "cifar-100-python", digits)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), download=False, verify_md5=False, val_size=10,
                            label_type=label_type)
    assert dm.num_classes == classes and dm.class_names[7] == f"{label_type}_7"
    dm.setup("test")
    fine, coarse = fine_coarse(digits[1])
    expected = fine if label_type == "fine" else coarse
    assert dm.test_set.labels.tolist() == expected[60:].tolist()
    torch.testing.assert_close(dm.test_set.images, normalized(digits[0][60:], dm), rtol=0, atol=1e-6)
    assert dm.mean == pytest.approx((0.5071, 0.4865, 0.4409), abs=1e-4)


def test_tarball_in_data_dir_is_extracted_beside_itself(digits, tmp_path):
    source = write_cifar10(tmp_path / "made" / "cifar-10-batches-py", digits)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tarball(data_dir / "cifar-10-python.tar.gz", source)
    dm = cifar10(data_dir)
    dm.setup("test")
    assert dm.test_set.labels.tolist() == digits[1][60:].tolist()
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_truncated_tarball_is_named_and_leaves_nothing_extracted(digits, tmp_path):
    source = write_cifar10(tmp_path / "made" / "cifar-10-batches-py", digits)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    whole = tarball(tmp_path / "whole.tar.gz", source).read_bytes()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptFileError, match=r"Cannot extract .*data/cifar-10-python.tar.gz: .*Fix: delete"):
        cifar10(data_dir).prepare_data()
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz"]


def test_incomplete_folder_is_named_with_the_missing_files(digits, tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataNotFoundError, match=r"cifar-10-batches-py is an incomplete copy.*but not data_batch_4\."):
        cifar10(tmp_path, download=True).prepare_data()


# -- nothing there: the error, and the download ------------------------------------------------------------------
def test_missing_files_offline_name_the_files_the_folders_and_the_fix(tmp_path):
    data_dir = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        cifar10(data_dir).setup("fit")
    message = str(err.value)
    assert "CIFAR-10 files not found: data_batch_1, data_batch_2" in message and "batches.meta" in message
    assert "download=False" in message
    for folder in (data_dir / "cifar-10-batches-py", data_dir / "cifar10" / "cifar-10-batches-py", data_dir):
        assert f"\n  {folder}\n" in message
    assert "Fix: download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz by hand" in message
    assert f"in {data_dir};" in message and "download=True" in message and "ZOO_DATA_DIR" in message
    assert not data_dir.exists()


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """``http://127.0.0.1:<port>/`` serving the files of ``folder`` (404 for others)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    with local_http_server(functools.partial(Quiet, directory=str(folder))) as url:
        yield url


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_fetches_the_tarball_checks_its_md5_and_extracts_it(digits, tmp_path, monkeypatch, no_proxy):
    served = tmp_path / "served"
    served.mkdir()
    made = write_cifar10(tmp_path / "made" / "cifar-10-batches-py", digits, names=CIFAR10_CLASSES)
    archive = tarball(served / "cifar-10-python.tar.gz", made)
    data_dir = tmp_path / "new" / "data"
    with serving(served) as url:
        monkeypatch.setattr(CIFAR10DataModule, "url", f"{url}cifar-10-python.tar.gz")
        monkeypatch.setattr(CIFAR10DataModule, "tgz_md5", md5(archive))
        dm = cifar10(data_dir, download=True)
        dm.prepare_data()
    # torchvision's layout: the tarball and the folder it unpacks to, no temporary folders left
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert md5(data_dir / "cifar-10-python.tar.gz") == md5(archive)
    dm.setup("test")  # the names announced before the download (the official ones) are those of the meta file
    assert dm.test_set.labels.tolist() == digits[1][60:].tolist()


@pytest.mark.parametrize("failure", ["wrong md5", "404", "closed port"])
def test_failed_download_says_why_and_leaves_no_folders(digits, tmp_path, monkeypatch, no_proxy, failure):
    served = tmp_path / "served"
    served.mkdir()
    tarball(served / "cifar-10-python.tar.gz", write_cifar10(tmp_path / "made" / "cifar-10-batches-py", digits))
    data_dir = tmp_path / "new" / "data"
    expected = {
        "wrong md5": r"RuntimeError: File not found or corrupted\.",  # torchvision's MD5 check of the tarball
        "404": r"HTTPError: 404 File not found",
        "closed port": r"URLError: ConnectionRefusedError: \[Errno \d+\] Connection refused",
    }[failure]
    with serving(served) as url:
        name = "missing.tar.gz" if failure == "404" else "cifar-10-python.tar.gz"
        source = closed_port_url("cifar-10-python.tar.gz") if failure == "closed port" else f"{url}{name}"
        monkeypatch.setattr(CIFAR10DataModule, "url", source)
        monkeypatch.setattr(CIFAR10DataModule, "tgz_md5", "0" * 32)
        with pytest.raises(DataNotFoundError) as err:
            cifar10(data_dir, download=True).prepare_data()
    first_line = str(err.value).splitlines()[0]
    assert f"the download from {source} failed (" in first_line
    assert re.search(expected, first_line), first_line
    assert "Fix: download" in str(err.value)
    assert not (tmp_path / "new").exists()  # data_dir and its parent were made by the download: removed again


def test_failed_download_keeps_what_was_there(tmp_path, monkeypatch, no_proxy):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(CIFAR10DataModule, "url", closed_port_url("cifar-10-python.tar.gz"))
    with pytest.raises(DataNotFoundError, match="Connection refused"):
        cifar10(tmp_path, download=True).prepare_data()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# -- broken batches ----------------------------------------------------------------------------------------------
class _Payload:
    """A pickle that would create a folder when unpickled by an ordinary unpickler."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


BROKEN = {
    "truncated": (lambda good, tmp: good[: len(good) // 2], r"is not a readable pickled CIFAR batch"),
    "not a pickle": (lambda good, tmp: b"<html>404 not found</html>", r"is not a readable pickled CIFAR batch"),
    "wrong shape": (lambda good, tmp: pickle.dumps(
        {b"data": np.zeros((12, 3000), np.uint8), b"labels": [0] * 12}, protocol=2),
        r"'data' is a uint8 array of shape \(12, 3000\), not the uint8 array \(N, 3072\)"),
    "float pixels": (lambda good, tmp: pickle.dumps(
        {b"data": np.zeros((12, 3072), np.float32), b"labels": [0] * 12}, protocol=2), r"'data' is a float32 array"),
    "label count": (lambda good, tmp: pickle.dumps(
        {b"data": np.zeros((12, 3072), np.uint8), b"labels": [0] * 11}, protocol=2),
        r"has 12 images but its 'labels' holds 11 int64 values"),
    "label range": (lambda good, tmp: pickle.dumps(
        {b"data": np.zeros((12, 3072), np.uint8), b"labels": [3] * 11 + [10]}, protocol=2),
        r"has label 10 in 'labels', but batches.meta names 10 classes"),
    "no labels": (lambda good, tmp: pickle.dumps({b"data": np.zeros((12, 3072), np.uint8)}, protocol=2),
                  r"has no 'labels' entry \(its keys: data\)"),
    "not a dict": (lambda good, tmp: pickle.dumps([1, 2, 3], protocol=2), r"holds a pickled list, not the dict"),
    "code": (lambda good, tmp: pickle.dumps(_Payload(tmp / "pwned")), r"refers to \w+\.mkdir.*refused"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_batch_is_a_corrupt_file_error_naming_it_and_the_fix(digits, tmp_path, kind):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    bad = folder / "data_batch_3"
    make, expected = BROKEN[kind]
    bad.write_bytes(make(bad.read_bytes(), tmp_path))
    with pytest.raises(CorruptFileError, match=expected) as err:
        cifar10(tmp_path).setup("fit")
    assert str(bad) in str(err.value) and "Fix: delete" in str(err.value)
    assert not (tmp_path / "pwned").exists()  # the payload never ran


def test_md5_of_every_file_is_checked_unless_turned_off(digits, tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    # the originals' MD5s (torchvision's list) do not match hand-made batches: refused, with the way out
    expected = r"batches.meta has MD5 [0-9a-f]{32}, but the original file batches.meta has MD5 5ff9c542aee3614f"
    with pytest.raises(CorruptFileError, match=expected + r"3951f8cda6e48888.*verify_md5=False"):
        cifar10(tmp_path, verify_md5=True)
    # with the MD5s of these files as the known ones, they load; a changed pixel is then caught by its MD5
    known = {p.name: md5(p) for p in folder.iterdir()}
    monkeypatch.setattr(CIFAR10DataModule, "md5s", known)
    cifar10(tmp_path, verify_md5=True).setup("fit")
    images, labels = digits
    changed = images[24:36].copy()
    changed[0, 0, 0, 0] ^= 1
    dump(folder / "data_batch_3", batch(changed, labels=labels[24:36]))
    with pytest.raises(CorruptFileError, match=rf"data_batch_3 has MD5 {md5(folder / 'data_batch_3')}, but the "
                                               rf"original file data_batch_3 has MD5 {known['data_batch_3']}"):
        cifar10(tmp_path, verify_md5=True).setup("fit")
    cifar10(tmp_path, verify_md5=False).setup("fit")  # turned off: the changed batch loads


@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_source_and_checksums_are_torchvisions(cls):
    import torchvision.datasets

    dataset = getattr(torchvision.datasets, cls.torchvision_class)
    assert (cls.url, cls.filename, cls.tgz_md5, cls.base_folder) == (
        dataset.url, dataset.filename, dataset.tgz_md5, dataset.base_folder)
    assert cls.md5s == {name: md5 for name, md5 in dataset.train_list + dataset.test_list} | {
        dataset.meta["filename"]: dataset.meta["md5"]}
    assert list(cls.md5s) == [*cls.train_files, *cls.test_files, cls.meta_file]


# -- arguments ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: CIFAR10DataModule(data_dir=d, in_channels=1), r"in_channels=1: CIFAR-10 images are RGB.*Fix"),
        (lambda d: CIFAR10DataModule(data_dir=d, crop_padding=-1), r"crop_padding must be a whole number.*-1"),
        (lambda d: CIFAR10DataModule(data_dir=d, crop_padding=2.5), r"crop_padding must be a whole number.*2.5"),
        (lambda d: CIFAR100DataModule(data_dir=d, label_type="medium"), r"label_type must be 'fine'.*'medium'"),
    ],
    ids=["in_channels", "negative padding", "fractional padding", "label_type"],
)
def test_arguments_that_cannot_take_effect_are_refused(tmp_path, make, expected):
    with pytest.raises(ValueError, match=expected):
        make(str(tmp_path))


# -- augmentation ------------------------------------------------------------------------------------------------
def test_random_crop_flip_keeps_pixels_exactly_and_draws_every_offset_and_flip():
    images = torch.randn(400, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = random_crop_flip_batch(images, padding=2, fill=fill, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    padded = fill.view(1, 3, 1, 1).expand(400, 3, 10, 11).clone()
    padded[:, :, 2:8, 2:9] = images
    seen = set()
    for i in range(400):
        windows = {(dy, dx): padded[i, :, dy : dy + 6, dx : dx + 7] for dy in range(5) for dx in range(5)}
        matches = [(dy, dx, flip) for (dy, dx), w in windows.items() for flip in (False, True)
                   if torch.equal(out[i], w.flip(-1) if flip else w)]
        assert matches, f"image {i} is no window of the padded image"
        seen.add(matches[0])
    assert len(seen) == 50  # 5 x 5 offsets x 2 flips: all drawn
    # the same generator seed gives the same batch, another seed another
    again = random_crop_flip_batch(images, padding=2, fill=fill, generator=torch.Generator().manual_seed(1))
    other = random_crop_flip_batch(images, padding=2, fill=fill, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert torch.equal(random_crop_flip_batch(images, padding=0, flip=False), images)


def test_training_batches_are_cropped_and_flipped_and_evaluation_batches_are_not(digits, tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    dm = cifar10(tmp_path)
    dm.setup("fit")
    images, labels = dm.train_set.images[:32], dm.train_set.labels[:32]
    dm.trainer = SimpleNamespace(training=False)  # validation / test / predict
    evaluated = dm.on_after_batch_transfer((images, labels), 0)
    assert evaluated[0] is images and evaluated[1] is labels
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    first = dm.on_after_batch_transfer((images, labels), 0)
    torch.manual_seed(0)
    second = dm.on_after_batch_transfer((images, labels), 0)
    assert first[0].shape == images.shape and first[1] is labels
    assert torch.equal(first[0], second[0])  # deterministic under the seed
    changed = (first[0] != images).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # 1 in 50 draws is the unpadded window without flip
    # the padding is black: the normalized value of a 0 pixel in each channel
    black = (torch.zeros(3) - torch.tensor(dm.mean)) / torch.tensor(dm.std)
    border = first[0][:, :, 0, :]  # the top row comes from the padding whenever the window moved down
    assert any(torch.allclose(row, black.view(3, 1).expand(3, 32)) for row in border)


def test_every_augmentation_argument_takes_effect(digits, tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def augmented(**kwargs) -> torch.Tensor:
        torch.manual_seed(3)
        return cifar10(tmp_path, **kwargs).augment_batch(images)

    off = {"crop_padding": 0, "horizontal_flip": False}
    assert torch.equal(augmented(**off), images)  # nothing on: the identity
    assert not torch.equal(augmented(crop_padding=4, horizontal_flip=False), images)
    flipped = augmented(crop_padding=0, horizontal_flip=True)
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images, strict=True))
    assert not torch.equal(flipped, images)
    for extra in ({"rotation_degrees": 10.0}, {"translate_px": 2.0}, {"scale": 0.1}):
        assert not torch.allclose(augmented(**off, **extra), images, atol=1e-3), extra


def test_fit_sees_augmented_training_and_stored_validation_batches(digits, tmp_path):
    import pytorch_lightning as pl

    from zoo.classification import ImageClassifier

    class Recorder(ImageClassifier):
        def training_step(self, batch, batch_idx):
            self.seen.setdefault("train", []).append(batch[0].clone())
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.seen.setdefault("val", []).append(batch[0].clone())
            return super().validation_step(batch, batch_idx)

    write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    dm = cifar10(tmp_path, batch_size=25, eval_batch_size=10)
    model = Recorder(network="convnet", network_kwargs={"width": 4}, num_classes=dm.num_classes, in_channels=3,
                     class_names=dm.class_names)
    model.seen = {}
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    torch.testing.assert_close(torch.cat(model.seen["val"]), dm.val_set.images)
    train = torch.cat(model.seen["train"])
    assert train.shape == (50, 3, 32, 32)
    stored = {row.numpy().tobytes() for row in dm.train_set.images}
    assert sum(row.numpy().tobytes() in stored for row in train) <= 5  # ~1 in 50 is left as it was


def test_pickles_written_by_python_3_with_str_keys_load_too(digits, tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", digits)
    images, labels = digits
    buffer = io.BytesIO()
    pickle.dump({"data": images[:12].reshape(12, -1), "labels": np.asarray(labels[:12])}, buffer, protocol=5)
    (folder / "data_batch_1").write_bytes(buffer.getvalue())
    dm = cifar10(tmp_path)
    dm.setup("fit")
    assert sorted(torch.cat([dm.train_set.labels, dm.val_set.labels]).tolist()) == sorted(labels[:60].tolist())

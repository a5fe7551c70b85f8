import gzip
import shutil
from pathlib import Path

import pytest
import torch

from datamodules import DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from datamodules.base import deterministic_split
from datamodules.mnist import CorruptFileError, DataNotFoundError, read_idx


def test_reads_the_official_mnist_files(data_root):
    dm = MNISTDataModule(data_dir=str(data_root), download=False)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 55_000 and len(dm.val_set) == 5_000 and len(dm.test_set) == 10_000
    assert dm.train_set.images.shape[1:] == (1, 28, 28)
    # official test-set class counts (SOURCE.md)
    counts = torch.bincount(dm.test_set.labels, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # normalized with MNIST's statistics: the training images have mean ~0 and std ~1
    assert abs(float(dm.train_set.images.mean())) < 0.02
    assert abs(float(dm.train_set.images.std()) - 1) < 0.02


def test_train_val_split_is_deterministic_and_disjoint(data_root):
    def split(seed):
        dm = MNISTDataModule(data_dir=str(data_root), download=False, split_seed=seed, val_size=5000)
        dm.setup("fit")
        return dm

    a, b, c = split(0), split(0), split(1)
    assert torch.equal(a.val_set.labels, b.val_set.labels)
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)
    # disjoint: no validation image appears in the training split (compare exact pixel rows)
    train_keys = {hash(row.numpy().tobytes()) for row in a.train_set.images.flatten(1)}
    val_keys = [hash(row.numpy().tobytes()) for row in a.val_set.images.flatten(1)]
    overlap = sum(k in train_keys for k in val_keys)
    # MNIST itself contains a handful of exact duplicate images; index-level disjointness is the
    # property under test, pixel overlap can only come from those duplicates
    assert overlap <= 5


def test_fashion_mnist_shares_the_implementation(fashion_root):
    dm = FashionMNISTDataModule(data_dir=str(fashion_root), download=False)
    dm.setup("test")
    assert len(dm.test_set) == 10_000
    assert torch.bincount(dm.test_set.labels).tolist() == [1000] * 10
    assert dm.class_names[9] == "Ankle boot"


def test_missing_files_without_download_name_the_files_and_the_folder(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert "ZOO_DATA_DIR" in message and "download=False" in message


def test_failed_download_says_why_and_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DataNotFoundError, match=r"download failed \(RuntimeError: Error downloading"):
        dm.prepare_data()


def _copy_mnist(data_root: Path, target: Path) -> Path:
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root / "mnist" / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(f, raw / f.name)
    return raw


def test_truncated_idx_file_is_named_with_its_sizes(data_root, tmp_path):
    raw = _copy_mnist(data_root, tmp_path)
    labels = gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels[:-100]))
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(CorruptFileError, match=r"t10k-labels-idx1-ubyte.gz is truncated.*10,008 bytes.*9,908"):
        dm.setup("test")


def test_cut_gzip_stream_is_reported_as_unreadable(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10))[:-12])
    with pytest.raises(CorruptFileError, match=r"Cannot read .*train-labels-idx1-ubyte.gz.*Delete"):
        read_idx(path)


def test_a_file_that_is_not_idx_is_rejected(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CorruptFileError, match="is not an IDX file"):
        read_idx(path)


def test_data_dir_may_be_the_shared_root_or_the_raw_folder(data_root):
    for data_dir in (data_root, data_root / "mnist", data_root / "mnist" / "MNIST" / "raw"):
        assert MNISTDataModule(data_dir=str(data_dir), download=False).missing_files() == []


def test_zoo_data_dir_is_the_default_data_dir(data_root, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(data_root))
    assert MNISTDataModule(download=False).missing_files() == []
    monkeypatch.delenv("ZOO_DATA_DIR")
    assert MNISTDataModule(download=False).data_dir == Path("data")


def test_deterministic_split_is_disjoint_complete_and_independent_of_the_global_seed():
    torch.manual_seed(1)
    train, holdout = deterministic_split(1000, 100, seed=3)
    torch.manual_seed(2)
    train2, holdout2 = deterministic_split(1000, 100, seed=3)
    assert torch.equal(train, train2) and torch.equal(holdout, holdout2)
    assert len(holdout) == 100 and not set(train.tolist()) & set(holdout.tolist())
    assert sorted(train.tolist() + holdout.tolist()) == list(range(1000))


def test_digits_ship_with_the_package_and_split_into_three_parts():
    dm = DigitsDataModule(val_size=180, test_size=360)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1257, 180, 360)
    assert dm.train_set.images.shape[1:] == (1, 8, 8)
    assert set(dm.test_set.labels.tolist()) == set(range(10))

import contextlib
import gzip
import http.server
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from datamodules import DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from datamodules.base import deterministic_split
from datamodules.mnist import CorruptFileError, DataNotFoundError, read_idx
from tests.conftest import closed_port_url, local_http_server


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
    from torchvision.datasets import utils

    def offline(url, **kwargs):
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(utils, "download_and_extract_archive", offline)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(
        DataNotFoundError,
        match=r"download failed \(train-images-idx3-ubyte.gz: https?://\S+: "
        r"RuntimeError: Name or service not known",
    ):
        dm.prepare_data()


@contextmanager
def _local_server(behaviour: str):
    """``http://127.0.0.1:<port>/`` of a server that answers every request with 404 (``"404"``), with a page that is
    not the file (``"html"``: the download is written, then fails its MD5 check) or closes the connection without
    an answer (``"close"``)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if behaviour == "404":
                self.send_error(404, "Not Found")
            elif behaviour == "html":
                body = b"<html>captive portal</html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.close_connection = True  # no status line: the client sees the connection end

        def log_message(self, *args) -> None:
            pass

    with local_http_server(Handler) as url:
        yield url


def _offline(monkeypatch: pytest.MonkeyPatch, *mirrors: str) -> None:
    """torchvision's MNIST mirrors replaced by ``mirrors`` (on 127.0.0.1 only), no proxy in the way."""
    import torchvision.datasets

    assert all(m.startswith("http://127.0.0.1:") for m in mirrors)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", list(mirrors))


@pytest.mark.parametrize("behaviour", ["404", "html", "close", "closed port"])
def test_failed_download_names_each_mirror_and_the_real_reason_and_leaves_no_empty_folders(
    tmp_path, monkeypatch, behaviour
):
    expected = {
        "404": r"HTTPError: 404 Not Found",
        "html": r"RuntimeError: File not found or corrupted\.",  # torchvision's MD5 check
        "close": r"RemoteDisconnected: Remote end closed connection without response",
        "closed port": r"URLError: ConnectionRefusedError: \[Errno \d+\] Connection refused",
    }[behaviour]
    data_dir = tmp_path / "data"
    with contextlib.ExitStack() as stack:
        if behaviour == "closed port":
            mirrors = [closed_port_url()]
        else:  # the first mirror answers badly, the second one cannot be reached: both reasons are given
            mirrors = [stack.enter_context(_local_server(behaviour)), closed_port_url()]
        _offline(monkeypatch, *mirrors)
        with pytest.raises(DataNotFoundError) as err:
            MNISTDataModule(data_dir=str(data_dir), download=True).prepare_data()
    message = str(err.value)
    first_line = message.splitlines()[0]
    assert f"train-images-idx3-ubyte.gz: {mirrors[0]}train-images-idx3-ubyte.gz: " in first_line
    assert re.search(expected, first_line), first_line
    if len(mirrors) > 1:
        assert f"; {mirrors[1]}train-images-idx3-ubyte.gz: URLError: ConnectionRefusedError" in first_line
    assert "Fix: put the four IDX files" in message
    # data_dir, MNIST/ and MNIST/raw were made by the download, the wrong file written by it: all removed again
    assert not data_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_download_keeps_the_folders_and_files_that_were_there(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("mine")
    (tmp_path / "other").mkdir()
    _offline(monkeypatch, closed_port_url())
    with pytest.raises(DataNotFoundError, match="Connection refused"):
        MNISTDataModule(data_dir=str(tmp_path), download=True).prepare_data()
    assert (raw / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MNIST", "other"]
    # an empty raw folder that was there before the download stays too
    (raw / "notes.txt").unlink()
    with pytest.raises(DataNotFoundError):
        MNISTDataModule(data_dir=str(tmp_path), download=True).prepare_data()
    assert raw.is_dir()


def test_describe_error_is_never_blank():
    from urllib.error import URLError

    from datamodules.errors import describe_error

    assert describe_error(URLError(ConnectionRefusedError(111, "Connection refused"))) == (
        "URLError: ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert describe_error(URLError("timed out")) == "URLError: timed out"
    assert describe_error(ConnectionResetError()) == "ConnectionResetError (no message)"
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise RuntimeError("") from inner
    except RuntimeError as outer:
        assert describe_error(outer) == "RuntimeError (no message), caused by TimeoutError: read timed out"


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

"""Shared fixtures: where the real data sets live, and small helpers."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# albumentations asks pypi.org for a newer version when imported: tests (and their subprocesses) stay offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def shared_data_dir() -> Path | None:
    """``$ZOO_DATA_DIR``, else ``../shared/data`` beside the project, else None."""
    env = os.environ.get("ZOO_DATA_DIR")
    if env:
        return Path(env)
    candidate = ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _require(subdir: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / subdir).is_dir():
        message = f"real data set {subdir!r} not found: set ZOO_DATA_DIR to the folder holding it"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has the data: a missing folder is a broken setup, not a skip
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data root holding ``mnist/`` and ``fashion_mnist/``."""
    return _require("mnist")


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    return _require("fashion_mnist")


@pytest.fixture(scope="session")
def isbi_root() -> Path:
    """The ISBI 2012 EM membrane folder (``train/image``, ``train/label``, ``test``)."""
    return _require("isbi2012_em_membrane") / "isbi2012_em_membrane"


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    """The DSB2018 nuclei folder (``stage1_train/<id>/{images,masks}``)."""
    return _require("dsb2018_nuclei") / "dsb2018_nuclei"


@pytest.fixture(autouse=True)
def _quiet_and_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs write logs and checkpoints into the working directory: keep them in tmp.
    monkeypatch.chdir(tmp_path)
    # LightningCLI(args=...) warns when sys.argv also carries arguments (pytest's own).
    monkeypatch.setattr("sys.argv", ["train.py"])


@pytest.fixture(autouse=True)
def _restore_torch_global_settings() -> Iterator[None]:
    # Trainer(deterministic=True) switches torch.use_deterministic_algorithms on for the whole process and leaves it
    # on: a later test of an op without a deterministic kernel (max_unpool2d) would fail only after such a test.
    # The same for the intra-op thread count, which some tests lower to 1 (results differ in the last bits with it).
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """``$ZOO_CACHE_DIR`` in a temporary folder: the tests never write into the user's ~/.cache."""
    if os.environ.get("ZOO_CACHE_DIR"):
        return Path(os.environ["ZOO_CACHE_DIR"])
    cache = tmp_path_factory.mktemp("zoo_cache")
    os.environ["ZOO_CACHE_DIR"] = str(cache)
    return cache


# -- downloads: tests download only from servers they start on 127.0.0.1 ----------------------------------------
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", socket.gethostname()}


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches any address outside this machine: looking up another host fails the test (a download
    path that was meant to stay offline shows up here instead of on the internet)."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and str(host) not in LOOPBACK_HOSTS:
            raise AssertionError(f"a test tried to reach {host} (tests may only use 127.0.0.1)")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@contextlib.contextmanager
def local_http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``http://127.0.0.1:<port>/`` answered by ``handler`` in a thread, for the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url(path: str = "") -> str:
    """A URL on 127.0.0.1 whose port was free a moment ago: nothing listens on it (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


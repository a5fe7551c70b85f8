"""``python -m zoo.weights`` (list, download, verify, path), the README's commands for it, and ``normalize: weights``
(an image datamodule evaluating as the pretrained weights were evaluated)."""

from __future__ import annotations

import hashlib
import http.server
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import local_http_server
from tests.test_readme_commands import readme_commands
from zoo.weights import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    for name in ("ZOO_OFFLINE", "ZOO_WEIGHTS_MIRROR", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


def test_list_shows_a_networks_names_with_url_hash_and_metadata(capsys):
    assert main(["list", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "torchvision:IMAGENET1K_V2" in out and "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in out
    assert "acc@1 80.858" in out and "eval resize 232 crop 224" in out
    assert "smp encoder" in out and "imagenet" in out  # resnet50 is an smp encoder too
    assert main(["list", "lenet5"]) == 1  # a zoo network: no library names, said so


def test_download_verify_and_path_through_the_command(tmp_path, capsys, empty_cache):
    body = b"weights " * 1000
    sha = hashlib.sha256(body).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with local_http_server(Handler) as base:
        url = f"{base}net-{sha[:8]}.pth"
        assert main(["download", url]) == 0
    assert sha in capsys.readouterr().out
    assert main(["path", url]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == empty_cache / f"net-{sha[:8]}.pth" and path.read_bytes() == body
    assert main(["verify"]) == 0
    assert "1 ok, 0 damaged" in capsys.readouterr().out
    path.write_bytes(body[:-1] + b"!")
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and str(path) in out and "0 ok, 1 damaged" in out


def test_the_readme_weights_commands_run_as_written(tmp_path, empty_cache):
    commands = [c for c in readme_commands() if "zoo.weights" in c]
    assert {shlex.split(c)[3] for c in commands} == {"list", "download", "verify", "path"}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZOO_CACHE": str(empty_cache)}
    for command in commands:
        words = shlex.split(command)
        offline = words[3] == "download"  # no internet here: the download must stop with the offline error
        done = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, capture_output=True, text=True,
                              env={**env, "ZOO_OFFLINE": "1"} if offline else env, timeout=300)  # fmt: skip
        if offline:
            assert done.returncode == 2 and "ZOO_OFFLINE=1 forbids downloading" in done.stderr, done.stderr
            assert str(empty_cache / "resnet50-11ad3fa6.pth") in done.stderr
        else:
            assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"


def test_normalize_weights_evaluates_with_the_weights_statistics_resize_and_interpolation(tmp_path):
    from PIL import Image

    from datamodules.images import ImageFolderDataModule

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (300, 200), (40 * i, 20, 200 if label == "a" else 10)).save(
                tmp_path / "images" / label / f"{i}.png"
            )
    dm = ImageFolderDataModule(data_dir=str(tmp_path / "images"), image_size=224, num_workers=0,
                               normalize="weights", val_size=0.34, test_size=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="normalize: weights needs the preprocessing"):
        dm.eval_transform()
    dm.use_weights_preprocessing(resize=235, crop=224, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                                 interpolation="bicubic")  # fmt: skip
    transform = dm.eval_transform()
    resize = transform.transforms[0]
    assert resize.size == [235] and resize.interpolation.value == "bicubic"
    dm.setup("fit")
    image, _ = dm.val_set[0]
    assert image.shape == (3, 224, 224)
    # Every image's green channel is 20 everywhere: normalized with the weights' green mean 0.4 and std 0.25.
    assert torch.allclose(image[1], torch.full((224, 224), (20 / 255 - 0.4) / 0.25), atol=1e-3)
    with pytest.raises(ValueError, match="normalize: weights"):
        ImageFolderDataModule(data_dir=str(tmp_path / "images"), normalize="imagenet",
                              num_workers=0).use_weights_preprocessing(256, 224, (0.5,) * 3, (0.2,) * 3)  # fmt: skip


def test_train_py_refuses_normalize_weights_without_named_pretrained_weights(tmp_path, capsys):
    from PIL import Image

    from zoo.cli import run

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 40), (50 * i, 9, 9)).save(tmp_path / "images" / label / f"{i}.png")
    code = run(["fit", "--config", str(ROOT / "configs/classification/imagefolder_resnet18.yaml"),
                f"--data.init_args.data_dir={tmp_path / 'images'}", "--data.init_args.normalize=weights",
                "--data.init_args.num_workers=0", "--trainer.fast_dev_run=1"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "normalize: weights" in err and "pretrained is not set" in err and "torchvision:IMAGENET1K_V2" in err

"""Pretrained weights by name, URL or file: download (only from servers these tests start on 127.0.0.1), hash
checks, the cache, offline use, the mirror, and the libraries' own metadata (read without downloading)."""

from __future__ import annotations

import hashlib
import http.server
import os
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

import zoo
from tests.conftest import closed_port_url, local_http_server
from zoo.core import weight_sources as ws
from zoo.core.registry import get_model_entry, list_models
from zoo.core.weight_sources import (
    WeightsHashError,
    WeightsNotAvailableError,
    parse_weights,
    recording_weights,
    resolve_weights,
)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty zoo cache and hub cache, and no offline / mirror setting from outside."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZOO_CACHE", str(cache))
    for name in ("ZOO_OFFLINE", "ZOO_WEIGHTS_MIRROR", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return cache  # (tests/conftest.py keeps every test on 127.0.0.1)


def serving(files: dict[str, bytes], requests: list[str] | None = None, cut_at: int | None = None):
    """A handler serving ``files`` by name; ``cut_at``: send that many bytes of a file, then close the
    connection (Content-Length still says the whole size)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name = self.path.lstrip("/")
            if requests is not None:
                requests.append(name)
            if name not in files:
                self.send_error(404)
                return
            body = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if cut_at is None else body[:cut_at])
            if cut_at is not None:
                self.wfile.flush()
                self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    return Handler


def convnet_file(tmp_path: Path, num_classes: int = 10) -> tuple[bytes, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = zoo.create_model("convnet", num_classes=num_classes, in_channels=1).state_dict()
    path = tmp_path / f"convnet{num_classes}.pth"
    torch.save(state, path)
    return path.read_bytes(), state


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- download, cache, hash ------------------------------------------------------------------------------------------


def test_a_url_is_downloaded_hash_checked_loaded_recorded_and_reused_with_the_server_stopped(tmp_path, isolated_cache):
    from zoo.classification import ImageClassifier

    body, state = convnet_file(tmp_path)
    sha = hashlib.sha256(body).hexdigest()
    requests: list[str] = []
    with local_http_server(serving({"w/convnet.pth": body}, requests)) as base:
        spec = f"{base}w/convnet.pth#sha256={sha}"
        model = ImageClassifier(network="convnet", num_classes=10, in_channels=1, pretrained=spec)
    assert requests == ["w/convnet.pth"]
    for key, tensor in state.items():
        torch.testing.assert_close(model.net.state_dict()[key], tensor)
    [record] = model.initial_weights
    assert record["url"] == spec.split("#")[0] and record["sha256"] == sha and record["kind"] == "url"
    cached = Path(record["path"])
    assert cached.is_file() and cached.read_bytes() == body and isolated_cache in cached.parents
    assert not [p for p in files_in(isolated_cache) if ".partial" in p]
    # The server is gone: the cached file is used (and verified) without any request.
    again = resolve_weights(spec)
    assert again.path == cached and again.sha256 == sha and requests == ["w/convnet.pth"]
    # Which weights the run started from travels in the checkpoint.
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["zoo"]["initial_weights"][0]["sha256"] == sha


def test_a_url_without_a_hash_records_the_sha256_it_was_downloaded_with_and_checks_it_later(tmp_path):
    body, _ = convnet_file(tmp_path)
    with local_http_server(serving({"convnet.pth": body})) as base:
        first = resolve_weights(f"{base}convnet.pth")
    assert (first.path.parent / "convnet.pth.sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()
    first.path.write_bytes(body[:-10] + b"0123456789")
    with pytest.raises(WeightsHashError, match="convnet.pth"):
        resolve_weights(f"{base}convnet.pth")


def test_a_tampered_cached_file_is_refused_naming_it_both_hashes_and_the_fix(tmp_path):
    body, _ = convnet_file(tmp_path)
    sha = hashlib.sha256(body).hexdigest()
    with local_http_server(serving({"convnet.pth": body})) as base:
        spec = f"{base}convnet.pth#sha256={sha}"
        path = resolve_weights(spec).path
    path.write_bytes(body[:100] + bytes(len(body) - 100))
    with pytest.raises(WeightsHashError) as caught:
        resolve_weights(spec)
    message = str(caught.value)
    assert str(path) in message and sha in message and hashlib.sha256(path.read_bytes()).hexdigest() in message
    assert "Fix: delete it" in message


def test_a_wrong_hash_is_refused_and_nothing_is_left_in_the_cache(tmp_path, isolated_cache):
    body, _ = convnet_file(tmp_path)
    wrong = hashlib.sha256(b"another file").hexdigest()
    with local_http_server(serving({"convnet.pth": body})) as base, pytest.raises(
        WeightsHashError, match=f"{wrong}.*was expected"
    ):
        resolve_weights(f"{base}convnet.pth#sha256={wrong}")
    assert files_in(isolated_cache) == []


@pytest.mark.parametrize("stated_hash", [True, False])
def test_an_interrupted_download_leaves_no_file_that_looks_valid(tmp_path, isolated_cache, stated_hash):
    body, _ = convnet_file(tmp_path)
    fragment = f"#sha256={hashlib.sha256(body).hexdigest()}" if stated_hash else ""
    cut = serving({"convnet.pth": body}, cut_at=len(body) // 2)
    with local_http_server(cut) as base, pytest.raises(WeightsNotAvailableError, match="stopped after|Cannot download"):
        resolve_weights(f"{base}convnet.pth{fragment}")
    assert files_in(isolated_cache) == []


def test_an_unreachable_server_is_one_error_with_the_url_and_the_cache_path():
    url = closed_port_url("resnet.pth")
    with pytest.raises(WeightsNotAvailableError) as caught:
        resolve_weights(url)
    assert url in str(caught.value) and "Fix:" in str(caught.value)


def test_a_bad_hash_fragment_is_refused_before_any_download():
    with pytest.raises(ws.PretrainedWeightsError, match="sha256"):
        parse_weights("http://127.0.0.1:1/x.pth#sha256=xyz")
    with pytest.raises(ws.PretrainedWeightsError, match="sha256=<hex>"):
        parse_weights("http://127.0.0.1:1/x.pth#md5=00")


def test_a_file_url_is_checked_against_its_hash(tmp_path):
    body, _ = convnet_file(tmp_path)
    path = tmp_path / "convnet10.pth"
    good = resolve_weights(f"{path.as_uri()}#sha256={hashlib.sha256(body).hexdigest()[:12]}")
    assert good.path == path
    with pytest.raises(WeightsHashError):
        resolve_weights(f"{path.as_uri()}#sha256={'0' * 64}")


def test_offline_with_an_empty_cache_names_the_url_the_cache_path_and_the_hash(monkeypatch, isolated_cache):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    member = tvm.ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(WeightsNotAvailableError) as caught:
        zoo.create_model("resnet18")  # building without weights never needs the network
        from zoo.classification import ImageClassifier

        ImageClassifier(network="resnet18", num_classes=1000, in_channels=3, pretrained="torchvision:IMAGENET1K_V1")
    message = str(caught.value)
    assert member.url in message
    assert str(isolated_cache / Path(member.url).name) in message
    assert ws.hash_in_file_name(Path(member.url).name) in message and "ZOO_OFFLINE=1" in message


def test_the_mirror_serves_a_names_file_and_the_names_hash_still_refuses_a_wrong_one(monkeypatch, isolated_cache):
    member = tvm.ResNet18_Weights.IMAGENET1K_V1
    name = Path(member.url).name  # resnet18-f37072fd.pth: the hash prefix the file must have
    requests: list[str] = []
    with local_http_server(serving({name: b"not the real resnet18 weights" * 100}, requests)) as base:
        monkeypatch.setenv("ZOO_WEIGHTS_MIRROR", base)
        with pytest.raises(WeightsHashError, match="f37072fd"):
            resolve_weights("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert requests == [name]  # fetched from the mirror, under the name's own file name
    assert files_in(isolated_cache) == []


def test_a_file_torchvision_downloaded_before_is_reused_from_its_hub_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("ZOO_CACHE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert ws.cache_dir() == Path(torch.hub.get_dir()) / "checkpoints"
    assert parse_weights("torchvision:ResNet18_Weights.IMAGENET1K_V1").path == (
        tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    )


# -- the libraries' own metadata -----------------------------------------------------------------------------------


def torchvision_networks(family: str) -> list[str]:
    zoo.load_families()
    names = []
    for name in list_models(family=family):
        if get_model_entry(name).source != "torchvision":
            continue
        try:
            tvm.get_model_weights(name)
        except (ValueError, KeyError):
            continue
        names.append(name)
    return names


def test_torchvision_names_resolve_to_the_urls_and_hashes_of_torchvisions_weights_enums():
    networks = torchvision_networks("classification") + torchvision_networks("detection")
    assert {"resnet50", "vgg16", "densenet121", "mobilenet_v3_large", "fasterrcnn_resnet50_fpn"} <= set(networks)
    for network in networks:
        enum = tvm.get_model_weights(network)
        for member in enum:
            for spec in (f"torchvision:{member.name}", f"torchvision:{enum.__name__}.{member.name}"):
                source = parse_weights(spec, network=network)
                assert source.url == member.url, spec
                assert source.sha256 == ws.hash_in_file_name(Path(member.url).name), spec
                assert source.name == f"torchvision:{enum.__name__}.{member.name}"
                categories = member.meta.get("categories")  # None for VGG's feature-only weights
                assert source.categories == (tuple(categories) if categories else None)


@pytest.mark.parametrize("family", ["classification", "detection"])
def test_torchvision_weights_fit_the_zoos_networks_key_for_key(family):
    """The zoo's networks built from torchvision have torchvision's state-dict keys and shapes, so a
    ``torchvision:`` file loads (checked on meta tensors: nothing is downloaded or allocated)."""
    for network in torchvision_networks(family):
        member = tvm.get_model_weights(network).DEFAULT
        classes = len(member.meta["categories"])
        with torch.device("meta"):
            ours = zoo.create_model(network, num_classes=classes if family == "classification" else classes - 1)
            extra = {"weights_backbone": None} if family == "detection" else {}  # torchvision's default: ImageNet
            theirs = tvm.get_model(network, weights=None, num_classes=classes, **extra)
        ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items() if "num_batches_tracked" not in k}
        theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items() if "num_batches_tracked" not in k}
        assert ours_shapes == theirs_shapes, network


def test_a_short_torchvision_name_for_a_network_torchvision_lacks_says_how_to_write_it():
    with pytest.raises(WeightsNotAvailableError, match="ResNet50_Weights.IMAGENET1K_V2"):
        parse_weights("torchvision:IMAGENET1K_V1", network="resnet20")
    with pytest.raises(WeightsNotAvailableError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        parse_weights("torchvision:IMAGENET1K_V3", network="resnet50")


def test_timm_names_resolve_to_timms_pretrained_configs():
    import timm

    for network in ("seresnet50", "seresnext50_32x4d"):
        tags = timm.list_pretrained(f"{network}.*")
        assert tags
        for full in tags:
            cfg = timm.models.get_pretrained_cfg(full)
            source = parse_weights(f"timm:{full.split('.', 1)[1]}", network=network)
            assert source.name == f"timm:{full}" and source.hub is not None
            assert source.hub[0] == cfg.hf_hub_id
            assert source.url == f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{source.hub[2][0]}"
            assert source.preprocessing.crop == cfg.input_size[-1]
            assert source.preprocessing.mean == tuple(cfg.mean)
            assert source.preprocessing.interpolation == cfg.interpolation
            assert len(source.categories) == cfg.num_classes == 1000
    with pytest.raises(WeightsNotAvailableError, match="timm:a1_in1k"):
        parse_weights("timm:no_such_tag", network="seresnet50")


def test_smp_names_resolve_to_smps_hub_repositories_at_their_pinned_revisions():
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["resnet34"]["pretrained_settings"]["imagenet"]
    source = parse_weights("imagenet", network="resnet34", library="smp")
    assert source.hub == (settings["repo_id"], settings["revision"], ("model.safetensors",))
    assert parse_weights("smp:imagenet", network="resnet34").hub == source.hub
    with pytest.raises(WeightsNotAvailableError, match="it has: imagenet"):
        parse_weights("instagram", network="resnet34", library="smp")


# -- the hub (timm and smp names), offline, from a hub cache laid out as the hub client lays it out ------------------


def put_in_hub_cache(hub: Path, repo: str, revision: str | None, filename: str, body: bytes) -> Path:
    """Lay ``body`` out as huggingface_hub's cache holds a downloaded file (blob named by its sha256, a snapshot
    link, the ref)."""
    commit = revision or "0" * 40
    folder = hub / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / hashlib.sha256(body).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(body)
    snapshot = folder / "snapshots" / commit / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return blob


def test_an_smp_name_loads_offline_from_the_hub_cache_into_a_one_channel_encoder(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    torch.manual_seed(0)
    rgb = get_encoder("resnet18", in_channels=3, weights=None)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    from huggingface_hub import constants

    blob = put_in_hub_cache(Path(constants.HF_HUB_CACHE), settings["repo_id"], settings["revision"],
                            "model.safetensors", path.read_bytes())
    net = zoo.create_model(
        "smp_unet", num_classes=2, in_channels=1, encoder_name="resnet18", encoder_weights="imagenet"
    )
    # smp's own adaptation of RGB weights to one channel: the kernels summed over RGB.
    torch.testing.assert_close(net.encoder.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(net.encoder.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)
    psp = zoo.create_model("pspnet", num_classes=2, in_channels=3, encoder_name="resnet18", encoder_weights="imagenet")
    torch.testing.assert_close(psp.encoder.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")  # the hub's blob no longer has its sha256
    with pytest.raises(WeightsHashError, match=blob.name):
        zoo.create_model("smp_unet", num_classes=2, in_channels=1, encoder_name="resnet18", encoder_weights="imagenet")


def test_a_hub_name_offline_with_an_empty_hub_cache_says_what_to_copy_where(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError) as caught:
        resolve_weights("timm:a1_in1k", network="seresnet50")
    message = str(caught.value)
    assert "https://huggingface.co/timm/seresnet50.a1_in1k/resolve/main/model.safetensors" in message
    assert ws.hub_cache_dir().as_posix() in message and "HF_HUB_OFFLINE=1" in message


def test_timm_weights_bring_imagenet_class_names_and_their_evaluation_transform(tmp_path, monkeypatch):
    """A 1000-class head gets ImageNet's class names; ``normalize: weights`` takes the weights' mean, std,
    resize ratio and interpolation (seresnet50.a1_in1k: bicubic, crop 224 of 235)."""
    import timm
    from safetensors.torch import save_file

    from zoo.classification import ImageClassifier

    monkeypatch.setenv("ZOO_OFFLINE", "1")
    torch.manual_seed(0)
    source = timm.create_model("seresnet50", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    from huggingface_hub import constants

    put_in_hub_cache(Path(constants.HF_HUB_CACHE), "timm/seresnet50.a1_in1k", None, "model.safetensors",
                     path.read_bytes())
    with recording_weights() as used:
        model = ImageClassifier(network="seresnet50", num_classes=1000, in_channels=3, pretrained="timm:a1_in1k")
    assert [r["name"] for r in used] == ["timm:seresnet50.a1_in1k"]
    torch.testing.assert_close(model.net.fc.weight, source.fc.weight)
    assert model.class_names[:2] == ["tench", "goldfish"] and model.hparams["class_names"][0] == "tench"
    assert model.initial_weights[0]["name"] == "timm:seresnet50.a1_in1k"
    assert model.weights_preprocessing == {"resize": 235, "crop": 224, "mean": (0.485, 0.456, 0.406),
                                           "std": (0.229, 0.224, 0.225), "interpolation": "bicubic"}


def test_the_model_card_says_which_weights_a_checkpoint_started_from(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from zoo.card import build_card, render_markdown
    from zoo.classification import ImageClassifier

    body, _ = convnet_file(tmp_path)
    sha = hashlib.sha256(body).hexdigest()
    with local_http_server(serving({"convnet.pth": body})) as base:
        model = ImageClassifier(network="convnet", num_classes=10, in_channels=1,
                                pretrained=f"{base}convnet.pth#sha256={sha}")  # fmt: skip
    data = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    card = build_card(ckpt, macs=False)
    [record] = card["model"]["initial_weights"]
    assert record["sha256"] == sha and record["url"].endswith("/convnet.pth")
    assert f"sha256 {sha}" in render_markdown(card)
    reloaded = ImageClassifier.load_from_checkpoint(ckpt)  # nothing is downloaded again: the record comes back
    assert reloaded.initial_weights[0]["sha256"] == sha


def test_a_head_of_another_size_stays_fresh_and_is_reported_when_loading_from_a_url(tmp_path):
    from zoo.classification import ImageClassifier

    body, state = convnet_file(tmp_path, num_classes=10)
    with local_http_server(serving({"convnet.pth": body})) as base:
        model = ImageClassifier(network="convnet", num_classes=5, in_channels=1, pretrained=f"{base}convnet.pth")
    assert model.pretrained_report.skipped_head and model.pretrained_report.loaded
    first = model.pretrained_report.loaded[0]
    torch.testing.assert_close(model.net.state_dict()[first], state[first])


@pytest.mark.parametrize(
    ("network", "argument", "spec", "file_name"),
    [
        ("fasterrcnn_mobilenet_v3_large_fpn", "backbone_weights", "torchvision:IMAGENET1K_V1",
         "mobilenet_v3_large-8738ca79.pth"),  # the backbone's own enum
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "weights", "torchvision:COCO_V1",
         "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth"),  # the 320-px variant's enum, not the 800-px one's
        ("ssdlite320_mobilenet_v3_large", "weights", "torchvision:DEFAULT",
         "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"),
    ],
)
def test_detector_weight_names_resolve_against_the_right_enum(monkeypatch, isolated_cache, network, argument, spec,
                                                              file_name):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError, match=str(isolated_cache / file_name)):
        zoo.create_model(network, family="detection", num_classes=3, **{argument: spec})

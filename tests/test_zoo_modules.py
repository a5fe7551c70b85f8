"""Every LightningModule of the zoo is a ZooModule: it names its network with ``network`` from its registry family,
its checkpoints carry the zoo's identity and load back with ``load_from_checkpoint`` in a fresh process, a
checkpoint of another class is refused with both names, and checkpoints written before the rename still load."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import zoo
from tests.old_checkpoints import old_classifier_checkpoint
from zoo.core.checkpoint import CheckpointError, class_path
from zoo.core.module import ZooModule
from zoo.core.registry import list_models

ROOT = Path(__file__).resolve().parents[1]

# The smallest configuration of each module (defaults where they are small already).
TINY: dict[str, dict] = {
    "zoo.classification.ImageClassifier": {"network": "convnet", "network_kwargs": {"width": 4}},
    "zoo.classification.DistillationClassifier": {"network": "convnet", "network_kwargs": {"width": 4}},
    "zoo.segmentation.SemanticSegmenter": {"network": "unet", "network_kwargs": {"base_channels": 4, "depth": 1}},
    "zoo.detection.ObjectDetector": {"network": "ssdlite320_mobilenet_v3_large", "num_classes": 2, "image_size": 64},
}


def all_zoo_lightning_modules() -> list[type]:
    """Every LightningModule class defined in the zoo package (all its modules imported)."""
    for info in pkgutil.walk_packages(zoo.__path__, "zoo."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found = set()
    stack = [pl.LightningModule]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("zoo."):
                found.add(sub)
    return sorted(found, key=class_path)


def network_parameter(cls: type) -> inspect.Parameter | None:
    """The ``network`` argument of ``cls``, or of the parent its ``**kwargs`` go to."""
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            parameters = inspect.signature(klass.__init__).parameters
            if "network" in parameters:
                return parameters["network"]
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                return None
    return None


ALL = all_zoo_lightning_modules()
MODULES = [cls for cls in ALL if network_parameter(cls) is not None]  # the bases (ZooModule, ...) build nothing


def test_the_walk_finds_every_family():
    assert {cls.family for cls in MODULES} == {"classification", "segmentation", "detection", "generative"}
    assert len(MODULES) >= 9


@pytest.mark.parametrize("cls", ALL, ids=class_path)
def test_every_lightning_module_of_the_zoo_is_a_zoo_module(cls):
    assert issubclass(cls, ZooModule)


@pytest.mark.parametrize("cls", MODULES, ids=class_path)
def test_every_zoo_module_names_a_registered_network_of_its_family(cls):
    assert cls.family in {"classification", "segmentation", "detection", "generative"}
    assert network_parameter(cls).default in list_models(family=cls.family)


def _save(cls: type, path: Path) -> ZooModule:
    module = cls(**TINY.get(class_path(cls), {}))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module


def test_checkpoints_carry_the_identity_and_load_in_a_fresh_process(tmp_path):
    saved = {}
    for cls in MODULES:
        path = tmp_path / f"{cls.__name__}.ckpt"
        module = _save(cls, path)
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["zoo"]["class_path"] == class_path(cls)
        assert checkpoint["zoo"]["format_version"] == 2
        assert checkpoint["hyper_parameters"]["network"] == module.hparams.network
        torch.save(module.state_dict(), tmp_path / f"{cls.__name__}.state.pt")
        saved[class_path(cls)] = str(path)
    script = f"""
import json, sys, torch
from zoo.core.checkpoint import import_class
saved = json.loads({json.dumps(json.dumps(saved))})
for path, ckpt in saved.items():
    cls = import_class(path)
    model = cls.load_from_checkpoint(ckpt, map_location="cpu")
    expected = torch.load(ckpt.replace(".ckpt", ".state.pt"))
    got = model.state_dict()
    assert type(model) is cls, (type(model), cls)
    assert list(got) == list(expected), path
    assert all(torch.equal(got[k], expected[k]) for k in got), path
    print("loaded", path)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("loaded") == len(MODULES)


def test_a_checkpoint_of_another_class_is_refused_with_both_names(tmp_path):
    from zoo.detection import ObjectDetector
    from zoo.segmentation import SemanticSegmenter

    path = tmp_path / "detector.ckpt"
    _save(ObjectDetector, path)
    with pytest.raises(CheckpointError, match=r"holds a zoo\.detection\.ObjectDetector, but zoo\.segmentation\."
                                              r"SemanticSegmenter was expected"):
        SemanticSegmenter.load_from_checkpoint(path)
    # and without the zoo entry (a checkpoint saved before every module wrote it): recognised by its arguments
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["zoo"]
    torch.save(checkpoint, tmp_path / "old_detector.ckpt")
    with pytest.raises(CheckpointError, match="holds a zoo.detection.ObjectDetector"):
        SemanticSegmenter.load_from_checkpoint(tmp_path / "old_detector.ckpt")


@pytest.fixture(scope="module")
def format_1_classifier(tmp_path_factory) -> Path:
    return old_classifier_checkpoint(tmp_path_factory.mktemp("format_1") / "classifier.ckpt")


def test_a_classifier_checkpoint_written_before_the_rename_loads(format_1_classifier):
    from zoo.classification import ImageClassifier

    path = format_1_classifier
    old = torch.load(path, weights_only=False)
    assert "backbone" in old["hyper_parameters"] and "network" not in old["hyper_parameters"]
    model = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    assert model.hparams.network == "convnet" and model.hparams.network_kwargs == {"width": 4}
    state = model.state_dict()
    assert all(torch.equal(state[k], old["state_dict"][k]) for k in old["state_dict"])
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_the_cli_evaluates_a_checkpoint_written_before_the_rename(format_1_classifier, tmp_path, monkeypatch):
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    cli = main(
        ["validate", "--config", str(ROOT / "configs/classification/digits.yaml"),
         f"--ckpt_path={format_1_classifier}", "--trainer.logger=false",
         "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false"],
    )
    assert cli.model.hparams.network == "convnet" and cli.model.hparams.network_kwargs == {"width": 4}
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0

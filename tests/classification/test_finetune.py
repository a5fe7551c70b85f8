"""Transfer learning: weight files, heads, stages, the freeze/unfreeze schedule, fine-tuned checkpoints."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torchvision

from datamodules import DigitsDataModule
from zoo.classification import ImageClassifier
from zoo.classification.finetune import (
    FreezeUnfreeze,
    find_head,
    head_modules,
    load_pretrained,
    replace_head,
    resolve_freeze_depth,
    stages,
)
from zoo.cli import main
from zoo.core.registry import create_model
from zoo.core.weights import PretrainedWeightsError

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
         "enable_model_summary": False}


def quick_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(**{**QUIET, "accelerator": "cpu", "limit_val_batches": 0, **kwargs})


# -- loading weight files ---------------------------------------------------------------------------


def test_torchvision_resnet18_state_dict_loads_all_but_the_head_for_other_num_classes(tmp_path):
    reference = torchvision.models.resnet18(weights=None)  # 1000 classes, torchvision's key names
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")

    net = create_model("resnet18", num_classes=10)
    report = load_pretrained(net, tmp_path / "resnet18.pth")

    assert sorted(report.skipped_head) == ["fc.bias", "fc.weight"]
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert sorted(report.loaded) == sorted(expected)
    ours = net.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    assert net.fc.out_features == 10

    # the same through the LightningModule's `pretrained` argument
    model = ImageClassifier(
        network="resnet18", num_classes=10, in_channels=3, pretrained=str(tmp_path / "resnet18.pth")
    )
    torch.testing.assert_close(model.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.pretrained_report.skipped_head == report.skipped_head


def test_timm_seresnet50_state_dict_loads_into_the_zoo_builder(tmp_path):
    import timm

    reference = timm.create_model("seresnet50", pretrained=False, num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "seresnet50.pth")
    net = create_model("seresnet50", num_classes=7)
    report = load_pretrained(net, tmp_path / "seresnet50.pth")
    assert sorted(report.skipped_head) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(reference.state_dict()) - 2
    torch.testing.assert_close(net.layer3[2].se.fc1.weight, reference.layer3[2].se.fc1.weight)


def _wrap(kind: str, model: ImageClassifier) -> object:
    net_state = model.net.state_dict()
    return {
        "plain": net_state,
        "state_dict": {"state_dict": net_state, "epoch": 3},
        "model": {"model": net_state, "optimizer": {}},
        "zoo_module_state": model.state_dict(),  # keys "net.*"
        "data_parallel": {f"module.{k}": v for k, v in net_state.items()},
    }[kind]


@pytest.mark.parametrize("kind", ["plain", "state_dict", "model", "zoo_module_state", "data_parallel"])
def test_every_weight_file_layout_loads(kind, tmp_path):
    source = ImageClassifier(network="convnet", num_classes=10)
    torch.save(_wrap(kind, source), tmp_path / "weights.pt")
    target = create_model("convnet", num_classes=10, in_channels=1)
    report = load_pretrained(target, tmp_path / "weights.pt")
    assert report.skipped_head == [] and len(report.loaded) == len(target.state_dict())
    for key, value in source.net.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_zoo_lightning_checkpoint_loads_into_a_network_with_other_num_classes(tmp_path):
    source = ImageClassifier(network="convnet", num_classes=10)
    trainer = quick_trainer(max_steps=1)
    trainer.fit(source, DigitsDataModule())
    trainer.save_checkpoint(tmp_path / "digits.ckpt")

    model = ImageClassifier(network="convnet", num_classes=4, pretrained=str(tmp_path / "digits.ckpt"))
    assert sorted(model.pretrained_report.skipped_head) == ["classifier.2.bias", "classifier.2.weight"]
    assert torch.equal(model.net.features[4].weight, source.net.features[4].weight)
    assert model.net.classifier[2].out_features == 4


def test_a_non_head_shape_mismatch_names_the_first_key_both_shapes_and_the_file(tmp_path):
    torch.save(create_model("convnet", width=16).state_dict(), tmp_path / "wide.pth")
    narrow = create_model("convnet", width=8)
    with pytest.raises(PretrainedWeightsError) as err:
        load_pretrained(narrow, tmp_path / "wide.pth")
    message = str(err.value)
    assert "'features.0.weight' has shape (16, 1, 3, 3) in the file but (8, 1, 3, 3)" in message
    assert str(tmp_path / "wide.pth") in message
    assert "features.4" not in message  # the first mismatch only


def test_strict_head_refuses_a_head_of_another_shape_and_ignore_leaves_named_tensors(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PretrainedWeightsError, match=r"classifier head 'fc.weight' has shape \(1000, 512\)"):
        load_pretrained(create_model("resnet18", num_classes=10), tmp_path / "r18.pth", strict_head=True)
    # a small-input ResNet has a 3x3 conv1: ImageNet weights load for every other tensor
    small = create_model("resnet18", num_classes=10, small_input=True)
    with pytest.raises(PretrainedWeightsError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\).*\(64, 3, 3"):
        load_pretrained(small, tmp_path / "r18.pth")
    report = load_pretrained(small, tmp_path / "r18.pth", ignore=["conv1.weight"])
    assert report.ignored == ["conv1.weight"] and len(report.loaded) == 120 - 1


def test_a_missing_file_is_named_and_nothing_is_downloaded(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageClassifier(pretrained=str(missing))


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(create_model("resnet20").state_dict(), tmp_path / "resnet20.pth")
    with pytest.raises(PretrainedWeightsError, match="shares no tensor"):
        load_pretrained(create_model("convnet"), tmp_path / "resnet20.pth")


# -- heads and stages -------------------------------------------------------------------------------

# name: (head, number of stages); built with in_channels=3 and run on 32x32 images (AlexNet: 64x64)
NETWORKS = {
    "convnet": ("classifier.2", 3), "lenet5": ("classifier.3", 3), "resnet20": ("fc", 4), "resnet18": ("fc", 5),
    "seresnet50": ("fc", 5), "vgg11_bn": ("classifier.6", 5), "alexnet": ("classifier.6", 3),
    "squeezenet1_1": ("classifier.1", 4), "mobilenet_v3_small": ("classifier.3", 5),
    "densenet_bc100": ("classifier", 4), "googlenet": ("fc", 4), "nin": ("features.6.4", 3),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NETWORKS))
def test_head_and_stages_of_registered_networks(name):
    head_name, num_stages = NETWORKS[name]
    net = create_model(name, num_classes=10, in_channels=3)
    found, head = find_head(net)
    assert found == head_name
    parts = stages(net)
    assert len(parts) == num_stages
    stage_params = [id(p) for s in parts for p in s.parameters()]
    assert len(stage_params) == len(set(stage_params))  # stages are disjoint
    head_params = {id(p) for _, h in head_modules(net) for p in h.parameters()}
    assert not head_params & set(stage_params)  # the head is never a stage

    assert replace_head(net, 3) == [n for n, _ in head_modules(net)]
    net.eval()
    with torch.no_grad():
        size = 64 if name == "alexnet" else 32
        assert net(torch.randn(2, 3, size, size)).shape == (2, 3)
    assert find_head(net)[0] == head_name


def test_torchvision_resnet_stages_are_the_stem_and_its_four_layers():
    net = create_model("resnet18")
    stem, *layers = stages(net)
    assert [type(m) for m in stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert layers == [net.layer1, net.layer2, net.layer3, net.layer4]


def test_small_input_keeps_the_stage_count():
    for name in ("vgg11", "squeezenet1_0", "densenet121", "resnet18"):
        assert len(stages(create_model(name, small_input=True))) == len(stages(create_model(name))), name


def test_freeze_depth_beyond_the_stages_is_an_error_naming_the_stage_count():
    with pytest.raises(ValueError, match=r"freeze_stages=5, but CifarResNet has 4 stages \(1: conv1\+bn1"):
        ImageClassifier(network="resnet20", freeze_stages=5)
    assert resolve_freeze_depth(create_model("resnet20"), -1) == 4
    with pytest.raises(ValueError, match="freeze_stages must be -1"):
        FreezeUnfreeze(freeze_stages=-2)


# -- the freeze / unfreeze schedule in a real fit ---------------------------------------------------


class Recorder(pl.Callback):
    """State of the network after each epoch, BatchNorm modes during training, optimizer groups."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.frozen_bn_eval: dict[int, set[bool]] = {}
        self.groups: list[list[tuple[int, float]]] = []
        self.optimizer_at_start: set[int] = set()

    def on_train_start(self, trainer, pl_module) -> None:
        self.optimizer_at_start = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bns = [m for s in stages(pl_module.net)[:2] for m in s.modules() if isinstance(m, nn.BatchNorm2d)]
        self.frozen_bn_eval.setdefault(trainer.current_epoch, set()).update(not m.training for m in bns)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})
        self.groups.append([(len(g["params"]), g["lr"]) for g in trainer.optimizers[0].param_groups])


def test_frozen_stages_stay_unchanged_until_the_unfreeze_epoch_then_train_at_a_lower_lr():
    pl.seed_everything(0)
    model = ImageClassifier(
        network="convnet", freeze_stages=2, unfreeze_at_epoch=1, unfreeze_lr_factor=0.1,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05),
    )
    initial = {k: v.clone() for k, v in model.net.state_dict().items()}
    recorder = Recorder()
    quick_trainer(max_epochs=2, limit_train_batches=6, callbacks=[recorder]).fit(model, DigitsDataModule())

    frozen_prefixes = ("features.0.", "features.1.", "features.4.", "features.5.")
    frozen_keys = [k for k in initial if k.startswith(frozen_prefixes)]
    assert "features.1.running_mean" in frozen_keys and "features.5.running_var" in frozen_keys
    epoch0, epoch1 = recorder.states
    for key in frozen_keys:  # weights and BatchNorm statistics of the frozen stages: untouched
        assert torch.equal(epoch0[key], initial[key]), key
    for key in ("features.8.weight", "features.9.running_mean", "classifier.2.weight"):  # the rest trained
        assert not torch.equal(epoch0[key], initial[key]), key
    for key in ("features.0.weight", "features.1.running_mean", "features.4.weight"):  # unfrozen at epoch 1
        assert not torch.equal(epoch1[key], epoch0[key]), key

    assert recorder.frozen_bn_eval == {0: {True}, 1: {False}}  # eval while frozen, training after
    frozen_params = {id(p) for s in stages(model.net)[:2] for p in s.parameters()}
    trainable_at_start = {id(p) for p in model.parameters()} - frozen_params
    assert recorder.optimizer_at_start == trainable_at_start  # the optimizer began with trainable params only
    assert len(recorder.groups[0]) == 1 and len(recorder.groups[1]) == 2
    (_, lr_rest), (n_unfrozen, lr_unfrozen) = recorder.groups[1]
    assert n_unfrozen == 6  # two convs + two BatchNorms (weight, bias)
    assert lr_unfrozen == pytest.approx(0.1 * lr_rest)  # the one-cycle schedule drives the new group too


def test_resuming_after_the_unfreeze_epoch_keeps_the_stages_training(tmp_path):
    def make() -> ImageClassifier:
        return ImageClassifier(
            network="convnet", freeze_stages=2, unfreeze_at_epoch=1,
            optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
            lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        )

    first = quick_trainer(max_epochs=2, limit_train_batches=3)
    first.fit(make(), DigitsDataModule())
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    saved = torch.load(tmp_path / "epoch1.ckpt", weights_only=False)["state_dict"]["net.features.0.weight"]

    resumed, recorder = make(), Recorder()
    trainer = quick_trainer(max_epochs=3, limit_train_batches=3, callbacks=[recorder])
    trainer.fit(resumed, DigitsDataModule(), ckpt_path=tmp_path / "epoch1.ckpt", weights_only=False)
    assert not torch.equal(resumed.net.features[0].weight, saved)  # the unfrozen stage trains on
    assert all(p.requires_grad for p in resumed.parameters())
    assert [n for n, _ in recorder.groups[-1]] == [5, 6]
    assert recorder.frozen_bn_eval == {2: {False}}


def test_fine_tuned_checkpoint_reloads_in_a_fresh_process_without_the_pretrained_file(tmp_path):
    source = tmp_path / "source.pt"
    torch.save(ImageClassifier(network="convnet", num_classes=7).state_dict(), source)  # other classes
    cli = main([
        "fit", "--config", str(ROOT / "configs/classification/digits.yaml"),
        f"--model.init_args.pretrained={source}", "--model.init_args.freeze_stages=-1",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ])
    checkpoint = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert cli.model.pretrained_report.skipped_head == ["classifier.2.weight", "classifier.2.bias"]
    source.unlink()  # the pretrained file is gone: the checkpoint must be enough

    images = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        here = cli.model.eval()(images)
    reloaded = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert reloaded.hparams.pretrained == str(source)  # provenance kept
    torch.testing.assert_close(reloaded(images), here)

    torch.save(images, tmp_path / "images.pt")
    script = (
        "import sys, torch; from zoo.classification import ImageClassifier; "
        "m = ImageClassifier.load_from_checkpoint(sys.argv[1], map_location='cpu').eval(); "
        "torch.save(m(torch.load(sys.argv[2])).detach(), sys.argv[3])"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(checkpoint), str(tmp_path / "images.pt"),
         str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path,
    )
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), here)


def test_a_python_built_fine_tuned_module_reloads_without_the_pretrained_file(tmp_path):
    source = tmp_path / "source.pt"
    torch.save(ImageClassifier(network="resnet20", num_classes=7).state_dict(), source)
    model = ImageClassifier(network="resnet20", num_classes=10, pretrained=str(source), freeze_stages=2)
    trainer = quick_trainer(max_steps=2)
    trainer.fit(model, DigitsDataModule())
    trainer.save_checkpoint(tmp_path / "finetuned.ckpt")
    source.unlink()
    # Its hyperparameters hold the optimizer class, which torch's default weights-only unpickler
    # refuses: a checkpoint of your own run is loaded with weights_only=False.
    reloaded = ImageClassifier.load_from_checkpoint(tmp_path / "finetuned.ckpt", weights_only=False)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_fashion_finetune_config_fine_tunes_an_mnist_network(fashion_root, tmp_path):
    mnist = ImageClassifier(network="convnet", network_kwargs={"width": 16})
    torch.save(mnist.state_dict(), tmp_path / "mnist.pt")
    cli = main([
        "fit", "--config", str(ROOT / "configs/classification/fashion_mnist_finetune.yaml"),
        f"--data.init_args.data_dir={fashion_root}", f"--model.init_args.pretrained={tmp_path / 'mnist.pt'}",
        "--data.init_args.train_subset=500", "--model.init_args.unfreeze_at_epoch=1",
        "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--trainer.logger=false", "--trainer.callbacks=null",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])
    assert len(cli.datamodule.train_set) == 500
    assert cli.model.pretrained_report is not None and cli.model.pretrained_report.skipped_head == []
    assert len(cli.trainer.optimizers[0].param_groups) == 2  # the stages joined at epoch 1
    assert all(p.requires_grad for p in cli.model.parameters())
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert all(p.requires_grad for p in cli.model.parameters())  # testing does not freeze again

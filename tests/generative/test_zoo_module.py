"""Every generative model is a ZooModule: registered networks, learning-rate schedules (the GANs' stepped by hand),
subclasses that forward their parent's arguments, and checkpoints of the code before the registry."""

from __future__ import annotations

import ast
import functools
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR

import zoo
from tests.old_checkpoints import as_format_1, old_vae_checkpoint
from zoo.core.checkpoint import CheckpointError
from zoo.core.module import ZooModule
from zoo.generative import DCGAN, GAN, VAE, AutoEncoder, DenoisingAutoEncoder, GenerativeModule
from zoo.generative.models import EncoderDecoder, GeneratorDiscriminator

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[2]
NETWORK_PARTS = ("encoder.", "decoder.", "generator.", "discriminator.")


# -- networks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "parts", "code"),
    [
        ("autoencoder_mlp", ("encoder", "decoder"), 5),
        ("autoencoder_conv", ("encoder", "decoder"), 5),
        ("vae_mlp", ("encoder", "decoder"), 10),
        ("vae_conv", ("encoder", "decoder"), 10),
        ("gan_mlp", ("generator", "discriminator"), None),
        ("dcgan", ("generator", "discriminator"), None),
    ],
)
def test_each_builder_returns_one_network_with_its_parts(name, parts, code):
    assert name in zoo.list_models(family="generative")
    net = zoo.create_model(name, family="generative", in_channels=1, image_size=28, latent_dim=5)
    assert isinstance(net, EncoderDecoder if code else GeneratorDiscriminator)
    assert all(isinstance(getattr(net, part), torch.nn.Module) for part in parts)
    images = torch.rand(2, 1, 28, 28)
    if code:  # the encoder's output: the code, or the VAE's mean and log-variance
        assert net.encoder(images).shape == (2, code) and net(images).shape == (2, 1, 28, 28)
    else:
        assert net(torch.randn(2, 5)).shape == (2, 1, 28, 28) and net.discriminator(images).shape == (2,)


def test_the_network_files_import_neither_lightning_nor_the_modules():
    for path in (ROOT / "zoo/generative/models").glob("*.py"):
        imported = {
            alias.name if isinstance(node, ast.Import) else node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (node.names if isinstance(node, ast.Import) else [node])
        }
        assert all(m.split(".")[0] in ("__future__", "collections", "typing", "torch") or
                   m.startswith(("zoo.core.registry", "zoo.generative.models")) for m in imported), (path, imported)


@pytest.mark.parametrize("model_class", [AutoEncoder, DenoisingAutoEncoder, VAE, GAN, DCGAN])
def test_every_generative_model_is_a_zoo_module_whose_parts_are_registered_once(model_class):
    model = model_class()
    assert isinstance(model, ZooModule) and isinstance(model, GenerativeModule) and model.family == "generative"
    assert model.net is not None and not any(key.startswith(NETWORK_PARTS) for key in model.state_dict())
    parts = ("generator", "discriminator") if isinstance(model, GAN) else ("encoder", "decoder")
    for part in parts:
        assert getattr(model, part) is getattr(model.net, part)
    assert not {"num_classes", "class_names", "arch"} & set(model.hparams)


def test_a_network_of_another_kind_is_an_error_naming_the_default():
    with pytest.raises(ValueError, match=r"'autoencoder_mlp' builds networks of kind 'autoencoder', but VAE.*vae_mlp"):
        VAE(network="autoencoder_mlp")
    with pytest.raises(ValueError, match=r"kind 'vae', but GAN needs kind 'gan'"):
        GAN(network="vae_conv")
    with pytest.raises(TypeError, match=r"'gan_mlp' does not take 'width'"):  # a DCGAN-only width argument
        GAN(network="gan_mlp", width=32)


def test_network_kwargs_reach_the_builder_but_not_what_the_model_sets_itself():
    model = GAN(network_kwargs={"dropout": 0.5, "generator_hidden": [32]})
    assert {m.p for m in model.discriminator.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}
    assert [m.out_features for m in model.generator.modules() if isinstance(m, torch.nn.Linear)] == [32, 784]
    assert model.hparams["network_kwargs"] == {"dropout": 0.5, "generator_hidden": [32]}
    with pytest.raises(ValueError, match=r"network_kwargs must not set \['latent_dim', 'width'\]: they are arguments"):
        DCGAN(network_kwargs={"width": 8, "latent_dim": 3})


# -- learning-rate schedules -----------------------------------------------------------------------------------
def halving() -> functools.partial:
    return functools.partial(StepLR, step_size=1, gamma=0.5)


class RecordLR(pl.Callback):
    """The learning rate of every optimizer at the start of every epoch and after every training batch."""

    def __init__(self) -> None:
        self.epochs: list[list[float]] = []
        self.batches: list[list[float]] = []

    @staticmethod
    def _lrs(trainer: pl.Trainer) -> list[float]:
        return [opt.param_groups[0]["lr"] for opt in trainer.optimizers]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append(self._lrs(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(self._lrs(trainer))


@pytest.mark.parametrize("model_class", [AutoEncoder, DenoisingAutoEncoder, VAE])
def test_autoencoders_and_the_vae_follow_their_lr_scheduler(model_class, tiny_images, make_trainer):
    model = model_class(latent_dim=4, metric_samples=0, lr_scheduler=halving())
    record = RecordLR()
    make_trainer(max_epochs=3, limit_val_batches=0, callbacks=[record]).fit(model, tiny_images())
    assert [lr for (lr,) in record.epochs] == pytest.approx([1e-3, 5e-4, 2.5e-4])  # Adam's lr 1e-3 halved per epoch


@pytest.mark.parametrize("model_class", [GAN, DCGAN])
def test_both_gan_optimizers_follow_a_per_epoch_schedule(model_class, tiny_images, make_trainer):
    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    model = model_class(latent_dim=4, generator_optimizer=adam, lr_scheduler=halving(), metric_samples=0)
    record = RecordLR()
    make_trainer(max_epochs=3, limit_val_batches=0, callbacks=[record]).fit(model, tiny_images(symmetric=True))
    # generator 1e-3 (its own optimizer), discriminator 2e-4 (the shared default), both halved after every epoch
    torch.testing.assert_close(torch.tensor(record.epochs), torch.tensor([[1e-3, 2e-4], [5e-4, 1e-4], [2.5e-4, 5e-5]]))
    assert len(model.lr_schedulers()) == 2


def test_a_resumed_gan_run_continues_both_schedules(tiny_images, make_trainer, tmp_path):
    model = GAN(latent_dim=4, lr_scheduler=halving(), metric_samples=0)
    trainer = make_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, tiny_images(symmetric=True))
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    record = RecordLR()
    resumed = make_trainer(max_epochs=3, limit_val_batches=0, callbacks=[record])
    resumed.fit(GAN(latent_dim=4, lr_scheduler=halving(), metric_samples=0), tiny_images(symmetric=True),
                ckpt_path=tmp_path / "epoch1.ckpt")
    torch.testing.assert_close(torch.tensor(record.epochs), torch.tensor([[1e-4, 1e-4], [5e-5, 5e-5]]))


def test_a_per_step_gan_schedule_steps_once_per_batch_over_the_runs_batches(tiny_images, make_trainer):
    # OneCycleLR steps per batch ("auto"); max_steps=8 counts both optimizers' steps: 4 batches, its total_steps.
    model = GAN(latent_dim=4, lr_scheduler=functools.partial(OneCycleLR, max_lr=1e-3), metric_samples=0)
    record = RecordLR()
    make_trainer(max_steps=8, limit_val_batches=0, callbacks=[record]).fit(model, tiny_images(symmetric=True))
    reference = OneCycleLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), max_lr=1e-3, total_steps=4)
    expected = []
    for _ in range(4):
        reference.optimizer.step()
        reference.step()
        expected.append(reference.get_last_lr()[0])
    assert [g for g, _ in record.batches] == pytest.approx(expected)
    assert [d for _, d in record.batches] == pytest.approx(expected)
    assert [s.total_steps for s in model.lr_schedulers()] == [4, 4]


def test_a_plateau_schedule_watches_the_gans_fid_and_says_when_it_is_missing(tiny_images, make_trainer):
    plateau = functools.partial(ReduceLROnPlateau, patience=0, factor=0.5)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau watches 'val/fid', which GAN has not logged"):
        make_trainer(max_epochs=1, limit_val_batches=1).fit(  # no feature extractor: no FID
            GAN(latent_dim=4, lr_scheduler=plateau, metric_samples=16), tiny_images(symmetric=True))
    model = GAN(latent_dim=4, lr_scheduler=plateau, metric_samples=32)
    model.set_feature_extractor(lambda images: F.avg_pool2d(images, 14).flatten(1))  # 4 features
    make_trainer(max_epochs=2, limit_val_batches=2).fit(model, tiny_images(symmetric=True))
    assert [math.isfinite(s.best) for s in model.lr_schedulers()] == [True, True]  # both stepped with the FID


# -- subclasses forward their parent's arguments ---------------------------------------------------------------
def test_subclass_arguments_reach_the_parent_and_round_trip_through_a_checkpoint(tiny_images, make_trainer, tmp_path):
    for model, data in (
        (DenoisingAutoEncoder(noise="mask", latent_dim=6, network="autoencoder_conv", anomaly_class=3), tiny_images()),
        (DCGAN(latent_dim=6, width=8, generator_extra_layers=1, label_smoothing=0.2), tiny_images(symmetric=True)),
    ):
        trainer = make_trainer(max_steps=2, limit_val_batches=0)
        trainer.fit(model, data)
        path = tmp_path / f"{type(model).__name__}.ckpt"
        trainer.save_checkpoint(path)
        loaded = type(model).load_from_checkpoint(path)
        assert dict(loaded.hparams) == dict(model.hparams)
        assert loaded.latent_dim == 6 and loaded.net.__class__ is model.net.__class__
        for key, value in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    assert loaded.label_smoothing == 0.2
    assert len([m for m in loaded.generator.net if isinstance(m, torch.nn.Conv2d)]) == 1  # generator_extra_layers


def test_the_cli_lists_the_parents_arguments_of_a_subclass(capsys):
    from zoo.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/generative/mnist_dae.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    for argument in ("noise: gaussian", "network: autoencoder_mlp", "latent_dim: 32", "image_range: unit",
                     "metric_samples:", "lr_scheduler: null", "class_path: torch.optim.Adam"):
        assert argument in printed, argument
    assert "num_classes" not in printed and "arch" not in printed


def test_a_cli_checkpoint_of_a_subclass_loads_in_plain_python(data_root, tmp_path):
    from zoo.cli import main

    cli = main([
        "fit", "--config", str(ROOT / "configs/generative/mnist_dae.yaml"), f"--data.init_args.data_dir={data_root}",
        "--model.init_args.noise=mask", "--model.init_args.latent_dim=8", "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])  # fmt: skip
    path = Path(cli.trainer.checkpoint_callback.last_model_path)
    loaded = DenoisingAutoEncoder.load_from_checkpoint(path)
    assert loaded.noise == "mask" and loaded.latent_dim == 8 and loaded.hparams["network"] == "autoencoder_mlp"
    torch.testing.assert_close(loaded.state_dict(), cli.model.state_dict())


# -- checkpoints of the code before the registry (commit 59b440c) ---------------------------------------------
@pytest.fixture(scope="module")
def format_1_vae(tmp_path_factory) -> Path:
    return old_vae_checkpoint(tmp_path_factory.mktemp("format_1") / "vae.ckpt")


def test_the_vae_checkpoint_of_the_older_code_loads_with_its_weights(format_1_vae):
    old = torch.load(format_1_vae, weights_only=False)
    assert old["hyper_parameters"]["arch"] == "mlp" and "encoder.net.1.weight" in old["state_dict"]
    model = VAE.load_from_checkpoint(format_1_vae).eval()
    assert model.hparams["network"] == "vae_mlp" and not {"arch", "num_classes", "class_names"} & set(model.hparams)
    own = model.state_dict()
    for key, value in old["state_dict"].items():
        torch.testing.assert_close(own[key if key == "fixed_z" else f"net.{key}"], value, msg=key)
    assert len(own) == len(old["state_dict"])
    images = torch.rand(3, 1, 8, 8)
    reconstruction = model(images)
    assert reconstruction.shape == (3, 1, 8, 8) and 0 <= float(reconstruction.min()) <= float(reconstruction.max()) <= 1
    with torch.no_grad():  # the fixture's own weights give the same posterior mean
        hidden = torch.relu(images.flatten(1) @ old["state_dict"]["encoder.net.1.weight"].T
                            + old["state_dict"]["encoder.net.1.bias"])
        mean = (hidden @ old["state_dict"]["encoder.net.3.weight"].T + old["state_dict"]["encoder.net.3.bias"])[:, :2]
    torch.testing.assert_close(model.encode(images)[0], mean)


def test_the_trainer_path_renames_the_older_state_dict_keys_too(format_1_vae):
    # Trainer(ckpt_path=...) calls on_load_checkpoint, then loads checkpoint["state_dict"] (no hparam migration).
    old = torch.load(format_1_vae, weights_only=False)
    model = VAE(network="vae_mlp", latent_dim=2, hidden_dims=[8], image_size=8)
    model.on_load_checkpoint(old)
    model.load_state_dict(old["state_dict"])  # strict: every key found
    assert all(key == "fixed_z" or key.startswith("net.") for key in old["state_dict"])


def old_style_checkpoint(model: GenerativeModule, class_path: str, hparams: dict, path: Path) -> Path:
    """What the older code saved for ``model``'s weights: top-level network parts, ``arch`` and the classifier
    arguments in the hyperparameters, a format-1 "zoo" entry."""
    checkpoint = {
        "state_dict": {key: value.clone() for key, value in model.state_dict().items()},
        "zoo": {"class_path": class_path}, "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0,
    }  # fmt: skip
    old_hparams = {**hparams, "num_classes": None, "class_names": None}
    torch.save(as_format_1(checkpoint, old_hparams, network_prefix=True), path)
    return path


ADAM = {"class_path": "torch.optim.adam.Adam", "init_args": {"lr": 2e-4, "betas": (0.5, 0.999)}}
OLD_STYLE = {
    # class, arguments of today's equivalent, the older hyperparameters (the widths the old arch ignored included)
    "autoencoder_conv": (AutoEncoder, {"network": "autoencoder_conv", "latent_dim": 4},
                         {"arch": "conv", "latent_dim": 4, "hidden_dims": [64], "conv_channels": None}),
    "gan_mlp": (GAN, {"network": "gan_mlp", "latent_dim": 4},
                {"arch": "mlp", "latent_dim": 4, "width": 64, "generator_extra_layers": 0,
                 "generator_optimizer": ADAM, "discriminator_optimizer": ADAM}),
    "dcgan": (DCGAN, {"latent_dim": 4, "width": 8, "generator_ema": 0.9},
              {"arch": "conv", "latent_dim": 4, "width": 8, "generator_extra_layers": 0, "generator_ema": 0.9,
               "generator_optimizer": ADAM, "discriminator_optimizer": ADAM}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OLD_STYLE))
def test_older_autoencoder_and_gan_checkpoints_load_with_their_weights(name, tmp_path):
    model_class, arguments, old_hparams = OLD_STYLE[name]
    torch.manual_seed(0)
    model = model_class(**arguments)
    path = old_style_checkpoint(model, f"zoo.generative.{model_class.__name__}", old_hparams, tmp_path / "old.ckpt")
    loaded = model_class.load_from_checkpoint(path)
    assert loaded.hparams["network"] == name and "arch" not in loaded.hparams
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
    if isinstance(model, GAN):
        z = torch.randn(3, 4)
        torch.testing.assert_close(loaded.eval()(z), model.eval()(z))


def test_an_older_checkpoint_of_another_class_still_names_both(format_1_vae):
    with pytest.raises(CheckpointError, match=r"holds a zoo\.generative\.VAE, but zoo\.generative\.GAN was expected"):
        GAN.load_from_checkpoint(format_1_vae)

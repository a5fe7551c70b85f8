"""``compile: true`` (ZooModule): a compiled run trains as the eager one does, its checkpoints keep the eager keys and
load both ways, and every LightningModule of the zoo takes the argument from the command line.

torch.compile on the CPU builds C++ kernels: the image these tests run in has g++, so a missing compiler fails them
(it is not skipped). The first compilation costs about 40 s on 2 busy cores; later runs read inductor's cache.
"""

from __future__ import annotations

from pathlib import Path

import jsonargparse
import pytest
import pytorch_lightning as pl
import torch

from tests.test_zoo_modules import MODULES, TINY
from zoo.classification import ImageClassifier
from zoo.cli import main
from zoo.core.checkpoint import class_path
from zoo.core.errors import ZooUserError
from zoo.generative.gan import GAN
from zoo.generative.vae import VAE

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
# Inductor fuses and reorders float operations: the same steps agree to rounding, not bit for bit (measured: 3e-7).
LOSS_RTOL = 1e-4


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


def _classifier(compile: bool) -> ImageClassifier:
    pl.seed_everything(0, verbose=False)
    return ImageClassifier("convnet", network_kwargs={"width": 4}, compile=compile,
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))  # fmt: skip


def _fit(
    model: ImageClassifier,
    loader,
    steps: int,
    ckpt_path: Path | None = None,  # noqa: ANN001
) -> tuple[list[float], pl.Trainer]:
    """The losses of training ``model`` to ``steps`` optimizer steps (from ``ckpt_path``), and the trainer."""
    recorder = LossRecorder()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
                         callbacks=[recorder])  # fmt: skip
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return recorder.losses, trainer


@pytest.fixture(scope="module")
def mnist_loader(data_root):
    """Four batches of 32 real MNIST training digits, in order (no augmentation, no shuffling)."""
    from datamodules import MNISTDataModule

    data = MNISTDataModule(data_dir=str(data_root), augment=False)
    data.setup("fit")
    images, labels = data.train_set.images[:128], data.train_set.labels[:128]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=32)


@pytest.fixture(scope="module")
def runs(mnist_loader, tmp_path_factory):
    """The same 3 steps eager and compiled: {kind: (module, losses, checkpoint)}."""
    folder = tmp_path_factory.mktemp("compile")
    out = {}
    for kind, compile in (("eager", False), ("compiled", True)):
        model = _classifier(compile)
        losses, trainer = _fit(model, mnist_loader, STEPS)
        ckpt = folder / f"{kind}.ckpt"
        trainer.save_checkpoint(ckpt)
        out[kind] = (model, losses, ckpt)
    return out


def test_a_compiled_classifier_trains_as_the_eager_one(runs):
    compiled, compiled_losses, _ = runs["compiled"]
    eager, eager_losses, _ = runs["eager"]
    assert compiled.net._compiled_call_impl is not None and eager.net._compiled_call_impl is None
    assert len(compiled_losses) == len(eager_losses) == STEPS
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=LOSS_RTOL, atol=0)
    for (name, a), (_, b) in zip(compiled.state_dict().items(), eager.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


def test_a_compiled_runs_checkpoint_has_the_eager_keys_and_loads_into_an_eager_module(runs):
    compiled, _, compiled_ckpt = runs["compiled"]
    _, _, eager_ckpt = runs["eager"]
    saved = torch.load(compiled_ckpt, map_location="cpu", weights_only=True)
    eager_keys = list(torch.load(eager_ckpt, map_location="cpu", weights_only=True)["state_dict"])
    assert list(saved["state_dict"]) == eager_keys
    assert not any("_orig_mod" in key for key in saved["state_dict"])
    assert saved["hyper_parameters"]["compile"] is True
    loaded = ImageClassifier.load_from_checkpoint(compiled_ckpt, map_location="cpu", compile=False)
    assert loaded.compile_on_setup is False and loaded.net._compiled_call_impl is None
    for name, value in compiled.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    # load_from_checkpoint builds an eager module even from a compiled run: plain Python use compiles nothing
    assert ImageClassifier.load_from_checkpoint(compiled_ckpt, map_location="cpu").net._compiled_call_impl is None


def test_an_eager_runs_checkpoint_resumes_compiled_where_the_eager_run_goes_on(runs, mnist_loader):
    _, _, eager_ckpt = runs["eager"]
    eager_next, _ = _fit(_classifier(False), mnist_loader, STEPS + 1, ckpt_path=eager_ckpt)
    compiled_model = _classifier(True)
    compiled_next, _ = _fit(compiled_model, mnist_loader, STEPS + 1, ckpt_path=eager_ckpt)
    assert compiled_model.net._compiled_call_impl is not None
    assert len(compiled_next) == len(eager_next) == 1  # the 4th step, from the restored weights and momentum
    torch.testing.assert_close(torch.tensor(compiled_next), torch.tensor(eager_next), rtol=LOSS_RTOL, atol=0)


def test_an_unknown_compile_mode_is_a_user_error_naming_the_modes():
    with pytest.raises(ZooUserError, match="compile_mode='fastest'.*default, reduce-overhead, max-autotune"):
        ImageClassifier("convnet", network_kwargs={"width": 4}, compile=True, compile_mode="fastest")


def test_compile_on_a_cpu_without_a_cpp_compiler_stops_with_the_fix(monkeypatch):
    from torch._inductor import cpp_builder

    def no_compiler() -> str:
        raise RuntimeError("No working C compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    model = ImageClassifier("convnet", network_kwargs={"width": 4}, compile=True)
    with pytest.raises(ZooUserError, match="needs a C\\+\\+ compiler.*Fix: install one"):
        model.compile_networks()
    assert model.net._compiled_call_impl is None


@pytest.mark.parametrize("cls", MODULES, ids=class_path)
def test_every_zoo_module_takes_compile_and_compile_mode_from_the_command_line(cls):
    # what LightningCLI reads: the signature, with **kwargs followed to the parents
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "model", fail_untyped=False)
    defaults = parser.get_defaults()
    assert defaults["model.compile"] is False and defaults["model.compile_mode"] == "default"
    with pytest.raises(jsonargparse.ArgumentError):
        parser.parse_args(["--model.compile_mode=fastest"])


@pytest.mark.parametrize("path", sorted(TINY))
def test_compile_reaches_the_module_and_names_the_network_it_calls(path):
    cls = next(c for c in MODULES if class_path(c) == path)
    model = cls(**TINY[path], compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert model.compile_on_setup and model.compile_mode == "max-autotune-no-cudagraphs"
    assert model.hparams["compile"] is True
    assert model.called_networks() == {"net": model.net}


def test_generative_models_compile_the_parts_their_steps_call():
    vae, gan = VAE(compile=True), GAN(compile=True)
    assert vae.called_networks() == {"encoder": vae.encoder, "decoder": vae.decoder}
    assert gan.called_networks() == {"generator": gan.generator, "discriminator": gan.discriminator}
    vae.compile_networks()  # compiling is lazy: this only wraps the calls
    assert vae.encoder._compiled_call_impl is not None and vae.net._compiled_call_impl is None


def test_the_cli_passes_compile_to_the_model(data_root):
    cli = main(["--config", str(ROOT / "configs/classification/mnist.yaml"), f"--data.init_args.data_dir={data_root}",
                "--model.init_args.compile=true", "--model.init_args.compile_mode=reduce-overhead",
                "--trainer.logger=false"], run=False)  # fmt: skip
    assert cli.model.compile_on_setup is True and cli.model.compile_mode == "reduce-overhead"

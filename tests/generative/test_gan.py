"""GAN and DCGAN: which parameters each alternating step updates, the losses, labels and grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.callbacks import SampleGridCallback
from zoo.generative import DCGAN, GAN


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


@pytest.mark.parametrize("model_class", [GAN, DCGAN])
def test_each_step_updates_only_its_own_network(model_class, tiny_images, make_trainer, tmp_path):
    torch.manual_seed(0)
    model = model_class(latent_dim=8, **({"width": 8} if model_class is DCGAN else {}))
    records: list[tuple[str, set[str], list[str]]] = []

    def watch(step_name: str, step):
        def wrapped(*args, **kwargs):
            before = snapshot(model)
            out = step(*args, **kwargs)
            with_grad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
            records.append((step_name, changed(before, model), with_grad))
            for p in model.parameters():  # the next step must not rely on gradients left from this one
                p.grad = None
            return out
        return wrapped

    model.discriminator_step = watch("discriminator", model.discriminator_step)
    model.generator_step = watch("generator", model.generator_step)
    callback = SampleGridCallback()
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[callback],
                           default_root_dir=str(tmp_path))
    trainer.fit(model, tiny_images(symmetric=True))

    assert [r[0] for r in records] == ["discriminator", "generator"] * 2  # alternating, D first
    generator_params = {f"generator.{n}" for n, _ in model.generator.named_parameters()}
    discriminator_params = {f"discriminator.{n}" for n, _ in model.discriminator.named_parameters()}
    for step_name, updated, with_grad in records:
        own, other = (discriminator_params, generator_params) if step_name == "discriminator" else (
            generator_params, discriminator_params)
        assert updated and updated <= own, f"{step_name} step changed {sorted(updated - own)}"
        assert not set(with_grad) & other, f"{step_name} step left gradients on {sorted(set(with_grad) & other)}"
    # every parameter requires grad again after the toggling
    assert all(p.requires_grad for p in model.parameters())
    # the fixed-noise sample grid was written
    assert list((tmp_path / "samples").glob("samples_epoch=000.png"))


def test_generator_loss_is_the_non_saturating_loss_with_inverted_labels():
    torch.manual_seed(0)
    model = GAN(latent_dim=8)
    z = torch.randn(32, 8)
    logits = model.discriminator(model.generator(z))
    non_saturating = -torch.log(torch.sigmoid(logits)).mean()  # -log D(G(z)) (Goodfellow et al. 2014, sec. 3)
    inverted = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    torch.testing.assert_close(inverted, non_saturating)


def test_one_sided_label_smoothing_and_label_noise_change_the_discriminator_targets():
    model = GAN(label_smoothing=0.1)
    assert torch.all(model.discriminator_targets(100, real=True) == 0.9)
    assert torch.all(model.discriminator_targets(100, real=False) == 0.0)  # one-sided: fakes stay 0
    torch.manual_seed(0)
    noisy = GAN(label_noise=0.2)
    real_targets = noisy.discriminator_targets(10_000, real=True)
    assert float((real_targets == 0).float().mean()) == pytest.approx(0.2, abs=0.02)
    assert set(real_targets.unique().tolist()) == {0.0, 1.0}


def test_the_fixed_noise_grid_is_the_same_images_until_the_generator_changes():
    model = DCGAN(latent_dim=8, width=8)
    first, second = model.sample_grids()["samples"], model.sample_grids()["samples"]
    assert first.shape == (64, 1, 28, 28) and torch.equal(first, second)
    assert float(first.min()) >= 0 and float(first.max()) <= 1  # tanh output mapped to [0, 1]
    assert not torch.equal(model.sample(64), model.sample(64))  # fresh noise otherwise


def test_gans_require_symmetric_images():
    with pytest.raises(ValueError, match="symmetric"):
        GAN(image_range="unit")

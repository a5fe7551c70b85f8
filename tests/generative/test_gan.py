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
    generator_params = {f"net.generator.{n}" for n, _ in model.generator.named_parameters()}
    discriminator_params = {f"net.discriminator.{n}" for n, _ in model.discriminator.named_parameters()}
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


def test_generator_ema_is_the_moving_average_of_the_weights_after_each_generator_step(tiny_images, make_trainer):
    torch.manual_seed(0)
    decay = 0.6
    model = DCGAN(latent_dim=8, width=8, generator_ema=decay)
    after_each_step: list[dict[str, torch.Tensor]] = []
    generator_step = model.generator_step

    def record(*args, **kwargs):
        out = generator_step(*args, **kwargs)
        after_each_step.append({n: t.detach().clone() for n, t in model.generator.state_dict().items()})
        return out

    model.generator_step = record
    make_trainer(max_steps=6, limit_val_batches=0).fit(model, tiny_images(symmetric=True))

    assert len(after_each_step) == 3 and int(model.generator_ema.n_averaged) == 3
    expected = dict(after_each_step[0])  # the first update copies the weights
    for weights in after_each_step[1:]:
        expected = {n: decay * expected[n] + (1 - decay) * w if w.is_floating_point() else w
                    for n, w in weights.items()}
    averaged = model.generator_ema.module.state_dict()
    for name, value in expected.items():
        if value.is_floating_point():  # weights and batch-norm running statistics alike
            torch.testing.assert_close(averaged[name], value, msg=f"{name} is not the moving average")
    assert not torch.equal(averaged["net.0.weight"], model.generator.state_dict()["net.0.weight"])
    # the average is nobody's trainable parameter: no optimizer holds it and it takes no gradient
    optimized = {id(p) for opt in model.trainer.optimizers for group in opt.param_groups for p in group["params"]}
    assert not any(p.requires_grad or id(p) in optimized for p in model.generator_ema.parameters())


def test_sampling_uses_the_generator_average_and_survives_a_checkpoint(tiny_images, make_trainer, tmp_path):
    torch.manual_seed(0)
    model = DCGAN(latent_dim=8, width=8, generator_ema=0.999)
    trainer = make_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, tiny_images(symmetric=True))
    model.eval()
    with torch.no_grad():  # make the average visibly different: its last layer outputs tanh(0) = 0
        last = model.generator_ema.module.net[-2]
        last.weight.zero_()
        last.bias.zero_()
    z = torch.randn(4, 8)
    assert model.sampler is model.generator_ema.module
    assert torch.equal(model(z), torch.zeros(4, 1, 28, 28)) and torch.equal(model.generate(z), model(z))
    assert torch.equal(model.sample(3), torch.zeros(3, 1, 28, 28))
    assert torch.equal(model.sample_grids()["samples"], torch.full((64, 1, 28, 28), 0.5))  # 0 in [0, 1] units
    assert model.generator(z).abs().sum() > 0  # the trained generator itself is untouched

    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    loaded = DCGAN.load_from_checkpoint(path).eval()
    assert torch.equal(loaded(z), model(z)) and torch.equal(loaded.generator(z), model.generator(z))


def test_generator_ema_must_be_a_decay_between_0_and_1():
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"generator_ema .* in \(0, 1\)"):
            DCGAN(generator_ema=bad)
    plain = DCGAN()  # off by default: the papers sample from the generator itself
    assert plain.generator_ema is None and plain.sampler is plain.generator


def test_generator_extra_layers_add_3x3_convolutions_at_half_resolution():
    plain, deeper = DCGAN(width=8), DCGAN(width=8, generator_extra_layers=2)
    added = [m for m in deeper.generator.net if isinstance(m, torch.nn.Conv2d)]
    assert not [m for m in plain.generator.net if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in added] == [(8, 8, (3, 3), (1, 1))] * 2
    shapes = []
    handle = added[0].register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    assert deeper(torch.randn(3, deeper.latent_dim)).shape == (3, 1, 28, 28)
    handle.remove()
    assert shapes == [(3, 8, 14, 14)]
    assert sum(p.numel() for p in deeper.generator.parameters()) == sum(
        p.numel() for p in plain.generator.parameters()) + 2 * (8 * 8 * 9 + 2 * 8)  # conv weights + BN scale/shift
    with pytest.raises(ValueError, match="extra_layers"):
        DCGAN(generator_extra_layers=-1)

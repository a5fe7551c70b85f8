"""Generative adversarial networks: the fully connected GAN (Goodfellow et al. 2014) and DCGAN
(Radford, Metz, Chintala 2016), trained with the alternating updates of Goodfellow et al.'s
Algorithm 1 through Lightning's manual optimisation."""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from zoo.generative.base import GenerativeModule, ImageRange
from zoo.utils.optim import as_factory, plain_factory_hparams

# Radford et al. 2016, sec. 4: lr 2e-4 and beta1 0.5 (0.9 oscillated); also the usual choice for the MLP GAN.
DCGAN_ADAM = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))


# -- networks ----------------------------------------------------------------------------------------
class MLPGenerator(nn.Module):
    """z -> 256 -> 512 -> 1024 -> image, LeakyReLU(0.2), tanh output.

    Goodfellow et al. 2014 used ReLU/sigmoid generators and maxout discriminators with dropout
    (sec. 5); LeakyReLU and a tanh output on [-1, 1] images are the common modern substitute.
    """

    def __init__(self, latent_dim: int, in_channels: int, image_size: int, hidden: tuple[int, ...] = (256, 512, 1024)):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2, inplace=True)]
            width = h
        layers += [nn.Linear(width, in_channels * image_size * image_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.shape = (in_channels, image_size, image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), *self.shape)


class MLPDiscriminator(nn.Module):
    """image -> 512 -> 256 -> 1 logit, LeakyReLU(0.2) and dropout 0.3 (the paper's dropout, sec. 5)."""

    def __init__(self, in_channels: int, image_size: int, hidden: tuple[int, ...] = (512, 256), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


class DCGANGenerator(nn.Module):
    """DCGAN's generator (Radford et al. 2016, sec. 3 and fig. 1) scaled to 28x28: project z to a
    ``2w x 7 x 7`` map, then fractionally strided 4x4 convolutions 7 -> 14 -> 28; batch norm and
    ReLU everywhere except the tanh output layer.

    ``extra_layers`` adds that many 3x3 stride-1 convolutions (``w`` channels, batch norm, ReLU) at
    14x14, before the output layer: the ``n_extra_layers`` of the DCGAN generator in Arjovsky et al.'s
    WGAN code, more depth without more resolution."""

    def __init__(
        self, latent_dim: int, in_channels: int, image_size: int, width: int = 64, extra_layers: int = 0
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"DCGAN upsamples twice: image_size must be a multiple of 4, got {image_size}")
        if extra_layers < 0:
            raise ValueError(f"extra_layers counts added 3x3 layers: 0 or more, got {extra_layers}")
        self.grid, self.channels = image_size // 4, 2 * width
        self.project = nn.Sequential(
            nn.Linear(latent_dim, self.channels * self.grid**2, bias=False),
            nn.BatchNorm1d(self.channels * self.grid**2), nn.ReLU(inplace=True),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.channels, width, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            *[layer for _ in range(extra_layers) for layer in (
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))],
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(len(z), self.channels, self.grid, self.grid))


class DCGANDiscriminator(nn.Module):
    """DCGAN's discriminator: strided 4x4 convolutions (no pooling) 28 -> 14 -> 7, LeakyReLU(0.2),
    batch norm on every layer but the first (Radford et al. 2016, sec. 3), a linear logit."""

    def __init__(self, in_channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


def dcgan_init(module: nn.Module) -> None:
    """Weights from N(0, 0.02); batch-norm scales from N(1, 0.02) (Radford et al. 2016, sec. 4)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# -- LightningModule -----------------------------------------------------------------------------------
class GAN(GenerativeModule):
    """A GAN trained with Goodfellow et al. 2014's Algorithm 1, one discriminator step per generator step:

    1. **Discriminator step**, generator fixed (the fakes detached, only the discriminator's
       optimizer steps): ascend ``log D(x) + log(1 - D(G(z)))``, i.e. binary
       cross-entropy with target 1 on real and 0 on fake images.
    2. **Generator step**, discriminator fixed (its parameters frozen with ``toggle_optimizer``):
       the non-saturating loss ``-log D(G(z))`` (sec. 3): cross-entropy of fakes against the
       *inverted* label 1, whose gradient does not vanish when D rejects the fakes early on.

    Options: ``label_smoothing`` s makes the discriminator's real target ``1 - s`` (one-sided, only
    real labels: Salimans et al. 2016, sec. 3.4); ``label_noise`` p flips each discriminator label
    with probability p; ``generator_ema`` d keeps an exponential moving average of the generator's
    weights, ``w_avg <- d * w_avg + (1 - d) * w`` after every generator step (Yazici et al. 2019, "The
    Unusual Effectiveness of Averaging in GAN Training", ICLR, sec. 3; as in Karras et al. 2018,
    ProGAN, and later GANs), through ``torch.optim.swa_utils.AveragedModel``. Sampling, FID, the 1-NN
    test and the sample grid then use the average (:attr:`sampler`); training never reads it.

    Logs ``train/loss_d``, ``train/loss_g``, ``train/d_real`` and ``train/d_fake`` (mean D output on
    real / fake), and at validation end FID and the 1-NN accuracy; a fixed noise batch
    (``fixed_noise``) gives the per-epoch sample grid.

    Args:
        arch: ``mlp`` (Goodfellow et al. 2014) or ``conv`` (DCGAN).
        latent_dim: size of z ~ N(0, I).
        width: base width of the DCGAN networks (``conv`` only).
        generator_extra_layers: 3x3 stride-1 layers added to the DCGAN generator (``conv`` only; see
            :class:`DCGANGenerator`).
        label_smoothing, label_noise, generator_ema: see above (``generator_ema`` None: sample from the
            generator itself, as in the papers).
        generator_optimizer, discriminator_optimizer: any ``torch.optim`` class with its arguments.
        in_channels, image_size, image_range, metric_samples, fid_classifier, fid_inception_weights:
            see :class:`zoo.generative.base.GenerativeModule`; a GAN's images are in [-1, 1].
    """

    can_sample = True

    def __init__(
        self,
        arch: Literal["mlp", "conv"] = "mlp",
        latent_dim: int = 64,
        width: int = 64,
        label_smoothing: float = 0.0,
        label_noise: float = 0.0,
        generator_ema: float | None = None,
        generator_extra_layers: int = 0,
        generator_optimizer: OptimizerCallable = DCGAN_ADAM,
        discriminator_optimizer: OptimizerCallable = DCGAN_ADAM,
        in_channels: int = 1,
        image_size: int = 28,
        image_range: ImageRange = "symmetric",
        metric_samples: int = 1000,
        fid_classifier: str | None = None,
        fid_inception_weights: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(in_channels, image_size, image_range, metric_samples, fid_classifier, fid_inception_weights)
        self.save_hyperparameters()
        plain_factory_hparams(self.hparams, ("generator_optimizer", "discriminator_optimizer"))
        if image_range != "symmetric":
            raise ValueError("the generators end in tanh: image_range must be 'symmetric' (data normalization too)")
        if not 0 <= label_smoothing < 1 or not 0 <= label_noise < 0.5:
            raise ValueError(
                f"label_smoothing must be in [0, 1) and label_noise in [0, 0.5); got {label_smoothing}, {label_noise}"
            )
        self.automatic_optimization = False  # two optimizers, stepped in turn
        self.latent_dim, self.label_smoothing, self.label_noise = latent_dim, label_smoothing, label_noise
        self.generator_factory = as_factory(generator_optimizer)
        self.discriminator_factory = as_factory(discriminator_optimizer)
        if arch == "mlp":
            self.generator: nn.Module = MLPGenerator(latent_dim, in_channels, image_size)
            self.discriminator: nn.Module = MLPDiscriminator(in_channels, image_size)
        elif arch == "conv":
            self.generator = DCGANGenerator(latent_dim, in_channels, image_size, width, generator_extra_layers)
            self.discriminator = DCGANDiscriminator(in_channels, image_size, width)
            self.generator.apply(dcgan_init)
            self.discriminator.apply(dcgan_init)
        else:
            raise ValueError(f"arch must be 'mlp' or 'conv', got {arch!r}")
        if generator_ema is not None and not 0 < generator_ema < 1:
            raise ValueError(
                f"generator_ema is the decay of a moving average: in (0, 1), e.g. 0.999; got {generator_ema}"
            )
        self.generator_ema: AveragedModel | None = None
        if generator_ema is not None:
            # Buffers too: batch norm's running statistics are averaged like the weights they belong to.
            self.generator_ema = AveragedModel(
                self.generator, multi_avg_fn=get_ema_multi_avg_fn(generator_ema), use_buffers=True
            ).requires_grad_(False)
        self.register_buffer("fixed_noise", torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(0)))

    # -- plain PyTorch use ---------------------------------------------------------------------------
    @property
    def sampler(self) -> nn.Module:
        """The network that makes the images: the generator's weight average when ``generator_ema`` is set,
        else the generator being trained."""
        return self.generator if self.generator_ema is None else self.generator_ema.module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] generated from noise ``(N, latent_dim)`` (by :attr:`sampler`)."""
        return self.sampler(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.sampler(torch.randn(n, self.latent_dim, device=self.device))

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] generated from noise ``z`` ``(N, latent_dim)`` (by :attr:`sampler`)."""
        return self.sampler(z)

    # -- the alternating updates ---------------------------------------------------------------------
    def discriminator_targets(self, n: int, real: bool) -> torch.Tensor:
        """Targets of the discriminator step: 1 (or ``1 - label_smoothing``) for real, 0 for fake,
        each flipped with probability ``label_noise``."""
        target = torch.full((n,), 1.0 - self.label_smoothing if real else 0.0, device=self.device)
        if self.label_noise > 0:
            flip = torch.rand(n, device=self.device) < self.label_noise
            target = torch.where(flip, 1.0 - target, target)
        return target

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, optimizer: Any) -> dict[str, torch.Tensor]:
        """One update of the discriminator with the generator fixed: ``fake`` is detached, so no
        gradient reaches the generator, and only the discriminator's optimizer steps."""
        self.toggle_optimizer(optimizer)  # only D's parameters require grad
        d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
        loss_real = F.binary_cross_entropy_with_logits(d_real, self.discriminator_targets(len(real), True))
        loss_fake = F.binary_cross_entropy_with_logits(d_fake, self.discriminator_targets(len(fake), False))
        loss_d = loss_real + loss_fake
        self.check_losses(loss_d=loss_d)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        return {"loss_d": loss_d.detach(), "d_real": torch.sigmoid(d_real).mean().detach(),
                "d_fake": torch.sigmoid(d_fake).mean().detach()}

    def generator_step(self, fake: torch.Tensor, optimizer: Any) -> dict[str, torch.Tensor]:
        """One update of the generator with the discriminator fixed: the non-saturating loss
        ``-log D(G(z))``, i.e. cross-entropy of the fakes against the inverted label 1.

        ``fake`` is the batch the discriminator step just saw (with its graph to the generator),
        scored by the *updated* discriminator: one generator forward pass per iteration instead
        of two, as in the DCGAN reference implementation.
        """
        self.toggle_optimizer(optimizer)  # D's parameters stop requiring grad: no gradient reaches them
        logits = self.discriminator(fake)
        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.check_losses(loss_g=loss_g)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        return {"loss_g": loss_g.detach()}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = batch[0]
        self.check_batch("train", real)
        opt_g, opt_d = self.optimizers()
        # Drawn before either optimizer is toggled, so the batch keeps its graph to the generator.
        fake = self.generator(torch.randn(len(real), self.latent_dim, device=self.device))
        stats = self.discriminator_step(real, fake, opt_d)
        stats.update(self.generator_step(fake, opt_g))
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.check_batch("val", batch[0])
        self.collect_real(batch[0])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.check_batch("test", batch[0])
        self.collect_real(batch[0])

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """As many samples (in [0, 1]) as the batch has images."""
        n = len(batch[0] if isinstance(batch, (tuple, list)) else batch)
        return {"samples": self.to_unit(self.sample(n)).clamp(0, 1)}

    def sample_grids(self) -> dict[str, torch.Tensor]:
        """``samples``: the sampler's images of the fixed noise batch (the same z every epoch)."""
        was_training = self.sampler.training
        self.sampler.eval()  # batch-norm running statistics, as at sampling time
        with torch.no_grad():
            images = self.sampler(self.fixed_noise)
        self.sampler.train(was_training)
        return {"samples": self.to_unit(images).clamp(0, 1)}

    def configure_optimizers(self) -> Any:
        return [self.generator_factory(self.generator.parameters()),
                self.discriminator_factory(self.discriminator.parameters())]


class DCGAN(GAN):
    """DCGAN (Radford et al. 2016): :class:`GAN` with the convolutional networks, their N(0, 0.02)
    initialisation and Adam(lr 2e-4, beta1 0.5) for both networks (sec. 4)."""

    def __init__(
        self,
        latent_dim: int = 64,
        width: int = 64,
        label_smoothing: float = 0.0,
        label_noise: float = 0.0,
        generator_ema: float | None = None,
        generator_extra_layers: int = 0,
        generator_optimizer: OptimizerCallable = DCGAN_ADAM,
        discriminator_optimizer: OptimizerCallable = DCGAN_ADAM,
        in_channels: int = 1,
        image_size: int = 28,
        image_range: ImageRange = "symmetric",
        metric_samples: int = 1000,
        fid_classifier: str | None = None,
        fid_inception_weights: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        arch: Literal["conv"] = "conv",
    ) -> None:
        super().__init__(
            arch, latent_dim, width, label_smoothing, label_noise, generator_ema, generator_extra_layers,
            generator_optimizer, discriminator_optimizer, in_channels, image_size, image_range, metric_samples,
            fid_classifier, fid_inception_weights, num_classes, class_names,
        )

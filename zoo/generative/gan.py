"""Generative adversarial networks: the fully connected GAN (Goodfellow et al. 2014) and DCGAN
(Radford, Metz, Chintala 2016), trained with the alternating updates of Goodfellow et al.'s
Algorithm 1 through Lightning's manual optimisation. The networks (``gan_mlp``, ``dcgan``) are in
:mod:`zoo.generative.models`."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from zoo.core.optim import as_factory, build_optimizers
from zoo.generative.base import GenerativeModule, ImageRange

# Radford et al. 2016, sec. 4: lr 2e-4 and beta1 0.5 (0.9 oscillated); also the usual choice for the MLP GAN.
# As the spec YAML holds (not a partial): LightningCLI can then write the default into a run's config.yaml.
DCGAN_ADAM: Any = {"class_path": "torch.optim.Adam", "init_args": {"lr": 2e-4, "betas": (0.5, 0.999)}}


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

    A learning-rate schedule (``lr_scheduler``) applies to both optimizers, each with its own scheduler; under
    manual optimisation Lightning does not step schedulers, so this module steps them: after every training batch
    (``lr_scheduler_interval`` ``step``; ``auto`` for OneCycleLR / CyclicLR, whose ``total_steps`` is the number
    of training batches) or at the end of every training epoch (``epoch``; ``ReduceLROnPlateau`` watches
    :attr:`monitor`, ``val/fid``).

    Args:
        network: a registered GAN network: ``gan_mlp`` (Goodfellow et al. 2014) or ``dcgan``.
        latent_dim: size of z ~ N(0, I).
        width: base width of the DCGAN networks (``dcgan`` only; None: 64).
        generator_extra_layers: 3x3 stride-1 layers added to the DCGAN generator (``dcgan`` only; see
            :class:`zoo.generative.models.DCGANGenerator`; None: 0).
        label_smoothing, label_noise, generator_ema: see above (``generator_ema`` None: sample from the
            generator itself, as in the papers).
        optimizer: the optimizer of both networks (any ``torch.optim`` class with its arguments; default Adam with
            DCGAN's lr 2e-4, beta1 0.5).
        generator_optimizer, discriminator_optimizer: another optimizer for that network (None: ``optimizer``).
        image_range: ``symmetric`` (the generators end in tanh).
        in_channels, image_size, metric_samples, fid_classifier, fid_inception_weights, network_kwargs,
            lr_scheduler, lr_scheduler_interval: see :class:`zoo.generative.base.GenerativeModule`.
    """

    can_sample = True
    monitor = "val/fid"  # what ReduceLROnPlateau watches
    steps_per_batch = 2  # optimizer steps per training batch (the trainer's global_step and max_steps count them)
    network_kind = "gan"  # self.generator, self.discriminator and older checkpoints' arch: base.NETWORK_KINDS

    def __init__(
        self,
        network: str = "gan_mlp",
        latent_dim: int = 64,
        width: int | None = None,
        label_smoothing: float = 0.0,
        label_noise: float = 0.0,
        generator_ema: float | None = None,
        generator_extra_layers: int | None = None,
        optimizer: OptimizerCallable = DCGAN_ADAM,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        image_range: ImageRange = "symmetric",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_range=image_range, optimizer=optimizer, **kwargs)
        if image_range != "symmetric":
            raise ValueError("the generators end in tanh: image_range must be 'symmetric' (data normalization too)")
        if not 0 <= label_smoothing < 1 or not 0 <= label_noise < 0.5:
            raise ValueError(
                f"label_smoothing must be in [0, 1) and label_noise in [0, 0.5); got {label_smoothing}, {label_noise}"
            )
        self.automatic_optimization = False  # two optimizers, stepped in turn
        self.latent_dim, self.label_smoothing, self.label_noise = latent_dim, label_smoothing, label_noise
        self.generator_factory = as_factory(generator_optimizer) or self.optimizer_factory
        self.discriminator_factory = as_factory(discriminator_optimizer) or self.optimizer_factory
        self.net = self.build_generative_network(
            network, latent_dim, width=width, generator_extra_layers=generator_extra_layers
        )
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
        self._scheduler_interval: str | None = None  # "step" / "epoch" once configure_optimizers made schedulers

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
        if self._scheduler_interval == "step":
            self.step_schedulers()

    def on_train_epoch_end(self) -> None:
        if self._scheduler_interval == "epoch":
            self.step_schedulers()

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

    # -- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """The generator's and the discriminator's optimizers, in this order, and a scheduler for each when
        ``lr_scheduler`` is set (stepped by :meth:`step_schedulers`)."""
        built = [
            build_optimizers(
                net.parameters(), factory, self.lr_scheduler_factory, total_steps=self._training_batches,
                interval=self.lr_scheduler_interval, monitor=self.monitor,
            )
            for net, factory in ((self.generator, self.generator_factory),
                                 (self.discriminator, self.discriminator_factory))
        ]  # fmt: skip
        if self.lr_scheduler_factory is None:
            return built
        self._scheduler_interval = built[0]["lr_scheduler"]["interval"]
        return [b["optimizer"] for b in built], [b["lr_scheduler"]["scheduler"] for b in built]

    def _training_batches(self) -> int:
        """Training batches of the run (what a per-batch schedule such as OneCycleLR spans): the trainer's
        estimate counts optimizer steps only when ``max_steps`` caps the run, and a batch makes two."""
        trainer = self.trainer
        batches = trainer.estimated_stepping_batches
        if trainer.max_steps != -1:
            batches = min(batches, math.ceil(trainer.max_steps / self.steps_per_batch))
        return int(batches)

    def step_schedulers(self) -> None:
        """Step both learning-rate schedulers (``ReduceLROnPlateau`` with the logged :attr:`monitor`)."""
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get(self.monitor)
                if value is None:
                    raise ValueError(
                        f"ReduceLROnPlateau watches {self.monitor!r}, which {type(self).__name__} has not logged "
                        f"(logged: {sorted(self.trainer.callback_metrics)}). Fix: set fid_classifier (FID needs a "
                        "feature extractor) and validate every epoch, or use another scheduler."
                    )
                scheduler.step(value)
            else:
                scheduler.step()


class DCGAN(GAN):
    """DCGAN (Radford et al. 2016): :class:`GAN` with the convolutional networks (``dcgan``), their N(0, 0.02)
    initialisation and Adam(lr 2e-4, beta1 0.5) for both networks (sec. 4).

    Args:
        network: a registered GAN network (default ``dcgan``); everything else: see :class:`GAN`.
    """

    arch_networks = {"conv": "dcgan"}

    def __init__(self, network: str = "dcgan", **kwargs: Any) -> None:
        super().__init__(network=network, **kwargs)

"""Autoencoders: fully connected and convolutional, denoising (Vincent et al. 2008), and anomaly
scoring by reconstruction error.

The networks (``autoencoder_mlp``, ``autoencoder_conv`` in :mod:`zoo.generative.models.autoencoder`, shared
with the VAE) are plain ``nn.Module``s in the registry; :class:`AutoEncoder` and :class:`DenoisingAutoEncoder`
are the LightningModules.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC

from zoo.generative.base import GenerativeModule


def check_loss_range(loss: str, image_range: str) -> None:
    """``bce`` models pixel values as Bernoulli probabilities: images in [0, 1] only."""
    if loss == "bce" and image_range != "unit":
        raise ValueError("loss='bce' needs images in [0, 1] (image_range='unit'); use loss='mse' for [-1, 1]")


def output_activation(logits: torch.Tensor, image_range: str) -> torch.Tensor:
    """Sigmoid for [0, 1] images, tanh for [-1, 1]."""
    return torch.sigmoid(logits) if image_range == "unit" else torch.tanh(logits)


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, image_range: str) -> torch.Tensor:
    """Per-image reconstruction loss ``(N,)``, summed over pixels.

    ``bce``: the Bernoulli log-likelihood of Kingma & Welling 2014 (appendix C.1) on [0, 1] images;
    ``mse``: squared error of the activated output (a Gaussian decoder up to constants).
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
    return (output_activation(logits, image_range) - target).square().flatten(1).sum(1)


# -- LightningModules ----------------------------------------------------------------------------------
class AutoEncoder(GenerativeModule):
    """An autoencoder ``x -> z = encode(x) -> decode(z)`` trained to reconstruct its input.

    Logs ``train/loss``, ``val/loss`` (the reconstruction loss per image, summed over pixels) and
    ``val/mse`` (mean squared error per pixel, in the model's range). When the datamodule leaves an
    ``anomaly_class`` out of training (or ``anomaly_class`` is given here), the per-image
    reconstruction error is an anomaly score (:meth:`anomaly_score`) and ``val/auroc`` /
    ``test/auroc`` measure how well it separates the held-out class from the others.

    Args:
        network: a registered autoencoder network: ``autoencoder_mlp`` (input -> 256 -> 128 -> latent and back;
            ``hidden_dims``) or ``autoencoder_conv`` (``conv_channels``).
        latent_dim: size of the code z.
        hidden_dims: widths of the fully connected encoder (the decoder mirrors them); None: 256, 128.
        conv_channels: channels of the two convolutional stages; None: 32, 64.
        loss: ``bce`` (images in [0, 1] only) or ``mse``; see :func:`reconstruction_loss`.
        anomaly_class: the class treated as anomalous; default: the datamodule's ``anomaly_class``.
        in_channels, image_size, image_range, metric_samples, fid_classifier, fid_inception_weights,
            network_kwargs, optimizer, lr_scheduler, lr_scheduler_interval: see
            :class:`zoo.generative.base.GenerativeModule`.
    """

    network_kind = "autoencoder"  # self.encoder, self.decoder and older checkpoints' arch: base.NETWORK_KINDS

    def __init__(
        self,
        network: str = "autoencoder_mlp",
        latent_dim: int = 32,
        hidden_dims: list[int] | None = None,
        conv_channels: list[int] | None = None,
        loss: Literal["bce", "mse"] = "bce",
        anomaly_class: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_loss_range(loss, self.image_range)
        self.latent_dim = latent_dim
        self.loss_kind = loss
        self.anomaly_class = anomaly_class
        self.net = self.build_generative_network(
            network, latent_dim, hidden_dims=hidden_dims, conv_channels=conv_channels
        )
        self.val_auroc = BinaryAUROC()
        self.test_auroc = BinaryAUROC()
        self._grid_images: torch.Tensor | None = None
        self.init_eval_means(("loss", "mse"))  # means over the (normal) evaluation images of every process

    # -- plain PyTorch use ---------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The code ``(N, latent_dim)`` of images in the model's range."""
        return self.encoder(images)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in the model's range decoded from codes ``(N, latent_dim)``."""
        return output_activation(self.decoder(z), self.image_range)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions of ``images``."""
        return self.decode(self.encode(images))

    @torch.no_grad()
    def anomaly_score(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction error ``(N,)``: mean squared error over pixels, in [0, 1] units.

        Trained on normal images only, the autoencoder reconstructs them well and unseen kinds of
        images badly, so a high error flags an anomaly (e.g. Sakurada & Yairi 2014).
        """
        recon = self(images)
        return (self.to_unit(recon) - self.to_unit(images)).square().flatten(1).mean(1)

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        """The training input: the images themselves (denoising autoencoders corrupt them)."""
        return images

    # -- loops -----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        from_data = getattr(datamodule, "anomaly_class", None)
        if from_data is not None:
            if self.anomaly_class is not None and self.anomaly_class != from_data:
                raise ValueError(
                    f"model anomaly_class={self.anomaly_class} but the datamodule leaves class {from_data} out of "
                    f"training. Fix: set one of them (the model reads the datamodule's when its own is null)."
                )
            self.anomaly_class = from_data

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        self.check_batch("train", images)
        logits = self.decoder(self.encode(self.corrupt(images)))
        loss = reconstruction_loss(logits, images, self.loss_kind, self.image_range).mean()
        self.check_losses(loss=loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        self.check_batch(stage, images)
        logits = self.decoder(self.encode(images))
        per_image = reconstruction_loss(logits, images, self.loss_kind, self.image_range)
        mse = (output_activation(logits, self.image_range) - images).square().flatten(1).mean(1)
        normal = torch.ones_like(labels, dtype=torch.bool)
        if self.anomaly_class is not None:
            # The loss of what the model was trained to reconstruct; the anomalies go to the AUROC.
            normal = labels != self.anomaly_class
            auroc = self.val_auroc if stage == "val" else self.test_auroc
            score = (self.to_unit(output_activation(logits, self.image_range)) - self.to_unit(images))
            auroc.update(score.square().flatten(1).mean(1), (~normal).long())
            self.log(f"{stage}/auroc", auroc, prog_bar=True)
        # logged on every batch, even one without normal images: each process then takes part in the sync
        self.log_eval_means(stage, {"loss": per_image[normal], "mse": mse[normal]}, prog_bar=("loss",))
        return images

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images = self._evaluate(batch, "val")
        if batch_idx == 0:
            self._grid_images = images[:32].detach()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Reconstructions (in [0, 1]) and anomaly scores of a batch."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        out = {
            "inputs": self.to_unit(images),
            "reconstructions": self.to_unit(self(images)),
            "anomaly_scores": self.anomaly_score(images),
        }
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            out["labels"] = batch[1]
        return out

    def sample_grids(self) -> dict[str, torch.Tensor]:
        """``reconstructions``: rows of 8 inputs, each followed by a row of their reconstructions
        (a denoising autoencoder adds a row of the corrupted inputs in between)."""
        if self._grid_images is None:
            return {}
        images = self._grid_images.to(self.device)
        with torch.no_grad():
            corrupted = self.corrupt(images)
            rows = [images, corrupted, self(corrupted)] if corrupted is not images else [images, self(images)]
        interleaved = [row[i : i + 8] for i in range(0, len(images), 8) for row in rows]
        return {"reconstructions": self.to_unit(torch.cat(interleaved)).clamp(0, 1)}



class DenoisingAutoEncoder(AutoEncoder):
    """A denoising autoencoder (Vincent et al. 2008, sec. 2.3): the encoder sees a corrupted image,
    the loss compares the reconstruction with the clean one. Corruption happens in training (and
    in the grids) only; validation reconstructs clean images, so ``val/loss`` is comparable with
    :class:`AutoEncoder`'s, and ``val/denoise_mse`` measures denoising (a fixed corruption seed).

    Args:
        noise: ``gaussian`` (add N(0, noise_std^2) noise, clipped to the image range) or ``mask``
            (the paper's masking noise: a random ``mask_fraction`` of the pixels set to black).
        noise_std: standard deviation of the Gaussian noise, in [0, 1] image units.
        mask_fraction: fraction of pixels masked.
        (everything else: see :class:`AutoEncoder`)
    """

    def __init__(
        self,
        noise: Literal["gaussian", "mask"] = "gaussian",
        noise_std: float = 0.3,
        mask_fraction: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if noise not in ("gaussian", "mask"):
            raise ValueError(f"noise must be 'gaussian' or 'mask', got {noise!r}")
        if not 0 <= mask_fraction < 1:
            raise ValueError(f"mask_fraction must be in [0, 1), got {mask_fraction}")
        self.noise, self.noise_std, self.mask_fraction = noise, noise_std, mask_fraction

    def corrupt(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A corrupted copy of ``images`` (never the images themselves: the target stays clean)."""
        unit = self.to_unit(images)
        if self.noise == "gaussian":
            noise = torch.randn(unit.shape, generator=generator, device=unit.device, dtype=unit.dtype)
            corrupted = (unit + self.noise_std * noise).clamp(0, 1)
        else:
            keep = torch.rand(unit.shape, generator=generator, device=unit.device) >= self.mask_fraction
            corrupted = unit * keep
        return self.from_unit(corrupted)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        images = batch[0]
        generator = torch.Generator(device=images.device).manual_seed(batch_idx)  # same corruption every epoch
        with torch.no_grad():
            denoised = self(self.corrupt(images, generator))
        self.log("val/denoise_mse", (self.to_unit(denoised) - self.to_unit(images)).square().mean(),
                 batch_size=len(images))

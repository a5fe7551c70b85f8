"""The variational autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014),
with beta weighting of the KL term (Higgins et al. 2017), sampling from the prior, latent
interpolation and attribute vectors."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchvision.utils import make_grid

from zoo.generative.autoencoder import check_loss_range, output_activation, reconstruction_loss
from zoo.generative.base import GenerativeModule, fixed_normal


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per sample ``(N,)``, in closed form
    (Kingma & Welling 2014, appendix B): ``-1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)``."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """``z = mu + sigma * eps``, ``eps ~ N(0, I)`` (Kingma & Welling 2014, sec. 2.4, eq. 10 for the
    Gaussian case): a sample whose gradient flows to ``mu`` and ``logvar``. ``eps``: given noise (default:
    drawn from the global random stream)."""
    return mu + (0.5 * logvar).exp() * (torch.randn_like(mu) if eps is None else eps)


class VAE(GenerativeModule):
    """A VAE with a diagonal-Gaussian encoder q(z|x) and a Bernoulli (``loss='bce'``) or Gaussian
    (``mse``) decoder, trained on the negative ELBO with a weighted KL term:

    ``loss = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I))`` (Kingma & Welling 2014, eq. 10;
    beta = 1 is the ELBO, beta > 1 the beta-VAE of Higgins et al. 2017), per image, averaged.

    Logs ``train/loss``, ``train/reconstruction``, ``train/kl``, the same under ``val/`` (means over the
    validation images, plus ``val/mse`` of the reconstructions), and at validation end FID (with a feature
    extractor) and the 1-NN accuracy of prior samples. The validation ELBO draws each image's noise from a
    generator seeded by the image's index in the validation set: the same numbers every epoch and on any
    number of processes.

    Args:
        network: a registered VAE network: ``vae_mlp`` (input -> 256 -> 128 -> 2 x latent and back) or
            ``vae_conv``.
        latent_dim: dimension of z.
        beta: weight of the KL term.
        loss: ``bce`` or ``mse`` reconstruction term.
        hidden_dims, conv_channels: network widths (see :class:`zoo.generative.AutoEncoder`).
        in_channels, image_size, image_range, metric_samples, fid_classifier, fid_inception_weights,
            network_kwargs, optimizer, lr_scheduler, lr_scheduler_interval: see
            :class:`zoo.generative.base.GenerativeModule`.
    """

    can_sample = True
    network_kind = "vae"  # self.encoder, self.decoder and older checkpoints' arch: base.NETWORK_KINDS

    def __init__(
        self,
        network: str = "vae_mlp",
        latent_dim: int = 16,
        beta: float = 1.0,
        loss: Literal["bce", "mse"] = "bce",
        hidden_dims: list[int] | None = None,
        conv_channels: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_loss_range(loss, self.image_range)
        self.latent_dim, self.beta, self.loss_kind = latent_dim, beta, loss
        # The encoder outputs mean and log-variance side by side: 2 x latent_dim features.
        self.net = self.build_generative_network(
            network, latent_dim, hidden_dims=hidden_dims, conv_channels=conv_channels
        )
        self.register_buffer("fixed_z", torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(0)))
        self._grid_images: torch.Tensor | None = None
        self.init_eval_means(("loss", "reconstruction", "kl", "mse"))

    # -- plain PyTorch use ---------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|x), each ``(N, latent_dim)``."""
        mu, logvar = self.encoder(images).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in the model's range: the decoder's mean (Bernoulli probabilities for ``bce``)."""
        return output_activation(self.decoder(z), self.image_range)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstructions: the decoding of the posterior mean."""
        return self.decode(self.encode(images)[0])

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images decoded from latent codes ``z`` ``(N, latent_dim)``."""
        return self.decode(z)

    @torch.no_grad()
    def interpolate(self, start: torch.Tensor, end: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decodings along the straight line between the posterior means of two images.

        ``start``/``end``: ``(C, H, W)`` or ``(N, C, H, W)`` (pairs). Returns ``(steps, C, H, W)``
        (``(N, steps, C, H, W)`` for pairs); the first and last decodings are the reconstructions of
        ``start`` and ``end``.
        """
        single = start.ndim == 3
        start, end = (start[None], end[None]) if single else (start, end)
        z0, z1 = self.encode(start)[0], self.encode(end)[0]
        t = torch.linspace(0, 1, steps, device=z0.device).view(1, steps, 1)
        z = (1 - t) * z0[:, None] + t * z1[:, None]  # (N, steps, latent)
        images = self.decode(z.flatten(0, 1)).unflatten(0, (len(start), steps))
        return images[0] if single else images

    @torch.no_grad()
    def attribute_vector(self, with_attribute: torch.Tensor, without_attribute: torch.Tensor) -> torch.Tensor:
        """Mean posterior mean of images with an attribute minus that of images without it
        (e.g. digits written with a slant minus upright ones; smiling minus neutral faces in
        Larsen et al. 2016, sec. 5). Returns ``(latent_dim,)``."""
        return self.encode(with_attribute)[0].mean(0) - self.encode(without_attribute)[0].mean(0)

    @torch.no_grad()
    def add_attribute(
        self, images: torch.Tensor, vector: torch.Tensor, scales: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
    ) -> torch.Tensor:
        """Decodings of ``encode(images).mu + s * vector`` for each scale: ``(N, len(scales), C, H, W)``."""
        mu = self.encode(images)[0]
        s = torch.tensor(scales, device=mu.device, dtype=mu.dtype).view(1, -1, 1)
        z = mu[:, None] + s * vector.to(mu)
        return self.decode(z.flatten(0, 1)).unflatten(0, (len(images), len(scales)))

    # -- loops -----------------------------------------------------------------------------------------
    def elbo_terms(self, images: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image reconstruction term and KL ``(N,)`` with one reparameterised sample of z (noise ``eps``,
        default: fresh)."""
        mu, logvar = self.encode(images)
        logits = self.decoder(reparameterize(mu, logvar, None if eps is None else eps.to(mu)))
        return reconstruction_loss(logits, images, self.loss_kind, self.image_range), kl_divergence(mu, logvar)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        self.check_batch("train", images)
        recon, kl = self.elbo_terms(images)
        recon, kl = recon.mean(), kl.mean()
        loss = recon + self.beta * kl
        self.check_losses(loss=loss, reconstruction=recon, kl=kl)
        self.log_dict({"train/loss": loss, "train/reconstruction": recon, "train/kl": kl}, prog_bar=False)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        images = batch[0]
        self.check_batch(stage, images)
        ids = self.sample_ids(len(images))  # dataset indices: the noise of each image is fixed by its index
        recon, kl = self.elbo_terms(images, fixed_normal(ids, self.latent_dim))
        with torch.no_grad():
            mse = (self.to_unit(self(images)) - self.to_unit(images)).square().flatten(1).mean(1)
        self.log_eval_means(
            stage, {"loss": recon + self.beta * kl, "reconstruction": recon, "kl": kl, "mse": mse},
            prog_bar=("loss", "reconstruction", "kl"),
        )
        self.collect_real(images, ids)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")
        if batch_idx == 0:
            self._grid_images = batch[0][:16].detach()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """As many prior samples (in [0, 1]) as the batch has images."""
        n = len(batch[0] if isinstance(batch, (tuple, list)) else batch)
        return {"samples": self.to_unit(self.sample(n)).clamp(0, 1)}

    def sample_grids(self) -> dict[str, torch.Tensor]:
        """``samples`` (decodings of a fixed set of prior draws), ``reconstructions`` (inputs and
        reconstructions, alternating rows of 8) and ``interpolation`` (rows between pairs of
        validation images)."""
        with torch.no_grad():
            grids = {"samples": self.to_unit(self.decode(self.fixed_z)).clamp(0, 1)}
            if self._grid_images is not None and len(self._grid_images) >= 16:
                images = self._grid_images.to(self.device)
                recon = self(images)
                grids["reconstructions"] = self.to_unit(
                    torch.cat([torch.cat([images[i : i + 8], recon[i : i + 8]]) for i in (0, 8)])
                ).clamp(0, 1)
                pairs = self.interpolate(images[:4], images[4:8], steps=8)  # (4, 8, C, H, W)
                grids["interpolation"] = self.to_unit(pairs.flatten(0, 1)).clamp(0, 1)
        return grids


def interpolation_grid(model: VAE, start: torch.Tensor, end: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """A ``make_grid`` image (in [0, 1]) of :meth:`VAE.interpolate` rows, one per pair."""
    rows = model.interpolate(start if start.ndim == 4 else start[None], end if end.ndim == 4 else end[None], steps)
    return make_grid(model.to_unit(rows.flatten(0, 1)).clamp(0, 1).cpu(), nrow=steps, padding=2)

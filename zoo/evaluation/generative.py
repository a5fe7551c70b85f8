"""The generative models' report (``AutoEncoder``, ``DenoisingAutoEncoder``, ``VAE``, ``GAN``, ``DCGAN``): sample
quality (FID, Heusel et al. 2017, and the leave-one-out 1-NN accuracy, Lopez-Paz & Oquab 2017) when the module
logged them, a grid of samples (models with a prior or a generator), a latent interpolation grid, and inputs
against their reconstructions (autoencoders and the VAE; a denoising autoencoder adds the corrupted input).

The numbers are the module's logged ``test/fid`` and ``test/nn_accuracy`` (``GenerativeModule.log_sample_quality``
at the end of the test, on ``metric_samples`` real test images and as many samples); nothing is recomputed. The
figures are drawn once, at the end, from the first ``max_images`` test images (the only ones kept) and from
seeded draws of the prior (``seed``; the global random state is left as it was), so two reports of one
checkpoint show the same images.

Interpolation: the VAE decodes points on the line between the posterior means of two test images
(:meth:`zoo.generative.VAE.interpolate`); a plain autoencoder the same line between two codes (its latent space
is not trained to be smooth there, which the grid shows); a GAN the generator's images on the line between two
noise vectors (Radford et al. 2016, sec. 6.1, walk the latent space the same way).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch

from zoo.evaluation.report import (
    FamilyReport,
    Figure,
    ReportWriter,
    Section,
    Table,
    register_report_writer,
    save_figure,
)


class _Grid(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    columns: int
    row_labels: list[str] | None
    caption: str


@register_report_writer("zoo.generative.GenerativeModule")
class GenerativeReport(ReportWriter):
    """Counts the test images and keeps the first ``max_images``; writes the sections of the module docstring."""

    max_images = 16  # test images kept for the reconstructions and interpolations
    num_generated = 64  # images in the samples grid
    steps = 8  # images per interpolation row
    pairs = 4  # interpolation rows
    seed = 0

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.images: list[torch.Tensor] = []
        self.reconstruction_mse: float | None = None

    def collect(self, module: Any, batch: Any, outputs: Any) -> None:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.num_samples += len(images)
        room = self.max_images - sum(len(x) for x in self.images)
        if room > 0:
            self.images.append(images[:room].detach().cpu())

    def write(self, module: Any, metrics: dict[str, float], report_dir: Path) -> FamilyReport:
        import matplotlib

        matplotlib.use("Agg")
        images = torch.cat(self.images).to(module.device) if self.images else None
        was_training = module.training
        module.eval()
        devices = [module.device.index or 0] if module.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                grids = self._grids(module, images)
        finally:
            module.train(was_training)

        figures: dict[str, Figure] = {}
        data: dict[str, Any] = {}
        for key, grid in grids.items():
            fig = _grid_figure(grid.images, grid.columns, grid.row_labels)
            figures[key] = Figure(save_figure(fig, report_dir / f"{key}.png"), grid.caption)
        if self.reconstruction_mse is not None:
            data["reconstruction_mse"] = self.reconstruction_mse

        fid, nn_acc = metrics.get("test/fid"), metrics.get("test/nn_accuracy")
        quality_rows = []
        if fid is not None:
            quality_rows.append(["FID (lower is better)", fid])
        if nn_acc is not None:
            quality_rows.append(["1-NN accuracy, real vs generated (0.5: indistinguishable, 1: always told apart)",
                                 nn_acc])  # fmt: skip
        features = _feature_description(module)
        if quality_rows:
            text = (
                f"Logged at the end of the test on up to {module.metric_samples} real test images and as many "
                f"samples. Features: {features}."
            )
        else:
            text = f"Not measured: {_why_no_quality(module)}."
        data.update(
            fid=fid, nn_accuracy=nn_acc, features=features if quality_rows else None,
            figures=[f.path.name for f in figures.values()],
        )  # fmt: skip
        sections = [
            Section(
                "Sample quality", text=text, tables=[Table(["metric", "value"], quality_rows)] if quality_rows else []
            ),
            Section("Samples", figures=[figures[k] for k in ("samples",) if k in figures]),
            Section("Interpolation", figures=[figures[k] for k in ("interpolation",) if k in figures]),
            Section("Reconstructions", figures=[figures[k] for k in ("reconstructions",) if k in figures]),
        ]
        return FamilyReport([s for s in sections if s.text or s.tables or s.figures], data)

    def _grids(self, module: Any, images: torch.Tensor | None) -> dict[str, _Grid]:
        """The image grids to draw, by file stem."""
        from zoo.generative.autoencoder import AutoEncoder, DenoisingAutoEncoder
        from zoo.generative.vae import VAE

        grids: dict[str, _Grid] = {}

        def unit(x: torch.Tensor) -> torch.Tensor:
            return module.to_unit(x).clamp(0, 1).cpu()

        if module.can_sample:
            samples = unit(module.sample(self.num_generated))
            grids["samples"] = _Grid(samples, 8, None, f"{len(samples)} samples (seed {self.seed})")
        n_pairs = min(self.pairs, len(images) // 2) if images is not None else 0
        if isinstance(module, VAE) and n_pairs:
            rows = module.interpolate(images[:n_pairs], images[n_pairs : 2 * n_pairs], self.steps)
            grids["interpolation"] = _Grid(
                unit(rows.flatten(0, 1)), self.steps, None,
                "Each row: decodings along the line between the posterior means of two test images "
                "(first and last: their reconstructions)",
            )  # fmt: skip
        elif isinstance(module, AutoEncoder) and n_pairs:
            z0, z1 = module.encode(images[:n_pairs]), module.encode(images[n_pairs : 2 * n_pairs])
            t = torch.linspace(0, 1, self.steps, device=z0.device).view(1, -1, 1)
            z = (1 - t) * z0[:, None] + t * z1[:, None]
            grids["interpolation"] = _Grid(
                unit(module.decode(z.flatten(0, 1))), self.steps, None,
                "Each row: decodings along the line between the codes of two test images (a plain autoencoder's "
                "code space is not trained to be smooth between them)",
            )  # fmt: skip
        elif module.can_sample and hasattr(module, "generator"):
            z0 = torch.randn(self.pairs, module.latent_dim, device=module.device)
            z1 = torch.randn(self.pairs, module.latent_dim, device=module.device)
            t = torch.linspace(0, 1, self.steps, device=module.device).view(1, -1, 1)
            z = (1 - t) * z0[:, None] + t * z1[:, None]
            grids["interpolation"] = _Grid(
                unit(module(z.flatten(0, 1))), self.steps, None,
                "Each row: the generator's images along the line between two noise vectors",
            )  # fmt: skip
        if isinstance(module, (AutoEncoder, VAE)) and images is not None and len(images):
            shown = images[:8]
            rows, labels = [shown], ["input"]
            if isinstance(module, DenoisingAutoEncoder):  # trained to restore the clean image from a corrupted one
                corrupted = module.corrupt(shown, torch.Generator(device=shown.device).manual_seed(self.seed))
                rows, labels = [shown, corrupted], ["input", "corrupted"]
            recon = module(rows[-1])
            rows.append(recon)
            labels.append("reconstruction")
            self.reconstruction_mse = float((module.to_unit(recon) - module.to_unit(shown)).square().mean())
            grids["reconstructions"] = _Grid(
                unit(torch.cat(rows)), len(shown), labels,
                f"The first {len(shown)} test images and their reconstructions (mean squared error against the "
                f"clean input, per pixel in [0, 1] units: {self.reconstruction_mse:.4f})",
            )  # fmt: skip
        return grids


def _feature_description(module: Any) -> str:
    if getattr(module, "fid_inception_weights", None):
        return f"Inception v3 pool features ({module.fid_inception_weights})"
    if getattr(module, "fid_classifier", None):
        return f"penultimate features of the classifier {module.fid_classifier}"
    return "pixels (no feature extractor set: FID skipped, the 1-NN test on raw images)"


def _why_no_quality(module: Any) -> str:
    if not module.can_sample:
        return f"{type(module).__name__} has no prior or generator to sample from"
    if module.metric_samples <= 0:
        return "metric_samples = 0"
    return "the module logged no test/fid or test/nn_accuracy"


def _grid_figure(images: torch.Tensor, ncol: int, row_labels: list[str] | None) -> Any:
    """A matplotlib figure of ``images`` (N, C, H, W) in [0, 1], ``ncol`` per row, optional labels per row group."""
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    grid = make_grid(images.float(), nrow=ncol, padding=2, pad_value=1.0)
    rows = math.ceil(len(images) / ncol)
    height, width = grid.shape[1:]
    scale = 1.2 / (images.shape[-1] + 2)
    fig, ax = plt.subplots(figsize=(max(3.0, width * scale), max(1.5, height * scale)))
    shown = grid[0] if images.shape[1] == 1 else grid.permute(1, 2, 0)
    ax.imshow(shown.numpy(), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    if row_labels:
        per_label = rows // len(row_labels)
        cell = height / rows
        ax.set_yticks([(i + 0.5) * per_label * cell for i in range(len(row_labels))], row_labels)
    else:
        ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    return fig

"""Figures for the interpretation methods (matplotlib, Agg backend): the input / map / overlay
grid, image grids (filters, activation maps, patches, optimised images), and a t-SNE scatter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def denormalize(images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                ) -> torch.Tensor:
    """Normalized images back to ``[0, 1]`` pixels (``x * std + mean``, clamped); without
    ``mean``/``std`` each image is min-max scaled instead."""
    images = images.detach().float().cpu()
    if mean is None or std is None:
        return scale01(images)
    m = torch.tensor(mean).view(1, -1, 1, 1) if images.ndim == 4 else torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1) if images.ndim == 4 else torch.tensor(std).view(-1, 1, 1)
    return (images * s + m).clamp(0, 1)


def scale01(x: torch.Tensor) -> torch.Tensor:
    """Each item of a batch min-max scaled to ``[0, 1]`` (a constant item becomes 0)."""
    x = x.detach().float().cpu()
    flat = x.reshape(len(x), -1) if x.ndim == 4 else x.reshape(1, -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(x.shape)


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in ``[0, 1]`` -> ``(H, W)`` (one channel) or ``(H, W, C)`` for imshow."""
    image = image.detach().cpu()
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def heatmap(attribution: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """A ``(H, W)`` map from a ``(C, H, W)`` attribution: channels reduced by max |a| (or summed when
    ``signed``), then scaled to ``[0, 1]`` (``[-1, 1]`` when ``signed``)."""
    a = attribution.detach().float().cpu()
    if a.ndim == 3:
        a = a.sum(0) if signed else a.abs().amax(0)
    if signed:
        return a / a.abs().max().clamp_min(1e-12)
    return scale01(a[None])[0]


def plot_attribution(
    images: torch.Tensor,
    maps: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
    method: str = "",
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Any:
    """One row per image: the input, the map, and the map over the input. ``images``: normalized
    ``(N, C, H, W)``; ``maps``: ``(N, C', H, W)``; ``titles``: one per image (e.g. label/prediction)."""
    plt = _plt()
    shown = denormalize(images, mean, std)
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.3, 2.1 * n), squeeze=False)
    signed = maps.shape[1] > 1 and method == "guided_backprop"
    for i in range(n):
        h = heatmap(maps[i], signed=False)
        axes[i, 0].imshow(to_numpy_image(shown[i]), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(titles[i] if titles else "input", fontsize=8)
        if signed:  # guided backprop: show the signal itself, scaled per image (as in the paper)
            axes[i, 1].imshow(to_numpy_image(scale01(maps[i][None])[0]), cmap="gray")
        else:
            axes[i, 1].imshow(h.numpy(), cmap=cmap, vmin=0, vmax=1)
        axes[i, 1].set_title(method or "map", fontsize=8)
        axes[i, 2].imshow(to_numpy_image(shown[i]), cmap="gray", vmin=0, vmax=1)
        axes[i, 2].imshow(h.numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        axes[i, 2].set_title("overlay", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_grid(
    images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 8, cmap: str = "gray",
    scale_each: bool = True, suptitle: str | None = None, size: float = 1.2,
) -> Any:
    """Images ``(N, C, H, W)`` in a grid (filters, activation maps, patches, optimised images), each
    min-max scaled unless ``scale_each`` is False (then they must be in ``[0, 1]``)."""
    plt = _plt()
    images = images.detach().float().cpu()
    if images.ndim == 3:
        images = images[:, None]
    shown = scale01(images) if scale_each else images.clamp(0, 1)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        image = to_numpy_image(shown[i])
        ax.imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=0, vmax=1)
        if titles:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def plot_tsne(points: np.ndarray, labels: Sequence[int] | torch.Tensor, class_names: Sequence[str] | None = None,
              title: str = "t-SNE of the embeddings") -> Any:
    """2-D points coloured by class, with a legend."""
    plt = _plt()
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(6, 6))
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        sel = labels == c
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(int(c) % cmap.N), label=name)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save and close a figure; the folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path

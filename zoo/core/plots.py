"""Figures shared by modules, callbacks and reports (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def plot_confusion_matrix(confmat: torch.Tensor, class_names: Sequence[str], normalize: bool = True):  # noqa: ANN201
    """A confusion matrix (rows: true class, columns: predicted) as a matplotlib figure, with
    row-normalized colours and the raw counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confmat.float()
    shown = counts / counts.sum(dim=1, keepdim=True).clamp_min(1) if normalize else counts
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(shown.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                value = int(counts[i, j])
                if value:
                    color = "white" if shown[i, j] > 0.5 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(f"Confusion matrix ({int(counts.sum())} images)")
    fig.tight_layout()
    return fig

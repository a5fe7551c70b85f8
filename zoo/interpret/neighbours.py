"""Feature-space neighbours: embeddings from a hidden layer, k-nearest-neighbour retrieval,
precision@k, and t-SNE (scikit-learn). In the spirit of Krizhevsky et al. 2012, sec. 6.1 / fig. 4
(images whose last-hidden-layer vectors are close look alike to the network).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from zoo.interpret.layers import activations, check_images, eval_mode, get_layer, network


def last_hidden_layer(model: nn.Module) -> nn.Module:
    """The network's last ``nn.Linear``, whose *input* is the last hidden representation."""
    linears = [m for m in network(model).modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(network(model)).__name__} has no nn.Linear layer; pass layer=")
    return linears[-1]


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, layer: str | None = None, batch_size: int = 512) -> torch.Tensor:
    """``(N, D)`` embeddings: the input of the last linear layer (the last hidden layer's output,
    flattened), or the flattened output of the named ``layer``."""
    images = check_images(model, images)
    net = network(model)
    out = []
    if layer is not None:
        get_layer(model, layer)
        with eval_mode(net):
            for i in range(0, len(images), batch_size):
                out.append(activations(net, images[i : i + batch_size], layer)[layer].flatten(1))
        return torch.cat(out)
    captured: list[torch.Tensor] = []
    handle = last_hidden_layer(model).register_forward_pre_hook(lambda m, inp: captured.append(inp[0].flatten(1)))
    try:
        with eval_mode(net):
            for i in range(0, len(images), batch_size):
                net(images[i : i + batch_size])
    finally:
        handle.remove()
    return torch.cat(captured)


def nearest_neighbours(
    queries: torch.Tensor, gallery: torch.Tensor, k: int = 10, metric: str = "cosine", exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(Q, k)`` into ``gallery`` of each query's ``k`` nearest embeddings and their
    distances (scikit-learn ``NearestNeighbors``; ``metric``: cosine or euclidean).
    ``exclude_self``: the queries are the gallery's first rows; a query's own row is skipped."""
    from sklearn.neighbors import NearestNeighbors

    if k < 1 or k + int(exclude_self) > len(gallery):
        raise ValueError(f"k={k} needs at least {k + int(exclude_self)} gallery images; there are {len(gallery)}")
    index = NearestNeighbors(n_neighbors=k + int(exclude_self), metric=metric).fit(gallery.numpy())
    dist, idx = index.kneighbors(queries.numpy())
    if exclude_self:
        keep = idx != np.arange(len(queries))[:, None]
        # drop the query itself (or, when tied, the last neighbour) so each row keeps k entries
        keep[keep.all(axis=1), -1] = False
        idx, dist = idx[keep].reshape(len(queries), k), dist[keep].reshape(len(queries), k)
    return torch.from_numpy(idx), torch.from_numpy(dist)


def precision_at_k(query_labels: torch.Tensor, gallery_labels: torch.Tensor, neighbours: torch.Tensor) -> float:
    """Mean fraction of each query's retrieved neighbours that share its label (precision@k)."""
    return float((gallery_labels[neighbours] == query_labels[:, None]).float().mean())


def tsne(embeddings: torch.Tensor, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the embeddings (van der Maaten & Hinton, "Visualizing data using t-SNE", JMLR
    2008; scikit-learn, PCA initialisation). ``(N, 2)``."""
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(1.0, (len(embeddings) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        embeddings.numpy().astype(np.float32)
    )

"""Feature-space neighbours: embeddings, k-NN retrieval, precision@k, t-SNE."""

from __future__ import annotations

import torch

from zoo.interpret import embed, nearest_neighbours, precision_at_k, tsne


def test_default_embedding_is_the_input_of_the_last_linear_layer(trained, test_digits):
    images = test_digits[0][:16]
    emb = embed(trained, images)
    with torch.no_grad():
        expected = trained.net.pool(trained.net.features(images)).flatten(1)
    assert torch.allclose(emb, expected, atol=1e-5)
    assert embed(trained, images, layer="features.6").shape == (16, 16 * 14 * 14)  # width 8: 16 x 14 x 14


def test_neighbours_exclude_the_query_itself():
    gallery = torch.randn(20, 4)
    idx, dist = nearest_neighbours(gallery[:5], gallery, k=3, exclude_self=True)
    assert idx.shape == (5, 3)
    assert not (idx == torch.arange(5)[:, None]).any()
    assert (dist[:, :-1] <= dist[:, 1:]).all()


def test_trained_embeddings_retrieve_same_class_digits_better_than_raw_pixels(trained, test_digits):
    images, labels = test_digits
    emb = embed(trained, images)
    idx, _ = nearest_neighbours(emb[:100], emb, k=10, exclude_self=True)
    learned = precision_at_k(labels[:100], labels, idx)
    raw_idx, _ = nearest_neighbours(images[:100].flatten(1), images.flatten(1), k=10, exclude_self=True)
    raw = precision_at_k(labels[:100], labels, raw_idx)
    assert learned > 0.9
    assert learned > raw


def test_tsne_gives_one_2d_point_per_embedding(trained, test_digits):
    points = tsne(embed(trained, test_digits[0][:60]), perplexity=10)
    assert points.shape == (60, 2)

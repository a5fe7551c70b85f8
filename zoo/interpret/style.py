"""Texture synthesis and style transfer with Gram matrices of convolutional features (Gatys,
Ecker & Bethge 2015 and 2016). Hand-written; works with any zoo CNN, layers chosen by name.

The papers use an ImageNet-trained VGG-19. Nothing is downloaded here: pass a *trained* network,
e.g. ``ImageClassifier.load_from_checkpoint(...)`` of a zoo run, or a torchvision VGG with a local
weights file (``create_model("vgg16", ...)`` then ``zoo.classification.finetune.load_pretrained``,
or ``ImageClassifier(network="vgg16", pretrained="path/to/vgg16.pth")``). An untrained network's
Gram matrices still define a texture statistic, but a poor one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from zoo.interpret.layers import activations, check_images, eval_mode, network
from zoo.interpret.visualize import descent_step


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``G_ij = sum_k F_ik F_jk / (C H W)`` of a ``(N, C, H, W)`` feature map (Gatys et al. 2016,
    eq. 3; divided by the map size so that layers of different sizes weigh alike). ``(N, C, C)``."""
    if features.ndim != 4:
        raise ValueError(f"gram_matrix needs (N, C, H, W) features, got {tuple(features.shape)}")
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def style_loss(model: nn.Module, image: torch.Tensor, style: torch.Tensor, layers: Sequence[str]) -> torch.Tensor:
    """``sum_l ||G_l(image) - G_l(style)||^2`` (squared Frobenius norm; Gatys et al. 2016, eq. 4-5,
    equal layer weights)."""
    feats = activations(model, torch.cat([image, style]), list(layers), grad=torch.is_grad_enabled())
    return sum(((g := gram_matrix(feats[name]))[0] - g[1]).pow(2).sum() for name in layers)


@dataclass
class StyleResult:
    """The synthesised image and the losses per step."""

    image: torch.Tensor  # (1, C, H, W), normalized units
    content_loss: list[float] = field(default_factory=list)
    style_loss: list[float] = field(default_factory=list)


def _check_layers(model: nn.Module, image: torch.Tensor, layers: Sequence[str]) -> None:
    with torch.no_grad():
        feats = activations(model, image, list(layers))
    flat = [n for n in layers if feats[n].ndim != 4]
    if flat:
        raise ValueError(f"layer(s) {', '.join(flat)} give no (N, C, H, W) feature map; choose convolutional layers")


def style_transfer(
    model: nn.Module, content: torch.Tensor | None, style: torch.Tensor,
    content_layers: Sequence[str] = (), style_layers: Sequence[str] = (),
    content_weight: float = 1.0, style_weight: float = 1e3, steps: int = 300, lr: float = 0.05,
    init: str = "content", bounds: tuple[float, float] | None = None, seed: int = 0,
) -> StyleResult:
    """Neural style transfer (Gatys, Ecker & Bethge, "Image style transfer using convolutional
    neural networks", CVPR 2016, eq. 1-7): minimise ``content_weight * L_content + style_weight *
    L_style`` over the image by Adam (the paper uses L-BFGS), where ``L_content`` is the squared
    error of ``content_layers``' features and ``L_style`` the squared error of ``style_layers``'
    Gram matrices. ``content`` None (or no content layers) is texture synthesis (Gatys et al.,
    "Texture synthesis using convolutional neural networks", NIPS 2015), from noise.
    ``init``: ``content`` (start from the content image) or ``noise``.
    """
    if not style_layers:
        raise ValueError("style_layers is empty: name at least one convolutional layer")
    if init not in ("content", "noise"):
        raise ValueError(f"init must be 'content' or 'noise', got {init!r}")
    style = check_images(model, style)[:1]
    if content is not None:
        content = check_images(model, content)[:1]
    if content is None or not content_layers:
        content_layers, init = (), "noise"
    _check_layers(model, style, list(style_layers) + list(content_layers))
    net = network(model)
    gen = torch.Generator().manual_seed(seed)
    shape = content.shape if content is not None else style.shape
    with eval_mode(net):
        with torch.no_grad():
            style_grams = {n: gram_matrix(f) for n, f in activations(net, style, list(style_layers)).items()}
            content_feats = activations(net, content, list(content_layers)) if content_layers else {}
        start = content if init == "content" else float(style.mean()) + 0.5 * torch.randn(shape, generator=gen)
        x = start.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        result = StyleResult(x.detach())
        names = list(dict.fromkeys([*style_layers, *content_layers]))
        for _ in range(steps + 1):
            feats = activations(net, x, names, grad=True)
            ls = sum((gram_matrix(feats[n]) - style_grams[n]).pow(2).sum() for n in style_layers)
            lc = sum((feats[n] - content_feats[n]).pow(2).mean() for n in content_layers) if content_layers else 0.0
            result.style_loss.append(float(ls.detach()))
            result.content_loss.append(float(lc.detach()) if content_layers else 0.0)
            if len(result.style_loss) > steps:
                break  # the last pass only measures the final image
            descent_step(optimizer, style_weight * ls + content_weight * lc, x, bounds)
        result.image = x.detach()
    return result


def synthesize_texture(
    model: nn.Module, style: torch.Tensor, style_layers: Sequence[str], steps: int = 300, lr: float = 0.05,
    bounds: tuple[float, float] | None = None, seed: int = 0,
) -> StyleResult:
    """Texture synthesis from noise by matching Gram matrices (Gatys, Ecker & Bethge, "Texture
    synthesis using convolutional neural networks", NIPS 2015, eq. 1-4)."""
    return style_transfer(model, None, style, (), style_layers, steps=steps, lr=lr, init="noise",
                          bounds=bounds, seed=seed)

"""Visualization by optimisation of the input: class-model visualization, DeepDream, feature
inversion. Hand-written (captum has none of them). All optimise in the network's input space
(normalized units) and return the image with the history of the objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.interpret.layers import activations, check_images, check_target, eval_mode, expected_channels, network


@dataclass
class Optimized:
    """An image found by optimisation and how the objective went (one value per step)."""

    image: torch.Tensor  # (1, C, H, W) or (N, C, H, W), normalized units, detached
    history: list[float] = field(default_factory=list)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius 2 sigma), per channel, reflect padding."""
    if sigma <= 0:
        return images
    radius = max(1, int(2 * sigma + 0.5))
    radius = min(radius, (min(images.shape[-2:]) - 1))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _jitter(images: torch.Tensor, pixels: int, generator: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    if pixels <= 0:
        return images, (0, 0)
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1)), (dy, dx)


def descent_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, image: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
) -> None:
    """One step of ``optimizer`` down ``loss``, then ``image`` (the input being optimised) clamped in place to
    ``bounds``, the valid input range in normalized units; no clamp when either is None."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if image is not None and bounds is not None:
        with torch.no_grad():
            image.clamp_(*bounds)


def class_model(
    model: nn.Module, target: int, shape: Sequence[int] = (1, 1, 28, 28),
    steps: int = 200, lr: float = 0.1, l2: float = 1e-2,
    jitter: int = 1, blur_sigma: float = 0.5, blur_every: int = 4,
    init: str = "zeros", bounds: tuple[float, float] | None = None, seed: int = 0,
) -> Optimized:
    """Class-model visualization: ``argmax_I S_c(I) - l2 * ||I||^2`` by gradient ascent from zeros
    or noise (Simonyan, Vedaldi & Zisserman, "Deep inside convolutional networks", 2014, sec. 2,
    eq. 1), with the regularisers of Yosinski et al., "Understanding neural networks through deep
    visualization", 2015, sec. 3 (random jitter of the image each step, a Gaussian blur every
    ``blur_every`` steps). ``S_c`` is the unnormalised class score (the logit), as in the paper.
    ``bounds`` clamps the image to the valid (normalized) pixel range after each step.
    ``history``: the target logit at each step.
    """
    if init not in ("zeros", "noise"):
        raise ValueError(f"init must be 'zeros' or 'noise', got {init!r}")
    shape = tuple(shape)
    channels = expected_channels(model)
    if channels is not None and shape[1] != channels:
        raise ValueError(f"shape {shape} has {shape[1]} channel(s); the model expects {channels}")
    check_target(model, target, 1)
    net = network(model)
    gen = torch.Generator().manual_seed(seed)
    image = torch.zeros(shape) if init == "zeros" else 0.1 * torch.randn(shape, generator=gen)
    image.requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    history = []
    with eval_mode(net):
        for step in range(steps):
            shifted, _ = _jitter(image, jitter, gen)
            score = net(shifted)[:, target]
            descent_step(optimizer, -(score.sum() - l2 * image.pow(2).sum()))
            history.append(float(score.detach().mean()))
            with torch.no_grad():
                if blur_sigma > 0 and blur_every and (step + 1) % blur_every == 0:
                    image.copy_(gaussian_blur(image, blur_sigma))
                if bounds is not None:
                    image.clamp_(*bounds)
        with torch.no_grad():
            history.append(float(net(image)[:, target].mean()))
    return Optimized(image.detach(), history)


def deep_dream(
    model: nn.Module, image: torch.Tensor, layer: str, channel: int | None = None,
    steps: int = 20, lr: float = 0.05, octaves: int = 3, octave_scale: float = 1.4, jitter: int = 1,
    min_size: int = 16, bounds: tuple[float, float] | None = None, seed: int = 0,
) -> Optimized:
    """DeepDream (Mordvintsev, Olah & Tyka, "Inceptionism: going deeper into neural networks",
    Google Research blog 2015, and their reference notebook): gradient ascent on the given image to
    amplify ``layer``'s activations (``0.5 * ||A||^2``, or one ``channel``'s), over ``octaves``
    scales from coarse to fine (each ``octave_scale`` times larger); the detail added at one scale
    is upsampled into the next. Steps are normalised by the mean absolute gradient, as in the
    notebook. The forward pass stops at ``layer``, so images of any size work.
    ``history``: the objective at each step, all octaves in sequence.
    """
    image = check_images(model, image)
    net = network(model)
    gen = torch.Generator().manual_seed(seed)
    h, w = image.shape[-2:]
    sizes = [(max(min_size, round(h / octave_scale**i)), max(min_size, round(w / octave_scale**i)))
             for i in reversed(range(octaves))]
    base = image.detach().clone()
    detail = torch.zeros_like(F.interpolate(base, size=sizes[0], mode="bilinear", align_corners=False))
    history = []
    with eval_mode(net):
        for size in sizes:
            octave_base = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
            detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            current = (octave_base + detail).requires_grad_(True)
            for _ in range(steps):
                shifted, (dy, dx) = _jitter(current, jitter, gen)
                act = activations(net, shifted, layer, grad=True)[layer]
                if channel is not None:
                    if act.ndim < 2 or not 0 <= channel < act.shape[1]:
                        raise ValueError(f"channel {channel} is out of range for layer {layer!r} {tuple(act.shape)}")
                    act = act[:, channel]
                objective = 0.5 * act.pow(2).mean()
                (grad,) = torch.autograd.grad(objective, current)
                with torch.no_grad():
                    current += lr * grad / grad.abs().mean().clamp_min(1e-12)
                    if bounds is not None:
                        current.clamp_(*bounds)
                history.append(float(objective.detach()))
            detail = (current.detach() - octave_base)
    return Optimized((base + F.interpolate(detail, size=(h, w), mode="bilinear", align_corners=False)).detach()
                     if sizes[-1] != (h, w) else current.detach(), history)


def total_variation(images: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """``sum ((dx)^2 + (dy)^2)^(beta / 2)`` (Mahendran & Vedaldi 2015, eq. 4)."""
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).clamp_min(1e-8).pow(beta / 2).sum()


def invert_features(
    model: nn.Module, image: torch.Tensor, layer: str, steps: int = 300, lr: float = 0.05,
    tv_weight: float = 1e-3, l2_weight: float = 1e-4, bounds: tuple[float, float] | None = None, seed: int = 0,
) -> Optimized:
    """Feature inversion (Mahendran & Vedaldi, "Understanding deep image representations by
    inverting them", CVPR 2015, eq. 1-4): from noise, find ``x`` minimising
    ``||Phi(x) - Phi(x0)||^2 / ||Phi(x0)||^2 + l2_weight ||x||^2 + tv_weight TV(x)``, where ``Phi``
    is ``layer``'s activation. ``history``: the normalised feature distance (first term) per step.
    """
    image = check_images(model, image)
    net = network(model)
    with eval_mode(net):
        with torch.no_grad():
            reference = activations(net, image, layer)[layer]
        norm = reference.pow(2).sum().clamp_min(1e-12)
        gen = torch.Generator().manual_seed(seed)
        x = (0.1 * torch.randn(image.shape, generator=gen)).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        history = []
        for _ in range(steps):
            feat = activations(net, x, layer, grad=True)[layer]
            distance = (feat - reference).pow(2).sum() / norm
            descent_step(optimizer, distance + l2_weight * x.pow(2).sum() + tv_weight * total_variation(x), x, bounds)
            history.append(float(distance.detach()))
        with torch.no_grad():
            history.append(float((activations(net, x, layer)[layer] - reference).pow(2).sum() / norm))
    return Optimized(x.detach(), history)

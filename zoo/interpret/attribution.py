"""Attribution maps: which input pixels a class score depends on.

Saliency, SmoothGrad, guided backpropagation, occlusion and Grad-CAM come from captum; CAM is
written here (captum has none). Every function takes a network (or an ImageClassifier), a
normalized batch ``(N, C, H, W)`` and the target class(es), puts the network in eval mode for the
call (and turns in-place ReLUs off, which captum's hooks need), and returns a tensor:
``(N, 1, H, W)`` maps for saliency, SmoothGrad, occlusion, CAM and Grad-CAM, ``(N, C, H, W)``
for guided backpropagation (an image-like signal, shown per channel).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import GuidedBackprop, LayerGradCam, NoiseTunnel, Occlusion, Saliency

from zoo.interpret.layers import (
    check_images,
    check_target,
    eval_mode,
    executed_layers,
    get_layer,
    network,
    no_inplace,
)

Target = int | Sequence[int] | torch.Tensor


def _prepare(model: nn.Module, images: torch.Tensor, target: Target) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    images = check_images(model, images)
    target = check_target(model, target, len(images))
    return network(model), images.detach().clone().requires_grad_(True), target


def saliency(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """Image-specific class saliency (Simonyan, Vedaldi & Zisserman, "Deep inside convolutional
    networks", ICLR workshop 2014, sec. 3.1): ``|dS_c / dI|``, maximum over channels. ``(N, 1, H, W)``."""
    net, images, target = _prepare(model, images, target)
    with eval_mode(net), no_inplace(net):
        grad = Saliency(net).attribute(images, target=target, abs=True)
    return grad.amax(dim=1, keepdim=True).detach()


def smoothgrad(
    model: nn.Module, images: torch.Tensor, target: Target, samples: int = 25, noise_level: float = 0.15,
    seed: int | None = 0,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017, eq. 3): the
    saliency map averaged over ``samples`` copies of the image with Gaussian noise of standard
    deviation ``noise_level * (max - min)`` (sec. 3: 10-20% of the input range works best).
    ``(N, 1, H, W)``. ``seed`` makes the noise repeatable (None: the global generator)."""
    net, images, target = _prepare(model, images, target)
    sigma = noise_level * float(images.detach().max() - images.detach().min())
    with eval_mode(net), no_inplace(net), torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        grad = NoiseTunnel(Saliency(net)).attribute(
            images, nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=target, abs=True
        )
    return grad.amax(dim=1, keepdim=True).detach()


def guided_backprop(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al., "Striving for simplicity: the all convolutional
    net", ICLR workshop 2015, sec. 3.4 and fig. 1): through every ReLU the gradient passes only
    where the forward input was positive *and* the gradient itself is positive. Applies to
    ``nn.ReLU`` modules (captum), not to ``F.relu`` calls. ``(N, C, H, W)``, signed."""
    net, images, target = _prepare(model, images, target)
    with eval_mode(net), no_inplace(net), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # captum's notice, every call
        grad = GuidedBackprop(net).attribute(images, target=target)
    return grad.detach()


def occlusion(
    model: nn.Module, images: torch.Tensor, target: Target, patch: int = 7, stride: int = 2,
    baseline: float | None = None,
) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus, "Visualizing and understanding convolutional
    networks", ECCV 2014, sec. 4.2 and fig. 7): slide a ``patch`` x ``patch`` square of value
    ``baseline`` over the image with ``stride``, and record how much the class score drops (positive:
    the covered pixels supported the class), averaged over the windows covering each pixel.
    ``baseline`` None: the image minimum (black in normalized units). ``(N, 1, H, W)``."""
    net, images, target = _prepare(model, images, target)
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be >= 1, got patch={patch}, stride={stride}")
    fill = float(images.detach().min()) if baseline is None else baseline
    c = images.shape[1]
    with eval_mode(net), no_inplace(net), torch.no_grad():
        attr = Occlusion(net).attribute(
            images.detach(), sliding_window_shapes=(c, patch, patch), strides=(c, stride, stride),
            baselines=fill, target=target, perturbations_per_eval=64,
        )
    return attr.sum(dim=1, keepdim=True).detach()


def default_cam_layer(model: nn.Module, input_size: Sequence[int]) -> str:
    """The last layer run whose output is a spatial map (4-D, larger than 1x1) and that is not a
    pooling layer: the last convolutional feature map, where Grad-CAM is usually taken."""
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    candidates = [
        name for name, module, shape in executed_layers(model, input_size)
        if len(shape) == 4 and shape[2] * shape[3] > 1 and not isinstance(module, pools)
    ]
    if not candidates:
        raise ValueError("the network has no spatial feature map (4-D output larger than 1x1); pass layer=")
    return candidates[-1]


def _upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def grad_cam(
    model: nn.Module, images: torch.Tensor, target: Target, layer: str | None = None, relu: bool = True,
    upsample: bool = True,
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., "Grad-CAM: visual explanations from deep networks via
    gradient-based localization", ICCV 2017, eq. 1-2): channel weights are the spatially averaged
    gradients of the class score at ``layer``'s output, the map is ``ReLU(sum_k alpha_k A^k)``
    (``relu=False`` keeps the negative evidence). ``layer`` None: :func:`default_cam_layer`.
    ``(N, 1, H, W)`` bilinearly upsampled to the input (``upsample=False``: the layer's size)."""
    net, images, target = _prepare(model, images, target)
    name = layer or default_cam_layer(model, (1, *images.shape[1:]))
    module = get_layer(model, name)
    with eval_mode(net), no_inplace(net):
        maps = LayerGradCam(net, module).attribute(images, target=target, relu_attributions=relu)
    if maps.ndim != 4:
        raise ValueError(f"layer {name!r} gives a {maps.ndim}-D output; Grad-CAM needs a (N, C, H, W) feature map")
    return (_upsample(maps, images.shape[-2:]) if upsample else maps).detach()


def cam(
    model: nn.Module, images: torch.Tensor, target: Target, layer: str | None = None, upsample: bool = True,
    tolerance: float = 1e-3,
) -> torch.Tensor:
    """Class activation map (Zhou et al., "Learning deep features for discriminative localization",
    CVPR 2016, sec. 2): for a network whose head after the feature map ``f`` is global average
    pooling and one linear layer, ``M_c(x, y) = sum_k w^c_k f_k(x, y)``.

    Written here for any *linear* head (pooling to a grid, flatten, dropout in eval, linear): the
    map is ``sum_k f_k * dS_c/df_k``, each pixel's exact share of the logit, which for global
    average pooling is Zhou's map divided by the number of pixels (the map sums to the logit minus
    the bias). That the head is linear is checked (the logit must equal the logit at ``f = 0``
    plus the map's sum, to ``tolerance`` relative); otherwise a ValueError says to use Grad-CAM.
    ``layer`` None: the input of the network's last average-pooling layer. ``(N, 1, H, W)``.
    """
    net, images, target = _prepare(model, images, target)
    captured: dict[str, torch.Tensor] = {}
    replace: dict[str, torch.Tensor] = {}
    if layer is None:
        pools = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))]
        if not pools:
            raise ValueError("CAM needs global average pooling before the classifier; this network has none. "
                             "Pass layer= or use grad_cam.")
        name, module = pools[-1]

        def pre_hook(m: nn.Module, inputs: tuple) -> tuple | None:
            if "f" in replace:
                return (replace["f"],)
            captured["f"] = inputs[0]
            return None

        handle = module.register_forward_pre_hook(pre_hook)
    else:
        name, module = layer, get_layer(model, layer)

        def hook(m: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if "f" in replace:
                return replace["f"]
            captured["f"] = output
            return None

        handle = module.register_forward_hook(hook)
    try:
        with eval_mode(net), no_inplace(net):
            logits = net(images)
            score = logits.gather(1, target[:, None]).sum()
            f = captured["f"]
            if f.ndim != 4:
                raise ValueError(f"CAM needs a (N, C, H, W) feature map at {name!r}; got {tuple(f.shape)}")
            (grad,) = torch.autograd.grad(score, f)
            maps = (f * grad).sum(dim=1, keepdim=True).detach()
            replace["f"] = torch.zeros_like(f)
            with torch.no_grad():
                bias = net(images).gather(1, target[:, None]).squeeze(1)
    finally:
        handle.remove()
    logit = logits.detach().gather(1, target[:, None]).squeeze(1)
    err = (bias + maps.sum(dim=(1, 2, 3)) - logit).abs().max()
    if err > tolerance * max(1.0, float(logit.abs().max())):
        raise ValueError(
            f"CAM needs a linear head after {name!r} (average pooling + linear, Zhou et al. 2016), but the "
            f"logits are not linear in that feature map (off by {float(err):.3g}). Use grad_cam instead."
        )
    return _upsample(maps, images.shape[-2:]) if upsample else maps


METHODS = {
    "saliency": saliency,
    "smoothgrad": smoothgrad,
    "guided_backprop": guided_backprop,
    "occlusion": occlusion,
    "cam": cam,
    "grad_cam": grad_cam,
}

"""Adversarial examples: FGSM, targeted iterative attacks, and a universal perturbation for one
class. Hand-written (a few lines each; captum's robustness module is not needed for these).

All work in the network's input space (normalized units): ``epsilon`` and norms are in those
units; divide a pixel-space epsilon by the normalization std (MNIST: 0.3081) to get them.
``bounds`` (optional) is the valid input range in the same units (MNIST: ``(-0.4242, 2.8215)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.interpret.layers import check_images, check_target, eval_mode, network
from zoo.interpret.visualize import descent_step


@dataclass
class AttackResult:
    """Adversarial images with what they did: predictions before/after and the perturbation size."""

    adversarial: torch.Tensor  # (N, C, H, W)
    perturbation: torch.Tensor  # adversarial - images
    pred_before: torch.Tensor  # (N,)
    pred_after: torch.Tensor  # (N,)
    success: torch.Tensor  # (N,) bool: untargeted: the prediction changed; targeted: it became the target
    linf: torch.Tensor  # (N,) max |r|
    l2: torch.Tensor  # (N,) ||r||_2

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())


def _result(net: nn.Module, images: torch.Tensor, adv: torch.Tensor, before: torch.Tensor,
            target: torch.Tensor | None) -> AttackResult:
    with torch.no_grad():
        after = net(adv).argmax(1)
    r = (adv - images).detach()
    success = after == target if target is not None else after != before
    return AttackResult(adv.detach(), r, before, after, success, r.flatten(1).abs().amax(1), r.flatten(1).norm(dim=1))


def _clamp(x: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    return x if bounds is None else x.clamp(*bounds)


def fgsm(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor | int, epsilon: float,
    bounds: tuple[float, float] | None = None,
) -> AttackResult:
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and harnessing
    adversarial examples", ICLR 2015, sec. 4): ``x + epsilon * sign(grad_x J(x, y))``, one step
    that raises the loss of the true label ``y``. Success: the prediction changed."""
    images = check_images(model, images)
    labels = check_target(model, labels, len(images))
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    net = network(model)
    with eval_mode(net):
        x = images.detach().clone().requires_grad_(True)
        logits = net(x)
        before = logits.argmax(1).detach()
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), x)
        adv = _clamp(images + epsilon * grad.sign(), bounds)
        return _result(net, images, adv, before, None)


def iterative_attack(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor | int, epsilon: float,
    step_size: float | None = None, steps: int = 20, targeted: bool = True, bounds: tuple[float, float] | None = None,
) -> AttackResult:
    """Iterative FGSM within an L-infinity ball of radius ``epsilon`` (Kurakin, Goodfellow & Bengio,
    "Adversarial examples in the physical world", ICLR workshop 2017, sec. 2.2-2.3; projected
    gradient descent of Madry et al. 2018): ``x <- clip_eps(x - alpha sign(grad J(x, t)))`` towards
    the ``target`` class (``targeted``), or ``+`` away from the label ``target`` (untargeted).
    ``step_size`` default: ``2.5 epsilon / steps``. Images that reach the goal stop moving, so the
    perturbation stays as small as the attack found it."""
    images = check_images(model, images)
    target = check_target(model, target, len(images))
    if epsilon < 0 or steps < 1:
        raise ValueError(f"need epsilon >= 0 and steps >= 1, got epsilon={epsilon}, steps={steps}")
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    net = network(model)
    with eval_mode(net):
        with torch.no_grad():
            before = net(images).argmax(1)
        adv = images.detach().clone()
        for _ in range(steps):
            x = adv.clone().requires_grad_(True)
            logits = net(x)
            done = logits.argmax(1) == target if targeted else logits.argmax(1) != target
            if bool(done.all()):
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), x)
            direction = -grad.sign() if targeted else grad.sign()
            moving = (~done).view(-1, 1, 1, 1).float()
            adv = adv + alpha * direction * moving
            adv = _clamp(images + (adv - images).clamp(-epsilon, epsilon), bounds).detach()
        return _result(net, images, adv, before, target if targeted else None)


@dataclass
class UniversalPerturbation:
    """One perturbation ``r`` for all images, pushing them to class ``target``."""

    perturbation: torch.Tensor  # (1, C, H, W), normalized units
    target: int
    history: list[float] = field(default_factory=list)  # objective per step

    @property
    def l2(self) -> float:
        return float(self.perturbation.norm())

    @property
    def linf(self) -> float:
        return float(self.perturbation.abs().max())


def universal_perturbation(
    model: nn.Module, images: torch.Tensor, target: int, c: float = 0.05, steps: int = 300, lr: float = 0.05,
    batch_size: int = 128, bounds: tuple[float, float] | None = None, seed: int = 0,
) -> UniversalPerturbation:
    """A universal targeted perturbation: one ``r`` minimising ``c ||r||_2 + mean_x L(x + r, k)``
    over the images (cross-entropy towards class ``k``), by Adam on minibatches.

    The formulation is the lecture's; it is the targeted, optimisation-based variant of Moosavi-
    Dezfooli et al., "Universal adversarial perturbations", CVPR 2017 (who build an untargeted ``r``
    from DeepFool steps with a norm bound), close to the adversarial patch objective of Brown et al.
    2017 without the patch mask. Evaluate it on held-out images with :func:`perturbation_success`.
    """
    images = check_images(model, images)
    check_target(model, target, 1)
    net = network(model)
    gen = torch.Generator().manual_seed(seed)
    r = torch.zeros(1, *images.shape[1:], requires_grad=True)
    optimizer = torch.optim.Adam([r], lr=lr)
    labels = torch.full((min(batch_size, len(images)),), target, dtype=torch.long)
    history = []
    with eval_mode(net):
        for _ in range(steps):
            idx = torch.randperm(len(images), generator=gen)[:batch_size]
            x = _clamp(images[idx] + r, bounds)
            loss = c * r.norm() + F.cross_entropy(net(x), labels[: len(idx)])
            descent_step(optimizer, loss)
            history.append(float(loss.detach()))
    return UniversalPerturbation(r.detach(), int(target), history)


def perturbation_success(
    model: nn.Module, images: torch.Tensor, perturbation: torch.Tensor, target: int,
    bounds: tuple[float, float] | None = None, batch_size: int = 1000,
) -> dict[str, float]:
    """Success of a universal perturbation on ``images``: the fraction of images *not* already
    predicted as ``target`` that are predicted as ``target`` once ``perturbation`` is added
    (``success_rate``), and the fraction predicted as ``target`` before (``base_rate``)."""
    images = check_images(model, images)
    check_target(model, target, 1)
    net = network(model)
    before, after = [], []
    with torch.no_grad(), eval_mode(net):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size]
            before.append(net(x).argmax(1))
            after.append(net(_clamp(x + perturbation, bounds)).argmax(1))
    b, a = torch.cat(before), torch.cat(after)
    others = b != target
    return {
        "success_rate": float((a[others] == target).float().mean()) if others.any() else float("nan"),
        "base_rate": float((b == target).float().mean()),
        "n": len(images),
    }

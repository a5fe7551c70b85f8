"""Mixup / CutMix (zoo.classification.mixing) and the class-weighted, soft-target losses of ImageClassifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.classification import DistillationClassifier, ImageClassifier
from zoo.classification.mixing import BatchMixer, multilabel_bce, soft_target_cross_entropy

TINY = {"network": "convnet", "network_kwargs": {"width": 4}}


def _constant_images(n: int, size: tuple[int, int] = (12, 10)) -> torch.Tensor:
    """Image i is filled with the value i: where a pixel came from is its value."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, *size).clone()


def test_mixup_mixes_images_and_one_hot_targets_with_one_lambda():
    torch.manual_seed(0)
    images, labels = torch.randn(7, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    original = images.clone()
    mixed, soft, info = BatchMixer(5, mixup_alpha=0.4)(images, labels)
    assert info.kind == "mixup" and 0 < info.lam < 1
    j, lam = info.partner, info.lam
    torch.testing.assert_close(mixed, lam * original + (1 - lam) * original[j])
    one_hot = F.one_hot(labels, 5).float()
    torch.testing.assert_close(soft, lam * one_hot + (1 - lam) * one_hot[j])
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(7))
    assert torch.equal(images, original)  # the input batch is left alone (odd batch size: fine)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_lambda_is_the_share_of_each_image_left_its_own(seed):
    torch.manual_seed(seed)
    n, h, w = 6, 12, 10
    images, labels = _constant_images(n, (h, w)), torch.arange(n) % 4
    mixed, soft, info = BatchMixer(4, cutmix_alpha=1.0)(images, labels)
    assert info.kind == "cutmix"
    y0, y1, x0, x1 = info.box
    pasted_area = (y1 - y0) * (x1 - x0)
    assert info.lam == pytest.approx(1 - pasted_area / (h * w))  # area-corrected (clipped box), Yun et al. eq. 2
    for i in range(n):
        j = int(info.partner[i])
        if j == i:
            continue
        own = (mixed[i] == i).float().mean().item()
        assert own == pytest.approx(info.lam), i  # the pixels still showing image i
        assert (mixed[i] == j).float().mean().item() == pytest.approx(1 - info.lam)
        expected = torch.zeros(4)
        expected[labels[i]] += info.lam
        expected[labels[j]] += 1 - info.lam
        torch.testing.assert_close(soft[i], expected)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(n))


def test_cutmix_box_at_the_border_is_clipped_and_lambda_follows():
    torch.manual_seed(0)
    images = _constant_images(4, (16, 16))
    lams = []
    for _ in range(40):
        mixed, _, info = BatchMixer(4, cutmix_alpha=1.0)(images, torch.arange(4), kind="cutmix", lam=0.3)
        y0, y1, x0, x1 = info.box
        assert 0 <= y0 <= y1 <= 16 and 0 <= x0 <= x1 <= 16
        lams.append(info.lam)
    assert min(lams) >= 0.3 - 1e-6 and max(lams) > 0.3 + 0.05  # some boxes were clipped: less pasted than asked


def test_multilabel_targets_are_mixed_multi_hot():
    torch.manual_seed(1)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    _, soft, info = BatchMixer(3, mixup_alpha=1.0)(torch.randn(3, 1, 4, 4), targets)
    torch.testing.assert_close(soft, info.lam * targets + (1 - info.lam) * targets[info.partner])


def test_switch_and_mix_probabilities_choose_per_batch():
    torch.manual_seed(0)
    images, labels = torch.randn(4, 1, 8, 8), torch.arange(4)
    both = BatchMixer(4, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=1.0)
    assert {both(images, labels)[2].kind for _ in range(10)} == {"cutmix"}
    both.switch_prob = 0.0
    assert {both(images, labels)[2].kind for _ in range(10)} == {"mixup"}
    both.switch_prob = 0.5
    kinds = [both(images, labels)[2].kind for _ in range(400)]
    assert 0.4 < kinds.count("cutmix") / 400 < 0.6
    never = BatchMixer(4, mixup_alpha=0.2, mix_prob=0.0)
    out_images, out_targets, info = never(images, labels)
    assert info.kind == "none" and out_images is images and out_targets is labels
    half = BatchMixer(4, mixup_alpha=0.2, mix_prob=0.5)
    assert 0.4 < sum(half(images, labels)[2].kind == "mixup" for _ in range(400)) / 400 < 0.6


def test_label_smoothing_combines_with_mixed_targets_as_timm_does():
    mixup = pytest.importorskip("timm.data.mixup")
    torch.manual_seed(0)
    logits, labels, lam, s = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 4]), 0.7, 0.1
    one_hot = F.one_hot(labels, 5).float()
    ours = soft_target_cross_entropy(logits, lam * one_hot + (1 - lam) * one_hot.flip(0), label_smoothing=s)
    timm_target = mixup.mixup_target(labels, 5, lam=lam, smoothing=s)  # timm pairs sample i with N-1-i
    torch.testing.assert_close(ours, -(timm_target * logits.log_softmax(dim=1)).sum(dim=1).mean())
    multi = (torch.rand(6, 5) > 0.5).float()
    ours = multilabel_bce(logits, lam * multi + (1 - lam) * multi.flip(0), label_smoothing=s)
    timm_target = mixup.mixup_target(multi, 5, lam=lam, smoothing=s, multi_label=True)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(logits, timm_target))


def test_soft_cross_entropy_of_one_hot_targets_is_pytorchs_weighted_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits, labels, weight = torch.randn(8, 4), torch.randint(0, 4, (8,)), torch.tensor([0.5, 2.0, 1.0, 3.0])
    for s in (0.0, 0.2):
        soft = soft_target_cross_entropy(logits, F.one_hot(labels, 4).float(), weight=weight, label_smoothing=s)
        torch.testing.assert_close(soft, F.cross_entropy(logits, labels, weight=weight, label_smoothing=s))


def test_mixing_is_off_by_default_and_the_loss_is_plain_cross_entropy():
    torch.manual_seed(0)
    model = ImageClassifier(**TINY)
    images, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    original = images.clone()
    state = torch.get_rng_state()
    assert model.mixer(images, labels)[0] is images and torch.equal(torch.get_rng_state(), state)  # no draw
    torch.manual_seed(1)
    loss = model.training_step((images, labels), 0)
    torch.manual_seed(1)
    torch.testing.assert_close(loss, F.cross_entropy(model.net(original), labels))
    assert torch.equal(images, original)


def test_a_mixed_training_step_trains_on_the_soft_targets_with_smoothing_and_weights():
    weights = [1.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0]
    model = ImageClassifier(**TINY, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1, class_weights=weights)
    images, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    torch.manual_seed(3)
    loss = model.training_step((images, labels), 0)
    torch.manual_seed(3)
    mixed, soft, info = model.mixer(images, labels)
    assert info.kind in ("mixup", "cutmix")
    expected = soft_target_cross_entropy(model.net(mixed), soft, torch.tensor(weights), label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    assert model.train_acc.tp.sum() + model.train_acc.fn.sum() == 6  # counted against the soft targets' argmax


def test_googlenet_aux_losses_take_soft_targets():
    from torchvision.models import GoogLeNetOutputs

    torch.manual_seed(0)
    model = ImageClassifier(**TINY, aux_loss_weight=0.3)
    labels = torch.tensor([1, 2])
    _, soft, _ = BatchMixer(10, mixup_alpha=1.0)(torch.randn(2, 1, 8, 8), labels)
    output = GoogLeNetOutputs(torch.randn(2, 10), torch.randn(2, 10), torch.randn(2, 10))  # GoogLeNet in training
    main, aux2, aux1 = (soft_target_cross_entropy(o, soft) for o in output)
    torch.testing.assert_close(model.compute_loss(output, soft), main + 0.3 * (aux1 + aux2))


def test_class_weights_must_have_one_value_per_class():
    with pytest.raises(ValueError, match=r"class_weights has 3 values for num_classes=10\. Fix: give one weight"):
        ImageClassifier(**TINY, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"finite, >= 0 and not all 0"):
        ImageClassifier(**TINY, num_classes=2, class_weights=[1.0, -1.0])


def test_class_weighted_cross_entropy_equals_the_hand_computation():
    model = ImageClassifier(**TINY, num_classes=3, class_weights=[1.0, 4.0, 0.5])
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [0.5, -0.5, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    w = torch.tensor([1.0, 4.0, 0.5])[labels]
    nll = -logits.log_softmax(dim=1)[torch.arange(4), labels]
    torch.testing.assert_close(model.compute_loss(logits, labels), (w * nll).sum() / w.sum())


def test_class_weights_of_a_multilabel_model_are_the_bce_pos_weight():
    model = ImageClassifier(**TINY, num_classes=2, task="multilabel", class_weights=[3.0, 0.5])
    logits = torch.tensor([[1.0, -2.0], [0.0, 0.5], [-1.0, 2.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = logits.sigmoid()
    pos_weight = torch.tensor([3.0, 0.5])
    by_hand = -(pos_weight * target * p.log() + (1 - target) * (1 - p).log()).mean()
    torch.testing.assert_close(model.compute_loss(logits, target), by_hand)


def test_bad_mixing_arguments_and_a_subclass_that_would_ignore_them_are_refused():
    with pytest.raises(ValueError, match=r"mixup_alpha=-0\.1.*Fix: set mixup_alpha to 0"):
        ImageClassifier(**TINY, mixup_alpha=-0.1)
    with pytest.raises(ValueError, match=r"mix_prob=1\.5 is a probability"):
        ImageClassifier(**TINY, cutmix_alpha=1.0, mix_prob=1.5)
    with pytest.raises(ValueError, match=r"DistillationClassifier has its own training step.*mixup"):
        DistillationClassifier(**TINY, mixup_alpha=0.2)
    with pytest.raises(ValueError, match=r"DistillationClassifier trains single-label"):
        DistillationClassifier(**TINY, task="multilabel")

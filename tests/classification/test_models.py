"""One sweep over every registered classifier, plus the behaviours each family promises.

Speed: networks are built on the ``meta`` device (no memory, no initialisation cost) wherever
only their structure is checked (parameter counts, state-dict keys, input-size guards); real
forward/backward passes use batch 2, a few classes and a fixed seed.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models import GoogLeNetOutputs

from zoo.classification.models._adapt import MinInputSize
from zoo.classification.models.googlenet import googlenet_loss, main_logits
from zoo.classification.models.resnet import (
    CifarBasicBlock,
    OptionAShortcut,
    linear_decay_drop_probs,
    residual_blocks,
    set_stochastic_depth,
)
from zoo.core.registry import UnknownModelError, create_model, get_model_entry, list_models

CLASSIFIERS = list_models(family="classification")
NUM_CLASSES = 7
WITH_SMALL_INPUT = [n for n in CLASSIFIERS if "small_input" in get_model_entry(n).parameters]
FROM_LIBRARIES = [n for n in CLASSIFIERS if get_model_entry(n).source in ("torchvision", "timm")]

# Models whose forward+backward at 224x224 costs several seconds on 2 CPU cores: at 224 they run
# forward only; one representative per family (vgg11, resnet50, resnext50_32x4d, densenet121)
# still runs forward+backward at 224, and every model runs backward at 28x28 and 32x32.
FORWARD_ONLY_AT_224 = {
    "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "resnet101", "resnet152", "resnext101_32x8d",
    "densenet169", "densenet201",
}  # fmt: skip

# Parameter counts at 1000 classes and 3 input channels: torchvision's documented counts (each
# checked against ``torchvision.models.<name>(weights=None)``) and timm's for the SE networks.
PUBLISHED_PARAMETERS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,  # without the auxiliary classifiers
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "seresnet50": 28_088_024,
    "seresnext50_32x4d": 27_559_896,
}

# Paper values at 10 classes: He et al. 2016 table 6 (CIFAR ResNets), Huang et al. 2017 table 2
# (DenseNet-BC L=100 k=12).
PAPER_PARAMETERS_10_CLASSES = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "densenet_bc100": 0.8e6,
}


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread() -> Iterator[None]:
    """One intra-op thread while this module runs. On a 2-core machine shared with other processes
    (another pytest, an xdist worker), OpenMP's two spinning threads made these small passes 4-90x
    slower than one thread (measured); without contention one thread costs at most ~2x on the
    largest convolutions. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def reference_builder(name: str) -> Callable[[], nn.Module]:
    """The library's own model that a zoo builder claims to reproduce at 1000 classes, RGB."""
    if get_model_entry(name).source == "timm":
        return lambda: timm.create_model(name, pretrained=False)
    if name == "googlenet":
        return lambda: tvm.GoogLeNet(aux_logits=True, init_weights=True)
    if name == "densenet_bc100":  # ImageNet stem: the CIFAR one only reshapes features.conv0
        return lambda: tvm.DenseNet(
            growth_rate=12, block_config=(16, 16, 16), num_init_features=24, num_classes=1000
        )
    return lambda: getattr(tvm, name)(weights=None)


def build(name: str, in_channels: int, size: int, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The model configured for ``size`` x ``size`` inputs: small_input=True below 64 pixels."""
    kwargs: dict[str, object] = {"num_classes": num_classes, "in_channels": in_channels}
    if name in WITH_SMALL_INPUT:
        kwargs["small_input"] = size < 64
    return create_model(name, **kwargs)


def parameter_count(model: nn.Module, exclude_prefixes: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(exclude_prefixes))


def randomize_batchnorm_statistics(model: nn.Module) -> None:
    """So that eval-mode comparisons also exercise the running statistics (fresh ones are 0/1)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


# ---------------------------------------------------------------------------------------------
# Every registered classifier
# ---------------------------------------------------------------------------------------------


def test_every_family_file_registers_its_classifiers() -> None:
    expected = {"lenet5", "convnet", "alexnet", "nin", "googlenet", "densenet_bc100"}
    expected |= set(PUBLISHED_PARAMETERS) | set(PAPER_PARAMETERS_10_CLASSES)
    assert expected <= set(CLASSIFIERS)


@pytest.mark.parametrize(
    ("in_channels", "size"), [(1, 28), (3, 32), (3, 224)], ids=["gray28", "rgb32", "rgb224"]
)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_runs_forward_and_backward(name: str, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build(name, in_channels, size)
    x = torch.randn(2, in_channels, size, size)
    target = torch.tensor([0, NUM_CLASSES - 1])
    if size == 224 and name in FORWARD_ONLY_AT_224:
        model.eval()
        with torch.no_grad():
            logits = main_logits(model(x))
        assert logits.shape == (2, NUM_CLASSES)
        assert torch.isfinite(logits).all()
        return
    model.train()
    output = model(x)
    logits = main_logits(output)
    assert logits.shape == (2, NUM_CLASSES)
    loss = googlenet_loss(output, target, F.cross_entropy)  # plain cross-entropy for tensors
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.shape[1] == in_channels
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_count_matches_published_value(name: str) -> None:
    kwargs = {"small_input": False} if name in WITH_SMALL_INPUT else {}
    with torch.device("meta"):
        model = create_model(name, num_classes=1000, in_channels=3, **kwargs)
    exclude = ("aux1.", "aux2.") if name == "googlenet" else ()
    assert parameter_count(model, exclude) == PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS_10_CLASSES))
def test_cifar_network_parameter_count_matches_paper(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_channels=3)
    expected = PAPER_PARAMETERS_10_CLASSES[name]
    tolerance = 0.05 if name == "densenet_bc100" else 0.02  # the paper rounds to 0.8M
    assert parameter_count(model) == pytest.approx(expected, rel=tolerance)


def test_every_library_network_has_a_small_input_stem() -> None:
    assert set(FROM_LIBRARIES) <= set(WITH_SMALL_INPUT)


@pytest.mark.parametrize("name", FROM_LIBRARIES)
def test_state_dict_has_the_library_keys_and_shapes(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=1000, in_channels=3, small_input=False)
        reference = reference_builder(name)()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs


@pytest.mark.parametrize("name", FROM_LIBRARIES)
def test_other_channels_and_small_input_only_reshape_the_first_conv(name: str) -> None:
    with torch.device("meta"):
        default = create_model(name, num_classes=1000, in_channels=3, small_input=False)
        adapted = create_model(name, num_classes=1000, in_channels=1, small_input=True)
    default_shapes = {k: tuple(v.shape) for k, v in default.state_dict().items()}
    adapted_shapes = {k: tuple(v.shape) for k, v in adapted.state_dict().items()}
    assert adapted_shapes.keys() == default_shapes.keys()
    changed = [k for k in default_shapes if default_shapes[k] != adapted_shapes[k]]
    first_conv = next(k for k, v in default_shapes.items() if len(v) == 4)
    assert changed == [first_conv]
    assert adapted_shapes[first_conv][:2] == (default_shapes[first_conv][0], 1)
    assert adapted_shapes[first_conv][2:] == (3, 3)


# ---------------------------------------------------------------------------------------------
# The small-input rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_SMALL_INPUT)
def test_default_stem_on_28x28_runs_or_raises_a_clear_error(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES, in_channels=1, small_input=False)
        try:
            logits = main_logits(model(torch.empty(2, 1, 28, 28)))
        except ValueError as error:
            message = str(error)
            assert name in message and "small_input=True" in message and "(28, 28)" in message
        else:
            assert logits.shape == (2, NUM_CLASSES)


GUARDED = [(n, small) for n in WITH_SMALL_INPUT for small in (False, True)]


@pytest.mark.parametrize(("name", "small_input"), GUARDED)
def test_minimum_input_size_is_exact(name: str, small_input: bool) -> None:
    """Where a model declares ``min_input_size``, that size runs and one pixel less would break
    the network itself (checked with the guard removed), so the guard is neither loose nor late."""
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES, small_input=small_input).eval()
        limit = getattr(model, "min_input_size", None)
        if limit is None:  # padded convolutions and adaptive pooling: any size works
            assert main_logits(model(torch.empty(2, 3, 1, 1))).shape == (2, NUM_CLASSES)
            return
        assert main_logits(model(torch.empty(2, 3, limit, limit))).shape == (2, NUM_CLASSES)
        with pytest.raises(ValueError, match=f"at least {limit}x{limit}"):
            model(torch.empty(2, 3, limit - 1, limit - 1))
        for key, hook in list(model._forward_pre_hooks.items()):
            if isinstance(hook, MinInputSize):
                del model._forward_pre_hooks[key]
        with pytest.raises(RuntimeError):
            model(torch.empty(2, 3, limit - 1, limit - 1))


def test_small_input_error_does_not_suggest_small_input_again() -> None:
    with torch.device("meta"):
        model = create_model("vgg11", num_classes=3, small_input=True)
        with pytest.raises(ValueError, match="Resize the images") as error:
            model(torch.zeros(1, 3, 8, 8))
    assert "small_input=True" not in str(error.value)


def test_guarded_model_survives_pickling_and_keeps_its_guard() -> None:
    model = create_model("squeezenet1_1", num_classes=3)
    restored = pickle.loads(pickle.dumps(model))
    assert restored.min_input_size == 17
    with pytest.raises(ValueError, match="squeezenet1_1 needs inputs of at least 17x17"):
        restored(torch.zeros(1, 3, 16, 16))


# ---------------------------------------------------------------------------------------------
# Library weights load and give the library's outputs
# ---------------------------------------------------------------------------------------------

EQUIVALENCE = [
    "resnet18", "resnet50", "resnext50_32x4d", "vgg11_bn", "alexnet", "densenet121",
    "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "googlenet", "seresnet50",
]  # fmt: skip


@pytest.mark.parametrize("name", EQUIVALENCE)
def test_library_state_dict_loads_and_gives_identical_outputs(name: str) -> None:
    torch.manual_seed(0)
    reference = reference_builder(name)()
    randomize_batchnorm_statistics(reference)
    torch.manual_seed(1)  # different initial weights: loading must be what makes them equal
    model = create_model(name, num_classes=1000, in_channels=3)
    model.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = reference(x), model(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# GoogLeNet's auxiliary classifiers
# ---------------------------------------------------------------------------------------------


def test_googlenet_returns_aux_logits_only_in_training() -> None:
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=NUM_CLASSES, small_input=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()
        training = model(x)
        model.eval()
        evaluation = model(x)
    assert isinstance(training, GoogLeNetOutputs)
    assert training.logits.shape == training.aux_logits1.shape == training.aux_logits2.shape == (2, 7)
    assert isinstance(evaluation, torch.Tensor) and evaluation.shape == (2, NUM_CLASSES)
    assert main_logits(training) is training.logits
    assert main_logits(evaluation) is evaluation


def test_googlenet_without_aux_logits_has_no_aux_heads() -> None:
    with torch.device("meta"):
        model = create_model("googlenet", num_classes=NUM_CLASSES, aux_logits=False).train()
        assert isinstance(model(torch.empty(2, 3, 64, 64)), torch.Tensor)
    assert not any(k.startswith(("aux1.", "aux2.")) for k in model.state_dict())


def test_googlenet_loss_weights_each_auxiliary_loss_by_0_3() -> None:
    torch.manual_seed(0)
    logits, aux2, aux1 = torch.randn(3, 4, 5).unbind(0)
    target = torch.tensor([0, 1, 2, 3])
    output = GoogLeNetOutputs(logits, aux2, aux1)
    main, l1, l2 = (F.cross_entropy(t, target) for t in (logits, aux1, aux2))
    torch.testing.assert_close(googlenet_loss(output, target, F.cross_entropy), main + 0.3 * (l1 + l2))
    torch.testing.assert_close(googlenet_loss(output, target, F.cross_entropy, aux_weight=0.0), main)
    torch.testing.assert_close(googlenet_loss(logits, target, F.cross_entropy), main)


def test_main_logits_rejects_outputs_without_logits() -> None:
    with pytest.raises(TypeError, match="logits"):
        main_logits({"logits": torch.zeros(1)})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# ResNets: option-A shortcuts and stochastic depth
# ---------------------------------------------------------------------------------------------


def test_option_a_shortcut_subsamples_and_zero_pads_without_parameters() -> None:
    shortcut = OptionAShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.randn(2, 16, 9, 9)
    out = shortcut(x)
    assert out.shape == (2, 32, 5, 5)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert torch.count_nonzero(out[:, 16:]) == 0


def test_cifar_resnet_has_only_option_a_shortcuts_and_the_paper_layout() -> None:
    model = create_model("resnet20", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)  # 6n + 1 with n = 3
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels] == [16, 32]
    assert model.layer3[0].conv1.out_channels == 64
    shortcuts = [type(b.shortcut) for b in residual_blocks(model)]
    assert shortcuts.count(OptionAShortcut) == 2 and shortcuts.count(nn.Identity) == 7
    with torch.no_grad():
        features = model.layer3(model.layer2(model.layer1(model.conv1(torch.zeros(1, 3, 32, 32)))))
    assert features.shape == (1, 64, 8, 8)


@pytest.mark.parametrize(("name", "blocks"), [("resnet110", 54), ("resnet20", 9), ("resnet50", 16)])
def test_stochastic_depth_survival_probability_decays_linearly(name: str, blocks: int) -> None:
    with torch.device("meta"):
        model = create_model(name, drop_path_rate=0.5)
    survival = [1.0 - b.drop_path.p for b in residual_blocks(model)]
    expected = [1.0 - layer / blocks * 0.5 for layer in range(1, blocks + 1)]  # p_l = 1 - l/L (1 - p_L)
    assert survival == pytest.approx(expected)
    assert survival[-1] == pytest.approx(0.5)
    assert all(b.drop_path.mode == "batch" for b in residual_blocks(model))


def test_stochastic_depth_is_off_by_default() -> None:
    with torch.device("meta"):
        model = create_model("resnet18")
    assert [b.drop_path.p for b in residual_blocks(model)] == [0.0] * 8


def test_training_drops_whole_residual_branches_at_the_assigned_rate() -> None:
    torch.manual_seed(0)
    block = CifarBasicBlock(2, 2)
    block.drop_path.p = 0.3
    block.train()
    x = torch.randn(2, 2, 3, 3)
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        dropped_output, kept_output = F.relu(x), F.relu(branch / 0.7 + x)
        trials, dropped = 500, 0
        for _ in range(trials):
            out = block(x)
            if torch.allclose(out, dropped_output):
                dropped += 1
            else:  # kept: scaled by 1 / p_l, the whole mini-batch at once
                torch.testing.assert_close(out, kept_output)
    assert dropped / trials == pytest.approx(0.3, abs=0.08)  # ~4 standard deviations


def test_row_mode_drops_branches_per_sample() -> None:
    torch.manual_seed(0)
    block = CifarBasicBlock(4, 4).train()
    set_stochastic_depth(nn.Sequential(block), 1.0, mode="row")  # single block: l / L = 1
    assert block.drop_path.p == 1.0 and block.drop_path.mode == "row"
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(x))


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_eval_with_stochastic_depth_is_deterministic_and_a_plain_resnet(name: str) -> None:
    torch.manual_seed(0)
    kwargs = {"small_input": True} if name in WITH_SMALL_INPUT else {}
    stochastic = create_model(name, num_classes=5, drop_path_rate=0.5, **kwargs)
    plain = create_model(name, num_classes=5, **kwargs)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        stochastic.train()
        training_outputs = [stochastic(x) for _ in range(4)]
        plain.load_state_dict(stochastic.state_dict())  # after training: same BN statistics
        stochastic.eval()
        plain.eval()
        first, second, reference = stochastic(x), stochastic(x), plain(x)
    assert any(not torch.equal(training_outputs[0], out) for out in training_outputs[1:])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, reference, rtol=0, atol=0)


def test_invalid_stochastic_depth_settings_are_rejected() -> None:
    assert linear_decay_drop_probs(4, 0.2) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_model("resnet20", drop_path_rate=1.5)
    with pytest.raises(ValueError, match="drop_path_mode"):
        create_model("resnet20", drop_path_rate=0.1, drop_path_mode="layer")


# ---------------------------------------------------------------------------------------------
# Hand-written networks and the registry
# ---------------------------------------------------------------------------------------------


def test_nin_uses_mlpconv_layers_and_global_average_pooling_instead_of_fully_connected() -> None:
    model = create_model("nin", num_classes=10)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 1, 1, 5, 1, 1, 3, 1, 1]
    assert convs[-1].out_channels == 10  # one feature map per class, averaged by the pooling


def test_unknown_model_name_lists_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="resnet18"):
        create_model("resnet19")
    with pytest.raises(UnknownModelError, match="densenet121"):
        create_model("densenet12", family="classification")


def test_builders_take_num_classes_and_in_channels_first() -> None:
    for name in CLASSIFIERS:
        assert get_model_entry(name).parameters[:2] == ["num_classes", "in_channels"], name


def test_narrow_vgg_scales_every_width_and_keeps_the_paper_layout() -> None:
    full = create_model("vgg16_bn", num_classes=10)
    narrow = create_model("vgg16_bn", num_classes=10, width=16)
    convs = [m.out_channels for m in narrow.features if isinstance(m, nn.Conv2d)]
    assert convs == [m.out_channels // 4 for m in full.features if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in narrow.features) == 13
    linears = [(m.in_features, m.out_features) for m in narrow.classifier if isinstance(m, nn.Linear)]
    assert linears == [(128 * 7 * 7, 1024), (1024, 1024), (1024, 10)]
    assert narrow(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        create_model("vgg16", width=0)

"""The segmentation chapter's networks: the sliding-window pixel classifier (dense form == patch by patch) and the
FCNs of Long et al. 2015 (sizes, the reference nets' crop offsets, table 1's parameter count, zero-initialised
skips, other backbones, training and testing on real ISBI crops, export)."""

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from datamodules import SegmentationFolderDataModule
from zoo.core.registry import create_model
from zoo.export import export_module
from zoo.segmentation import SemanticSegmenter
from zoo.segmentation.models.fcn import FCN, BilinearUpsampling, bilinear_kernel
from zoo.segmentation.models.sliding_window import SlidingWindowClassifier

TRAINER = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
TINY_WINDOW = {"patch_size": 17, "channels": [4, 4], "kernel_sizes": [3, 3], "hidden": 8, "dropout": 0.0}
TINY_VGG = {"backbone": "vgg16", "fc_width": 8, "dropout": 0.0}
RESNET = {"backbone": "resnet18"}


def _fcn(name: str, seed: int = 0, **kwargs) -> FCN:
    torch.manual_seed(seed)
    return create_model(name, family="segmentation", **{"num_classes": 3, "in_channels": 1, **kwargs}).eval()


# -- the sliding-window classifier ----------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", ["reflect", "zeros"])
def test_dense_sliding_window_equals_the_classifier_run_patch_by_patch(padding_mode):
    torch.manual_seed(0)
    net = SlidingWindowClassifier(num_classes=3, in_channels=2, padding_mode=padding_mode, **TINY_WINDOW).eval()
    # 17 -> 15 -> 7 (floor drops a row) -> 5 -> 2: the receptive field (14) is smaller than the patch
    assert (net.fc_kernel, net.receptive_field) == (2, 14)
    images = torch.randn(2, 2, 12, 12)
    with torch.no_grad():
        dense = net(images)
        patches = net.classify_patches(images, batch_size=100)
        # one pixel by hand: the 17x17 window around (5, 7) of the padded image, through the strided classifier
        window = net.pad(images)[:1, :, 5 : 5 + 17, 7 : 7 + 17]
        by_hand = net.score_patches(window)
    assert dense.shape == patches.shape == (2, 3, 12, 12)
    torch.testing.assert_close(dense, patches, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_hand[0], dense[0, :, 5, 7], atol=1e-5, rtol=0)


def test_sliding_window_defaults_are_ciresans_n4_and_a_too_small_patch_is_refused():
    net = SlidingWindowClassifier()
    # N4 (Ciresan et al. 2012, table 1): 65 -> 62 -> 31 -> 27 -> 13 -> 10 -> 5 -> 2 -> 1, fully connected 200 -> 2
    assert net.fc_kernel == 1 and net.fc.out_channels == 200 and net.classifier.out_channels == 2
    with pytest.raises(ValueError, match="patch_size=9 is too small"):
        SlidingWindowClassifier(patch_size=9)


# -- FCN geometry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("backbone", [TINY_VGG, RESNET], ids=["vgg16", "resnet18"])
def test_fcn_output_has_the_input_size_for_odd_sizes(name, backbone):
    net = _fcn(name, **backbone)
    assert net.paper_geometry == (backbone["backbone"] == "vgg16")
    for size in [(37, 45), (64, 64)]:
        with torch.no_grad():
            assert net(torch.randn(1, 1, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize(("name", "skip_offsets", "final_offset"),
                         [("fcn32s", [], 19), ("fcn16s", [5], 27), ("fcn8s", [5, 9], 31)])  # fmt: skip
def test_vgg16_fcns_have_the_reference_crop_offsets_and_table_1s_parameter_count(name, skip_offsets, final_offset):
    # the Crop offsets of the reference nets (voc-fcn32s/16s/8s), computed here from the layers' coordinate maps
    with torch.device("meta"):  # full width: 134M parameters, no memory spent on them
        net = create_model(name, family="segmentation", num_classes=21)
    assert (net.skip_offsets, net.final_offset) == (skip_offsets, final_offset)
    assert net.encoder[0][0].padding == (100, 100) and net.head[0].kernel_size == (7, 7)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 134e6) / 134e6 < 0.01  # table 1: FCN-VGG16, 134M parameters


def test_fixed_final_upsampling_is_bilinear_interpolation_and_the_learned_one_starts_there():
    # the 2x bilinear kernel of the reference implementation (upsample_filt(4))
    torch.testing.assert_close(bilinear_kernel(4)[0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    x = torch.randn(1, 3, 5, 6)
    fixed = BilinearUpsampling(3, 4, padding=2)
    assert not list(fixed.parameters())
    expected = torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(fixed(x)[..., 4:-4, 4:-4], expected[..., 4:-4, 4:-4])  # away from the zero border
    learned = _fcn("fcn32s", learn_final_upsampling=True, **RESNET).upscore
    frozen = _fcn("fcn32s", **RESNET).upscore
    assert learned.weight.requires_grad and learned.weight.shape == (3, 3, 64, 64)
    y = torch.randn(1, 3, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(learned(y), frozen(y))


@pytest.mark.parametrize("backbone", [TINY_VGG, RESNET], ids=["vgg16", "resnet18"])
def test_fcn8s_skips_are_zero_initialised_so_it_starts_from_the_coarse_prediction(backbone):
    net = _fcn("fcn8s", **backbone)
    assert [s.in_channels for s in net.score_skips] == ([512, 256] if backbone is TINY_VGG else [256, 128])
    assert len(net.up_skips) == 2 and all(not p.any() for p in net.score_skips.parameters())  # pool4, pool3
    images = torch.randn(1, 1, 37, 45)
    with torch.no_grad():
        out = net(images)
        # the pool4 / pool3 skips do not reach the output yet: noise in place of their features changes nothing
        handles = [s.register_forward_pre_hook(lambda m, i: (torch.randn_like(i[0]),)) for s in net.score_skips]
        noisy = net(images)
        for h in handles:
            h.remove()
        torch.nn.init.normal_(net.score_skips[1].weight)
        trained = net(images)  # once trained, pool3 does reach it
    torch.testing.assert_close(noisy, out)
    assert not torch.allclose(trained, out)


def test_a_backbone_without_stride_32_is_refused_with_its_strides():
    with pytest.raises(ValueError, match=r"output stride 32.*strides \[1, 1, 2, 4\]"):
        _fcn("fcn32s", backbone="resnet20")


def test_backbone_weights_load_through_the_resolver_into_the_encoder(tmp_path):
    torch.manual_seed(1)
    classifier = create_model("resnet18", family="classification", num_classes=10, in_channels=1)
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    net = _fcn("fcn16s", backbone_weights=str(tmp_path / "resnet18.pth"), **RESNET)
    torch.testing.assert_close(net.encoder[4][0].conv1.weight, classifier.layer4[0].conv1.weight)


# -- training, testing, export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def isbi_crops(isbi_root: Path, tmp_path_factory) -> Path:
    """Four small real ISBI crops (odd sizes) with their membrane masks, as an images / masks folder."""
    root = tmp_path_factory.mktemp("isbi_crops")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    names = sorted(p.name for p in (isbi_root / "train" / "image").glob("*.png"))[:4]
    for name, (h, w) in zip(names, [(37, 45), (40, 40), (33, 47), (36, 36)], strict=True):
        for src, sub in (("image", "images"), ("label", "masks")):
            pixels = np.asarray(Image.open(isbi_root / "train" / src / name).convert("L"))
            Image.fromarray(pixels[100 : 100 + h, 200 : 200 + w]).save(root / sub / name)
    return root


NETWORKS = {
    "sliding_window": TINY_WINDOW,
    "fcn32s": TINY_VGG,
    "fcn16s": RESNET,
    "fcn8s": RESNET,
    "fcn_resnet50": {"aux_weight": 0.5},
}


@pytest.mark.parametrize("network", list(NETWORKS))
def test_each_network_fits_tests_reloads_and_exports_on_real_isbi_crops(network, isbi_crops, tmp_path):
    pl.seed_everything(0)
    dm = SegmentationFolderDataModule(
        data_dir=str(isbi_crops), val_size=2, crop_size=32, pad=0, crops_per_image=1, batch_size=2
    )
    model = SemanticSegmenter(network, num_classes=2, in_channels=1, network_kwargs=NETWORKS[network],
                              class_names=dm.class_names)  # fmt: skip
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, limit_test_batches=1, **TRAINER)
    trainer.fit(model, dm)
    metrics = trainer.test(model, dm, verbose=False)[0]  # a whole validation image (33x47 or 40x40, ...)
    assert np.isfinite(metrics["test/loss"]) and 0 <= metrics["test/pixel_error"] <= 1
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    reloaded = SemanticSegmenter.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=False).eval()
    image = torch.randn(1, 1, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image), model.eval()(image))
    # ONNX (torch.export) for one network of each file: the others use the same operators, at more export time
    for fmt in ("torchscript", "onnx") if network in ("sliding_window", "fcn8s") else ("torchscript",):
        report = export_module(model, fmt, tmp_path / f"model.{fmt}", image)
        assert report["exported"], report.get("reason")
        assert report["parity"]["passed"] and report["output"]["shape"] == ["batch", 2, 37, 45]

"""Segmentation datamodules: layouts, deterministic split, aligned augmentation on the training split
only, and clear errors for bad input."""

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentParser
from PIL import Image

import zoo.segmentation
from datamodules import DSB2018DataModule, ISBI2012DataModule, SegmentationFolderDataModule
from datamodules.instance_targets import labels_from_masks
from datamodules.segmentation import SegmentationDataError
from datamodules.transforms import CoarseGridElastic, seed_transform, segmentation_train_transform
from datamodules.weight_maps import WeightMapCache, unet_weight_map
from zoo.segmentation import SemanticSegmenter

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pairs(root: Path, n: int = 4, size: tuple[int, int] = (40, 52), values=(0, 255)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.where(rng.random(size) > 0.5, values[1], values[0]).astype(np.uint8)
        _write(root / "images" / f"{i}.png", (mask * 0.5 + 40).astype(np.uint8))
        _write(root / "masks" / f"{i}.png", mask)
    return root


# -- layouts ---------------------------------------------------------------------------------------
def test_isbi_layout_polarity_and_deterministic_split(isbi_root):
    dm = ISBI2012DataModule(data_dir=str(isbi_root.parent))  # a root holding isbi2012_em_membrane/ works too
    assert (dm.num_classes, dm.in_channels, dm.class_names) == (2, 1, ["membrane", "cell"])
    dm.setup("fit")
    assert len(dm.train_samples) == 20 and len(dm.val_samples) == 4
    sample = dm.train_samples[0]
    raw = np.asarray(Image.open(isbi_root / "train" / "label" / f"{sample.name}.png"))
    np.testing.assert_array_equal(sample.mask, (raw == 255).astype(np.uint8))  # 0 membrane -> class 0
    assert 0.15 < (sample.mask == 0).mean() < 0.35  # membranes are the minority (~22%)
    again = ISBI2012DataModule(data_dir=str(isbi_root))
    again.setup("fit")
    assert [s.name for s in again.val_samples] == [s.name for s in dm.val_samples]
    other = ISBI2012DataModule(data_dir=str(isbi_root), split_seed=1)
    other.setup("fit")
    assert [s.name for s in other.val_samples] != [s.name for s in dm.val_samples]
    dm.setup("predict")
    assert len(dm.predict_paths) == 30  # the unlabelled test slices


def test_dsb_layout_union_and_instances(tmp_path):
    root = tmp_path / "dsb2018_nuclei" / "stage1_train"
    for k in range(3):
        sid = f"sample{k}"
        image = np.full((30, 40, 4), 255, np.uint8)
        image[..., :3] = 20 + 10 * k
        _write(root / sid / "images" / f"{sid}.png", image)
        for j, cols in enumerate([(5, 12), (13, 20)]):  # two touching-ish nuclei, one column apart
            mask = np.zeros((30, 40), np.uint8)
            mask[10:20, cols[0] : cols[1]] = 255
            _write(root / sid / "masks" / f"m{j}.png", mask)
    dm = DSB2018DataModule(data_dir=str(tmp_path), val_size=1, weight_maps=True, crop_size=16, batch_size=2)
    assert (dm.num_classes, dm.in_channels) == (2, 3)
    dm.setup("fit")
    sample = dm.train_samples[0]
    assert sample.image.shape == (30, 40, 3)
    assert sample.mask.sum() == 2 * 10 * 7 and set(np.unique(sample.instances)) == {0, 1, 2}
    assert sample.weight[15, 12] > 5  # the gap between the two nuclei gets the border weight
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["weight"].shape == (2, 16, 16)
    dm.setup("predict")
    assert len(dm.predict_paths) == 1  # the validation image


def test_dsb_pixels_in_two_masks_go_to_the_smaller_nucleus_as_in_the_instance_datamodule(tmp_path):
    root = tmp_path / "dsb2018_nuclei" / "stage1_train"
    _write(root / "s" / "images" / "s.png", np.full((20, 30, 4), 255, np.uint8))
    big, small = np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8)
    big[2:12, 2:22] = 255  # 200 pixels, the first mask file
    small[8:14, 18:26] = 255  # 48 pixels, overlapping big's corner by 4 x 4
    _write(root / "s" / "masks" / "a.png", big)
    _write(root / "s" / "masks" / "b.png", small)
    dm = DSB2018DataModule(data_dir=str(tmp_path))
    name, source = dm.discover()[0]
    instances = dm.load(name, source).instances
    assert dm.overlapping_pixels == 16
    assert (instances[8:12, 18:22] == 2).all()  # the shared corner stays with the small nucleus
    assert np.count_nonzero(instances == 2) == 48 and np.count_nonzero(instances == 1) == 200 - 16
    np.testing.assert_array_equal(instances, labels_from_masks([big, small]))


def test_real_dsb_layout_is_found(dsb_root):
    dm = DSB2018DataModule(data_dir=str(dsb_root))
    entries = dm.discover()
    assert len(entries) == 119
    name, source = entries[0]
    sample = dm.load(name, source)
    assert sample.image.shape[2] == 3 and sample.instances.max() == len(source[1])


def test_datamodules_import_nothing_of_zoo_and_share_the_weight_map_with_the_loss():
    code = (
        "import sys, datamodules, datamodules.weight_maps; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'zoo'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    # one implementation: the public API of the segmentation family re-exports it
    assert zoo.segmentation.unet_weight_map is unet_weight_map
    assert zoo.segmentation.WeightMapCache is WeightMapCache


@pytest.mark.parametrize(
    ("cls", "fixed"),
    [(ISBI2012DataModule, {"in_channels", "foreground_class"}),
     (DSB2018DataModule, {"mask_dir", "mask_values", "class_names", "foreground_class"})],
)
def test_layout_datamodules_take_every_argument_of_the_folder_datamodule(cls, fixed, tmp_path):
    # the layouts forward **kwargs by keyword: jsonargparse (train.py) still lists every argument
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    listed = set(parser.get_defaults().data.keys())
    assert listed == set(inspect.signature(SegmentationFolderDataModule).parameters) - fixed
    dm = cls(data_dir=str(tmp_path), weight_maps=True, w0=3.0, eval_batch_size=2, predict_dir="x")
    assert (dm.weight_maps, dm.w0, dm.eval_batch_size, dm.predict_dir) == (True, 3.0, 2, "x")


# -- augmentation ----------------------------------------------------------------------------------
def test_augmentations_keep_image_mask_and_weight_aligned():
    rng = np.random.default_rng(0)
    mask = np.zeros((96, 96), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 80, 2)
        mask[y : y + 14, x : x + 10] = 1
    image = (mask * 200 + 30).astype(np.uint8)[..., None]  # the mask is readable from the image
    weight = mask.astype(np.float32) * 3 + 1
    transform = segmentation_train_transform(64, elastic_sigma=10.0, brightness_contrast=0.0)
    seed_transform(transform, 0)
    masks = []
    for _ in range(10):
        out = transform(image=image, mask=mask, weight=weight)
        assert out["image"].shape == (64, 64, 1) and out["mask"].shape == (64, 64)
        np.testing.assert_array_equal(out["weight"], out["mask"].astype(np.float32) * 3 + 1)  # moved alike
        agreement = ((out["image"][..., 0] > 130) == (out["mask"] == 1)).mean()
        assert agreement > 0.97  # only bicubic-vs-nearest differences at edges
        masks.append(out["mask"])
    assert len({m.tobytes() for m in masks}) == 10  # every draw is a different crop / deformation


def test_coarse_grid_elastic_draws_10_px_displacements_on_a_3x3_grid():
    elastic = CoarseGridElastic(grid=3, sigma=10.0)
    elastic.set_random_seed(0)
    h, w = 101, 121
    at_grid = []
    for _ in range(200):
        params = elastic.get_params_dependent_on_data({"shape": (h, w)}, {})
        dx = params["map_x"] - np.arange(w)[None, :]
        at_grid.append(dx[np.ix_([0, 50, 100], [0, 60, 120])])  # the 3x3 grid points
        assert np.abs(np.diff(dx, axis=1)).max() < 3  # smooth: bicubic interpolation of a coarse grid
    assert np.std(at_grid) == pytest.approx(10.0, rel=0.1)


class Recorder(SemanticSegmenter):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: dict[str, list] = {"train": [], "val": [], "test": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch["image"].clone())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append((batch["image"].clone(), batch["mask"].clone()))
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.seen["test"].append((batch["image"].clone(), batch["mask"].clone()))
        return super().test_step(batch, batch_idx)


def test_validation_and_test_images_are_never_augmented(tmp_path):
    root = _pairs(tmp_path, n=5, size=(48, 48))
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=2, crop_size=32, batch_size=2, eval_batch_size=1)
    model = Recorder(network="unet_same", network_kwargs={"base_channels": 4, "depth": 2}, class_names=dm.class_names)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    trainer.test(model, dm)
    expected = [(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25 for s in dm.val_samples]
    for stage in ("val", "test"):
        seen = model.seen[stage]
        assert len(seen) == (4 if stage == "val" else 2)
        for (image, mask), ref, sample in zip(seen, expected * 2, dm.val_samples * 2, strict=False):
            torch.testing.assert_close(image[0], ref)
            np.testing.assert_array_equal(mask[0].numpy(), sample.mask)
    assert all(batch.shape[-2:] == (32, 32) for batch in model.seen["train"])  # random crops


# -- bad input -------------------------------------------------------------------------------------
def test_image_and_mask_of_different_sizes(tmp_path):
    root = _pairs(tmp_path, n=3)
    _write(root / "masks" / "1.png", np.zeros((40, 50), np.uint8))
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=1)
    with pytest.raises(SegmentationDataError, match=r"images/1\.png is 52x40 .*masks/1\.png is 50x40"):
        dm.setup("fit")


def test_mask_value_outside_the_mapping(tmp_path):
    root = _pairs(tmp_path, n=3)
    mask = np.asarray(Image.open(root / "masks" / "2.png")).copy()
    mask[0, 0] = 128
    _write(root / "masks" / "2.png", mask)
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=1, mask_values={0: 0, 255: 1})
    with pytest.raises(
        SegmentationDataError, match=r"masks/2\.png holds value\(s\) 128 .*Fix: add them to mask_values"
    ):
        dm.setup("fit")


def test_colour_image_for_a_grayscale_model(tmp_path):
    root = _pairs(tmp_path, n=3)
    colour = np.zeros((40, 52, 3), np.uint8)
    colour[..., 0] = 200
    _write(root / "images" / "0.png", colour)
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=1, in_channels=1)
    with pytest.raises(
        SegmentationDataError,
        match=r"images/0\.png is a colour \(RGB\) image but in_channels=1.*in_channels: 3",
    ):
        dm.setup("fit")
    # grayscale stored as RGB is converted losslessly
    _write(root / "images" / "0.png", np.repeat(np.full((40, 52, 1), 90, np.uint8), 3, axis=2))
    dm.setup("fit")
    assert dm.train_samples[0].image.shape[-1] == 1


def test_empty_folder_and_missing_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images in .*images"):
        SegmentationFolderDataModule(data_dir=str(tmp_path)).setup("fit")
    _write(tmp_path / "images" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(SegmentationDataError, match=r"have no mask in .*masks.*a\.png"):
        SegmentationFolderDataModule(data_dir=str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SegmentationFolderDataModule(data_dir=str(tmp_path / "nowhere")).setup("fit")


def test_mixed_sizes_in_one_eval_batch_name_the_fix(tmp_path):
    root = _pairs(tmp_path, n=2, size=(40, 52))
    _write(root / "images" / "9.png", np.zeros((30, 30), np.uint8))
    _write(root / "masks" / "9.png", np.zeros((30, 30), np.uint8))
    dm = SegmentationFolderDataModule(data_dir=str(root), val_size=2, eval_batch_size=2)
    dm.setup("fit")
    with pytest.raises(SegmentationDataError, match="eval_batch_size: 1"):
        next(iter(dm.val_dataloader()))

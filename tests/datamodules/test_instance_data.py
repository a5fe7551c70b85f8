"""Instance masks: COCO polygons / RLE (datamodules.coco, ``masks=True``) and the DSB2018 nuclei as instances
(datamodules.nuclei_instances), on the shared real data."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.coco import (
    COCODataError,
    COCODetectionDataModule,
    COCODetectionDataset,
    load_coco_index,
    mask_boxes,
)
from datamodules.nuclei_instances import NucleiInstanceDataModule, collate_instances
from datamodules.segmentation import DSB2018DataModule
from tests.conftest import _require


# -- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_files() -> tuple[Path, Path]:
    """(annotation file, images folder) of the 10-image COCO val2017 subset: polygons, one crowd RLE."""
    root = _require("coco_val2017_subset") / "coco_val2017_subset"
    return root / "annotations" / "instances_val2017_subset.json", root / "images"


@pytest.fixture(scope="module")
def dsb_dir() -> Path:
    return _require("dsb2018_nuclei") / "dsb2018_nuclei"


def coco_api(annotation_file: Path):  # noqa: ANN201 (pycocotools has no types)
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
        return COCO(str(annotation_file))


def coco_masks(coco_files: tuple[Path, Path], **kwargs: object) -> COCODetectionDataModule:
    """Every image in both splits (train and val read the same file), masks on."""
    ann, images = coco_files
    settings = {"train_images": str(images), "train_annotations": str(ann), "val_annotations": str(ann),
                "masks": True, "num_workers": 0, **kwargs}  # fmt: skip
    dm = COCODetectionDataModule(**settings)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def nuclei(dsb_dir: Path) -> NucleiInstanceDataModule:
    """Decoded once (about 4 s): 300 px crops, so that the 256 x 256 images are smaller than the crop."""
    dm = NucleiInstanceDataModule(data_dir=str(dsb_dir.parent), crop_size=300, batch_size=3, augment=True)
    dm.setup("fit")
    return dm


def assert_boxes_are_mask_extents(target: dict[str, torch.Tensor], tolerance: float = 0.0) -> None:
    masks = target["masks"].numpy()
    assert masks.dtype == np.uint8 and masks.ndim == 3
    assert len(masks) == len(target["boxes"]) == len(target["labels"])
    assert masks.any(axis=(1, 2)).all(), "an empty mask was served"
    assert np.abs(mask_boxes(masks) - target["boxes"].numpy()).max(initial=0) <= tolerance


# -- COCO ----------------------------------------------------------------------------------------------------------
def test_coco_polygon_and_rle_masks_match_ann_to_mask_and_boxes(coco_files: tuple[Path, Path]) -> None:
    api = coco_api(coco_files[0])
    dm = coco_masks(coco_files, augment=False)
    kinds, served, off = set(), 0, []
    for i, record in enumerate(dm.val_set.records):
        image, target, _ = dm.val_set[i]
        masks = target["masks"].numpy()
        assert masks.dtype == np.uint8 and masks.shape == (len(record.annotation_ids), *image.shape[1:])
        assert len(masks) == len(target["boxes"]) == len(target["labels"])
        for k, ann_id in enumerate(record.annotation_ids):
            ann = api.anns[ann_id]
            kinds.add("polygon" if isinstance(ann["segmentation"], list) else "rle")
            np.testing.assert_array_equal(masks[k], api.annToMask(ann), err_msg=f"annotation {ann_id}")
        plain = target["iscrowd"].numpy() == 0
        extents, boxes = mask_boxes(masks[plain]), target["boxes"].numpy()[plain]
        # the mask never reaches more than 1 px past its box...
        assert (extents[:, :2] >= boxes[:, :2] - 1).all() and (extents[:, 2:] <= boxes[:, 2:] + 1).all()
        off.extend(np.abs(extents - boxes).max(axis=1).tolist())
        served += len(masks)
    assert kinds == {"polygon", "rle"} and served == len(api.anns)  # nothing dropped
    # ...and the file's box is its extent within 1 px, except where a polygon's thin tip covers no pixel centre
    # (4 of the 76 objects here, up to 2.3 px: the unaugmented targets keep the file's boxes, what COCOeval uses)
    assert np.mean(np.asarray(off) <= 1.0) >= 0.9 and max(off) <= 2.5


def test_coco_compressed_rle_matches_ann_to_mask_and_the_mask_files(
    dsb_dir: Path, nuclei: NucleiInstanceDataModule
) -> None:
    """instances_derived.json holds compressed RLE strings; decoded, they are the nucleus mask files."""
    derived = dsb_dir / "instances_derived.json"
    index = load_coco_index(derived, dsb_dir / "stage1_train", masks=True)
    api = coco_api(derived)
    by_id = {r.image_id: r for r in index.images}
    for sample_index in range(3):
        image, target, _ = nuclei.val_set[sample_index]
        record = by_id[int(target["image_id"])]  # the instance route's image_id is the derived file's id
        assert record.path.parent.parent.name == nuclei.val_names[sample_index]
        _, coco_target, _ = COCODetectionDataset([record], masks=True)[0]
        coco = coco_target["masks"].numpy()
        for k, ann_id in enumerate(record.annotation_ids):
            assert isinstance(api.anns[ann_id]["segmentation"]["counts"], str)
            np.testing.assert_array_equal(coco[k], api.annToMask(api.anns[ann_id]))
        as_set = {m.tobytes() for m in target["masks"].numpy()}
        assert len(as_set) == len(coco) and as_set == {m.tobytes() for m in coco}
        assert np.abs(mask_boxes(coco) - coco_target["boxes"].numpy()).max() <= 1.0


def test_coco_crowd_masks_left_out_of_training_and_kept_for_evaluation(coco_files: tuple[Path, Path]) -> None:
    dm = coco_masks(coco_files, augment=False)
    position = next(i for i, r in enumerate(dm.val_set.records) if r.iscrowd.any())
    _, val, _ = dm.val_set[position]
    _, train, _ = dm.train_set[position]
    crowd = val["iscrowd"].numpy() == 1
    assert crowd.sum() == 1 and len(val["masks"]) == len(val["boxes"])
    assert len(train["masks"]) == len(train["boxes"]) == len(val["masks"]) - 1 and int(train["iscrowd"].sum()) == 0
    torch.testing.assert_close(train["masks"], val["masks"][~torch.from_numpy(crowd)])


@pytest.mark.parametrize("min_visibility", [0.3, 0.0])
def test_coco_training_crop_and_flip_keep_masks_and_boxes_together(
    coco_files: tuple[Path, Path], min_visibility: float
) -> None:
    dm = coco_masks(coco_files, hflip_p=1.0, scale_range=None, crop_size=160, min_visibility=min_visibility)
    torch.manual_seed(0)
    total = 0
    for _ in range(3):
        for i in range(len(dm.train_set)):
            image, target, _ = dm.train_set[i]
            assert image.shape[1:] == (160, 160) and target["masks"].shape[1:] == (160, 160)
            assert_boxes_are_mask_extents(target)
            assert int(target["iscrowd"].sum()) == 0
            total += len(target["boxes"])
    assert total > 0
    # 160 px crops of 640 x 480 images lose objects, counted; with min_visibility 0 a box may keep a corner in
    # the crop that its mask does not reach: that object is dropped too, and counted
    assert dm.train_set.dropped["left the crop (under min_visibility of the box visible)"] > 0
    if min_visibility == 0:
        assert dm.train_set.dropped["left the crop (part of the box visible, no mask pixel)"] > 0


def test_coco_flip_moves_masks_with_the_image(coco_files: tuple[Path, Path]) -> None:
    dm = coco_masks(coco_files, hflip_p=1.0, scale_range=None)
    for i in range(3):
        image, target, _ = dm.train_set[i]
        raw_image, raw, _ = dm.val_set[i]
        plain = raw["iscrowd"] == 0
        torch.testing.assert_close(image, raw_image.flip(-1))
        torch.testing.assert_close(target["masks"], raw["masks"][plain].flip(-1))
        assert_boxes_are_mask_extents(target)


def test_coco_validation_is_not_augmented(coco_files: tuple[Path, Path]) -> None:
    dm = coco_masks(coco_files, hflip_p=1.0, scale_range=(1.5, 1.5), crop_size=160)
    first_image, first, _ = dm.val_set[0]
    second_image, second, _ = dm.val_set[0]
    record = dm.val_set.records[0]
    assert first_image.shape[1:] == (record.height, record.width) and torch.equal(first_image, second_image)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(first["boxes"], torch.from_numpy(record.boxes))


def edited_copy(coco_files: tuple[Path, Path], tmp_path: Path, change) -> Path:  # noqa: ANN001
    data = json.loads(coco_files[0].read_text())
    change(data["annotations"])
    path = tmp_path / "instances_edited.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_empty_mask_dropped_and_counted(coco_files: tuple[Path, Path], tmp_path: Path) -> None:
    def flatten(anns: list[dict]) -> None:
        anns[0]["segmentation"] = [[10, 10, 20, 10, 30, 10]]  # three points on a line: no area

    path = edited_copy(coco_files, tmp_path, flatten)
    index = load_coco_index(path, coco_files[1], masks=True)
    first_id = json.loads(path.read_text())["annotations"][0]["id"]
    assert index.skipped["empty mask"] == 1
    assert all(first_id not in r.annotation_ids for r in index.images)
    assert sum(len(r.segmentations) for r in index.images) == 76
    boxes_only = load_coco_index(path, coco_files[1])  # the option is off: the box is still served
    assert sum(len(r.boxes) for r in boxes_only.images) == 77 and not boxes_only.skipped


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda anns: anns[0].pop("segmentation"), ["no segmentation", "masks: false"]),
        (lambda anns: anns[0].update(segmentation=[[1, 2, 3]]), ["not a list of x, y numbers"]),
        (lambda anns: next(a for a in anns if a["iscrowd"])["segmentation"].update(size=[10, 10]), ["RLE size"]),
        (lambda anns: next(a for a in anns if a["iscrowd"])["segmentation"]["counts"].append(5), ["do not add up"]),
    ],
    ids=["missing", "odd-polygon", "rle-size", "rle-counts"],
)
def test_coco_bad_segmentation_is_an_error_naming_the_annotation_or_a_counted_skip(
    coco_files: tuple[Path, Path],
    tmp_path: Path,
    change,
    words: list[str],  # noqa: ANN001
) -> None:
    path = edited_copy(coco_files, tmp_path, change)
    with pytest.raises(COCODataError) as err:
        load_coco_index(path, coco_files[1], masks=True)
    for part in ["instances_edited.json", "annotation id", "Fix", *words]:
        assert part in str(err.value)
    index = load_coco_index(path, coco_files[1], masks=True, bad_input="skip")
    assert index.skipped == {"malformed segmentation": 1}


# -- DSB2018 nuclei as instances -----------------------------------------------------------------------------------
def test_nuclei_validation_images_are_the_semantic_split(nuclei: NucleiInstanceDataModule, dsb_dir: Path) -> None:
    semantic = DSB2018DataModule(data_dir=str(dsb_dir.parent)).default_predict_paths()
    assert nuclei.val_names == [p.parent.parent.name for p in semantic] and len(nuclei.val_names) == 24
    assert not {s.name for s in nuclei.train_images} & set(nuclei.val_names)


def test_nuclei_whole_image_evaluation_serves_every_mask_file(nuclei: NucleiInstanceDataModule, dsb_dir: Path) -> None:
    ids = {
        im["file_name"].split("/")[0]: im["id"]
        for im in json.loads((dsb_dir / "instances_derived.json").read_text())["images"]
    }
    files = served = 0
    for i, name in enumerate(nuclei.val_names):
        image, target, path = nuclei.val_set[i]
        folder = dsb_dir / "stage1_train" / name
        with Image.open(folder / "images" / f"{name}.png") as im:
            assert im.mode == "RGBA" and image.shape == (3, im.height, im.width)
            np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), np.array(im)[..., :3])
        n_files = len(list((folder / "masks").glob("*.png")))
        assert len(target["masks"]) == n_files and target["masks"].shape[1:] == image.shape[1:]
        assert_boxes_are_mask_extents(target)
        assert torch.equal(target["labels"], torch.ones(n_files, dtype=torch.int64))
        assert int(target["image_id"]) == ids[name] and path.endswith(f"{name}.png")
        files, served = files + n_files, served + len(target["masks"])
    assert served == files == 1163


def test_nuclei_validation_is_not_augmented(nuclei: NucleiInstanceDataModule) -> None:
    (a_image, a, _), (b_image, b, _) = nuclei.val_set[1], nuclei.val_set[1]
    assert torch.equal(a_image, b_image) and all(torch.equal(a[k], b[k]) for k in a)
    assert a_image.shape[1:] == nuclei.val_images[1].image.shape[:2]


def test_nuclei_training_crops_are_aligned_and_small_images_served_whole(nuclei: NucleiInstanceDataModule) -> None:
    torch.manual_seed(0)
    crops = nuclei.train_set
    small = 0
    for i in range(len(nuclei.train_images)):
        image, target, _ = crops[i]
        height, width = nuclei.train_images[i].image.shape[:2]
        window = (min(300, height), min(300, width))
        assert sorted(image.shape[1:]) == sorted(window)  # a 90-degree rotation may swap the sides
        assert target["masks"].shape[1:] == image.shape[1:]
        assert_boxes_are_mask_extents(target)
        small += (height, width) == (256, 256)
    assert small > 0  # images smaller than the crop were among them, served whole (not padded)


def test_nuclei_crop_keeps_the_visible_part_of_cut_nuclei_and_counts_the_rest(
    nuclei: NucleiInstanceDataModule,
) -> None:
    crops = nuclei.train_set
    position = next(i for i, s in enumerate(nuclei.train_images) if min(s.image.shape[:2]) > 400)
    sample = nuclei.train_images[position]
    whole, _ = sample.window(0, 0, *sample.image.shape[:2])
    top, left = 57, 101
    before = sum(crops.dropped.values())
    image, masks = crops.crop(position, top, left)
    expected = whole[:, top : top + 300, left : left + 300]
    seen = expected.any(axis=(1, 2))
    np.testing.assert_array_equal(masks, expected[seen])
    np.testing.assert_array_equal(image, sample.image[top : top + 300, left : left + 300])
    # nuclei whose box reaches into the window but no pixel of them does: dropped, counted
    x1, y1, x2, y2 = sample.boxes.T
    touching = (np.minimum(x2, left + 300) > np.maximum(x1, left)) & (np.minimum(y2, top + 300) > np.maximum(y1, top))
    assert sum(crops.dropped.values()) - before == int(touching.sum()) - int(seen.sum())
    cut = [m.sum() != w.sum() for m, w in zip(masks, whole[seen], strict=True)]
    assert any(cut)  # the window does cut nuclei, and what is left of them is served


def test_nuclei_loader_batches_are_lists_and_classes_are_linked(nuclei: NucleiInstanceDataModule) -> None:
    batch = next(iter(nuclei.train_dataloader()))
    assert set(batch) == {"images", "targets", "paths"} and len(batch["images"]) == 3
    assert all({"boxes", "labels", "masks", "image_id"} <= set(t) for t in batch["targets"])
    assert collate_instances([nuclei.val_set[0]])["targets"][0]["masks"].dtype == torch.uint8
    assert (nuclei.num_classes, nuclei.class_names, nuclei.in_channels) == (1, ["nucleus"], 3)


def test_nuclei_empty_mask_file_counted_not_silently_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "stage1_train" / name / "images").mkdir(parents=True)
        (tmp_path / "stage1_train" / name / "masks").mkdir()
        pixels = np.concatenate([rng.integers(0, 255, (30, 40, 3)), np.full((30, 40, 1), 255)], axis=2)
        Image.fromarray(pixels.astype(np.uint8), "RGBA").save(
            tmp_path / "stage1_train" / name / "images" / f"{name}.png"
        )
        nucleus = np.zeros((30, 40), np.uint8)
        nucleus[5:12, 8:20] = 255
        Image.fromarray(nucleus).save(tmp_path / "stage1_train" / name / "masks" / "n1.png")
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "stage1_train" / name / "masks" / "n2.png")
    dm = NucleiInstanceDataModule(data_dir=str(tmp_path), val_size=1, crop_size=64)
    dm.setup("fit")
    assert dm.skipped == {"empty mask file": 2}
    image, target, _ = dm.train_set[0]
    assert sorted(image.shape[1:]) == [30, 40] and len(target["masks"]) == 1  # smaller than the crop: whole
    assert_boxes_are_mask_extents(target)


def test_predict_dir_serves_any_folders_images_whole_and_refuses_an_empty_one(tmp_path):
    from PIL import Image

    from datamodules.nuclei_instances import NucleiInstanceDataModule
    from datamodules.segmentation import SegmentationDataError

    (tmp_path / "photos").mkdir()
    Image.new("L", (70, 50), 128).save(tmp_path / "photos" / "b.png")
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "photos" / "a.jpg")
    batches = list(NucleiInstanceDataModule(predict_dir=str(tmp_path / "photos")).predict_dataloader())
    images = [image for batch in batches for image in batch["images"]]
    assert [tuple(i.shape) for i in images] == [(3, 30, 40), (3, 50, 70)]  # natural name order, whole, RGB
    assert [int(t["image_id"]) for batch in batches for t in batch["targets"]] == [1, 2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegmentationDataError, match="holds no images"):
        NucleiInstanceDataModule(predict_dir=str(tmp_path / "empty")).predict_dataloader()

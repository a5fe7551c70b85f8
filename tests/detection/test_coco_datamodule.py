"""The COCO datamodule: category ids, crowd, empty images, degenerate boxes, augmentation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.coco import COCODataError, COCODetectionDataModule, collate_detection, load_coco_index
from tests.detection.conftest import CATEGORY_IDS


def datamodule(ann: Path, **kwargs: object) -> COCODetectionDataModule:
    defaults = {"train_images": str(ann.parent / "images"), "train_annotations": str(ann), "num_workers": 0}
    return COCODetectionDataModule(**{**defaults, **kwargs})


def edit(ann: Path, change: callable) -> Path:  # type: ignore[valid-type]
    data = json.loads(ann.read_text())
    change(data)
    ann.write_text(json.dumps(data))
    return ann


def test_category_ids_map_to_contiguous_labels_and_back(coco_subset: tuple[Path, Path]) -> None:
    ann, images = coco_subset
    index = load_coco_index(ann, images)
    data = json.loads(ann.read_text())
    assert index.num_classes == 80 and index.category_ids == sorted(c["id"] for c in data["categories"])
    by_id = {a["id"]: a["category_id"] for a in data["annotations"]}
    labels = [(aid, int(lab)) for r in index.images for aid, lab in zip(r.annotation_ids, r.labels, strict=True)]
    assert len(labels) == len(data["annotations"])
    assert all(1 <= lab <= 80 and index.category_ids[lab - 1] == by_id[aid] for aid, lab in labels)


def test_crowd_regions_left_out_of_training_but_kept_for_evaluation(coco_subset: tuple[Path, Path]) -> None:
    ann, images = coco_subset
    dm = COCODetectionDataModule(train_images=str(images), train_annotations=str(ann), val_annotations=str(ann),
                                 augment=False, num_workers=0)  # fmt: skip
    dm.setup("fit")
    crowd_image = next(i for i, r in enumerate(dm.val_set.records) if r.iscrowd.any())
    _, val_target, _ = dm.val_set[crowd_image]
    _, train_target, _ = dm.train_set[crowd_image]
    assert int(val_target["iscrowd"].sum()) == 1
    assert int(train_target["iscrowd"].sum()) == 0 and len(train_target["boxes"]) == len(val_target["boxes"]) - 1


def test_images_without_annotations_kept_as_negatives_or_skipped_and_counted(tiny_coco: Path) -> None:
    kept = load_coco_index(tiny_coco, tiny_coco.parent / "images")
    assert sum(len(r.boxes) == 0 for r in kept.images) == 1
    skipped = load_coco_index(tiny_coco, tiny_coco.parent / "images", skip_empty_images=True)
    assert len(skipped.images) == len(kept.images) - 1
    assert skipped.skipped["image without annotations (skip_empty_images)"] == 1


def test_degenerate_boxes_dropped_and_counted(tiny_coco: Path) -> None:
    edit(tiny_coco, lambda d: d["annotations"].append({**d["annotations"][0], "id": 999, "bbox": [5, 5, 0.5, 10]}))
    index = load_coco_index(tiny_coco, tiny_coco.parent / "images")
    assert index.skipped["degenerate box (< 1 px)"] == 1
    assert all(999 not in r.annotation_ids for r in index.images)


def test_training_augmentation_keeps_boxes_on_their_objects_and_spares_validation(tiny_coco: Path) -> None:
    dm = datamodule(tiny_coco, hflip_p=1.0, scale_range=(1.5, 1.5), val_fraction=0.3)
    dm.setup("fit")
    record = dm.train_set.records[0]
    image, target, _ = dm.train_set[0]
    assert image.shape[1:] == (round(record.height * 1.5), round(record.width * 1.5))
    x1, y1, x2, y2 = target["boxes"][0].round().long().tolist()
    inside = image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
    assert inside.amax(dim=0).min() > 0.9  # the flipped, scaled box still covers a saturated rectangle
    val_image, val_target, _ = dm.val_set[0]
    raw = dm.val_set.records[0]
    assert val_image.shape[1:] == (raw.height, raw.width) and torch.equal(
        val_target["boxes"], torch.from_numpy(raw.boxes)
    )


def test_collate_keeps_variable_sizes(tiny_coco: Path) -> None:
    batch = collate_detection([(torch.zeros(3, 10, 20), {"boxes": torch.zeros(0, 4)}, "a"),
                               (torch.zeros(3, 30, 15), {"boxes": torch.zeros(1, 4)}, "b")])  # fmt: skip
    assert [tuple(i.shape) for i in batch["images"]] == [(3, 10, 20), (3, 30, 15)] and batch["paths"] == ["a", "b"]


def test_num_classes_and_names_come_from_the_file(tiny_coco: Path) -> None:
    dm = datamodule(tiny_coco)
    assert dm.num_classes == 3 and dm.category_ids == CATEGORY_IDS and dm.class_names == ["c3", "c7", "c42"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][0].update(file_name="gone.png"), ["gone.png", "image id 1", "Fix"]),
        (lambda d: d["annotations"][0].update(bbox=[-20, 5, 10, 10]), ["annotation id 1", "Fix", "instances.json"]),
        (lambda d: d["annotations"][0].update(bbox=[90, 5, 30, 10]), ["annotation id 1", "outside", "Fix"]),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, -3, 10]), ["annotation id 1", "negative", "Fix"]),
        (lambda d: d["annotations"][0].update(category_id=5), ["annotation id 1", "category_id 5", "Fix"]),
    ],
    ids=["missing-image", "negative-x", "out-of-image", "negative-size", "unknown-category"],
)
def test_bad_annotation_is_an_error_naming_file_id_and_fix_or_counted_skip(
    tiny_coco: Path,
    change: callable,
    message: list[str],  # type: ignore[valid-type]
) -> None:
    edit(tiny_coco, change)
    with pytest.raises(COCODataError) as err:
        load_coco_index(tiny_coco, tiny_coco.parent / "images")
    for part in message:
        assert part in str(err.value)
    index = load_coco_index(tiny_coco, tiny_coco.parent / "images", bad_input="skip")
    assert sum(index.skipped.values()) == 1


def test_undecodable_image_is_an_error_naming_it(tiny_coco: Path) -> None:
    (tiny_coco.parent / "images" / "img0.png").write_bytes(b"not a png")
    dm = datamodule(tiny_coco, augment=False, val_fraction=0.5)
    dm.setup("fit")
    dataset = dm.train_set if any(r.image_id == 1 for r in dm.train_set.records) else dm.val_set
    position = next(i for i, r in enumerate(dataset.records) if r.image_id == 1)
    with pytest.raises(COCODataError, match=r"image id 1, .*img0.png cannot be decoded.*Fix"):
        dataset[position]
    skipped = load_coco_index(tiny_coco, tiny_coco.parent / "images", bad_input="skip", verify_images=True)
    assert skipped.skipped["undecodable image"] == 1


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"images": [], "categories": []})])
def test_empty_or_invalid_annotation_file_is_an_error_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "instances_bad.json"
    path.write_text(content)
    with pytest.raises(COCODataError, match="instances_bad.json.*Fix"):
        load_coco_index(path, tmp_path)


def test_missing_annotation_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json.*Fix"):
        load_coco_index(tmp_path / "nope.json", tmp_path)

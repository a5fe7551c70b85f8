"""Any COCO-format detection set (Lin et al. 2014): an images folder and an ``instances_*.json``.

Read with pycocotools' format rules, checked annotation by annotation:

- **Labels.** COCO's category ids are not contiguous (1..90 for 80 classes); the network needs
  labels 1..K (0 is the background of torchvision's detectors). Label ``k`` is the ``k``-th category
  in increasing id order; ``category_ids[k - 1]`` maps it back for export (results JSON).
- **Crowd regions** (``iscrowd: 1``) are removed from the training targets (Faster R-CNN and SSD
  have no notion of them) and passed to evaluation with ``iscrowd``, where COCOeval ignores
  detections inside them.
- **Images without annotations** stay as negatives (no boxes), or are skipped with
  ``skip_empty_images`` (counted and logged).
- **Degenerate boxes** (width or height below 1 px, after clipping to the image) are dropped with a
  logged count: the box-regression targets of a zero-size box are infinite.
- **Bad input** (a missing or undecodable image, a negative or out-of-image box, an unknown
  category or image id, an empty or invalid file) stops with an error naming the file, the image or
  annotation id and the fix; with ``bad_input: skip`` the offending annotation or image is skipped
  instead, counted and logged. Nothing is dropped silently. A box reaching up to ``clip_tolerance``
  pixels beyond the image (COCO's float rounding) is clipped, not an error.

Training images pass through box-aware albumentations (horizontal flip, random scale, random crop
that keeps a box when at least ``min_visibility`` of it remains visible); validation, test and
predict images are never augmented. Images keep their own sizes: :func:`collate_detection` returns
lists, and the detector resizes internally.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from datamodules.distributed import make_split_loader
from datamodules.errors import DataError
from datamodules.paths import resolve_data_dir
from datamodules.transforms import seed_transform

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
BadInput = Literal["error", "skip"]


class COCODataError(DataError, ValueError):
    """A COCO annotation file or image that cannot be used as it is."""


@dataclass
class ImageRecord:
    """One image and its annotations, boxes as ``x1, y1, x2, y2`` pixels and labels 1..K."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    area: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    annotation_ids: list[int] = field(default_factory=list)


@dataclass
class COCOIndex:
    """A parsed, checked annotation file: categories and images with their targets, plus counts of
    everything dropped or skipped (``skipped``)."""

    annotation_file: Path
    category_ids: list[int]
    class_names: list[str]
    images: list[ImageRecord]
    skipped: Counter

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_of(self) -> dict[int, int]:
        return {c: i + 1 for i, c in enumerate(self.category_ids)}


def read_annotation_file(path: Path) -> dict[str, Any]:
    """The JSON of a COCO annotation file, with an error naming the file when it is missing, empty,
    not JSON, or lacks the ``images`` / ``annotations`` / ``categories`` lists."""
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO annotation file {path} not found. Fix: point the datamodule's *_annotations argument "
            f"(relative to data_dir, or absolute) at an instances_*.json file."
        )
    text = path.read_text()
    if not text.strip():
        raise COCODataError(f"COCO annotation file {path} is empty. Fix: regenerate or re-download it.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise COCODataError(f"COCO annotation file {path} is not valid JSON ({err}). Fix: regenerate it.") from err
    if not isinstance(data, dict):
        raise COCODataError(f"COCO annotation file {path} holds a {type(data).__name__}, not a COCO dict.")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise COCODataError(
                f"COCO annotation file {path} has no {key!r} (or an empty list): a detection set needs at least "
                f"one image and one category. Fix: check that it is an instances_*.json (not captions or a "
                f"results file)."
            )
    for key, required in (("images", ("id", "file_name")), ("categories", ("id",))):
        for position, entry in enumerate(data[key]):
            missing = [k for k in required if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise COCODataError(
                    f"COCO annotation file {path}: {key}[{position}] ({str(entry)[:80]}) has no {', '.join(missing)}. "
                    f"Fix: every entry of {key!r} needs {', '.join(required)}."
                )
    data.setdefault("annotations", [])
    return data


def categories_of(data: dict[str, Any], path: Path) -> tuple[list[int], list[str]]:
    """Category ids in increasing order (label k <-> ``ids[k - 1]``) and their names."""
    cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in cats]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise COCODataError(f"{path}: category ids {duplicates} appear twice in 'categories'. Fix: make them unique.")
    return ids, [str(c.get("name", c["id"])) for c in cats]


def load_coco_index(
    annotation_file: str | Path,
    image_dir: str | Path,
    skip_empty_images: bool = False,
    bad_input: BadInput = "error",
    clip_tolerance: float = 1.0,
    verify_images: bool = False,
) -> COCOIndex:
    """Parse and check a COCO annotation file against its images folder (see the module docstring).

    ``verify_images`` decodes every image header at load time (PIL ``verify``), so that an
    undecodable file is found before training; otherwise it is found when first read.
    """
    path, image_dir = Path(annotation_file), Path(image_dir)
    if bad_input not in ("error", "skip"):
        raise ValueError(f"bad_input must be 'error' or 'skip', got {bad_input!r}")
    data = read_annotation_file(path)
    category_ids, class_names = categories_of(data, path)
    label_of = {c: i + 1 for i, c in enumerate(category_ids)}
    skipped: Counter = Counter()

    def bad(message: str, what: str) -> None:
        if bad_input == "error":
            raise COCODataError(message + " Or set bad_input: skip to skip and count such entries.")
        skipped[what] += 1

    records: dict[int, ImageRecord] = {}
    for image in data["images"]:
        image_id = int(image["id"])
        file_path = image_dir / image["file_name"]
        if not file_path.is_file():
            bad(
                f"{path}: image id {image_id} names {file_path}, which does not exist. Fix: put the image "
                f"there, point the images folder (*_images) at the folder holding it, or remove the image entry.",
                "missing image file",
            )
            continue
        if verify_images and not _decodable(file_path):
            bad(
                f"{path}: image id {image_id}, {file_path} cannot be decoded. Fix: replace the file.",
                "undecodable image",
            )
            continue
        records[image_id] = ImageRecord(image_id, file_path, int(image.get("width", 0)), int(image.get("height", 0)))

    per_image: dict[int, list[tuple[list[float], int, int, float, int]]] = {i: [] for i in records}
    for ann in data["annotations"]:
        ann_id, image_id = ann.get("id"), int(ann.get("image_id", -1))
        if image_id not in records:
            if any(int(im["id"]) == image_id for im in data["images"]):
                continue  # its image was skipped (counted above)
            bad(
                f"{path}: annotation id {ann_id} refers to image id {image_id}, which is not in 'images'. "
                f"Fix: add the image entry or remove the annotation.",
                "annotation of unknown image",
            )
            continue
        category = int(ann.get("category_id", -1))
        if category not in label_of:
            bad(
                f"{path}: annotation id {ann_id} (image id {image_id}) has category_id {category}, which is not "
                f"in 'categories' (ids {category_ids[:10]}{'...' if len(category_ids) > 10 else ''}). "
                f"Fix: add the category or correct the annotation's category_id.",
                "unknown category",
            )
            continue
        bbox = ann.get("bbox")
        record = records[image_id]
        if not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            bad(
                f"{path}: annotation id {ann_id} (image id {image_id}) has bbox {bbox!r}; COCO boxes are "
                f"[x, y, width, height] numbers. Fix: correct the bbox.",
                "malformed box",
            )
            continue
        x, y, w, h = (float(v) for v in bbox)
        tol = clip_tolerance
        width, height = record.width or math.inf, record.height or math.inf
        if w < 0 or h < 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            bad(
                f"{path}: annotation id {ann_id} (image id {image_id}, {record.path.name}) has bbox "
                f"[{x:g}, {y:g}, {w:g}, {h:g}] outside the {record.width}x{record.height} image or with a negative "
                f"size. Fix: correct the box ([x, y, width, height], top-left origin) or the image's width/height.",
                "box outside image",
            )
            continue
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, width), min(y + h, height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            skipped["degenerate box (< 1 px)"] += 1
            continue
        crowd = int(ann.get("iscrowd", 0))
        area = float(ann.get("area", (x2 - x1) * (y2 - y1)))
        per_image[image_id].append(([x1, y1, x2, y2], label_of[category], crowd, area, int(ann_id or 0)))

    images = []
    for image_id, record in records.items():
        anns = per_image[image_id]
        if not anns and skip_empty_images:
            skipped["image without annotations (skip_empty_images)"] += 1
            continue
        if anns:
            record.boxes = np.asarray([a[0] for a in anns], np.float32)
            record.labels = np.asarray([a[1] for a in anns], np.int64)
            record.iscrowd = np.asarray([a[2] for a in anns], np.int64)
            record.area = np.asarray([a[3] for a in anns], np.float32)
            record.annotation_ids = [a[4] for a in anns]
        images.append(record)
    if not images:
        raise COCODataError(
            f"{path}: no usable image left ({dict(skipped) or 'the images list is empty'}). Fix: check the images "
            f"folder {image_dir} and the file."
        )
    if skipped:
        rank_zero_info(f"{path.name}: " + ", ".join(f"{n} {what}" for what, n in sorted(skipped.items())) + " skipped")
    return COCOIndex(path, category_ids, class_names, images, skipped)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _decodable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for a broken file; all mean the same here
        return False


def read_rgb(path: Path, image_id: int | None = None) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB (grayscale and RGBA converted), or an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode == "I" or im.mode.startswith("I;16"):
                # 16/32-bit grayscale: scaled to 8 bits (as datamodules.segmentation.read_image does); PIL's
                # convert("RGB") would clip every value above 255 to white.
                wide = np.array(im).astype(np.float64)
                top = 65535.0 if im.mode.startswith("I;16") else max(float(wide.max()), 1.0)
                return np.repeat(np.round(wide / top * 255).astype(np.uint8)[..., None], 3, axis=2)
            return np.array(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        which = f"image id {image_id}, " if image_id is not None else ""
        raise COCODataError(
            f"{which}{path} cannot be decoded ({type(err).__name__}: {err}). Fix: replace the file with an intact "
            f"copy, or set bad_input: skip with verify_images: true to skip (and count) undecodable images."
        ) from err


def detection_train_transform(
    hflip_p: float = 0.5,
    scale_range: Sequence[float] | None = (0.75, 1.25),
    crop_size: int | None = None,
    min_visibility: float = 0.3,
) -> Any:
    """Box-aware training augmentation (albumentations, ``pascal_voc`` boxes): horizontal flip,
    random scale in ``scale_range``, random ``crop_size`` crop (zero-padded when smaller); a box
    survives when at least ``min_visibility`` of its area stays in the image (SSD's sampling, Liu et
    al. 2016, sec. 2.2, keeps boxes whose centre stays; an area fraction is the albumentations rule)."""
    import albumentations as A

    steps: list[Any] = []
    if hflip_p > 0:
        steps.append(A.HorizontalFlip(p=hflip_p))
    if scale_range is not None and tuple(scale_range) != (1.0, 1.0):
        low, high = scale_range
        steps.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0))
    if crop_size:
        steps.append(A.RandomCrop(crop_size, crop_size, pad_if_needed=True, pad_position="random", p=1.0))
    if not steps:
        return None
    params = A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_width=1,
        min_height=1,
        clip=True,
    )  # noqa: E501
    return A.Compose(steps, bbox_params=params)


class COCODetectionDataset(Dataset):
    """Images and targets of a :class:`COCOIndex` (or a subset): ``(image float (3, H, W) in [0, 1],
    target {boxes, labels, iscrowd, area, image_id}, path)``. ``train`` removes crowd regions from the
    targets; ``transform`` (training only) is an albumentations ``Compose`` with box parameters.

    albumentations 2 draws from its own generators, seeded from the operating system's entropy, not from
    ``seed_everything``: the transform is reseeded from torch's seed (fixed by ``seed_everything``, different in
    every DataLoader worker), so that two seeded runs augment alike."""

    def __init__(self, records: list[ImageRecord], transform: Any = None, train: bool = False) -> None:
        self.records = records
        self.transform = transform
        self.train = train
        self._seeded_for: int | None = None

    def _reseed(self) -> None:
        seed = torch.initial_seed() % 2**63
        if seed != self._seeded_for:
            seed_transform(self.transform, seed)
            self._seeded_for = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
        rec = self.records[index]
        image = read_rgb(rec.path, rec.image_id)
        if rec.width and rec.height and image.shape[:2] != (rec.height, rec.width):
            raise COCODataError(
                f"image id {rec.image_id}, {rec.path} is {image.shape[1]}x{image.shape[0]} but the annotation file "
                f"says "
                f"{rec.width}x{rec.height}. Fix: correct width/height in the JSON or use the matching image."
            )
        boxes, labels, crowd, area = rec.boxes, rec.labels, rec.iscrowd, rec.area
        if self.train:  # crowd regions are for evaluation only
            keep = crowd == 0
            boxes, labels, crowd, area = boxes[keep], labels[keep], crowd[keep], area[keep]
        if self.transform is not None:
            self._reseed()
            out = self.transform(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], np.int64)
            crowd = np.zeros(len(labels), np.int64)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "iscrowd": torch.as_tensor(crowd, dtype=torch.int64),
            "area": torch.as_tensor(area, dtype=torch.float32),
            "image_id": torch.tensor(rec.image_id),
        }
        return tensor, target, str(rec.path)


def collate_detection(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor], str]]) -> dict[str, Any]:
    """A batch of images of any sizes: ``{"images": [...], "targets": [...], "paths": [...]}``."""
    images, targets, paths = zip(*batch, strict=True)
    return {"images": list(images), "targets": list(targets), "paths": list(paths)}


def split_records(
    records: list[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A deterministic (train, val) split holding out ``fraction`` of the images (at least one)."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1) when no validation annotations are given, got {fraction}")
    n_val = max(1, round(len(records) * fraction))
    if n_val >= len(records):
        raise COCODataError(f"{len(records)} images are too few to hold out {n_val} for validation.")
    perm = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    val = set(perm[:n_val])
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


class COCODetectionDataModule(pl.LightningDataModule):
    """Train / validate / test / predict on a COCO-format detection set.

    Paths are relative to ``data_dir`` (default ``$ZOO_DATA_DIR``, else ``./data``) unless absolute.
    Without ``val_annotations``, ``val_fraction`` of the training images (chosen by ``split_seed``)
    are held out; without ``test_annotations`` the test split is the validation split. ``predict``
    runs on ``predict_images`` (a folder of images, no annotations needed), else the validation split.

    Attributes linked to the model: ``num_classes`` (object classes, background excluded),
    ``class_names``; ``category_ids`` maps label k to COCO id ``category_ids[k - 1]``.

    Args:
        batch_size, eval_batch_size, num_workers: loader settings (workers persist between epochs).
        augment, hflip_p, scale_range, crop_size, min_visibility: training augmentation
            (:func:`detection_train_transform`); set ``hflip_p: 0`` where mirroring changes the class
            (digits).
        skip_empty_images: skip images without annotations (default: keep them as negatives).
        bad_input: ``error`` (default) or ``skip`` (count and log) for bad entries.
        verify_images: decode every image at setup (finds undecodable files early).
        clip_tolerance: pixels a box may reach past the image border before it is an error.
    """

    in_channels = 3  # images are converted to RGB, what torchvision's detectors take

    def __init__(
        self,
        data_dir: str | None = None,
        train_images: str = "images",
        train_annotations: str = "annotations/instances_train.json",
        val_images: str | None = None,
        val_annotations: str | None = None,
        test_images: str | None = None,
        test_annotations: str | None = None,
        predict_images: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        augment: bool = True,
        hflip_p: float = 0.5,
        scale_range: tuple[float, float] | None = (0.75, 1.25),
        crop_size: int | None = None,
        min_visibility: float = 0.3,
        skip_empty_images: bool = False,
        bad_input: BadInput = "error",
        verify_images: bool = False,
        clip_tolerance: float = 1.0,
    ) -> None:
        super().__init__()
        self.data_dir = resolve_data_dir(data_dir)
        self.train_images, self.train_annotations = train_images, train_annotations
        self.val_images, self.val_annotations = val_images, val_annotations
        self.test_images, self.test_annotations = test_images, test_annotations
        self.predict_images = predict_images
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = num_workers
        self.augment, self.hflip_p, self.scale_range = augment, hflip_p, scale_range
        self.crop_size, self.min_visibility = crop_size, min_visibility
        self.skip_empty_images, self.bad_input = skip_empty_images, bad_input
        self.verify_images, self.clip_tolerance = verify_images, clip_tolerance
        self._categories: tuple[list[int], list[str]] | None = None
        self.train_set: COCODetectionDataset | None = None
        self.val_set: COCODetectionDataset | None = None
        self.test_set: COCODetectionDataset | None = None
        self.skipped: dict[str, Counter] = {}

    # -- paths and categories ------------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.data_dir / p

    def ensure_files(self) -> None:
        """Hook for subclasses that create their data (the digit canvases)."""

    def _category_info(self) -> tuple[list[int], list[str]]:
        if self._categories is None:
            self.ensure_files()
            path = self.path(self.train_annotations)
            self._categories = categories_of(read_annotation_file(path), path)
        return self._categories

    @property
    def category_ids(self) -> list[int]:
        return self._category_info()[0]

    @property
    def class_names(self) -> list[str]:
        return self._category_info()[1]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def _index(self, images: str, annotations: str) -> COCOIndex:
        index = load_coco_index(
            self.path(annotations), self.path(images), self.skip_empty_images, self.bad_input,
            self.clip_tolerance, self.verify_images,
        )  # fmt: skip
        if index.category_ids != self.category_ids:
            raise COCODataError(
                f"{index.annotation_file} has categories {index.category_ids[:10]}... but the training file "
                f"{self.path(self.train_annotations)} has {self.category_ids[:10]}...: labels would not agree. "
                f"Fix: give every split the same 'categories' list."
            )
        self.skipped[str(index.annotation_file)] = index.skipped
        return index

    # -- setup ---------------------------------------------------------------------------------------
    def train_transform(self) -> Any:
        if not self.augment:
            return None
        return detection_train_transform(self.hflip_p, self.scale_range, self.crop_size, self.min_visibility)

    def setup(self, stage: str | None = None) -> None:
        self.ensure_files()
        if self.train_set is None and stage in (None, "fit", "validate", "test", "predict"):
            train = self._index(self.train_images, self.train_annotations).images
            if self.val_annotations:
                val = self._index(self.val_images or self.train_images, self.val_annotations).images
            else:
                train, val = split_records(train, self.val_fraction, self.split_seed)
            self.train_set = COCODetectionDataset(train, self.train_transform(), train=True)
            self.val_set = COCODetectionDataset(val)
        if self.test_set is None and stage in (None, "test"):
            if self.test_annotations:
                test = self._index(self.test_images or self.train_images, self.test_annotations).images
                self.test_set = COCODetectionDataset(test)
            else:
                self.test_set = self.val_set

    def _loader(self, dataset: Dataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        return make_split_loader(dataset, batch_size, shuffle, self.num_workers, collate_detection)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_images:
            folder = self.path(self.predict_images)
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise COCODataError(f"predict_images folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            records = [ImageRecord(i + 1, p, 0, 0) for i, p in enumerate(paths)]
            return self._loader(COCODetectionDataset(records), False, self.eval_batch_size)
        return self.val_dataloader()


__all__ = [
    "COCODataError",
    "COCODetectionDataModule",
    "COCODetectionDataset",
    "COCOIndex",
    "ImageRecord",
    "categories_of",
    "collate_detection",
    "detection_train_transform",
    "load_coco_index",
    "read_annotation_file",
    "read_rgb",
    "split_records",
]

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
lists, and the detector resizes internally. Boxes the training augmentation removes are counted in the
training dataset's ``dropped`` and logged (the first time at INFO, then at DEBUG).

**Instance masks** (``masks: true``, for Mask R-CNN): every annotation's ``segmentation`` (polygons,
uncompressed RLE or compressed RLE, read by pycocotools as ``COCO.annToMask`` reads them) becomes a
``(H, W)`` 0/1 mask, and targets gain ``masks``: uint8 ``(N, H, W)``, row ``i`` the mask of box ``i``
(torchvision's Mask R-CNN format). The rules above hold for masks too:

- crowd regions: left out of training targets with their boxes, kept (``iscrowd: 1``) for evaluation;
- an object whose mask is empty (a zero-area polygon) is dropped with a logged count, as a degenerate box
  is; a polygon part with fewer than 3 points (no area) is left out of its object, counted;
- a missing or malformed segmentation, or an RLE whose size is not the image's, is bad input (error, or
  ``bad_input: skip``); images without ``width``/``height`` in the file get them from the image header;
- training augmentation moves masks with their boxes (albumentations ``masks=``); afterwards each box is
  the extent of its mask (a cropped object's box shrinks to its visible part), and an object left with
  no mask pixel is dropped and counted like a box the crop removes. Unaugmented targets keep the file's
  boxes (what COCOeval compares against), which can reach past the mask's extent where a polygon's thin
  tip covers no pixel centre (4 of the 76 objects of the shared val2017 subset, by 1-2.3 px).

Masks are decoded when an image is read (the index keeps compressed RLE), so memory stays that of the file.
"""

from __future__ import annotations

import json
import logging
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
log = logging.getLogger(__name__)


class COCODataError(DataError, ValueError):
    """A COCO annotation file or image that cannot be used as it is."""


@dataclass
class ImageRecord:
    """One image and its annotations, boxes as ``x1, y1, x2, y2`` pixels and labels 1..K; with masks, the
    objects' segmentations as compressed RLE (pycocotools dicts), in the order of the boxes."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    area: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    annotation_ids: list[int] = field(default_factory=list)
    segmentations: list[dict[str, Any]] = field(default_factory=list)  # compressed RLE per box (``masks: true``)


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
    masks: bool = False,
) -> COCOIndex:
    """Parse and check a COCO annotation file against its images folder (see the module docstring).

    ``verify_images`` decodes every image header at load time (PIL ``verify``), so that an
    undecodable file is found before training; otherwise it is found when first read. ``masks``
    converts every annotation's segmentation to compressed RLE (``ImageRecord.segmentations``),
    checking it and dropping (counted) objects whose mask is empty.
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
        width, height = int(image.get("width", 0)), int(image.get("height", 0))
        if masks and not (width and height):
            # polygons are rasterized at the image's size: take it from the header when the file omits it
            size = _header_size(file_path)
            if size is None:
                bad(
                    f"{path}: image id {image_id}, {file_path} cannot be decoded (needed for its size: the "
                    f"entry has no width/height). Fix: replace the file or add width and height to the entry.",
                    "undecodable image",
                )
                continue
            width, height = size
        records[image_id] = ImageRecord(image_id, file_path, width, height)

    per_image: dict[int, list[tuple[list[float], int, int, float, int, dict[str, Any] | None]]] = {
        i: [] for i in records
    }
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
        rle = None
        if masks:
            try:
                rle, short_parts = segmentation_rle(ann.get("segmentation"), record.height, record.width)
            except ValueError as err:
                bad(
                    f"{path}: annotation id {ann_id} (image id {image_id}, {record.path.name}): {err}. Fix: correct "
                    f"the segmentation (polygons [[x1, y1, x2, y2, ...], ...] or RLE {{size: [height, width], "
                    f"counts}}), or set masks: false to train boxes only.",
                    "malformed segmentation",
                )
                continue
            if float(mask_utils().area(rle)) == 0:
                skipped["empty mask"] += 1  # as a degenerate box: no pixel to learn a mask from
                continue
            if short_parts:
                skipped["polygon part with < 3 points (no area; object kept)"] += short_parts
        crowd = int(ann.get("iscrowd", 0))
        area = float(ann.get("area", (x2 - x1) * (y2 - y1)))
        per_image[image_id].append(([x1, y1, x2, y2], label_of[category], crowd, area, int(ann_id or 0), rle))

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
            if masks:
                record.segmentations = [a[5] for a in anns]
        images.append(record)
    if not images:
        raise COCODataError(
            f"{path}: no usable image left ({dict(skipped) or 'the images list is empty'}). Fix: check the images "
            f"folder {image_dir} and the file."
        )
    if skipped:
        rank_zero_info(f"{path.name}: " + ", ".join(f"{n} {what}" for what, n in sorted(skipped.items())) + " skipped")
    return COCOIndex(path, category_ids, class_names, images, skipped)


def mask_utils() -> Any:
    """``pycocotools.mask``, imported on first use (box-only sets never need it)."""
    from pycocotools import mask

    return mask


def segmentation_rle(segmentation: Any, height: int, width: int) -> tuple[dict[str, Any], int]:
    """A COCO ``segmentation`` as one compressed RLE of an ``height x width`` image, and the number of
    polygon parts left out for having fewer than 3 points.

    Polygons and uncompressed RLE are converted as ``COCO.annToRLE`` converts them (``frPyObjects``, parts
    merged); compressed RLE is used as it is. Raises ``ValueError`` (a short reason) for anything else, for
    an RLE whose size is not the image's, and for RLE counts that do not cover the image exactly (pycocotools
    would decode them past the end of the mask).
    """
    mask = mask_utils()
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("its segmentation is an empty list (no polygon)")
        parts = []
        for part in segmentation:
            if not (isinstance(part, list) and all(_finite(v) for v in part)) or len(part) % 2:
                raise ValueError(f"polygon {str(part)[:60]} is not a list of x, y numbers")
            parts.append([float(v) for v in part])
        # pycocotools reads a list whose first part has 4 numbers as a box, not a polygon: leave short parts out
        kept = [q for q in parts if len(q) >= 6]
        if not kept:
            return mask.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0], len(parts)
        return mask.merge(mask.frPyObjects(kept, height, width)), len(parts) - len(kept)
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        shown = "no segmentation" if segmentation is None else f"segmentation {str(segmentation)[:60]!r}"
        raise ValueError(f"it has {shown}; masks: true needs polygons or RLE for every object")
    size = segmentation["size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and list(size) == [height, width]):
        raise ValueError(f"its RLE size {size!r} is not the image's [height, width] [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        values = counts
    elif isinstance(counts, str | bytes):
        counts = counts.encode("ascii") if isinstance(counts, str) else counts
        values = _rle_string_counts(counts)
    else:
        raise ValueError(f"its RLE counts are a {type(counts).__name__}, not a list or a string")
    if not all(isinstance(v, int) and v >= 0 for v in values) or sum(values) != height * width:
        raise ValueError(f"its RLE counts do not add up to the image's {height} x {width} pixels")
    if isinstance(counts, list):
        return mask.frPyObjects(segmentation, height, width), 0
    return {"size": [height, width], "counts": counts}, 0


def _rle_string_counts(counts: bytes) -> list[int]:
    """The run lengths of a compressed RLE string (pycocotools' ``rleFrString``, in Python, to check them
    before the C decoder trusts them)."""
    values: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts):
                raise ValueError("its RLE string is truncated")
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(values) > 2:
            x += values[-2]
        values.append(x)
    return values


def decode_masks(rles: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Compressed RLEs as a uint8 ``(N, height, width)`` array of 0/1 masks."""
    if not rles:
        return np.zeros((0, height, width), np.uint8)
    return np.ascontiguousarray(mask_utils().decode(list(rles)).transpose(2, 0, 1))


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """The extent of each mask of ``(N, H, W)`` as ``x1, y1, x2, y2`` pixel edges (float32 ``(N, 4)``: a
    one-pixel mask at column x spans ``x .. x + 1``, as pycocotools' ``toBbox``); an empty mask gives zeros."""
    if not len(masks):
        return np.zeros((0, 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    y1, x1 = rows.argmax(axis=1), cols.argmax(axis=1)
    y2 = masks.shape[1] - rows[:, ::-1].argmax(axis=1)
    x2 = masks.shape[2] - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    boxes[~rows.any(axis=1)] = 0
    return boxes


class DropCounter:
    """Counts the objects that training augmentation removes from samples, by reason.

    The first removal in a process is logged at INFO with the rule; later ones at DEBUG (``logging`` logger
    ``datamodules.coco``), since a crop removes objects from many samples and one line per sample would bury the
    log. ``counts`` holds the totals of this process (a DataLoader worker keeps its own)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.counts: Counter = Counter()
        self._told = False

    def add(self, reason: str, n: int, where: str) -> None:
        if n <= 0:
            return
        self.counts[reason] += n
        message = f"{self.what}: {n} object(s) of {where} {reason}: dropped from this training sample"
        if not self._told:
            self._told = True
            rank_zero_info(f"{message} (later drops are counted in the training dataset's `dropped` and logged "
                           f"at DEBUG by the {__name__} logger)")  # fmt: skip
        else:
            log.debug(message)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header (no decoding), None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # PIL raises many types for a broken file; all mean the same here
        return None


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
    object_index: bool = False,
) -> Any:
    """Box-aware training augmentation (albumentations, ``pascal_voc`` boxes): horizontal flip,
    random scale in ``scale_range``, random ``crop_size`` crop (zero-padded when smaller); a box
    survives when at least ``min_visibility`` of its area stays in the image (SSD's sampling, Liu et
    al. 2016, sec. 2.2, keeps boxes whose centre stays; an area fraction is the albumentations rule).

    ``object_index`` adds a label field ``index`` (pass ``index=np.arange(N)``): albumentations filters
    boxes and their label fields but not ``masks``, so the surviving indices select the masks that go
    with the surviving boxes."""
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
        label_fields=["labels", "index"] if object_index else ["labels"],
        min_visibility=min_visibility,
        min_width=1,
        min_height=1,
        clip=True,
    )  # noqa: E501
    return A.Compose(steps, bbox_params=params)


class COCODetectionDataset(Dataset):
    """Images and targets of a :class:`COCOIndex` (or a subset): ``(image float (3, H, W) in [0, 1],
    target {boxes, labels, iscrowd, area, image_id}, path)``, plus ``masks`` uint8 ``(N, H, W)`` with
    ``masks`` (records indexed with ``masks=True``). ``train`` removes crowd regions from the targets;
    ``transform`` (training only) is an albumentations ``Compose`` with box parameters (built with
    ``object_index=True`` when there are masks). Objects it removes are counted in ``dropped``.

    albumentations 2 draws from its own generators, seeded from the operating system's entropy, not from
    ``seed_everything``: the transform is reseeded from torch's seed (fixed by ``seed_everything``, different in
    every DataLoader worker), so that two seeded runs augment alike."""

    def __init__(
        self, records: list[ImageRecord], transform: Any = None, train: bool = False, masks: bool = False
    ) -> None:
        self.records = records
        self.transform = transform
        self.train = train
        self.masks = masks
        self._drops = DropCounter("COCO training augmentation")
        self._seeded_for: int | None = None

    @property
    def dropped(self) -> Counter:
        """Objects removed by the training augmentation in this process, by reason."""
        return self._drops.counts

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
        rles = rec.segmentations
        if self.train:  # crowd regions are for evaluation only
            keep = crowd == 0
            boxes, labels, crowd, area = boxes[keep], labels[keep], crowd[keep], area[keep]
            rles = [r for r, k in zip(rles, keep, strict=False) if k]
        masks = None
        if self.masks:
            if len(rles) != len(boxes):
                raise COCODataError(
                    f"image id {rec.image_id}, {rec.path}: the index holds {len(rles)} masks for {len(boxes)} boxes. "
                    f"Fix: index the annotation file with masks=True (load_coco_index(..., masks=True))."
                )
            masks = decode_masks(rles, image.shape[0], image.shape[1])
        if self.transform is not None:
            self._reseed()
            image, boxes, labels, area, masks = self._augment(rec, image, boxes, labels, masks)
            crowd = np.zeros(len(labels), np.int64)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "iscrowd": torch.as_tensor(crowd, dtype=torch.int64),
            "area": torch.as_tensor(area, dtype=torch.float32),
            "image_id": torch.tensor(rec.image_id),
        }
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks))
        return tensor, target, str(rec.path)

    def _augment(
        self, rec: ImageRecord, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, masks: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``transform`` applied to the image, boxes and (when given) masks: ``(image, boxes, labels, area,
        masks)``, removed objects counted."""
        where = f"image id {rec.image_id}"
        n = len(labels)
        extra: dict[str, Any] = {}
        if masks is not None:
            extra["index"] = np.arange(n)
            if n:  # albumentations cannot stack an empty list of masks
                extra["masks"] = masks
        out = self.transform(image=image, bboxes=boxes.reshape(-1, 4), labels=labels, **extra)
        image = out["image"]
        labels = np.asarray(out["labels"], np.int64).reshape(-1)
        self._drops.add("left the crop (under min_visibility of the box visible)", n - len(labels), where)
        if masks is None:
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
            return image, boxes, labels, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), None
        kept = np.asarray(out["index"], np.int64).reshape(-1)
        height, width = image.shape[:2]
        masks = np.asarray(out["masks"], np.uint8)[kept] if n else np.zeros((0, height, width), np.uint8)
        # The box albumentations clips to the crop can be larger than what is left of the object: the
        # mask's extent is the box of the visible part.
        filled = masks.any(axis=(1, 2))
        self._drops.add("left the crop (part of the box visible, no mask pixel)", int((~filled).sum()), where)
        masks, labels = masks[filled], labels[filled]
        return image, mask_boxes(masks), labels, masks.sum(axis=(1, 2)).astype(np.float32), masks


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
        masks: serve instance masks (targets' ``masks``, uint8 ``(N, H, W)`` aligned with ``boxes``) from the
            annotations' polygon / RLE segmentations, for Mask R-CNN (see the module docstring).
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
        masks: bool = False,
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
        self.masks = masks
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
            self.clip_tolerance, self.verify_images, self.masks,
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
        return detection_train_transform(
            self.hflip_p, self.scale_range, self.crop_size, self.min_visibility, object_index=self.masks
        )

    def setup(self, stage: str | None = None) -> None:
        self.ensure_files()
        if self.train_set is None and stage in (None, "fit", "validate", "test", "predict"):
            train = self._index(self.train_images, self.train_annotations).images
            if self.val_annotations:
                val = self._index(self.val_images or self.train_images, self.val_annotations).images
            else:
                train, val = split_records(train, self.val_fraction, self.split_seed)
            self.train_set = COCODetectionDataset(train, self.train_transform(), train=True, masks=self.masks)
            self.val_set = COCODetectionDataset(val, masks=self.masks)
        if self.test_set is None and stage in (None, "test"):
            if self.test_annotations:
                test = self._index(self.test_images or self.train_images, self.test_annotations).images
                self.test_set = COCODetectionDataset(test, masks=self.masks)
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
    "DropCounter",
    "ImageRecord",
    "categories_of",
    "collate_detection",
    "decode_masks",
    "detection_train_transform",
    "load_coco_index",
    "mask_boxes",
    "read_annotation_file",
    "read_rgb",
    "segmentation_rle",
    "split_records",
]

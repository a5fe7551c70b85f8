"""DSB2018 nuclei (BBBC038v1) as instance segmentation: every nucleus mask file is one object.

Targets are torchvision's Mask R-CNN format, the one :mod:`datamodules.coco` serves with ``masks: true``:
``boxes`` float32 ``(N, 4)`` ``x1, y1, x2, y2`` (the mask's extent in pixel edges, as pycocotools'
``toBbox``), ``labels`` int64 all 1 (``nucleus``), ``masks`` uint8 ``(N, H, W)`` 0/1 aligned with the
boxes, ``image_id`` (the sample's position + 1 in name order: the ids of the data set's
``instances_derived.json``, which lists the folders in the same order), ``iscrowd`` (zeros) and ``area``
(mask pixels). Samples are ``(image float (3, H, W) in [0, 1], target, path)``; :func:`collate_instances`
keeps lists (images of any size, the detector resizes internally).

- **Images**: RGBA with an opaque alpha (SOURCE.md): the alpha is dropped (``read_image``), RGB kept.
- **Split**: the layout, folder order and held-out validation images are those of
  :class:`datamodules.segmentation.DSB2018DataModule` with the same ``val_size`` and ``split_seed``
  (its own ``discover`` and ``split_indices``), so the semantic and the instance routes are evaluated on
  the same images. The test split is the validation split (the shared copy has no labelled test images).
- **Training** samples are random ``crop_size x crop_size`` windows (``crops_per_image`` per image and
  epoch): a nucleus cut by the window keeps its visible part (its box shrinks to it), one cut with no
  pixel left is dropped and counted (``train_set.dropped``, logged). An image smaller than ``crop_size``
  along an axis is taken whole along that axis, not padded: padding would add pixels that are not the
  microscope's (zeros on brightfield, or mirrored nuclei without masks). Then, with ``augment``,
  albumentations flips and 90-degree rotations move the image and its masks together; boxes are recomputed
  from the moved masks.
- **Validation / test / predict**: whole images, never augmented, every nucleus served.
- **Masks** are kept per nucleus (a crop of its box), so overlapping masks (3 images, a few pixels: an
  upstream quirk) stay as they are: instance masks may overlap. An empty mask file has no object and is
  dropped with a logged count; a mask that is not binary, or not the image's size, is an error naming it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from datamodules.coco import DropCounter, collate_detection, mask_boxes
from datamodules.distributed import make_split_loader
from datamodules.segmentation import (
    DSB2018DataModule,
    SegmentationDataError,
    check_same_size,
    list_images,
    read_image,
    read_mask,
    split_indices,
)
from datamodules.transforms import seed_transform

Target = dict[str, torch.Tensor]


@dataclass
class NucleiImage:
    """One decoded image and its nuclei: ``boxes`` int64 ``(N, 4)`` ``x1, y1, x2, y2`` (pixel edges) and
    ``patches[i]``, nucleus ``i``'s mask inside its box (bool)."""

    name: str
    image_id: int
    path: Path
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray
    patches: list[np.ndarray]

    def window(self, top: int, left: int, height: int, width: int) -> tuple[np.ndarray, Counter]:
        """The masks of the nuclei with a pixel in the window, uint8 ``(K, height, width)`` in window
        coordinates, and counts of the nuclei the window cut (``cut``: part kept; ``cut, nothing left``)."""
        counts: Counter = Counter()
        x1, y1, x2, y2 = self.boxes.T
        ix1, iy1 = np.maximum(x1, left), np.maximum(y1, top)
        ix2, iy2 = np.minimum(x2, left + width), np.minimum(y2, top + height)
        kept = []
        for i in np.flatnonzero((ix2 > ix1) & (iy2 > iy1)):
            visible = self.patches[i][iy1[i] - y1[i] : iy2[i] - y1[i], ix1[i] - x1[i] : ix2[i] - x1[i]]
            if not visible.any():
                counts["cut, nothing left"] += 1
                continue
            if visible.shape != self.patches[i].shape:
                counts["cut"] += 1
            kept.append((i, visible))
        # one allocation: a whole large image holds up to ~300 nuclei of a megapixel each
        masks = np.zeros((len(kept), height, width), np.uint8)
        for k, (i, visible) in enumerate(kept):
            masks[k, iy1[i] - top : iy2[i] - top, ix1[i] - left : ix2[i] - left] = visible
        return masks, counts


def load_nuclei_image(
    name: str, image_id: int, image_path: Path, mask_paths: list[Path], skipped: Counter
) -> NucleiImage:
    """Decode an image (RGB) and its nucleus masks (``skipped`` counts empty mask files)."""
    image = read_image(image_path, 3)
    boxes, patches = [], []
    for mask_path in mask_paths:
        mask = read_mask(mask_path)
        check_same_size(image, mask, image_path, mask_path)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            skipped["empty mask file"] += 1
            continue
        y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        sub = mask[y1:y2, x1:x2]
        if sub.dtype != np.uint8 or ((sub != 0) & (sub != 255) & (sub != 1)).any():
            raise SegmentationDataError(
                f"nucleus mask {mask_path} holds values {np.unique(sub).tolist()[:10]}; DSB2018 masks are binary "
                f"(0 and 255). Fix: re-export it as a binary mask."
            )
        boxes.append([x1, y1, x2, y2])
        patches.append(sub > 0)
    box_array = np.asarray(boxes, np.int64).reshape(-1, 4)
    return NucleiImage(name, image_id, image_path, image, box_array, patches)


def instance_target(masks: np.ndarray, image_id: int) -> Target:
    """The Mask R-CNN target of ``masks`` (K, H, W): boxes from their extents, label 1 for every nucleus."""
    n = len(masks)
    return {
        "boxes": torch.from_numpy(mask_boxes(masks)),
        "labels": torch.ones(n, dtype=torch.int64),
        "masks": torch.from_numpy(np.ascontiguousarray(masks, np.uint8)),
        "image_id": torch.tensor(image_id),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
        "area": torch.from_numpy(masks.sum(axis=(1, 2)).astype(np.float32)),
    }


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1] (in numpy: torch's intra-op threads make this
    small conversion slower, not faster, on a busy machine)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255))


def nuclei_train_transform(flips: bool = True) -> Any:
    """Flips and 90-degree rotations (albumentations; exact on masks, so boxes recomputed from the moved
    masks are the moved boxes), or None without ``flips``."""
    if not flips:
        return None
    import albumentations as A

    return A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)])


class NucleiCrops(Dataset):
    """Training samples: ``length`` random windows, image ``i % len(images)`` for index ``i``, through
    ``transform`` (albumentations, image and ``masks``). Nuclei the windows cut with nothing left are counted
    in ``dropped``.

    Window positions and albumentations' draws follow torch's seed (fixed by ``seed_everything``, different in
    every DataLoader worker) plus ``seed``, so that two seeded runs crop alike."""

    def __init__(
        self, images: list[NucleiImage], crop_size: int, length: int, transform: Any = None, seed: int = 0
    ) -> None:
        if not images:
            raise ValueError("no training images")
        self.images = images
        self.crop_size = crop_size
        self.length = length
        self.transform = transform
        self.seed = seed
        self._drops = DropCounter("DSB2018 training crop")
        self._rng = np.random.default_rng(seed)
        self._seeded_for: int | None = None

    @property
    def dropped(self) -> Counter:
        """Nuclei cut by the training windows with no pixel left, in this process."""
        return self._drops.counts

    def __len__(self) -> int:
        return self.length

    def _reseed(self) -> None:
        seed = (torch.initial_seed() + self.seed) % 2**63
        if seed != self._seeded_for:
            self._rng = np.random.default_rng([seed, 1])  # not the transform's stream (seed_transform spawns from seed)
            if self.transform is not None:
                seed_transform(self.transform, seed)
            self._seeded_for = seed

    def window_size(self, sample: NucleiImage) -> tuple[int, int]:
        """``(height, width)`` of the window: ``crop_size``, or the image's side where that is shorter."""
        height, width = sample.image.shape[:2]
        return min(self.crop_size, height), min(self.crop_size, width)

    def crop(self, index: int, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index``'s window at ``(top, left)`` (of :meth:`window_size`), unaugmented: ``(image (h, w, 3),
        masks (K, h, w))``, dropped nuclei counted."""
        sample = self.images[index % len(self.images)]
        height, width = self.window_size(sample)
        masks, counts = sample.window(top, left, height, width)
        self._drops.add("cut by the crop with no pixel left", counts["cut, nothing left"], sample.name)
        return sample.image[top : top + height, left : left + width], masks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target, str]:
        self._reseed()
        sample = self.images[index % len(self.images)]
        height, width = self.window_size(sample)
        top = int(self._rng.integers(0, sample.image.shape[0] - height + 1))
        left = int(self._rng.integers(0, sample.image.shape[1] - width + 1))
        image, masks = self.crop(index, top, left)
        if self.transform is not None:
            if len(masks):
                out = self.transform(image=image, masks=masks)
                image, masks = out["image"], np.asarray(out["masks"], np.uint8)
            else:  # albumentations cannot stack an empty list of masks
                image = self.transform(image=image)["image"]
                masks = np.zeros((0, *image.shape[:2]), np.uint8)
        return _image_tensor(image), instance_target(masks, sample.image_id), str(sample.path)


class NucleiImages(Dataset):
    """Whole images with every nucleus, never augmented (validation, test, predict)."""

    def __init__(self, images: list[NucleiImage]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target, str]:
        sample = self.images[index]
        height, width = sample.image.shape[:2]
        masks, _ = sample.window(0, 0, height, width)
        return _image_tensor(sample.image), instance_target(masks, sample.image_id), str(sample.path)


class FolderImages(Dataset):
    """Any folder's images, whole, for ``predict`` (no masks needed): the target holds only ``image_id`` (the
    image's position + 1 in natural name order)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target, str]:
        image = read_image(self.paths[index], 3)
        return _image_tensor(image), {"image_id": torch.tensor(index + 1)}, str(self.paths[index])


def collate_instances(batch: list[tuple[torch.Tensor, Target, str]]) -> dict[str, Any]:
    """A batch as lists, detection style: ``{"images": [...], "targets": [...], "paths": [...]}``
    (:func:`datamodules.coco.collate_detection`, what the detection module takes)."""
    return collate_detection(batch)


class NucleiInstanceDataModule(pl.LightningDataModule):
    """DSB2018 nuclei, one object per mask file (see the module docstring), for Mask R-CNN.

    Attributes linked to the model: ``num_classes`` (1: ``nucleus``, background excluded), ``class_names``,
    ``in_channels`` (3); ``category_ids`` (``[1]``) is the nucleus' id in ``instances_derived.json``.

    Args:
        data_dir: the data set folder or a root holding ``dsb2018_nuclei/``; default ``$ZOO_DATA_DIR``,
            else ``./data``.
        image_dir: the folder of ``<id>/images/<id>.png`` + ``<id>/masks/*.png``, relative to it.
        val_size: validation images, a fraction (< 1) or a count, chosen by ``split_seed``: keep both equal to
            the semantic ``DSB2018DataModule``'s (defaults 0.2 and 0) to evaluate on the same images.
        split_seed: seed of the train / validation split.
        crop_size: side of the random training windows (an image smaller along an axis is taken whole there).
        crops_per_image: training windows per image and epoch.
        batch_size, eval_batch_size: training and validation / test batch sizes (batches are lists).
        num_workers: DataLoader worker processes (images are decoded once, at setup).
        augment: random flips and 90-degree rotations of the training windows (never of evaluation images).
        predict_dir: a folder of images (any size, PNG / JPEG / TIFF ...; RGB or converted to it) that ``predict``
            segments; default: the validation images.
    """

    in_channels = 3

    def __init__(
        self,
        data_dir: str | None = None,
        image_dir: str = "stage1_train",
        val_size: float = 0.2,
        split_seed: int = 0,
        crop_size: int = 256,
        crops_per_image: int = 2,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        augment: bool = True,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value, least in (("crop_size", crop_size, 1), ("crops_per_image", crops_per_image, 1),
                                   ("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                   ("num_workers", num_workers, 0)):  # fmt: skip
            if value < least:
                raise ValueError(f"{type(self).__name__}: {name}={value}. Fix: --data.init_args.{name} >= {least}")
        self.data_dir, self.image_dir = data_dir, image_dir
        self.val_size, self.split_seed = val_size, split_seed
        self.crop_size, self.crops_per_image = crop_size, crops_per_image
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.augment = augment
        self.predict_dir = predict_dir
        self.train_images: list[NucleiImage] | None = None
        self.val_images: list[NucleiImage] | None = None
        self.train_set: NucleiCrops | None = None
        self.val_set: NucleiImages | None = None
        self.skipped: Counter = Counter()

    @property
    def num_classes(self) -> int:
        return 1

    @property
    def class_names(self) -> list[str]:
        return ["nucleus"]

    @property
    def category_ids(self) -> list[int]:
        """COCO id of label 1 (``instances_derived.json``'s ``nucleus``), for results files."""
        return [1]

    def layout(self) -> DSB2018DataModule:
        """The semantic datamodule of the same folder and split: its ``discover`` is the one layout reader."""
        return DSB2018DataModule(data_dir=self.data_dir, image_dir=self.image_dir, val_size=self.val_size,
                                 split_seed=self.split_seed)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        layout = self.layout()
        entries = layout.discover()
        train_idx, val_idx = split_indices(len(entries), self.val_size, self.split_seed)
        self.skipped = Counter()

        def load(i: int) -> NucleiImage:
            name, (image_path, mask_paths) = entries[i]
            return load_nuclei_image(name, i + 1, image_path, mask_paths, self.skipped)

        self.train_images = [load(i) for i in train_idx]
        self.val_images = [load(i) for i in val_idx]
        if self.skipped:
            rank_zero_info(f"DSB2018 instances: {', '.join(f'{n} {w}' for w, n in sorted(self.skipped.items()))} "
                           f"skipped (no nucleus pixel)")  # fmt: skip
        transform = nuclei_train_transform() if self.augment else None
        length = self.crops_per_image * len(self.train_images)
        self.train_set = NucleiCrops(self.train_images, self.crop_size, length, transform, self.split_seed)
        self.val_set = NucleiImages(self.val_images)
        rank_zero_info(
            f"{type(self).__name__}: {len(self.train_images)} training and {len(self.val_images)} validation images "
            f"({sum(len(s.boxes) for s in self.train_images)} and {sum(len(s.boxes) for s in self.val_images)} "
            f"nuclei) from {layout.root}"
        )

    @property
    def val_names(self) -> list[str]:
        """The validation images' folder names (the semantic datamodule's validation images)."""
        if self.val_images is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run first")
        return [s.name for s in self.val_images]

    def _loader(self, dataset: Dataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        return make_split_loader(dataset, batch_size, shuffle, self.num_workers, collate_instances)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """The validation images (the shared copy has no labelled test split)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The images of ``predict_dir``, else the validation images."""
        if self.predict_dir is None:
            return self.val_dataloader()
        folder = Path(self.predict_dir).expanduser()
        try:
            paths = list_images(folder) if folder.is_dir() else []
        except FileNotFoundError:  # list_images' own answer to a folder without images
            paths = []
        if not paths:
            raise SegmentationDataError(
                f"predict_dir {folder} {'holds no images' if folder.is_dir() else 'is not a folder'}. Fix: point "
                "--data.init_args.predict_dir at a folder of images (PNG, JPEG, TIFF, ...)."
            )
        return make_split_loader(FolderImages(paths), self.eval_batch_size, False, self.num_workers, collate_instances)


__all__ = [
    "FolderImages",
    "NucleiCrops",
    "NucleiImage",
    "NucleiImages",
    "NucleiInstanceDataModule",
    "collate_instances",
    "instance_target",
    "load_nuclei_image",
    "nuclei_train_transform",
]

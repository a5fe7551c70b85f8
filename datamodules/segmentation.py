"""Semantic segmentation data: image / mask folder pairs and the DSB2018 layout.

* :class:`SegmentationFolderDataModule`: ``<image_dir>/<name>.<ext>`` beside ``<mask_dir>/<name>.<ext>``
  (same name, any image extension) and a mapping from mask pixel values to classes.
* :class:`ISBI2012DataModule`: the ISBI 2012 EM membrane slices (U-Net paper data). Mind the
  polarity: mask value 0 is membrane, 255 cell interior; by default class 0 is ``membrane`` and
  class 1 ``cell``, the cells (the connected components of class 1) are what the U-Net weight map
  and the Rand error look at.
* :class:`DSB2018DataModule`: the 2018 Data Science Bowl layout ``<id>/images/<id>.png`` +
  ``<id>/masks/*.png`` (one mask per nucleus): the union of the masks is the foreground class, the
  masks themselves are the instances the weight map separates.

Images are decoded once at ``setup`` and held in memory (the shared sets are 12 and 40 MB). The
split into training and validation images is deterministic (``split_seed``, its own generator).
Training samples are random ``crop_size`` crops (``crops_per_image`` per image and epoch) passed
through the albumentations pipeline of :func:`datamodules.transforms.segmentation_train_transform`
(the paper's coarse-grid elastic deformation, flips, rotations, gray value jitter); validation and
test samples are whole images, never augmented. With ``weight_maps: true`` every label's U-Net
weight map (:func:`datamodules.weight_maps.unet_weight_map`, Ronneberger et al. 2015 eq. 2) is computed
once at ``setup`` and moves with its crop.

**Targets** (``target``): ``"two_class"`` (default) serves the mask's classes as they are (DSB2018: background /
nucleus, the U-Net paper's target; touching nuclei are kept apart by the weight map alone).
``"three_class"`` serves background / interior / boundary
(:func:`datamodules.instance_targets.three_class_target` of the instances, ``boundary_width`` pixels of
boundary), the contour-aware target of the 2018 Data Science Bowl solutions (Caicedo et al. 2019, Nature
Methods 16; after DCAN, Chen et al. 2016), from which a watershed recovers touching nuclei. It is computed once
per image at ``setup`` and replaces the mask, so crops, mirror padding and augmentation move it with the image
as they move any mask. The instances are the layout's (DSB2018: one mask file per nucleus) or, for a folder of
class masks (ISBI 2012), the 4-connected components of ``foreground_class`` (the cells of the weight map and
the Rand error).

Batches are dicts: ``image`` (N, C, H, W) float, normalized; ``mask`` (N, H, W) int64 classes;
``weight`` (N, H, W) float32 (with ``weight_maps``); ``name``; in validation and test batches, where the
samples have instances (DSB2018 always, folder layouts with ``target: three_class``), ``instances``: a list of
N whole-image (H, W) int32 label images (0 background, k nucleus k; a list, not a stacked tensor, so that an
instance segmenter scores each image as it is); at predict time ``raw`` (the unnormalized uint8 image, for
overlays) and ``path`` instead of ``mask`` (no labels: the images may come from any folder).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from datamodules.distributed import make_dataloader, make_split_loader
from datamodules.errors import DataError
from datamodules.instance_targets import THREE_CLASS_NAMES, labels_from_masks, three_class_target
from datamodules.paths import resolve_data_dir
from datamodules.transforms import seed_transform, segmentation_train_transform
from datamodules.weight_maps import WeightMapCache

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
Target = Literal["two_class", "three_class"]
TARGETS = ("two_class", "three_class")


class SegmentationDataError(DataError, ValueError):
    """A segmentation data file that cannot be used as it is (the message names it and the fix)."""


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder in natural order; an error naming the folder when there are none."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist. Fix: set data_dir (or $ZOO_DATA_DIR) to the folder "
            f"that holds it, or set image_dir / mask_dir / predict_dir."
        )
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise FileNotFoundError(
            f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}). "
            f"Fix: point data_dir / image_dir at the folder holding the images."
        )
    return files


def decode_image(path: Path, palette_to_rgba: bool = False) -> np.ndarray:
    """The pixels of an image file; an error naming the file when it cannot be decoded (truncated, corrupt,
    zero bytes), instead of PIL's message, which for a truncated file does not name it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGBA") if palette_to_rgba and im.mode == "P" else im)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise SegmentationDataError(
            f"{path} cannot be decoded ({type(err).__name__}: {err}; the file has {path.stat().st_size} bytes). "
            f"Fix: replace it with an intact copy (re-export or download it again), or remove it and its mask."
        ) from err


def read_image(path: Path, in_channels: int) -> np.ndarray:
    """An image file as ``(H, W, in_channels)`` uint8.

    Lossless conversions only: an alpha channel is dropped, an RGB image whose three channels are
    equal becomes grayscale for ``in_channels=1``, a grayscale image is repeated for
    ``in_channels=3``, 16-bit images are scaled to 8 bits. A colour image for ``in_channels=1`` (or
    any other channel count) is an error naming the file.
    """
    array = decode_image(path, palette_to_rgba=True)
    if array.dtype in (np.uint16, np.int32) and array.ndim == 2:  # 16-bit grayscale
        top = 65535.0 if array.dtype == np.uint16 else max(float(array.max()), 1.0)
        array = np.round(array.astype(np.float64) / top * 255).astype(np.uint8)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise SegmentationDataError(f"{path}: unsupported pixel type {array.dtype}. Fix: save it as an 8-bit image.")
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] in (2, 4):  # LA / RGBA: drop alpha
        array = array[..., :-1]
    channels = array.shape[2]
    if channels == in_channels:
        return np.ascontiguousarray(array)
    if channels == 3 and in_channels == 1:
        if (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
            return np.ascontiguousarray(array[..., :1])
        raise SegmentationDataError(
            f"{path} is a colour (RGB) image but in_channels=1. Fix: set the datamodule's in_channels: 3 "
            f"(train.py passes it on to the model), or convert the images to grayscale."
        )
    if channels == 1 and in_channels == 3:
        return np.repeat(array, 3, axis=2)
    raise SegmentationDataError(
        f"{path} has {channels} channel(s) but in_channels={in_channels}. Fix: set in_channels to "
        f"{channels} or convert the image."
    )


def read_mask(path: Path) -> np.ndarray:
    """A mask file as ``(H, W)`` integers (palette images keep their indices)."""
    array = decode_image(path)
    if array.ndim == 3:
        if (array[..., :3] == array[..., :1]).all():
            return array[..., 0]
        raise SegmentationDataError(
            f"mask {path} is a colour image. Fix: save masks as single-channel images whose pixel values "
            f"are listed in mask_values."
        )
    return array


def map_mask(values: np.ndarray, mapping: dict[int, int], path: Path) -> np.ndarray:
    """Mask pixel values -> class indices (uint8); an error naming the file and the unmapped values."""
    present = np.unique(values)
    unknown = [int(v) for v in present if int(v) not in mapping]
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        raise SegmentationDataError(
            f"mask {path} holds value(s) {shown} that mask_values {mapping} does not map to a class. "
            f"Fix: add them to mask_values (pixel value: class index), or correct the mask."
        )
    table = np.zeros(int(present.max()) + 1, np.uint8)
    for value, cls in mapping.items():
        if value < len(table):
            table[value] = cls
    return table[values]


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape[:2] != mask.shape[:2]:
        (h, w), (mh, mw) = image.shape[:2], mask.shape[:2]
        raise SegmentationDataError(
            f"image {image_path} is {w}x{h} (width x height) but its mask {mask_path} is {mw}x{mh}. "
            f"Fix: give every image a mask of the same size (resize or re-export one of them)."
        )


@dataclass
class SegmentationSample:
    """One decoded image with its labels."""

    name: str
    image: np.ndarray  # (H, W, C) uint8
    mask: np.ndarray  # (H, W) uint8 classes
    instances: np.ndarray | None = None  # (H, W) int32 instance ids (0: none), where the layout has them
    weight: np.ndarray | None = None  # (H, W) float32 U-Net weight map


def _to_tensor(image: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return (x - mean) / std


class SegmentationCrops(Dataset):
    """Training samples: ``length`` random crops, image ``i % len(samples)`` for index ``i``,
    through ``transform`` (an albumentations pipeline that also crops)."""

    def __init__(
        self,
        samples: list[SegmentationSample],
        transform: Any,
        length: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
    ) -> None:
        if not samples:
            raise ValueError("no training images")
        self.samples = samples
        self.transform = transform
        self.length = length
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.seed = seed
        self._seeded_for: int | None = None

    def __len__(self) -> int:
        return self.length

    def _reseed(self) -> None:
        # torch's seed differs per DataLoader worker and per epoch (when workers are re-created) and
        # is fixed by seed_everything: the albumentations streams follow it.
        seed = (torch.initial_seed() + self.seed) % 2**63
        if seed != self._seeded_for:
            seed_transform(self.transform, seed)
            self._seeded_for = seed

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._reseed()
        sample = self.samples[index % len(self.samples)]
        targets: dict[str, np.ndarray] = {"image": sample.image, "mask": sample.mask}
        if sample.weight is not None:
            targets["weight"] = sample.weight
        out = self.transform(**targets)
        item = {
            "image": _to_tensor(out["image"], self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
            "name": sample.name,
        }
        if sample.weight is not None:
            item["weight"] = torch.from_numpy(np.ascontiguousarray(out["weight"])).float()
        return item


class SegmentationImages(Dataset):
    """Whole images, never augmented (validation and test)."""

    def __init__(self, samples: list[SegmentationSample], mean: Sequence[float], std: Sequence[float]) -> None:
        self.samples = samples
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item = {
            "image": _to_tensor(sample.image, self.mean, self.std),
            "mask": torch.from_numpy(sample.mask).long(),
            "name": sample.name,
        }
        if sample.weight is not None:
            item["weight"] = torch.from_numpy(sample.weight)
        if sample.instances is not None:
            item["instances"] = torch.from_numpy(sample.instances)
        return item


class PredictImages(Dataset):
    """Image files of any size, read when asked for: ``image`` (normalized), ``raw`` (uint8,
    H x W x C) and ``path``."""

    def __init__(self, paths: list[Path], in_channels: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.paths = paths
        self.in_channels = in_channels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        image = read_image(path, self.in_channels)
        return {
            "image": _to_tensor(image, self.mean, self.std),
            "raw": torch.from_numpy(image),
            "path": str(path),
            "name": path.stem,
        }


def collate_segmentation(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, with a clear error when whole images of different sizes share a batch; the
    ``instances`` label images stay a list (one per image)."""
    sizes = {tuple(item["image"].shape[-2:]) for item in batch}
    if len(sizes) > 1:
        listed = ", ".join(f"{item['name']}: {tuple(item['image'].shape[-2:])}" for item in batch[:4])
        raise SegmentationDataError(
            f"images of different sizes in one batch ({listed}). Fix: set eval_batch_size: 1 "
            f"(whole images of different sizes cannot be stacked)."
        )
    if not any("instances" in item for item in batch):
        return torch.utils.data.default_collate(batch)
    instances = [item["instances"] for item in batch]
    collated = torch.utils.data.default_collate([{k: v for k, v in item.items() if k != "instances"} for item in batch])
    collated["instances"] = instances
    return collated


def split_indices(n: int, val_size: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) positions of ``n`` items: ``val_size`` a fraction (< 1) or a count."""
    n_val = int(round(val_size * n)) if 0 < val_size < 1 else int(val_size)
    if not 0 <= n_val < n:
        raise ValueError(f"val_size={val_size} leaves no training images out of {n}. Fix: --data.init_args.val_size "
                         f"below {n} (a count) or a fraction in (0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class SegmentationFolderDataModule(pl.LightningDataModule):
    """Image / mask folder pairs (see the module docstring).

    Args:
        data_dir: root folder; default ``$ZOO_DATA_DIR``, else ``./data``.
        image_dir, mask_dir: folders of images and masks, relative to ``data_dir`` (or absolute).
        mask_values: mask pixel value -> class index (``{0: 0, 255: 1}``); None: the pixel values
            are the class indices ``0 .. len(class_names) - 1``.
        class_names: one name per class; their number is ``num_classes``.
        in_channels: 1 (grayscale) or 3 (RGB); see :func:`read_image` for what is converted.
        foreground_class: the class whose connected components are the cells (weight map, Rand error).
        val_size: validation images, a fraction (< 1) or a count; chosen by ``split_seed``.
        crop_size: side of the random training crops (the network input: 572 for the paper's U-Net).
        pad: mirror-pad every training image by this many pixels before cropping, so that a valid
            network's output can reach the image border (92 for the paper's U-Net).
        crops_per_image: training crops per image and epoch.
        batch_size, eval_batch_size: training and validation/test batch sizes (whole images of
            different sizes need ``eval_batch_size: 1``).
        augment: pass training crops through the albumentations pipeline (random crops always).
        elastic, elastic_grid, elastic_sigma: the paper's coarse-grid elastic deformation.
        flips: random flips and 90-degree rotations.
        brightness_contrast: brightness / contrast jitter (0: none).
        weight_maps: compute the U-Net weight map of every label (``w0``, ``sigma``, ``class_weights``).
        mean, std: per-channel normalization of images in [0, 1].
        predict_dir: folder (or one file) of images for ``predict``; None: the layout's default.
        target: ``"two_class"``: the mask's classes (``mask_values`` / ``class_names``); ``"three_class"``:
            background / interior / boundary of the instances (see the module docstring); ``num_classes``
            is then 3 and ``class_names`` ``background, interior, boundary``, while ``mask_values`` and
            ``class_names`` still describe the mask files (kept as ``mask_class_names``).
        boundary_width: ``three_class``: the boundary band in pixels (city-block distance, >= 1;
            :func:`~datamodules.instance_targets.three_class_target`).
    """

    folder: str | None = None  # a layout's data set folder: data_dir may be it or a root holding it
    default_mean: tuple[float, ...] = (0.5,)
    default_std: tuple[float, ...] = (0.25,)

    def __init__(
        self,
        data_dir: str | None = None,
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_values: dict[int, int] | None = None,
        class_names: list[str] | None = None,
        in_channels: int = 1,
        foreground_class: int = 1,
        val_size: float = 0.2,
        split_seed: int = 0,
        crop_size: int = 256,
        pad: int = 0,
        crops_per_image: int = 4,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        augment: bool = True,
        elastic: bool = True,
        elastic_grid: int = 3,
        elastic_sigma: float = 10.0,
        flips: bool = True,
        brightness_contrast: float = 0.1,
        weight_maps: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: str | list[float] | None = "balanced",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        predict_dir: str | None = None,
        target: Target = "two_class",
        boundary_width: int = 2,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if isinstance(boundary_width, bool) or int(boundary_width) != boundary_width or boundary_width < 1:
            raise ValueError(f"boundary_width must be a whole number of pixels >= 1, got {boundary_width!r}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {in_channels}")
        if mask_values is None and class_names is None:
            mask_values, class_names = {0: 0, 255: 1}, ["background", "foreground"]
        if mask_values is None:
            mask_values = {i: i for i in range(len(class_names or []))}
        self.mask_values = {int(k): int(v) for k, v in mask_values.items()}
        self.num_classes = max(self.mask_values.values()) + 1
        if class_names is None:
            class_names = [str(i) for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(
                f"{len(class_names)} class_names {class_names} for the {self.num_classes} classes of "
                f"mask_values {self.mask_values}. Fix: give one name per class index."
            )
        self.class_names = list(class_names)
        self.in_channels = in_channels
        if not 0 <= foreground_class < self.num_classes:
            raise ValueError(f"foreground_class={foreground_class} is not a class index (0..{self.num_classes - 1})")
        self.foreground_class = foreground_class
        self.mask_class_names = list(self.class_names)  # the classes of the mask files, whatever is served
        self.target, self.boundary_width = target, int(boundary_width)
        if target == "three_class":
            # The served classes are the target's; the CLI links these to the model.
            self.num_classes, self.class_names = len(THREE_CLASS_NAMES), list(THREE_CLASS_NAMES)
        self.data_dir = data_dir
        self.image_dir, self.mask_dir = image_dir, mask_dir
        self.val_size, self.split_seed = val_size, split_seed
        self.crop_size, self.pad, self.crops_per_image = crop_size, pad, crops_per_image
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.augment = augment
        self.elastic, self.elastic_grid, self.elastic_sigma = elastic, elastic_grid, elastic_sigma
        self.flips, self.brightness_contrast = flips, brightness_contrast
        self.weight_maps, self.w0, self.sigma, self.class_weights = weight_maps, w0, sigma, class_weights
        self.mean = tuple(mean) if mean is not None else self._default_stat(self.default_mean)
        self.std = tuple(std) if std is not None else self._default_stat(self.default_std)
        if len(self.mean) != in_channels or len(self.std) != in_channels:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel ({in_channels})")
        self.predict_dir = predict_dir
        self.train_samples: list[SegmentationSample] | None = None
        self.val_samples: list[SegmentationSample] | None = None
        self.predict_paths: list[Path] | None = None

    def _default_stat(self, values: tuple[float, ...]) -> tuple[float, ...]:
        return values if len(values) == self.in_channels else (values[0],) * self.in_channels

    # -- layout: subclasses override these two ---------------------------------------------------------
    @property
    def root(self) -> Path:
        """``data_dir`` (default ``$ZOO_DATA_DIR``), or its ``folder`` sub-folder where it holds one."""
        base = resolve_data_dir(self.data_dir)
        return base / self.folder if self.folder and (base / self.folder).is_dir() else base

    def _resolve(self, sub: str) -> Path:
        path = Path(sub).expanduser()
        return path if path.is_absolute() else self.root / path

    def discover(self) -> list[tuple[str, Any]]:
        """``(name, source)`` of every labelled image, in a fixed order; ``source`` goes to :meth:`load`."""
        images = list_images(self._resolve(self.image_dir))
        mask_folder = self._resolve(self.mask_dir)
        if not mask_folder.is_dir():
            raise FileNotFoundError(f"mask folder {mask_folder} does not exist. Fix: set mask_dir.")
        masks = {p.stem: p for p in mask_folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        missing = [p for p in images if p.stem not in masks]
        if missing:
            raise SegmentationDataError(
                f"{len(missing)} image(s) have no mask in {mask_folder}, e.g. {missing[0]} (expected "
                f"{mask_folder / missing[0].stem}.<ext>). Fix: add the masks or remove those images."
            )
        return [(p.stem, (p, masks[p.stem])) for p in images]

    def load(self, name: str, source: Any) -> SegmentationSample:
        image_path, mask_path = source
        image = read_image(image_path, self.in_channels)
        values = read_mask(mask_path)
        check_same_size(image, values, image_path, mask_path)
        return SegmentationSample(name, image, map_mask(values, self.mask_values, mask_path))

    def default_predict_paths(self) -> list[Path]:
        """Images ``predict`` segments when ``predict_dir`` is not set: the validation images."""
        raise SegmentationDataError(
            f"{type(self).__name__} has no default images to predict: set data predict_dir "
            f"(--data.init_args.predict_dir path/to/images)."
        )

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate", "test") and self.train_samples is None:
            entries = self.discover()
            train_idx, val_idx = split_indices(len(entries), self.val_size, self.split_seed)
            samples = [self.load(*entries[i]) for i in train_idx + val_idx]
            self.train_samples, self.val_samples = samples[: len(train_idx)], samples[len(train_idx) :]
            if self.target == "three_class":
                self._add_three_class_targets(samples)
            if self.weight_maps:
                self._add_weight_maps(self.train_samples + self.val_samples)
            rank_zero_info(
                f"{type(self).__name__}: {len(self.train_samples)} training and {len(self.val_samples)} "
                f"validation images from {self.root}"
            )
        if stage in (None, "predict") and self.predict_paths is None:
            if self.predict_dir:
                path = self._resolve(self.predict_dir)
                self.predict_paths = [path] if path.is_file() else list_images(path)
            else:
                self.predict_paths = self.default_predict_paths()

    def _add_three_class_targets(self, samples: list[SegmentationSample]) -> None:
        """Replace every sample's mask by its background / interior / boundary target, once (at setup): the
        target depends on the labels only, and a per-crop computation would cut nuclei at the crop edge."""
        for s in samples:
            if s.instances is None:
                # 4-connected, as the weight map and the Rand error find the cells of a class mask
                s.instances, _ = ndimage.label(s.mask == self.foreground_class)
                s.instances = s.instances.astype(np.int32, copy=False)
            s.mask = three_class_target(s.instances, self.boundary_width)

    def _add_weight_maps(self, samples: list[SegmentationSample]) -> None:
        cache = WeightMapCache(self.w0, self.sigma, self.class_weights)
        for s in samples:
            if s.instances is not None:
                s.weight = cache(s.instances, key=s.name, instances=True)
            else:
                s.weight = cache((s.mask == self.foreground_class).astype(np.uint8), key=s.name, instances=False)
        self.weight_map_cache = cache

    def _padded(self, samples: list[SegmentationSample]) -> list[SegmentationSample]:
        if self.pad <= 0:
            return samples
        p = self.pad

        def mirror(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            return np.pad(a, [(p, p), (p, p)] + [(0, 0)] * (a.ndim - 2), mode="reflect")

        return [SegmentationSample(s.name, mirror(s.image), mirror(s.mask), None, mirror(s.weight)) for s in samples]

    def train_transform(self) -> Any:
        """The albumentations pipeline of the training crops (only the crop when ``augment`` is off)."""
        if not self.augment:
            return segmentation_train_transform(self.crop_size, elastic=False, flips=False, brightness_contrast=0)
        return segmentation_train_transform(
            self.crop_size,
            self.elastic,
            self.elastic_grid,
            self.elastic_sigma,
            self.flips,
            self.brightness_contrast,
        )

    # -- loaders -----------------------------------------------------------------------------------
    def _require(self, samples: Any, what: str) -> Any:
        if samples is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for the {what} dataloader")
        return samples

    def train_dataloader(self) -> DataLoader:
        samples = self._padded(self._require(self.train_samples, "train"))
        dataset = SegmentationCrops(
            samples,
            self.train_transform(),
            self.crops_per_image * len(samples),
            self.mean,
            self.std,
            self.split_seed,
        )
        # Resumable mid-epoch (position and random states in the checkpoint): datamodules.distributed.
        return make_split_loader(
            dataset, self.batch_size, shuffle=True, num_workers=self.num_workers, collate_fn=collate_segmentation
        )

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        # Every image exactly once under DDP (no padding repeats): datamodules.distributed.
        return make_dataloader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_segmentation,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(SegmentationImages(self._require(self.val_samples, "val"), self.mean, self.std))

    def test_dataloader(self) -> DataLoader:
        """The validation images (the shared sets have no labelled test split)."""
        return self._eval_loader(SegmentationImages(self._require(self.val_samples, "test"), self.mean, self.std))

    def predict_dataloader(self) -> DataLoader:
        paths = self._require(self.predict_paths, "predict")
        return DataLoader(
            PredictImages(paths, self.in_channels, self.mean, self.std),
            batch_size=1,
            num_workers=self.num_workers,
            collate_fn=collate_segmentation,
        )


class ISBI2012DataModule(SegmentationFolderDataModule):
    """ISBI 2012 EM membrane segmentation (the U-Net paper's data): ``train/image/<n>.png`` and
    ``train/label/<n>.png``, 512x512 grayscale; ``test/<n>.png`` unlabelled (what ``predict``
    segments by default). Labels: 0 membrane, 255 cell interior -> classes 0 ``membrane``, 1
    ``cell``; the cells are class 1's connected components. ``data_dir`` may be the data set folder
    or a root holding ``isbi2012_em_membrane/``.

    The arguments are those of :class:`SegmentationFolderDataModule` (the U-Net paper's tile by default:
    572x572 crops of images mirror-padded by 92 pixels, one per batch), less ``in_channels`` and
    ``foreground_class`` (grayscale; the cells are class 1).
    """

    folder = "isbi2012_em_membrane"
    default_mean = (0.4928,)
    default_std = (0.1719,)

    def __init__(
        self,
        data_dir: str | None = None,
        image_dir: str = "train/image",
        mask_dir: str = "train/label",
        mask_values: dict[int, int] | None = None,
        class_names: list[str] | None = None,
        val_size: float = 4,
        crop_size: int = 572,
        pad: int = 92,
        crops_per_image: int = 4,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            image_dir=image_dir,
            mask_dir=mask_dir,
            mask_values=mask_values or {0: 0, 255: 1},
            class_names=class_names or ["membrane", "cell"],
            in_channels=1,
            foreground_class=1,
            val_size=val_size,
            crop_size=crop_size,
            pad=pad,
            crops_per_image=crops_per_image,
            batch_size=batch_size,
            **kwargs,
        )

    def default_predict_paths(self) -> list[Path]:
        return list_images(self.root / "test")


class DSB2018DataModule(SegmentationFolderDataModule):
    """2018 Data Science Bowl nuclei (BBBC038v1), Kaggle layout ``stage1_train/<id>/images/<id>.png``
    and ``stage1_train/<id>/masks/*.png`` (one binary mask per nucleus). Classes: 0 ``background``,
    1 ``nucleus`` (the union of the masks) with ``target: two_class`` (default); with ``target: three_class``
    0 ``background``, 1 ``interior``, 2 ``boundary`` (:func:`~datamodules.instance_targets.three_class_target`
    of the nuclei, ``boundary_width`` pixels; Caicedo et al. 2019). The masks are kept as instances, for the
    weight map and the three-class target, and served whole in validation and test batches (``instances``)
    for instance scores (the 2018 Data Science Bowl score).
    Images are RGBA with an opaque alpha: RGB by default (``in_channels: 3``); ``in_channels: 1``
    accepts only the grayscale-like images. Sizes vary (256x256 to 1388x1040): whole-image
    validation needs ``eval_batch_size: 1``. ``predict`` segments the validation images unless
    ``predict_dir`` is set. ``data_dir`` may be the data set folder or a root holding
    ``dsb2018_nuclei/``.

    The arguments are those of :class:`SegmentationFolderDataModule`, less the fixed layout's ``mask_dir``,
    ``mask_values``, ``class_names`` and ``foreground_class``; ``target`` and ``boundary_width`` are listed
    here too, since they are what an instance-segmentation config of this layout sets.
    """

    folder = "dsb2018_nuclei"
    default_mean = (0.2172, 0.2104, 0.2265)
    default_std = (0.3138, 0.3081, 0.3266)

    def __init__(
        self,
        data_dir: str | None = None,
        image_dir: str = "stage1_train",
        in_channels: int = 3,
        crops_per_image: int = 2,
        batch_size: int = 8,
        target: Target = "two_class",
        boundary_width: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            image_dir=image_dir,
            mask_dir="masks",
            mask_values={0: 0, 1: 1},
            class_names=["background", "nucleus"],
            in_channels=in_channels,
            foreground_class=1,
            crops_per_image=crops_per_image,
            batch_size=batch_size,
            target=target,
            boundary_width=boundary_width,
            **kwargs,
        )
        self.overlapping_pixels = 0

    def discover(self) -> list[tuple[str, Any]]:
        folder = self._resolve(self.image_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"DSB2018 folder {folder} does not exist. Fix: set data_dir (or $ZOO_DATA_DIR) to the folder "
                f"holding {self.folder}/{self.image_dir}/, or set image_dir."
            )
        entries = []
        for sample_dir in sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: d.name):
            images = list_images(sample_dir / "images")
            if len(images) != 1:
                raise SegmentationDataError(
                    f"{sample_dir / 'images'} holds {len(images)} images; the DSB2018 layout has exactly one."
                )
            masks = list_images(sample_dir / "masks") if (sample_dir / "masks").is_dir() else []
            entries.append((sample_dir.name, (images[0], masks)))
        if not entries:
            raise FileNotFoundError(
                f"no samples in {folder}: expected sub-folders <id>/images/<id>.png and <id>/masks/*.png."
            )
        return entries

    def load(self, name: str, source: Any) -> SegmentationSample:
        image_path, mask_paths = source
        image = read_image(image_path, self.in_channels)
        masks = []
        for mask_path in mask_paths:
            mask = read_mask(mask_path)
            check_same_size(image, mask, image_path, mask_path)
            if mask.dtype != np.uint8 or ((mask != 0) & (mask != 255) & (mask != 1)).any():
                raise SegmentationDataError(
                    f"nucleus mask {mask_path} holds values {np.unique(mask).tolist()[:10]}; DSB2018 masks are "
                    f"binary (0 and 255). Fix: re-export it as a binary mask."
                )
            masks.append(mask)
        # One rule for pixels in two masks, shared with the instance datamodule: the smaller nucleus keeps them.
        instances, overlapping = (
            labels_from_masks(masks, return_overlap=True) if masks else (np.zeros(image.shape[:2], np.int32), 0)
        )
        self.overlapping_pixels += overlapping
        return SegmentationSample(name, image, (instances > 0).astype(np.uint8), instances)

    def setup(self, stage: str | None = None) -> None:
        first = self.train_samples is None
        super().setup(stage)
        if first and self.train_samples is not None and self.overlapping_pixels:
            rank_zero_info(
                f"DSB2018: {self.overlapping_pixels} pixels lie in two nucleus masks; the smaller mask keeps "
                f"each (datamodules.instance_targets.labels_from_masks)."
            )

    def default_predict_paths(self) -> list[Path]:
        if self.val_samples is None:
            entries = self.discover()
            _, val_idx = split_indices(len(entries), self.val_size, self.split_seed)
            return [entries[i][1][0] for i in val_idx]
        return [self._resolve(self.image_dir) / s.name / "images" / f"{s.name}.png" for s in self.val_samples]


__all__ = [
    "DSB2018DataModule",
    "ISBI2012DataModule",
    "PredictImages",
    "SegmentationCrops",
    "SegmentationDataError",
    "SegmentationFolderDataModule",
    "SegmentationImages",
    "SegmentationSample",
    "collate_segmentation",
    "list_images",
    "map_mask",
    "read_image",
    "read_mask",
    "split_indices",
]

"""In-memory image classification data: decoded once into a tensor, batched by indexing.

A data set of small images (MNIST: 60,000 x 28 x 28 bytes) fits in memory many times over, so
it is decoded once at ``setup`` and each batch is one tensor index, not ``batch_size`` calls to
``__getitem__`` plus a collate. Normalization happens once at load time; augmentation happens per
batch in :meth:`InMemoryClassificationDataModule.on_after_batch_transfer`, on the training split
only, on the device the batch lives on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from datamodules.distributed import make_split_loader
from datamodules.transforms import random_affine_batch

NORMALIZATIONS = ("mean_std", "unit", "symmetric")


class TensorImageDataset(Dataset):
    """Images ``(N, C, H, W)`` (float, normalized) and integer labels ``(N,)`` held in memory.

    ``source_indices`` (default ``0..N-1``) is each sample's position in the official split it was
    taken from (``load_split``'s order). With ``return_indices`` set, samples and batches are
    ``(images, labels, source_indices)`` instead of ``(images, labels)``: what per-sample side data
    stored by position (a teacher's logits for black-box distillation) is looked up with.

    ``__getitems__`` lets the ``DataLoader`` fetch a whole batch with one index operation;
    pair it with :func:`collate_batch`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        source_indices: torch.Tensor | None = None,
        return_indices: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if source_indices is not None and len(source_indices) != len(labels):
            raise ValueError(f"{len(source_indices)} source indices for {len(labels)} samples")
        self.images = images
        self.labels = labels
        self.source_indices = torch.arange(len(labels)) if source_indices is None else source_indices.long()
        self.return_indices = return_indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if self.return_indices:
            return self.images[index], self.labels[index], self.source_indices[index]
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.return_indices:
            return self.images[index], self.labels[index], self.source_indices[index]
        return self.images[index], self.labels[index]


def collate_batch(batch: Any) -> Any:
    """The batch is already stacked by ``TensorImageDataset.__getitems__``; a list of samples
    (a dataset without ``__getitems__``) is stacked the usual way."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)


def deterministic_split(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, holdout) indices, the same for a given ``seed`` on every
    machine and process (its own generator: independent of the global RNG and of ``seed_everything``)."""
    if not 0 <= holdout < n:
        raise ValueError(f"holdout size must be in [0, {n}), got {holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def class_balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted positions of a class-balanced random subset of ``size`` samples of ``labels``.

    Every class present gets ``size // num_classes`` samples (the first ``size % num_classes``
    classes, in label order, one more). The choice depends only on ``labels`` and ``seed`` (its own
    generator), and subsets of growing ``size`` with one ``seed`` are nested (each class takes a
    prefix of the same seeded order). A class with too few samples is an error naming it.
    """
    classes = labels.unique(sorted=True)
    if not len(classes) <= size <= len(labels):
        raise ValueError(
            f"train_subset must be between the number of classes ({len(classes)}) and the number of "
            f"training samples ({len(labels):,}); got {size:,}. Fix: --data.init_args.train_subset "
            f"{len(classes)}..{len(labels)}, or leave it out (the whole training split)."
        )
    per_class, extra = divmod(size, len(classes))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    picked = []
    for i, cls in enumerate(classes.tolist()):
        quota = per_class + (i < extra)
        members = order[labels[order] == cls]
        if len(members) < quota:
            raise ValueError(
                f"class {cls} has {len(members)} training samples, fewer than the {quota} that a "
                f"class-balanced train_subset={size:,} needs. Fix: choose train_subset <= "
                f"{len(members) * len(classes):,}."
            )
        picked.append(members[:quota])
    return torch.cat(picked).sort().values


class InMemoryClassificationDataModule(pl.LightningDataModule):
    """Base for small classification sets held in memory. Subclasses implement :meth:`load_split`.

    Attributes read by the model through LightningCLI links: ``num_classes``, ``in_channels``,
    ``class_names``.

    Options shared by every subclass besides batching, splitting and augmentation:

    - ``train_subset``: keep only a deterministic class-balanced subset of this many training
      images (after the validation split; chosen by ``split_seed``, see
      :func:`class_balanced_subset`), for label-efficiency and transfer experiments. Validation
      and test sets are unchanged.
    - ``return_indices``: batches are ``(images, labels, source_indices)``, each sample's position
      in the official split it came from (see :class:`TensorImageDataset`).
    - ``normalization``: ``"mean_std"`` (the default: ``(x - mean) / std``, what classifiers train
      on), ``"unit"`` (pixels in [0, 1]: autoencoders and VAEs with a sigmoid/Bernoulli output) or
      ``"symmetric"`` (pixels in [-1, 1]: GANs with a tanh generator, Radford et al. 2016).
    - ``anomaly_class``: leave this class out of the training split (validation and test keep
      every class), for anomaly detection by reconstruction error: the held-out class is the
      anomaly (``zoo.generative.AutoEncoder`` reads it from the datamodule and reports AUROC).
    """

    num_classes: int
    in_channels: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        augment: bool = True,
        rotation_degrees: float = 10.0,
        translate_px: float = 2.0,
        scale: float = 0.1,
        eval_batch_size: int = 1000,
        train_subset: int | None = None,
        return_indices: bool = False,
        normalization: Literal["mean_std", "unit", "symmetric"] = "mean_std",
        anomaly_class: int | None = None,
    ) -> None:
        """
        Args:
            batch_size: training batch size (evaluation uses ``eval_batch_size``).
            num_workers: DataLoader worker processes; 0 is fastest for in-memory data.
            val_size: images of the official training set held out for validation.
            split_seed: seed of the train/validation split (independent of the training seed).
            augment: random rotation / scale / shift of training batches (never val/test).
            rotation_degrees: the augmentation's random rotation, up to +- this many degrees.
            translate_px: the augmentation's random shift, up to +- this many pixels in x and y.
            scale: the augmentation's random isotropic scaling, by a factor in 1 +- ``scale``.
            eval_batch_size: validation and test batch size.
            train_subset: keep a deterministic class-balanced subset of this many training images.
            return_indices: batches carry each image's index in the official split as a third element.
            normalization: ``mean_std`` (classifiers), ``unit`` ([0, 1]) or ``symmetric`` ([-1, 1]) pixels.
            anomaly_class: leave this class out of the training split (anomaly detection).
        """
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}. "
                             f"Fix: --data.init_args.normalization {NORMALIZATIONS[0]}")
        for name, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                   ("num_workers", num_workers, 0), ("val_size", val_size, 0),
                                   ("train_subset", train_subset, 1)):  # fmt: skip
            if value is not None and value < least:
                raise ValueError(f"{type(self).__name__}: {name}={value}. Fix: --data.init_args.{name} >= {least}"
                                 + (" (or leave it out: the whole training split)" if name == "train_subset" else ""))
        self.normalization, self.anomaly_class = normalization, anomaly_class
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_size, self.split_seed, self.train_subset = val_size, split_seed, train_subset
        self.augment, self.rotation_degrees = augment, rotation_degrees
        self.translate_px, self.scale = translate_px, scale
        self.return_indices = return_indices
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None

    # -- subclasses ------------------------------------------------------------------------------
    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images uint8 (N, C, H, W), labels int64 (N,))`` of the official train or test split."""
        raise NotImplementedError

    # -- data --------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [0, 1] -> (x - mean) / std per channel (``normalization="mean_std"``);
        [0, 1] (``"unit"``) or [-1, 1] (``"symmetric"``) for generative models."""
        unit = images.float().div_(255)
        if self.normalization == "unit":
            return unit
        if self.normalization == "symmetric":
            return unit.mul_(2).sub_(1)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (unit - mean) / std

    @property
    def background(self) -> float:
        """The normalized value of a black pixel: what augmentation fills uncovered pixels with."""
        return float(self.normalize(torch.zeros(1, len(self.mean), 1, 1, dtype=torch.uint8)).flatten()[0])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self.load_split(train=True)
            if self.val_size >= len(labels):
                raise ValueError(
                    f"{type(self).__name__}: val_size={self.val_size:,} but the training split has {len(labels):,} "
                    f"images. Fix: --data.init_args.val_size below {len(labels):,} (default 5000)."
                )
            train_idx, val_idx = deterministic_split(len(labels), self.val_size, self.split_seed)
            if self.anomaly_class is not None:
                train_idx = self._drop_anomalies(labels, train_idx)
            if self.train_subset is not None:
                kept = class_balanced_subset(labels[train_idx], self.train_subset, self.split_seed)
                rank_zero_info(
                    f"{type(self).__name__}: train_subset={self.train_subset:,} keeps a class-balanced "
                    f"{len(kept):,} of the {len(train_idx):,} training images (validation unchanged)."
                )
                train_idx = train_idx[kept]
            images = self.normalize(images)
            self.train_set = TensorImageDataset(images[train_idx], labels[train_idx], train_idx)
            self.val_set = TensorImageDataset(images[val_idx], labels[val_idx], val_idx)
        if stage in (None, "test", "predict") and self.test_set is None:
            images, labels = self.load_split(train=False)
            self.test_set = TensorImageDataset(self.normalize(images), labels)

    def _drop_anomalies(self, labels: torch.Tensor, train_idx: torch.Tensor) -> torch.Tensor:
        if not 0 <= self.anomaly_class < self.num_classes:
            raise ValueError(
                f"anomaly_class={self.anomaly_class} is not a class of {type(self).__name__} "
                f"(classes 0..{self.num_classes - 1}: {', '.join(self.class_names)})."
            )
        kept = train_idx[labels[train_idx] != self.anomaly_class]
        rank_zero_info(
            f"{type(self).__name__}: anomaly_class={self.anomaly_class} ({self.class_names[self.anomaly_class]}) "
            f"leaves {len(train_idx) - len(kept):,} of {len(train_idx):,} training images out; validation "
            f"and test keep every class."
        )
        return kept

    def _loader(self, dataset: TensorImageDataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        # Read when the loader is made, so that a model may switch it on in its own setup
        # (zoo.classification.distill does, for black-box distillation).
        dataset.return_indices = self.return_indices
        return make_split_loader(dataset, batch_size, shuffle, self.num_workers, collate_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -- augmentation ------------------------------------------------------------------------------
    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """The training augmentation (random rotation, scale and shift) of a normalized batch."""
        return random_affine_batch(
            images, self.rotation_degrees, self.translate_px, self.scale, fill=self.background
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Only the training loop augments: validation, test and predict see the images as they are.
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training:
            images, *rest = batch  # (images, labels) or (images, labels, source indices)
            batch = (self.augment_batch(images), *rest)
        return batch

"""scikit-learn's bundled 8x8 handwritten digits (Alpaydin & Kaynak 1998, UCI "Optical
Recognition of Handwritten Digits"): 1,797 images that ship inside scikit-learn, so this
datamodule runs anywhere with no download. The zoo's smoke-test and quick-start data set.
"""

from __future__ import annotations

from typing import Any

import torch

from datamodules.base import InMemoryClassificationDataModule


class DigitsDataModule(InMemoryClassificationDataModule):
    """8x8 grayscale digits, 10 classes. The 1,797 images are split deterministically into
    test (``test_size``), validation (``val_size``) and training (the rest)."""

    num_classes = 10
    in_channels = 1
    class_names = [str(d) for d in range(10)]
    # Pixel values are 0..16 in the source; after scaling to 0..255 these are the set's statistics.
    mean = (0.3053,)
    std = (0.3760,)

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int = 180,
        test_size: int = 360,
        rotation_degrees: float = 8.0,
        translate_px: float = 0.5,
        scale: float = 0.05,
        eval_batch_size: int = 512,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            test_size: images carved out first as the test split (the rest is split into training and
                validation, ``val_size`` images, by ``split_seed``).
            **kwargs: the other options of :class:`~datamodules.base.InMemoryClassificationDataModule`
                (whose batching, splitting and augmentation defaults are restated here for 8x8 images).
        """
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size,
            rotation_degrees=rotation_degrees, translate_px=translate_px, scale=scale, **kwargs,
        )  # fmt: skip
        self.test_size = test_size

    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
        return images, torch.from_numpy(digits.target).long()

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # A fixed test split carved out first (seeded apart from split_seed, so changing the
        # validation split never leaks test images into training).
        images, labels = self._all()
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1797))
        idx = perm[: self.test_size] if not train else perm[self.test_size :]
        idx = idx.sort().values
        return images[idx], labels[idx]

"""What every generative LightningModule of the zoo shares: the image range, input checks,
checkpoint type checks, sample-quality metrics at validation end (FID and the 1-NN test) and the
NaN-loss stop."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from zoo.generative.metrics import (
    FeatureExtractor,
    check_finite_losses,
    extract_features,
    frechet_distance,
    one_nn_accuracy,
)
from zoo.utils.checkpoint import ZooCheckpointMixin, checkpoint_model_class

ImageRange = Literal["unit", "symmetric"]
RANGES: dict[str, tuple[float, float]] = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
NORMALIZATION_FOR_RANGE = {"unit": "unit", "symmetric": "symmetric"}  # the datamodule option that gives it


class WrongCheckpointError(TypeError):
    """A checkpoint written by another kind of model than the one asked to load it."""


def _resolve(class_path: str) -> type | None:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return None


def check_checkpoint_class(path: str | Path, expected: type | str, unknown_ok: bool = True) -> None:
    """Raise :class:`WrongCheckpointError` naming the file, its model type and the fix when the
    checkpoint at ``path`` was written by another LightningModule class than ``expected``.

    A checkpoint that does not name its writer passes when ``unknown_ok``. LightningCLI would
    otherwise silently switch ``model.class_path`` to the checkpoint's class on ``--ckpt_path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    expected_cls = _resolve(expected) if isinstance(expected, str) else expected
    expected_name = expected if isinstance(expected, str) else f"{expected.__module__}.{expected.__qualname__}"
    written_by = checkpoint_model_class(checkpoint)
    if written_by is None:
        if unknown_ok:
            return
        hparams = checkpoint.get("hyper_parameters") or {}
        hint = f" (its hyperparameters name backbone={hparams['backbone']!r})" if "backbone" in hparams else ""
        written_by = f"a model that does not record its class{hint}"
    elif expected_cls is not None and _resolve(written_by) is expected_cls or written_by == expected_name:
        return
    raise WrongCheckpointError(
        f"{path} was written by {written_by}, not by {expected_name}. Fix: use the config (model.class_path) "
        f"of the model that wrote it, or a {expected_name.rpartition('.')[2]} checkpoint."
    )


class GenerativeModule(ZooCheckpointMixin, pl.LightningModule):
    """Base of ``AutoEncoder``, ``VAE`` and ``GAN``.

    Args:
        in_channels: image channels (linked from the datamodule by ``train.py``).
        image_size: height = width of the images (28 for MNIST).
        image_range: ``unit`` ([0, 1], sigmoid output) or ``symmetric`` ([-1, 1], tanh output);
            set the datamodule's ``normalization`` to the same value.
        metric_samples: real validation images (and as many generated ones) for FID and the 1-NN
            test at validation end (models that sample: VAE, GAN, DCGAN).
        fid_classifier: path of an ``ImageClassifier`` checkpoint whose penultimate features FID
            uses (``python -m zoo.generative.features --out PATH`` trains the default one). Without
            it (and without ``fid_inception_weights``) FID is skipped and the 1-NN test runs on pixels.
        fid_inception_weights: path of local Inception v3 FID weights: torchmetrics' Inception
            features instead (needs ``torch-fidelity``).

    Every subclass also takes ``num_classes`` and ``class_names``: ``train.py`` links them from the
    datamodule to every model (and a checkpoint's hyperparameters carry them back on ``predict`` /
    ``validate --ckpt_path``); generative models do not use them.
    """

    can_sample = False  # models with a prior / generator set this: FID and 1-NN at validation end

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        image_range: ImageRange = "unit",
        metric_samples: int = 1000,
        fid_classifier: str | None = None,
        fid_inception_weights: str | None = None,
    ) -> None:
        super().__init__()
        if image_range not in RANGES:
            raise ValueError(f"image_range must be 'unit' or 'symmetric', got {image_range!r}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.image_range = image_range
        self.metric_samples = metric_samples
        self.fid_classifier = fid_classifier
        self.fid_inception_weights = fid_inception_weights
        self._checked_stages: set[str] = set()
        self._val_real: list[torch.Tensor] = []
        # Not a submodule: the extractor's weights belong to its own checkpoint, not to this model's.
        self.__dict__["_extractor"] = None

    # -- image range ---------------------------------------------------------------------------------
    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Images of this model's range mapped to [0, 1] (for grids, features and metrics)."""
        return (images + 1) / 2 if self.image_range == "symmetric" else images

    def from_unit(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1 if self.image_range == "symmetric" else images

    def sample(self, n: int) -> torch.Tensor:
        """``n`` generated images in the model's range (models with ``can_sample``)."""
        raise NotImplementedError(f"{type(self).__name__} does not generate images from a prior")

    # -- checks ----------------------------------------------------------------------------------------
    def check_batch(self, stage: str, images: torch.Tensor) -> None:
        """Shape and value range of the first batch of each stage; an error names the fix."""
        if stage in self._checked_stages:
            return
        self._checked_stages.add(stage)
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{stage} batch has shape {tuple(images.shape)}, but {type(self).__name__} expects "
                f"(N, {', '.join(map(str, expected))}). Fix: set in_channels / image_size to the data's."
            )
        low, high = RANGES[self.image_range]
        lo, hi = float(images.min()), float(images.max())
        if lo < low - 1e-3 or hi > high + 1e-3:
            raise ValueError(
                f"{stage} batch has pixel values in [{lo:.3g}, {hi:.3g}], but {type(self).__name__} "
                f"(image_range={self.image_range!r}) models images in [{low:g}, {high:g}]. Fix: set the "
                f"datamodule's normalization to {NORMALIZATION_FOR_RANGE[self.image_range]!r} "
                f"(--data.init_args.normalization {NORMALIZATION_FOR_RANGE[self.image_range]})."
            )

    def check_losses(self, **losses: torch.Tensor) -> None:
        """Stop with the step and every loss value when a loss is NaN or infinite."""
        check_finite_losses(losses, self.global_step, self.current_epoch)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, after checking that the file holds this model type."""
        if isinstance(checkpoint_path, (str, Path)):
            check_checkpoint_class(checkpoint_path, cls, unknown_ok=False)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the state dict is loaded (Trainer ckpt_path and load_from_checkpoint alike):
        # a checkpoint of another model fails here with its type named, not with a key mismatch.
        written_by = checkpoint_model_class(checkpoint)
        wanted = f"{type(self).__module__}.{type(self).__qualname__}"
        if written_by is not None and (written_by == wanted or _resolve(written_by) is type(self)):
            return
        if written_by is None:
            hparams = checkpoint.get("hyper_parameters") or {}
            hint = f" (its hyperparameters name backbone={hparams['backbone']!r})" if "backbone" in hparams else ""
            written_by = f"a model that is not a zoo generative model{hint}"
        raise WrongCheckpointError(
            f"This checkpoint was written by {written_by}, but it is being loaded into {wanted}. Fix: use the "
            f"config (model.class_path) of the model that wrote it, or a {type(self).__name__} checkpoint."
        )

    # -- sample quality ------------------------------------------------------------------------------
    def feature_extractor(self) -> FeatureExtractor | None:
        """The FID feature extractor named by ``fid_classifier`` / ``fid_inception_weights`` (or None)."""
        if self._extractor is None and (self.fid_classifier or self.fid_inception_weights):
            from zoo.generative.features import ClassifierFeatures, InceptionFeatures

            if self.fid_inception_weights:
                self.__dict__["_extractor"] = InceptionFeatures(self.fid_inception_weights)
            else:
                self.__dict__["_extractor"] = ClassifierFeatures.from_checkpoint(self.fid_classifier)
        if self._extractor is not None:
            self._extractor.to(self.device)
        return self._extractor

    def set_feature_extractor(self, extractor: FeatureExtractor | None) -> None:
        """Use any callable mapping [0, 1] images to ``(N, D)`` features for FID and the 1-NN test."""
        self.__dict__["_extractor"] = extractor

    @torch.no_grad()
    def sample_quality(self, real_images: torch.Tensor, num_samples: int | None = None) -> dict[str, float]:
        """FID (when a feature extractor is set) and the 1-NN accuracy of generated vs ``real_images``.

        ``real_images`` are in [0, 1]; as many samples as real images are generated (or
        ``num_samples``). The 1-NN test runs on the FID features when there are any, else on pixels.
        Usable from a checkpoint: ``VAE.load_from_checkpoint(path).sample_quality(images)``.
        """
        was_training = self.training
        self.eval()
        try:
            n = num_samples or len(real_images)
            fake = torch.cat([self.to_unit(self.sample(min(500, n - i))).clamp(0, 1) for i in range(0, n, 500)])
        finally:
            self.train(was_training)
        real_images = real_images.to(fake.device)
        extractor = self.feature_extractor()
        metrics: dict[str, float] = {}
        if extractor is not None:
            real_f, fake_f = extract_features(extractor, real_images), extract_features(extractor, fake)
            metrics["fid"] = float(frechet_distance(real_f, fake_f))
            metrics["nn_accuracy"] = float(one_nn_accuracy(real_f, fake_f))
        else:
            metrics["nn_accuracy"] = float(one_nn_accuracy(real_images, fake))
        return metrics

    def collect_real(self, images: torch.Tensor) -> None:
        """Keep the first ``metric_samples`` validation images (in [0, 1]) for the metrics."""
        if not self.can_sample or self.metric_samples <= 0:
            return
        have = sum(len(x) for x in self._val_real)
        if have < self.metric_samples:
            self._val_real.append(self.to_unit(images[: self.metric_samples - have]).detach())

    def log_sample_quality(self, stage: str = "val") -> None:
        real, self._val_real = self._val_real, []
        if not real or self.trainer.sanity_checking:
            return
        metrics = self.sample_quality(torch.cat(real))
        for name, value in metrics.items():
            if math.isfinite(value):
                self.log(f"{stage}/{name}", value, prog_bar=True, sync_dist=True)
        if "fid" not in metrics and self.current_epoch == 0 and stage == "val":
            rank_zero_info(
                f"{type(self).__name__}: no FID feature extractor set (fid_classifier), so FID is skipped and the "
                "1-NN test runs on pixels. `python -m zoo.generative.features --out PATH` trains one."
            )

    # -- shared loop pieces ------------------------------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        self.log_sample_quality("val")

    def on_test_epoch_end(self) -> None:
        self.log_sample_quality("test")

    def configure_callbacks(self) -> list[pl.Callback]:
        """When predicting, a writer of the outputs (grid PNG + tensors) unless one is configured."""
        if self._trainer is None or self.trainer.state.fn != "predict":
            return []
        from zoo.callbacks.samples import GenerativePredictionWriter

        if any(isinstance(c, GenerativePredictionWriter) for c in self.trainer.callbacks):
            return []
        return [GenerativePredictionWriter()]

    def sample_grids(self) -> dict[str, torch.Tensor]:
        """Named image grids ``(N, C, H, W)`` in [0, 1] for the sample-grid callback."""
        return {}

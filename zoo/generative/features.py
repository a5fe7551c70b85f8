"""Feature extractors for FID: a zoo classifier trained on real MNIST (the default for MNIST-like
data), or torchmetrics' Inception v3 from a local weights file.

Inception features (Heusel et al. 2017) were made for 299x299 colour photographs; on 28x28 digits a
classifier trained on the digits themselves is the usual substitute, and costs no download. The
zoo's default is LeNet-5 (``lenet5``) trained for one epoch on the MNIST training split (about
98.5% test accuracy, half a minute on a CPU) by the training script
:mod:`zoo.evaluation.fid_features` (a tool above the families: it trains a classifier for the generative
family, which imports no other family):

    python -m zoo.evaluation.fid_features --out checkpoints/fid_lenet5_mnist.ckpt

Its features are the **input of the last linear layer** (LeNet-5: the 84 F6 activations,
``net.classifier.2``'s output; ``convnet``: the 576 pooled, flattened conv features): the
penultimate layer, as pool3 is for Inception. FID values computed with different extractors (or
checkpoints) are not comparable: report which checkpoint was used.

Every extractor here takes images in [0, 1] and converts them to what its network expects.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from zoo.core.weight_sources import resolve_weights

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
AUTO = "auto"  # fid_classifier: the default LeNet-5 features, trained once into the cache (train.py does it)


def default_feature_classifier_path() -> Path:
    """Where ``fid_classifier: auto`` keeps the default LeNet-5 MNIST feature classifier:
    ``$ZOO_CACHE_DIR/fid_lenet5_mnist.ckpt``, by default ``~/.cache/vision-zoo/fid_lenet5_mnist.ckpt``."""
    import os

    root = os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "vision-zoo"
    return Path(root) / "fid_lenet5_mnist.ckpt"


def resolve_feature_classifier(fid_classifier: str | None) -> str | None:
    """``fid_classifier`` as a path: ``auto`` is :func:`default_feature_classifier_path`."""
    return str(default_feature_classifier_path()) if fid_classifier == AUTO else fid_classifier


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer whose input could serve as features")
    return linears[-1]


class ClassifierFeatures(nn.Module):
    """Penultimate-layer features of a zoo classifier: the input of its last ``nn.Linear``.

    Args:
        classifier: an ``ImageClassifier`` (or any network) trained on normalized images.
        mean, std: the normalization the classifier was trained with (MNIST's by default);
            inputs in [0, 1] are converted to it.

    The network stays in eval mode and its parameters are frozen: FID needs fixed features.
    """

    def __init__(self, classifier: nn.Module, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.net = getattr(classifier, "net", classifier)
        self.layer_name, layer = _last_linear(self.net)
        self.num_features = layer.in_features  # read by torchmetrics' FID instead of a dummy forward pass
        self.mean, self.std = mean, std
        self._captured: torch.Tensor | None = None
        layer.register_forward_hook(self._capture)
        self.requires_grad_(False)
        self.eval()

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._captured = inputs[0]

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # batch-norm statistics and dropout must not change the features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` features of images ``(N, C, H, W)`` in [0, 1]."""
        self.net((images.float() - self.mean) / self.std)
        features, self._captured = self._captured, None
        assert features is not None
        return features.flatten(1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> ClassifierFeatures:
        """Load a zoo classifier checkpoint (e.g. from ``python -m zoo.evaluation.fid_features``), through the
        family-neutral :func:`zoo.core.checkpoint.load_zoo_module`."""
        from zoo.core.checkpoint import CheckpointError, load_zoo_module

        path = Path(resolve_feature_classifier(str(path)))
        if not path.is_file():
            raise FileNotFoundError(
                f"FID feature classifier {path} not found. Fix: train it once with "
                f"`python -m zoo.evaluation.fid_features --out {path}` (about half a minute on a CPU; train.py "
                f"does it by itself for fid_classifier: auto), or point fid_classifier at an existing "
                f"ImageClassifier checkpoint, or set it to null (FID skipped, 1-NN on pixels)."
            )
        try:
            model = load_zoo_module(path)
        except (CheckpointError, KeyError, TypeError, RuntimeError) as err:
            raise ValueError(f"{path} is not an ImageClassifier checkpoint ({type(err).__name__}: {err})") from err
        if getattr(model, "family", None) != "classification":
            raise ValueError(
                f"{path} is not an ImageClassifier checkpoint: it holds a {type(model).__name__} "
                f"({getattr(model, 'family', None)} family). Fix: point fid_classifier at a classifier checkpoint."
            )
        return cls(model, mean, std)


# torch-fidelity's release of the FID reference weights (its file name carries its sha256 prefix, 6726825d).
FID_INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


class InceptionFeatures(nn.Module):
    """Inception v3 pool3 features (2048) as in Heusel et al. 2017, through torchmetrics, from the FID reference
    weights (``pt_inception-2015-12-05-6726825d.pth``): a local file, or a URL (:data:`FID_INCEPTION_URL`) that
    :func:`zoo.core.weight_sources.resolve_weights` downloads once into the cache and checks by hash.

    Grayscale inputs are repeated to three channels; torchmetrics resizes to 299x299. Needs the
    ``torch-fidelity`` package (``pip install torch-fidelity``).
    """

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        try:
            weights_path = resolve_weights(weights_path).path
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err} The FID Inception weights are pt_inception-2015-12-05-6726825d.pth; "
                f"fid_inception_weights: {FID_INCEPTION_URL} downloads them."
            ) from None
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError(
                "Inception FID needs the torch-fidelity package: pip install torch-fidelity "
                "(or use the zoo classifier features: fid_classifier=...)."
            )
        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights_path)
        )
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.inception((images.clamp(0, 1) * 255).to(torch.uint8)).reshape(len(images), -1)

"""What every generative LightningModule of the zoo shares (on top of :class:`zoo.core.module.ZooModule`): the
image range, the network from the ``generative`` registry family, input checks, the reading of older checkpoints,
sample-quality metrics at validation end (FID and the 1-NN test), sample-weighted evaluation losses and the
NaN-loss stop.

Evaluation gives the same numbers on any number of processes (Lightning's DDP with the zoo's
:class:`datamodules.distributed.EverySampleOnceSampler`, which splits the evaluation set without
repeating a sample):

* losses are means over samples (torchmetrics ``MeanMetric`` summed over the processes once, at epoch
  end), not means of per-process means (``self.log(..., sync_dist=True)``, biased when the processes
  hold different numbers of samples);
* every random draw of an evaluation is a function of a fixed seed and of the sample's index in the
  evaluation set (the VAE's reparameterisation noise), or of a fixed seed alone (the prior samples of
  FID and the 1-NN test), never of the global random stream, which differs between processes;
* FID and the 1-NN test run on the features of the same real images (the first ``metric_samples`` of the
  evaluation set, gathered from every process) and of the same generated images (from a fixed noise
  batch, generated in shares by the processes and gathered back in order), so every process computes
  the value of a single process.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import DistributedSampler, SequentialSampler
from torchmetrics import MeanMetric

from zoo.core.checkpoint import CheckpointError
from zoo.core.module import ZooModule
from zoo.core.registry import get_model_entry
from zoo.core.reliability import check_finite_losses
from zoo.generative.metrics import FeatureExtractor, extract_features, frechet_distance, one_nn_accuracy

log = logging.getLogger(__name__)

ImageRange = Literal["unit", "symmetric"]
RANGES: dict[str, tuple[float, float]] = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
NORMALIZATION_FOR_RANGE = {"unit": "unit", "symmetric": "symmetric"}  # the datamodule option that gives it
SAMPLE_SEED = 0  # the noise of the generated images that FID and the 1-NN test score (the same every epoch)
EVAL_NOISE_SEED = 1_000_003  # per-sample evaluation noise: sample i draws from a generator seeded EVAL_NOISE_SEED + i


def fixed_normal(ids: torch.Tensor, dim: int, seed: int = EVAL_NOISE_SEED) -> torch.Tensor:
    """``(len(ids), dim)`` standard normal noise whose row ``k`` depends only on ``seed + ids[k]``: a sample
    gets the same noise whatever batch, process or epoch evaluates it, and the global random stream is
    left alone (about 5 us a sample). On the CPU (move it to the model's device)."""
    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(seed + int(i))) for i in ids.tolist()]
    return torch.stack(rows) if rows else torch.empty(0, dim)


def _unique_by_id(ids: torch.Tensor, rows: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` sorted by ``ids``, one row per id (a padding sampler's repeated sample counts once), the first
    ``limit``."""
    ids, order = ids.sort(stable=True)
    first = torch.ones_like(ids, dtype=torch.bool)
    first[1:] = ids[1:] != ids[:-1]
    ids, order = ids[first][:limit], order[first][:limit]
    return ids, rows[order.to(rows.device)]


def network_part(name: str) -> property:
    """A read-only attribute for ``self.net.<name>`` (``encoder``, ``generator``, ...): the part is registered once,
    under ``net``, so that its weights appear once in the state dict (``net.<name>.*``)."""
    return property(lambda self: getattr(self.net, name), doc=f"The network's {name} (``self.net.{name}``).")


@dataclass(frozen=True)
class NetworkKind:
    """What the models of one kind of network (the ``kind`` of the networks of the ``generative`` registry family)
    know of it; a model names its kind in :attr:`GenerativeModule.network_kind` and gets these as class attributes.

    Attributes:
        parts: the network's parts, each a read-only attribute of the model (:func:`network_part`).
        options: the width arguments of the kind's builders, which its models take too and pass on.
        arch_networks: the ``arch`` values of checkpoints older than the registry -> registered network names.
    """

    parts: tuple[str, ...]
    options: tuple[str, ...]
    arch_networks: Mapping[str, str]


def _encoder_decoder(kind: str) -> NetworkKind:
    """The kind ``kind`` of :class:`~zoo.generative.models.autoencoder.EncoderDecoder`, built by ``<kind>_mlp`` and
    ``<kind>_conv``."""
    arch_networks = {"mlp": f"{kind}_mlp", "conv": f"{kind}_conv"}
    return NetworkKind(("encoder", "decoder"), ("hidden_dims", "conv_channels"), arch_networks)


NETWORK_KINDS: dict[str, NetworkKind] = {
    "autoencoder": _encoder_decoder("autoencoder"),
    "vae": _encoder_decoder("vae"),
    "gan": NetworkKind(
        ("generator", "discriminator"), ("width", "generator_extra_layers"), {"mlp": "gan_mlp", "conv": "dcgan"}
    ),
}


class GenerativeModule(ZooModule):
    """Base of ``AutoEncoder``, ``VAE`` and ``GAN``: a :class:`~zoo.core.module.ZooModule` of the ``generative``
    registry family (the optimizer, the scheduler, checkpoints and the fit check come from there).

    Args:
        in_channels: image channels (``train.py`` links the datamodule's; checked against it otherwise).
        image_size: height = width of the images (28 for MNIST).
        image_range: ``unit`` ([0, 1], sigmoid output) or ``symmetric`` ([-1, 1], tanh output);
            set the datamodule's ``normalization`` to the same value.
        metric_samples: real validation images (and as many generated ones) for FID and the 1-NN
            test at validation end (models that sample: VAE, GAN, DCGAN).
        fid_classifier: path of an ``ImageClassifier`` checkpoint whose penultimate features FID
            uses (``python -m zoo.evaluation.fid_features --out PATH`` trains the default one), or ``auto``:
            the default one in the cache (``zoo.generative.features.default_feature_classifier_path``), which
            ``train.py`` trains on first use. Without it (and without ``fid_inception_weights``) FID is
            skipped and the 1-NN test runs on pixels. A missing file stops the run before the first step.
        fid_inception_weights: the Inception v3 FID weights (a local file, or a URL such as
            ``zoo.generative.features.FID_INCEPTION_URL``, downloaded once and hash-checked): torchmetrics'
            Inception features instead (needs ``torch-fidelity``).
        network_kwargs: other keyword arguments of the network's builder (e.g. ``gan_mlp``'s ``dropout``);
            not those the model takes itself (``in_channels``, ``image_size``, ``latent_dim``, the width arguments).
        optimizer: any ``torch.optim`` class with its arguments (default Adam).
        lr_scheduler, lr_scheduler_interval, compile, compile_mode: see :class:`zoo.core.module.ZooModule`.

    Checkpoints of the code before the registry (hyperparameter ``arch``, ``num_classes``, ``class_names``; the
    network's parts at the top of the state dict) load: :meth:`migrate_hyperparameters`, :meth:`on_load_checkpoint`.
    """

    family = "generative"
    can_sample = False  # models with a prior / generator set this: FID and 1-NN at validation end
    network_kind: ClassVar[str] = ""  # the ``kind`` of network the subclass needs: a key of NETWORK_KINDS
    arch_networks: ClassVar[Mapping[str, str]] = {}  # older ``arch`` values -> registered network names
    network_options: ClassVar[tuple[str, ...]] = ()  # init arguments passed on to the network's builder
    removed_arguments: ClassVar[tuple[str, ...]] = ("num_classes", "class_names")  # dropped from older checkpoints

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that sets ``network_kind`` gets that kind's :data:`NETWORK_KINDS` entry: ``arch_networks``,
        ``network_options`` and one read-only attribute per network part (``self.encoder`` is ``self.net.encoder``)."""
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("network_kind"):
            kind = NETWORK_KINDS[cls.network_kind]
            cls.arch_networks, cls.network_options = kind.arch_networks, kind.options
            for part in kind.parts:
                setattr(cls, part, network_part(part))

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        image_range: ImageRange = "unit",
        metric_samples: int = 1000,
        fid_classifier: str | None = None,
        fid_inception_weights: str | None = None,
        network_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        if image_range not in RANGES:
            raise ValueError(f"image_range must be 'unit' or 'symmetric', got {image_range!r}")
        self.in_channels, self.image_size, self.image_range = in_channels, image_size, image_range
        self.metric_samples = metric_samples
        self.fid_classifier, self.fid_inception_weights = fid_classifier, fid_inception_weights  # FID features
        self.network_kwargs = dict(network_kwargs or {})
        self._checked_stages: set[str] = set()
        self._val_real: list[tuple[torch.Tensor, torch.Tensor]] = []  # (dataset indices, images in [0, 1])
        self._eval_ids: torch.Tensor | None = None  # dataset indices this process evaluates, in order
        self._eval_seen = 0
        self.eval_means = nn.ModuleDict()  # stage -> name -> MeanMetric (see init_eval_means)
        # Not a submodule: the extractor's weights belong to its own checkpoint, not to this model's.
        self.__dict__["_extractor"] = None

    # -- the network -----------------------------------------------------------------------------------
    def build_generative_network(self, network: str, latent_dim: int, **options: Any) -> nn.Module:
        """The registered ``network`` for this model's images (``in_channels``, ``image_size``) and ``latent_dim``,
        with ``network_kwargs``; ``options`` (the width arguments) left at None take the builder's defaults. The
        network must be of this class's ``network_kind``."""
        own = {"in_channels", "image_size", "latent_dim", *options}
        if own & set(self.network_kwargs):
            raise ValueError(
                f"network_kwargs must not set {sorted(own & set(self.network_kwargs))}: they are arguments of "
                f"{type(self).__name__} (set them there)."
            )
        given = {name: value for name, value in options.items() if value is not None}
        net = self.build_network(
            network, in_channels=self.in_channels, image_size=self.image_size, latent_dim=latent_dim,
            **given, **self.network_kwargs,
        )
        kind = getattr(net, "kind", None)
        if kind != self.network_kind:
            raise ValueError(
                f"network {network!r} builds networks of kind {kind!r}, but {type(self).__name__} needs kind "
                f"{self.network_kind!r}. Fix: pick a generative network of that kind (zoo.list_models(family="
                f"'generative') lists them; the default is {self.default_network()!r})."
            )
        return net

    def called_networks(self) -> dict[str, nn.Module]:
        """``compile`` compiles the network's parts (``encoder`` / ``decoder``, ``generator`` / ``discriminator``):
        the steps call them, never the whole network's forward."""
        return {part: getattr(self.net, part) for part in NETWORK_KINDS[self.network_kind].parts}

    @classmethod
    def default_network(cls) -> str | None:
        """The default of the ``network`` argument."""
        parameter = inspect.signature(cls.__init__).parameters.get("network")
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default

    # -- older checkpoints -----------------------------------------------------------------------------
    @classmethod
    def migrate_hyperparameters(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Hyperparameters of an older checkpoint as ``__init__`` takes them now: ``arch`` (``mlp``, ``conv``)
        becomes the registered ``network`` (:attr:`arch_networks`), the width arguments the old ``arch`` ignored
        are dropped, and so are ``num_classes`` / ``class_names`` (never used by a generative model)."""
        out = super().migrate_hyperparameters(hparams)
        for name in cls.removed_arguments:
            out.pop(name, None)
        if "arch" in out and "network" not in out:
            arch = out.pop("arch")
            if arch not in cls.arch_networks:
                raise CheckpointError(
                    f"this checkpoint's arch={arch!r} has no {cls.__name__} network; known: "
                    f"{dict(cls.arch_networks)}. Fix: retrain with the current code."
                )
            out["network"] = cls.arch_networks[arch]
            takes = set(get_model_entry(out["network"], cls.family).parameters)
            for name in cls.network_options:
                if name not in takes:
                    out.pop(name, None)
            log.info("%s: checkpoint arch=%r read as network=%r", cls.__name__, arch, out["network"])
        return out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The class check (:class:`~zoo.core.module.ZooModule`), then the state dict of an older checkpoint,
        whose network parts were top-level (``encoder.*``), renamed to where they are now (``net.encoder.*``)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        prefixes = tuple(f"{part}." for part, _ in self.net.named_children())  # encoder., decoder. / generator., ...
        if state and prefixes and any(key.startswith(prefixes) for key in state):
            checkpoint["state_dict"] = type(state)(
                (f"net.{key}" if key.startswith(prefixes) else key, value) for key, value in state.items()
            )
            log.info("%s: state-dict keys %s* of an older checkpoint read as net.*", type(self).__name__, prefixes)

    # -- image range ---------------------------------------------------------------------------------
    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Images of this model's range mapped to [0, 1] (for grids, features and metrics)."""
        return (images + 1) / 2 if self.image_range == "symmetric" else images

    def from_unit(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1 if self.image_range == "symmetric" else images

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` generated images in the model's range: :meth:`generate` of fresh N(0, I) noise (models with
        ``can_sample``)."""
        if not self.can_sample:
            raise NotImplementedError(f"{type(self).__name__} does not generate images from a prior")
        return self.generate(torch.randn(n, self.latent_dim, device=self.device))

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images in the model's range generated from latent codes ``z`` ``(N, latent_dim)`` (models with
        ``can_sample``; ``sample(n)`` is ``generate`` of fresh N(0, I) noise)."""
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

    # -- sample quality ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage in ("fit", "validate", "test") and self.can_sample and self.metric_samples > 0:
            self.feature_extractor()  # a missing FID feature file stops the run here, before the first step

    def feature_extractor(self) -> FeatureExtractor | None:
        """The FID feature extractor named by ``fid_classifier`` / ``fid_inception_weights`` (or None)."""
        if self._extractor is None and (self.fid_classifier or self.fid_inception_weights):
            from zoo.generative.features import ClassifierFeatures, InceptionFeatures

            if self.fid_inception_weights:
                self.__dict__["_extractor"] = InceptionFeatures(self.fid_inception_weights)
            else:
                self.__dict__["_extractor"] = ClassifierFeatures.from_checkpoint(self.fid_classifier)
        if isinstance(self._extractor, nn.Module):  # any callable may be set (set_feature_extractor)
            self._extractor.to(self.device)
        return self._extractor

    def set_feature_extractor(self, extractor: FeatureExtractor | None) -> None:
        """Use any callable mapping [0, 1] images to ``(N, D)`` features for FID and the 1-NN test."""
        self.__dict__["_extractor"] = extractor

    @torch.no_grad()
    def sample_quality(
        self, real_images: torch.Tensor, num_samples: int | None = None, seed: int | None = SAMPLE_SEED
    ) -> dict[str, float]:
        """FID (when a feature extractor is set) and the 1-NN accuracy of generated vs ``real_images``.

        ``real_images`` are in [0, 1]; as many samples as real images are generated (or
        ``num_samples``), from the noise of a generator seeded with ``seed`` (the same images on every
        call; ``None``: fresh noise from the global random stream). The 1-NN test runs on the FID
        features when there are any, else on pixels.
        Usable from a checkpoint: ``VAE.load_from_checkpoint(path).sample_quality(images)``.
        """
        real = self._representation(real_images.to(self.device))
        return self._quality(real, num_samples or len(real_images), seed, distributed=False)

    def _representation(self, images: torch.Tensor) -> torch.Tensor:
        """What FID and the 1-NN test compare: the extractor's features of images in [0, 1], else the pixels."""
        extractor = self.feature_extractor()
        if extractor is None:
            return images.flatten(1).float()
        if len(images) == 0:  # the feature size still has to be known (to gather from the other processes)
            dummy = torch.zeros(1, self.in_channels, self.image_size, self.image_size, device=images.device)
            return extract_features(extractor, dummy)[:0]
        return extract_features(extractor, images)

    def _quality(self, real: torch.Tensor, n: int, seed: int | None, distributed: bool) -> dict[str, float]:
        """FID and 1-NN of ``real`` (features or pixels; ``distributed``: the same on every process) and of ``n``
        images generated from the noise seeded ``seed``. ``distributed``: process ``rank`` generates rows
        ``rank, rank + world_size, ...`` of the noise, and the features are gathered back in noise order."""
        world, rank = self._world() if distributed else (1, 0)
        gather = self._gather_rows if distributed else (lambda x: x)
        if seed is None:
            z = torch.randn(n, self.latent_dim)
        else:
            z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        mine = torch.arange(rank, n, world)
        was_training = self.training
        self.eval()
        try:
            parts = [self.to_unit(self.generate(z[mine[i : i + 500]].to(self.device))).clamp(0, 1)
                     for i in range(0, len(mine), 500)]
        finally:
            self.train(was_training)
        fake_images = torch.cat(parts) if parts else torch.empty(0, self.in_channels, self.image_size,
                                                                  self.image_size, device=self.device)
        fake = self._representation(fake_images)
        _, fake = _unique_by_id(gather(mine.to(self.device)), gather(fake))
        metrics: dict[str, float] = {}
        if self.feature_extractor() is not None:
            metrics["fid"] = float(frechet_distance(real, fake))
        metrics["nn_accuracy"] = float(one_nn_accuracy(real, fake))
        return metrics

    # -- evaluation on any number of processes -------------------------------------------------------------
    def init_eval_means(self, names: tuple[str, ...]) -> None:
        """Create the sample-weighted means ``val/<name>`` and ``test/<name>`` (call in ``__init__``)."""
        self.eval_means = nn.ModuleDict(
            {stage: nn.ModuleDict({name: MeanMetric() for name in names}) for stage in ("val", "test")}
        )

    def log_eval_means(self, stage: str, values: dict[str, torch.Tensor], prog_bar: tuple[str, ...] = ()) -> None:
        """Log the mean over every evaluated sample (on every process together) of per-sample ``values``
        ``(N,)``: a torchmetrics ``MeanMetric`` whose sum and count are added over the processes at epoch end.
        ``self.log(..., sync_dist=True)`` would average the per-process means instead, which weighs the
        samples of a process with fewer samples more."""
        for name, per_sample in values.items():
            metric = self.eval_means[stage][name]
            metric.update(per_sample.detach().float())
            self.log(f"{stage}/{name}", metric, prog_bar=name in prog_bar)

    def _world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(n_r, ...)`` of every process concatenated in rank order (``n_r`` may differ)."""
        if self._world()[0] == 1:
            return x
        counts = self.all_gather(torch.tensor(len(x), device=self.device)).reshape(-1).tolist()
        padded = x.new_zeros((max(counts), *x.shape[1:]))
        padded[: len(x)] = x
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r, :count] for r, count in enumerate(counts)])

    def _loader_indices(self, stage: str) -> torch.Tensor | None:
        """The dataset indices this process's evaluation loader reads, in order, when its sampler is an
        unshuffled ``SequentialSampler`` or ``DistributedSampler`` (the zoo's ``EverySampleOnceSampler``)."""
        trainer = self._trainer
        if trainer is None:
            return None
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)
        if isinstance(sampler, SequentialSampler) or (
            isinstance(sampler, DistributedSampler) and not getattr(sampler, "shuffle", False)
        ):
            return torch.tensor(list(sampler), dtype=torch.long)
        return None

    def start_evaluation(self, stage: str) -> None:
        """Called at the start of every validation / test epoch (after the base's metric-state reset)."""
        self._val_real = []
        self._eval_seen = 0
        self._eval_ids = self._loader_indices(stage)

    def sample_ids(self, n: int) -> torch.Tensor:
        """Dataset indices of the next ``n`` samples this process evaluates (call once per evaluation batch):
        read from the loader's sampler, else those of the zoo's ``EverySampleOnceSampler`` (the k-th sample of
        rank r is sample ``r + k * world_size``; sample k on one process)."""
        start, self._eval_seen = self._eval_seen, self._eval_seen + n
        if self._eval_ids is not None and start + n <= len(self._eval_ids):
            return self._eval_ids[start : start + n]
        world, rank = self._world()
        return torch.arange(start, start + n) * world + rank

    def collect_real(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Keep this process's first ``metric_samples`` validation images (in [0, 1]) and their dataset indices
        ``ids`` (default: :meth:`sample_ids`) for the metrics; the first ``metric_samples`` of the whole
        evaluation set are chosen from every process's at epoch end."""
        if not self.can_sample or self.metric_samples <= 0:
            return
        ids = self.sample_ids(len(images)) if ids is None else ids
        have = sum(len(i) for i, _ in self._val_real)
        if have < self.metric_samples:
            keep = self.metric_samples - have
            self._val_real.append((ids[:keep].cpu(), self.to_unit(images[:keep]).detach()))

    def log_sample_quality(self, stage: str = "val") -> None:
        """FID and the 1-NN test at the end of an evaluation epoch; every process runs it (it gathers)."""
        real, self._val_real = self._val_real, []
        if not self.can_sample or self.metric_samples <= 0 or self.trainer.sanity_checking:
            return
        shape = (0, self.in_channels, self.image_size, self.image_size)
        images = torch.cat([x for _, x in real]) if real else torch.empty(shape, device=self.device)
        ids = torch.cat([i for i, _ in real]) if real else torch.empty(0, dtype=torch.long)
        with torch.no_grad():
            features = self._representation(images.to(self.device))
            _, features = _unique_by_id(self._gather_rows(ids.to(self.device)), self._gather_rows(features),
                                        self.metric_samples)
            if len(features) == 0:
                return
            metrics = self._quality(features, len(features), SAMPLE_SEED, distributed=True)
        for name, value in metrics.items():
            if math.isfinite(value):
                # the same value on every process (computed from gathered features): the mean is exact
                self.log(f"{stage}/{name}", value, prog_bar=True, sync_dist=True)
        if "fid" not in metrics and self.current_epoch == 0 and stage == "val":
            rank_zero_info(
                f"{type(self).__name__}: no FID feature extractor set (fid_classifier), so FID is skipped and the "
                "1-NN test runs on pixels. `python -m zoo.evaluation.fid_features --out PATH` trains one."
            )

    # -- shared loop pieces ------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.start_evaluation("test")

    def on_validation_epoch_end(self) -> None:
        self.log_sample_quality("val")

    def on_test_epoch_end(self) -> None:
        self.log_sample_quality("test")

    def configure_callbacks(self) -> list[pl.Callback]:
        """When predicting, a writer of the outputs (grid PNG + tensors) unless one is configured."""
        if self._trainer is None or self.trainer.state.fn != "predict":
            return []
        from zoo.generative.callbacks import GenerativePredictionWriter

        if any(isinstance(c, GenerativePredictionWriter) for c in self.trainer.callbacks):
            return []
        return [GenerativePredictionWriter()]

    def sample_grids(self) -> dict[str, torch.Tensor]:
        """Named image grids ``(N, C, H, W)`` in [0, 1] for the sample-grid callback."""
        return {}

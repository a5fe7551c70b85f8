"""``ZooModule``: the one LightningModule base under every family of the zoo.

What it holds, so that no family writes it again (and no family drifts):

- **the network by name**: :meth:`ZooModule.build_network` builds ``network`` from the registry family the
  class names (``family``); the registry-name argument is called ``network`` in every family;
- **hyperparameters** saved with ``save_hyperparameters()`` (the arguments of every ``__init__`` in the class
  chain), optimizer and scheduler factories stored as plain ``{"class_path", "init_args"}`` data, so that
  ``torch.load(weights_only=True)`` reads a checkpoint;
- **optimisation**: a ``configure_optimizers`` taking any ``torch.optim`` class and any
  ``torch.optim.lr_scheduler`` class (OneCycleLR's ``total_steps`` from the trainer; per-step or per-epoch);
- **the restore guard**: ``load_from_checkpoint`` builds the module without reading any weight file named by
  its hyperparameters (``pretrained``, ``weights``, ``*_weights``): the checkpoint holds the trained weights;
- **the checkpoint identity**: every checkpoint saved carries the ``"zoo"`` entry
  (:func:`zoo.core.checkpoint.checkpoint_identity`), and a checkpoint of another class is refused with both
  names, whether it arrives by ``load_from_checkpoint`` or by the Trainer's ``ckpt_path``;
- **older checkpoints**: hyperparameters saved under a name the class has since renamed
  (``renamed_arguments``) are read under the new one;
- **metric-state reset** at the start of every validation and test epoch (torchmetrics states created under
  ``torch.inference_mode`` by an earlier ``trainer.validate``/``test``);
- **the fit check**: ``num_classes`` / ``in_channels`` that disagree with the trainer's datamodule stop the run;
- **compilation** (``compile: true``, off by default): the network's forward is compiled with ``torch.compile``
  (:meth:`ZooModule.compile_networks`) when a Trainer sets the module up, in a way that keeps the state-dict keys,
  so that checkpoints of compiled and eager runs load into either.

Modelled on anomalib's ``AnomalibModule`` (one Lightning base over plain torch models) and smp's
``SegmentationModel`` (one base holding what every architecture shares).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from zoo.core.checkpoint import (
    CheckpointError,
    check_checkpoint_class,
    checkpoint_identity,
    checkpoint_model_class,
    is_restoring_from_checkpoint,
    restoring_from_checkpoint,
)
from zoo.core.checks import check_model_fits_data, release_inference_metric_states
from zoo.core.errors import ZooUserError
from zoo.core.optim import as_factory, build_optimizers, factory_spec
from zoo.core.registry import create_model, get_model_entry
from zoo.core.weight_sources import ResolvedWeights, recording_weights, resolve_weights

log = logging.getLogger(__name__)

SchedulerInterval = Literal["auto", "step", "epoch"]
# torch.compile's modes (its ``mode`` argument); "default" is torch's own default.
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


def is_weights_argument(name: str) -> bool:
    """Builder arguments that name a weights file by the zoo's convention: ``weights`` and ``*_weights``."""
    return name == "weights" or name.endswith("_weights")


def check_schedule_covers_the_run(module: pl.LightningModule) -> None:
    """Refuse, before the first step, to resume a run whose fixed-length schedule (OneCycleLR: ``total_steps``,
    restored from the checkpoint) ends before the resumed run does (a larger ``max_epochs`` / ``max_steps``):
    PyTorch would raise mid-run when stepping past the end, and a one-cycle schedule cannot be stretched without
    its learning rate jumping."""
    trainer = module.trainer
    if not trainer.ckpt_path or not module.automatic_optimization:
        return
    wanted = trainer.estimated_stepping_batches
    for config in trainer.lr_scheduler_configs:
        total = getattr(config.scheduler, "total_steps", None)
        if config.interval == "step" and isinstance(total, int) and total < wanted:
            raise ValueError(
                f"--ckpt_path {trainer.ckpt_path}: its {type(config.scheduler).__name__} was built for {total} "
                f"optimizer steps (the run's length when it started), but this run asks for {int(wanted)} "
                f"(max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}); a one-cycle schedule cannot be "
                f"extended mid-run. Fix: resume with the original --trainer.max_epochs / --trainer.max_steps, or "
                f"start a new run from these weights (a classifier: --model.init_args.pretrained "
                f"{trainer.ckpt_path}) with the longer schedule."
            )


def check_compiler_available(device: torch.device) -> None:
    """Refuse ``compile`` on the CPU where inductor has no C++ compiler to build its kernels with (it would fail
    at the first step, deep inside the compilation)."""
    if device.type != "cpu":
        return
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as error:  # noqa: BLE001  (its error type differs between torch versions; reported as is)
        raise ZooUserError(
            f"compile=True on the CPU needs a C++ compiler for torch.compile's kernels, and none was found "
            f"({type(error).__name__}: {error}). Fix: install one (g++ or clang++; or set CXX), or set compile: false."
        ) from error


def _channels_last_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4 else a
        for a in args
    )


class ZooModule(pl.LightningModule):
    """Base of every LightningModule of the zoo (see the module docstring for what it holds).

    Subclasses set ``family`` (the registry family their ``network`` names come from), call
    ``super().__init__(optimizer=..., lr_scheduler=..., lr_scheduler_interval=...)`` first and build their
    network with :meth:`build_network`.

    Args:
        optimizer: any ``torch.optim`` class with its arguments (``class_path``/``init_args`` in YAML).
        lr_scheduler: any ``torch.optim.lr_scheduler`` class; OneCycleLR gets ``total_steps`` from the trainer
            when not given.
        lr_scheduler_interval: ``auto`` (per step for OneCycleLR / CyclicLR, else per epoch), ``step``, ``epoch``.
        compile: compile the network's forward (and so its backward) with ``torch.compile`` when a Trainer runs the
            module (``fit``, ``validate``, ``test``, ``predict``); the first steps then pay the compilation.
            The module built in Python (``load_from_checkpoint``, export) stays eager. Off by default.
        compile_mode: ``torch.compile``'s ``mode``: ``default``, ``reduce-overhead`` (CUDA graphs),
            ``max-autotune``, ``max-autotune-no-cudagraphs``.
        channels_last: run the networks and their image inputs in the channels-last memory format when a Trainer
            runs the module (:meth:`use_channels_last`). Off by default.
    """

    family: ClassVar[str | None] = None  # the registry family of ``network``
    renamed_arguments: ClassVar[Mapping[str, str]] = {}  # old init-argument name -> current, read from checkpoints
    monitor: ClassVar[str] = "val/loss"  # what ReduceLROnPlateau watches

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: SchedulerInterval = "auto",
        compile: bool = False,
        compile_mode: CompileMode = "default",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if compile_mode not in COMPILE_MODES:
            raise ZooUserError(
                f"compile_mode={compile_mode!r} is not a mode of torch.compile. Fix: set compile_mode to one of "
                f"{', '.join(COMPILE_MODES)}."
            )
        # Collects the arguments of every __init__ in the class chain (Lightning walks the frames).
        self.save_hyperparameters()
        for key, value in list(self.hparams.items()):  # class path + arguments in the checkpoint, not a pickled partial
            self.hparams[key] = factory_spec(value)
        self.optimizer_factory = as_factory(optimizer)
        self.lr_scheduler_factory = as_factory(lr_scheduler)
        self.lr_scheduler_interval = lr_scheduler_interval
        # Not ``self.compile``: that is nn.Module.compile, used below.
        self.compile_on_setup, self.compile_mode = bool(compile), compile_mode
        self.channels_last = bool(channels_last)
        # True while load_from_checkpoint builds this module: weight files are not read then.
        self.restoring = is_restoring_from_checkpoint()
        # Which weights the network started from (zoo.core.weight_sources.ResolvedWeights.record of each file
        # read): written into every checkpoint, read back from it, shown by zoo.card and the reports.
        self.initial_weights: list[dict[str, Any]] = []

    # -- the network ------------------------------------------------------------------------------------------
    def build_network(self, network: str, **kwargs: Any) -> nn.Module:
        """The registered network ``network`` of this class's family, built with ``kwargs``; while restoring
        from a checkpoint, weight-file arguments (``weights``, ``*_weights``) are left out."""
        if self.restoring:
            kwargs = {k: (None if is_weights_argument(k) else v) for k, v in kwargs.items()}
        with recording_weights() as used:
            net = create_model(network, family=self.family, **kwargs)
        self.initial_weights.extend(used)
        return net

    def resolve_weights(self, spec: str, network: str) -> ResolvedWeights:
        """The verified local file of a weights argument of this module (not of the builder) for the registered
        ``network`` (its library's names are accepted: ``torchvision:...`` for a torchvision network, ``timm:...``
        for a timm one), recorded in :attr:`initial_weights`."""
        source = get_model_entry(network, self.family).source
        library = source if source in ("torchvision", "timm", "smp") else None
        resolved = resolve_weights(spec, network=network, library=library)  # type: ignore[arg-type]
        self.initial_weights.append(resolved.record())
        return resolved

    def called_networks(self) -> dict[str, nn.Module]:
        """The networks the module's steps call, by name (what ``compile`` compiles and ``channels_last`` converts):
        ``self.net``; a family whose steps call the network's parts, as the generative models call ``encoder`` /
        ``decoder``, lists them."""
        net = getattr(self, "net", None)
        return {"net": net} if isinstance(net, nn.Module) else {}

    def compile_networks(self) -> list[str]:
        """Compile :meth:`called_networks` with ``nn.Module.compile`` (``torch.compile`` of each network's call,
        the module itself unchanged: its state-dict keys get no ``_orig_mod.`` prefix, so checkpoints of compiled and
        eager runs load into either); those compiled already are left as they are. Returns the names compiled."""
        targets = self.called_networks()
        if not targets:
            raise ZooUserError(
                f"compile=True, but {type(self).__name__} names no network to compile (it has no ``net``). Fix: set "
                f"compile to false, or override called_networks."
            )
        # setup runs before the strategy moves the module to its device: the trainer says where it will run
        check_compiler_available(self.trainer.strategy.root_device if self._trainer is not None else self.device)
        compiled = []
        for name, net in targets.items():
            if getattr(net, "_compiled_call_impl", None) is None:
                net.compile(mode=None if self.compile_mode == "default" else self.compile_mode)
                compiled.append(name)
        if compiled:
            rank_zero_info(
                f"compile: {', '.join(compiled)} compiled with torch.compile (mode {self.compile_mode}); "
                "the first steps include the compilation"
            )
        return compiled

    def use_channels_last(self) -> list[str]:
        """Convert :meth:`called_networks` to the channels-last memory format (NHWC), and their 4-D inputs on each
        call (a forward pre-hook), where oneDNN / cuDNN convolutions run faster (measured: the MNIST convnet's
        training step 1.4x faster in float32, 2x with bf16 on an AMX CPU). Values and state-dict keys are unchanged:
        checkpoints load into either format. Returns the names converted."""
        targets = self.called_networks()
        if not targets:
            raise ZooUserError(
                f"channels_last=True, but {type(self).__name__} names no network to convert (it has no ``net``). Fix: "
                f"set channels_last to false, or override called_networks."
            )
        converted = []
        for name, net in targets.items():
            net.to(memory_format=torch.channels_last)
            if getattr(net, "_zoo_channels_last_hook", None) is None:
                net._zoo_channels_last_hook = net.register_forward_pre_hook(_channels_last_inputs)
                converted.append(name)
        return converted

    # -- checks -----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        check_model_fits_data(self, tuple(a for a in ("num_classes", "in_channels") if getattr(self, a, None)))
        if self.channels_last:
            self.use_channels_last()
        if self.compile_on_setup:
            self.compile_networks()

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        # Only trainable parameters: frozen layers (a fine-tuning callback freezes them before this runs) join
        # the optimizer as their own parameter group when they are unfrozen.
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameters: everything is frozen.")
        return build_optimizers(
            params,
            self.optimizer_factory,
            self.lr_scheduler_factory,
            total_steps=lambda: self.trainer.estimated_stepping_batches,
            interval=self.lr_scheduler_interval,
            monitor=self.monitor,
        )

    def on_train_start(self) -> None:
        check_schedule_covers_the_run(self)

    # -- metric states ----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        release_inference_metric_states(self)

    def on_test_epoch_start(self) -> None:
        release_inference_metric_states(self)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zoo"] = {**checkpoint_identity(self), "initial_weights": list(self.initial_weights)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the state dict is loaded (Trainer ckpt_path and load_from_checkpoint alike): a checkpoint
        # of another model fails here with both classes named, not with a key mismatch.
        check_checkpoint_class(checkpoint_model_class(checkpoint), type(self))
        stored = (checkpoint.get("zoo") or {}).get("initial_weights")
        if stored is not None:
            self.initial_weights = list(stored)

    @classmethod
    def migrate_hyperparameters(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Checkpoint hyperparameters as the current ``__init__`` takes them: names in ``renamed_arguments``
        (of this class and its parents) are read under their current name."""
        renames: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            renames.update(getattr(klass, "renamed_arguments", None) or {})
        out = dict(hparams)
        for old, new in renames.items():
            if old in out and new not in out:
                out[new] = out.pop(old)
                log.info("%s: checkpoint hyperparameter %r read as %r (renamed)", cls.__name__, old, new)
        return out

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path | Any, map_location: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        """Lightning's ``load_from_checkpoint`` after checking that the file holds this class (or a subclass;
        a :class:`~zoo.core.checkpoint.CheckpointError` names both otherwise); hyperparameters saved under
        older names are read under the current ones, and no weight file they name is read (the restore guard)."""
        source: Any = checkpoint_path
        if isinstance(checkpoint_path, (str, Path)):
            path = Path(checkpoint_path)
            if not path.is_file():
                raise CheckpointError(
                    f"checkpoint {path} does not exist. Fix: pass the path of a .ckpt file "
                    "(runs/<name>/version_<n>/checkpoints/)."
                )
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            check_checkpoint_class(checkpoint_model_class(checkpoint), cls, path)
            hparams = checkpoint.get("hyper_parameters") or {}
            migrated = cls.migrate_hyperparameters(hparams)
            if list(migrated) != list(hparams):
                checkpoint["hyper_parameters"] = migrated
                source = io.BytesIO()
                torch.save(checkpoint, source)
                source.seek(0)
        with restoring_from_checkpoint():
            return super().load_from_checkpoint(source, map_location, *args, **kwargs)

"""What keeps a long run alive, or makes it die usefully: atomic checkpoints, resume points, failure messages.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the target's folder, flushes it to
  disk and renames it over the target (``os.replace``, atomic on POSIX and Windows): a crash or a SIGKILL
  during a save leaves the previous checkpoint intact. Lightning's own ``TorchCheckpointIO`` writes through
  an fsspec transaction whose temporary file may live on another file system (then the final move is a
  copy, which a kill can cut short) and never calls ``fsync``. ``train.py`` installs it on every trainer
  (:func:`install_atomic_checkpoint_io`); in plain Python pass ``Trainer(plugins=[AtomicCheckpointIO()])``.
* :class:`ResumeCheckpoint` is a ``ModelCheckpoint`` that only writes ``last.ckpt``, every
  ``every_n_train_steps`` optimizer steps, so that ``--ckpt_path last`` after a kill loses at most that
  many steps. What makes the resumed run equal the uninterrupted one is in the checkpoint: weights,
  optimizer, scheduler, loop state (Lightning), and the training loader's position and random states
  (:class:`datamodules.distributed.ResumableDataLoader`).
* :class:`FailureGuard` stops training on a NaN or infinite loss *before* the bad gradients reach the
  weights, with an error naming the step, the dataset indices of the batch and the last good checkpoint;
  with ``on_nonfinite="skip"`` it drops such batches instead (no parameter update), counts them and logs
  the count. An out-of-memory error gets a note with the batch size in use and the one to try.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader


# -- atomic checkpoints -----------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are all-or-nothing (temporary file + fsync + ``os.replace``).

    Remote paths (``s3://``, ...) are left to Lightning's fsspec implementation.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either its old content or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target: os.replace is then a rename within one file system, never a copy.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is as readable as torch.save makes it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    # Temporary files of the same target left by a process killed mid-save: harmless, but they take space.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk (POSIX); not possible on Windows.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install_atomic_checkpoint_io(trainer: pl.Trainer) -> None:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` unless a checkpoint plugin other than Lightning's
    default was configured (that one is kept)."""
    current = trainer.strategy.checkpoint_io
    if type(current) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class ResumeCheckpoint(ModelCheckpoint):
    """Write ``last-step.ckpt`` (and nothing else) every ``every_n_train_steps`` optimizer steps and at the end
    of each training epoch, overwriting it: the point ``--ckpt_path last`` resumes from after a crash or a kill.

    It sits beside a config's own ``ModelCheckpoint`` (best by a metric, ``save_last``: ``last.ckpt`` at
    validation ends) in the run's checkpoint folder. Its own name keeps the two from renaming each other's
    file (``last-v1.ckpt``); Lightning's ``ckpt_path="last"`` takes the newer of ``last*.ckpt``, whichever
    wrote it. ``every_n_train_steps=0`` writes it at epoch ends only.
    """

    CHECKPOINT_NAME_LAST = "last-step"

    def __init__(self, every_n_train_steps: int = 100, dirpath: str | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps or None,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Lightning hands the checkpoint's loader state (datamodules.distributed.ResumableDataLoader) to the loader
        # in FitLoop.setup_data, which returns early when the loader was built before the restore, as it is when
        # configure_optimizers asks for trainer.estimated_stepping_batches (OneCycleLR's total_steps): the resumed
        # epoch would then start over from its first batch. Hand it over here; a no-op when Lightning did.
        trainer.fit_loop._load_combined_loader_states()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # ModelCheckpoint takes every_n_train_steps or every_n_epochs, not both: the epoch end is added here, so
        # that a kill right after an epoch does not replay up to every_n_train_steps - 1 of its steps.
        if self._every_n_train_steps and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# -- failures ---------------------------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The training loss was NaN or infinite (the message names the step, the batch and the checkpoint)."""


def check_finite_losses(losses: dict[str, torch.Tensor], step: int, epoch: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and every loss value when one is not finite.

    Raised inside the training step, before the optimizer step, so the weights are still the last
    good ones; Lightning's ``ModelCheckpoint`` keeps the last checkpoint it wrote (``last.ckpt``).
    """
    values = {name: float(loss.detach()) for name, loss in losses.items()}
    if all(torch.isfinite(torch.tensor(v)) for v in values.values()):
        return
    shown = ", ".join(f"{name}={value:.6g}" for name, value in values.items())
    raise NonFiniteLossError(
        f"non-finite training loss at global step {step} (epoch {epoch}): {shown}. Training stopped before this "
        f"step's update; the last checkpoint written (last.ckpt) holds the last good weights. Fix: lower the "
        f"learning rate, check the input range (normalization), or clip gradients (trainer.gradient_clip_val)."
    )


def _train_loaders(trainer: pl.Trainer) -> list[Any]:
    loaders = trainer.train_dataloader
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def batch_indices(trainer: pl.Trainer) -> list[int] | None:
    """Dataset indices of the training batch in progress, where the loader records them
    (:class:`datamodules.distributed.ResumableDataLoader`); None otherwise."""
    for loader in _train_loaders(trainer):
        indices = getattr(loader, "current_indices", None)
        if indices is not None:
            return list(indices)
    return None


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The most recently written checkpoint of the run (any ModelCheckpoint's last or best file), or None."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")):
            if path and os.path.isfile(path):
                paths.append(path)
    return max(paths, key=os.path.getmtime) if paths else None


def suggest_batch_size(batch_size: int) -> int:
    """The batch size to try after running out of memory: half, at least 1."""
    return max(1, batch_size // 2)


def is_out_of_memory(exception: BaseException) -> bool:
    """A CUDA / MPS / CPU allocation failure, whatever exception type the backend raised."""
    if isinstance(exception, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exception).lower()
    return isinstance(exception, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class FailureGuard(pl.Callback):
    """Stop (or skip the batch) on a non-finite loss; explain an out-of-memory error.

    Args:
        on_nonfinite: ``stop`` raises :class:`NonFiniteLossError` naming the global step, the epoch and batch,
            the dataset indices of the batch and the last good checkpoint to resume from; ``skip`` drops the
            batch (its gradients are discarded before the optimizer step), counts it (``train/skipped_batches``,
            kept in the checkpoint) and warns with the same details.
        max_skipped: with ``skip``, stop anyway after this many skipped batches (None: never).

    The check runs before ``backward``, so the weights of the step that produced the bad loss are not yet
    changed and every checkpoint written so far holds finite weights. Under DDP the ranks agree through one
    all-reduce of a flag per step (a NaN on one rank stops or skips on all of them, otherwise the others
    would wait forever in the gradient all-reduce).
    """

    def __init__(self, on_nonfinite: Literal["stop", "skip"] = "stop", max_skipped: int | None = None) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.max_skipped = max_skipped
        self.skipped = 0
        self._skip_step = False

    # -- non-finite loss --------------------------------------------------------------------------------------
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all().to(torch.int32)
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce(finite, reduce_op="min")  # type: ignore[arg-type]
        if bool(finite):
            return
        where = self._describe(trainer, loss)
        if self.on_nonfinite == "skip" and (self.max_skipped is None or self.skipped < self.max_skipped):
            self.skipped += 1
            self._skip_step = True
            rank_zero_warn(f"{where} Skipped (batch {self.skipped} skipped so far; on_nonfinite=skip).")
            return
        limit = f" after {self.skipped} skipped batches (max_skipped={self.max_skipped})" if self.skipped else ""
        raise NonFiniteLossError(
            f"{where} Training stopped{limit}. Fix: resume from the last good checkpoint with a lower learning "
            "rate or gradient clipping (--trainer.gradient_clip_val 1.0), check those samples, or skip such "
            "batches (--failure_guard.on_nonfinite skip)."
        )

    def _describe(self, trainer: pl.Trainer, loss: torch.Tensor) -> str:
        value = float(loss.detach().float().flatten()[0]) if loss.numel() else float("nan")
        kind = "NaN" if math.isnan(value) else "infinite"
        indices = batch_indices(trainer)
        shown = "unknown (the loader does not record them)" if indices is None else str(indices[:32])
        if indices is not None and len(indices) > 32:
            shown += f" ... ({len(indices)} samples)"
        checkpoint = last_good_checkpoint(trainer)
        resume = f"{checkpoint} (--ckpt_path {checkpoint})" if checkpoint else "none written yet"
        rank = f", rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        return (
            f"{kind} training loss ({value}) at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx}{rank}); dataset indices of the batch: {shown}; "
            f"last good checkpoint: {resume}."
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._skip_step:
            # No gradient: every torch optimizer leaves the parameter (and its momentum / Adam moments) alone.
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._skip_step:
            self._skip_step = False
            pl_module.log("train/skipped_batches", float(self.skipped), reduce_fx="max")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    # -- out of memory ----------------------------------------------------------------------------------------
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not is_out_of_memory(exception):
            return
        stage, batch_size, argument = self._batch_size(trainer)
        device = getattr(pl_module, "device", "?")
        if batch_size is None:
            note = f"Out of memory during {stage} on {device}. Fix: lower the data's batch size."
        else:
            smaller = suggest_batch_size(batch_size)
            note = (
                f"Out of memory during {stage} on {device} with batch_size={batch_size} per process. Fix: try "
                f"{argument}={smaller} (--data.init_args.{argument} {smaller})"
                + (
                    f"; to keep the effective batch, add --trainer.accumulate_grad_batches "
                    f"{max(2, trainer.accumulate_grad_batches * 2)}"
                    if stage == "training" else ""
                )
                + "; or --trainer.precision bf16-mixed."
            )
        exception.add_note(note)  # shown under the error's own message in the traceback
        rank_zero_warn(note)

    @staticmethod
    def _batch_size(trainer: pl.Trainer) -> tuple[str, int | None, str]:
        if trainer.training:
            loaders, stage, argument = _train_loaders(trainer), "training", "batch_size"
        else:
            stage = "validation" if trainer.validating or trainer.sanity_checking else (
                "testing" if trainer.testing else "prediction"
            )
            source = {"validation": trainer.val_dataloaders, "testing": trainer.test_dataloaders,
                      "prediction": trainer.predict_dataloaders}[stage]
            loaders = source if isinstance(source, (list, tuple)) else [source]
            datamodule = trainer.datamodule
            argument = "eval_batch_size" if hasattr(datamodule, "eval_batch_size") else "batch_size"
        for loader in loaders:
            if isinstance(loader, DataLoader) and loader.batch_size is not None:
                return stage, int(loader.batch_size), argument
        return stage, None, argument


# -- resuming with the command that was killed ---------------------------------------------------------------------
def reuse_run_dir_for_last(config: Any) -> Path | None:
    """For ``fit --ckpt_path last``: point the configured logger at the newest existing run folder
    (``<save_dir>/<name>/version_<n>``) that holds a ``checkpoints/last*.ckpt``.

    Without this, rerunning the killed command with ``--ckpt_path last`` would open a new ``version_<n+1>``,
    whose checkpoint folder is empty, and Lightning would start from scratch with a warning. Applies to a
    logger given by ``class_path`` with ``save_dir`` (TensorBoard, CSV) and no explicit ``version``; returns
    the folder chosen, or None when nothing was changed.
    """
    if config is None or config.get("ckpt_path") != "last":
        return None
    trainer = config.get("trainer")
    logger = trainer.get("logger") if trainer is not None else None
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    init_args = logger.get("init_args") if logger is not None and hasattr(logger, "get") else None
    if init_args is None or init_args.get("version") is not None or init_args.get("save_dir") is None:
        return None
    root = Path(init_args.get("save_dir")) / (init_args.get("name") or "")
    versions = []
    for folder in root.glob("version_*"):
        number = folder.name.removeprefix("version_")
        if number.isdigit() and any((folder / "checkpoints").glob("last*.ckpt")):
            versions.append(int(number))
    if not versions:
        return None
    init_args["version"] = max(versions)
    return root / f"version_{max(versions)}"

"""The command line: ``python train.py {fit,validate,test,predict} --config configs/...``.

LightningCLI in subclass mode: a config names any LightningModule of ``zoo`` and any
LightningDataModule of ``datamodules`` by ``class_path``. What the data determines
(``num_classes``, ``in_channels``, ``class_names``) is linked from the datamodule to the model,
so it is typed once. The resolved config is saved next to the logs (``config.yaml``).

``test`` also writes ``metrics.json`` and a report (markdown, HTML, PNG figures;
:class:`zoo.evaluation.EvaluationReport`) beside the checkpoint or into ``--report_dir``
(``--report false`` turns it off), after checking that the checkpoint holds the configured
LightningModule and that its weights fit the configured network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

import datamodules  # noqa: F401  (registers the datamodules for short class names)
import zoo  # noqa: F401  (imports every family: their LightningModules resolve by class path)
from zoo.core.checkpoint import (
    check_checkpoint_class,
    check_state_dict_compatible,
    checkpoint_model_class,
    import_class,
    read_checkpoint_info,
)
from zoo.core.registry import get_model_entry
from zoo.core.reliability import FailureGuard, ResumeCheckpoint, install_atomic_checkpoint_io, reuse_run_dir_for_last

# Attributes that a datamodule may define and a model may take: linked when the model's signature takes them
# (jsonargparse leaves out a link whose target the chosen model class does not have).
DATA_TO_MODEL_LINKS = ("num_classes", "in_channels", "class_names")


class ZooCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        # An unknown network name fails here with the registry's message (close names listed),
        # instead of deep inside jsonargparse's instantiation of the model.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if self.subcommand == "fit":
            reuse_run_dir_for_last(config)  # the killed command + --ckpt_path last resumes in the killed run's folder
        model = config.get("model") if config is not None else None
        if model is None or not model.get("class_path"):
            return
        model_class = import_class(model["class_path"])
        family = getattr(model_class, "family", None)
        name = (model.get("init_args") or {}).get("network")  # the registry-name argument of every ZooModule
        if family and isinstance(name, str):
            get_model_entry(name, family)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Every subcommand's parser gets these (LightningCLI does not say which one it builds); only test reads them.
        parser.add_argument(
            "--report_dir", type=str | None, default=None,
            help="test: folder of metrics.json and the report (default: beside the checkpoint, "
            "report_<checkpoint>_<DataModule>/)",
        )
        parser.add_argument("--report", type=bool, default=True, help="test: write metrics.json and the report")
        # Always-on callbacks, configurable as --resume_checkpoint.every_n_train_steps / --failure_guard.on_nonfinite
        # (zoo.core.reliability): last.ckpt every N steps for --ckpt_path last, NaN / out-of-memory handling.
        parser.add_lightning_class_args(ResumeCheckpoint, "resume_checkpoint")
        parser.add_lightning_class_args(FailureGuard, "failure_guard")
        for attr in DATA_TO_MODEL_LINKS:
            parser.link_arguments(
                "data", f"model.init_args.{attr}", compute_fn=_attribute(attr), apply_on="instantiate"
            )

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_checkpoint_io(trainer)  # a kill mid-save leaves the previous checkpoint intact
        return trainer

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        # --trainer.enable_checkpointing false forbids any checkpoint callback: leave the resume point out then.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ResumeCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def after_instantiate_classes(self) -> None:
        if self.subcommand != "test":
            return
        config = self.config[self.subcommand]
        if config.get("report", True):
            from zoo.evaluation import EvaluationReport

            self.trainer.callbacks.append(EvaluationReport(config.get("report_dir"), ckpt_path=config.get("ckpt_path")))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI replaces the config's model with the checkpoint's hyperparameters here; a checkpoint of another
        # family would then be built and fail later on the data. Check the class against the config first, and read
        # hyperparameters saved under older names (ZooModule.migrate_hyperparameters) under the current ones.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("best", "last", "hpc", "registry"):
            return
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(
                f"checkpoint {ckpt_path} does not exist. Fix: pass --ckpt_path with a .ckpt file "
                "(runs/<name>/version_<n>/checkpoints/)."
            )
        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        found = checkpoint_model_class(checkpoint)
        model = self.config[subcommand].get("model")
        expected = model.get("class_path") if model is not None else None
        if expected:
            check_checkpoint_class(found, import_class(expected), ckpt_path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        model_class = import_class(hparams.get("_class_path") or found or expected)
        class_key = hparams.pop("_class_path", None) or found
        if hasattr(model_class, "migrate_hyperparameters"):
            hparams = model_class.migrate_hyperparameters(hparams)
        update = {"class_path": class_key, "dict_kwargs": hparams} if class_key else hparams
        try:
            self.config = self.parser.parse_object({subcommand: {"model": update}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def before_test(self) -> None:
        # Weights that do not fit the built network (an older, incompatible checkpoint): name the keys and the
        # checkpoint's version instead of Lightning's bare load_state_dict error.
        ckpt_path = self.config["test"].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            check_state_dict_compatible(read_checkpoint_info(ckpt_path), self.model)


def _attribute(name: str) -> Any:
    def get(datamodule: pl.LightningDataModule) -> Any:
        value = getattr(datamodule, name, None)
        return list(value) if isinstance(value, tuple) else value

    get.__name__ = f"data_{name}"
    return get


def main(args: list[str] | None = None, run: bool = True) -> ZooCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``); returns it, e.g. to reach ``cli.trainer``."""
    return ZooCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )

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

import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

import datamodules  # noqa: F401  (registers the datamodules for short class names)
import zoo  # noqa: F401  (imports every family: their LightningModules resolve by class path)
from datamodules.errors import DataError
from zoo.core.checkpoint import (
    check_checkpoint_class,
    check_state_dict_compatible,
    checkpoint_model_class,
    import_class,
    read_checkpoint_info,
)
from zoo.core.checks import model_data_mismatch
from zoo.core.errors import ZooUserError
from zoo.core.registry import get_model_entry
from zoo.core.reliability import FailureGuard, ResumeCheckpoint, install_atomic_checkpoint_io, reuse_run_dir_for_last

# Attributes that a datamodule may define and a model may take: linked when the model's signature takes them
# (jsonargparse leaves out a link whose target the chosen model class does not have).
DATA_TO_MODEL_LINKS = ("num_classes", "in_channels", "class_names")


# Model arguments that define the shapes of a checkpoint's weights: a value given on the command line that differs
# from the checkpoint's is an error (the weights would not fit), where any other given argument wins over it.
WEIGHT_SHAPE_ARGUMENTS = ("network", "network_kwargs", "num_classes", "in_channels")


class ZooCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The words the user typed: what was given explicitly (and so must take effect) is read from them.
        raw = kwargs.get("args")
        self.command_line: list[str] = [str(a) for a in (sys.argv[1:] if raw is None else raw)]
        super().__init__(*args, **kwargs)

    def given_model_arguments(self) -> set[str]:
        """The model init arguments given on the command line (``--model.init_args.X`` or ``--model.X``)."""
        given = set()
        for word in self.command_line:
            for prefix in ("--model.init_args.", "--model."):
                if word.startswith(prefix):
                    name = word[len(prefix):].split("=", 1)[0].split(".", 1)[0]
                    if name not in ("class_path", "init_args", "dict_kwargs"):
                        given.add(name)
                    break
        return given

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
        init_args = model.get("init_args") or {}
        name = init_args.get("network")  # the registry-name argument of every ZooModule
        if family and isinstance(name, str):
            entry = get_model_entry(name, family)
            self._fit_network_kwargs(init_args, entry)
        if init_args.get("fid_classifier") == "auto" and self.subcommand in ("fit", "validate", "test"):
            self._prepare_default_fid_features(config)

    def _prepare_default_fid_features(self, config: Any) -> None:
        """``fid_classifier: auto``: the default LeNet-5 FID features from the cache, trained there on first use
        (one epoch of MNIST from the run's ``data_dir``, about half a minute on a CPU), saying so and how long."""
        import time

        from zoo.evaluation.fid_features import train_feature_classifier
        from zoo.generative.features import default_feature_classifier_path

        path = default_feature_classifier_path()
        if path.is_file():
            return
        data_dir = ((config.get("data") or {}).get("init_args") or {}).get("data_dir")
        print(f"fid_classifier: auto: training the FID feature classifier (LeNet-5, one epoch of MNIST) once, "
              f"into {path} ...", flush=True)
        start = time.perf_counter()
        train_feature_classifier(path, data_dir)
        print(f"fid_classifier: auto: {path} trained in {time.perf_counter() - start:.0f} s", flush=True)

    def _fit_network_kwargs(self, init_args: Any, entry: Any) -> None:
        """``network_kwargs`` that the chosen network's builder does not take: dropped with a warning when the user
        changed ``network`` on the command line and left the config's ``network_kwargs`` (they were the previous
        network's), an error naming them and the builder's arguments otherwise."""
        kwargs = init_args.get("network_kwargs")
        if not kwargs or entry.takes_any_keyword:
            return
        foreign = sorted(k for k in kwargs if k not in entry.parameters)
        if not foreign:
            return
        given = self.given_model_arguments()
        if "network" in given and "network_kwargs" not in given:
            kept = {k: v for k, v in kwargs.items() if k not in foreign}
            rank_zero_warn(
                f"network_kwargs {{{', '.join(f'{k}: {kwargs[k]!r}' for k in foreign)}}} of the config are not "
                f"arguments of {entry.name!r} (the network given on the command line): left out. {entry.name} takes "
                f"{', '.join(entry.parameters)}; set them with --model.init_args.network_kwargs '{{...}}'."
            )
            init_args["network_kwargs"] = kept or None
            return
        raise ValueError(
            f"network_kwargs {foreign} are not arguments of {entry.name!r}; its arguments are: "
            f"{', '.join(entry.parameters)}. Fix: remove them from model.init_args.network_kwargs, or choose the "
            f"network they belong to."
        )

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

    def config_file_model_arguments(self) -> set[str]:
        """The model init arguments that the ``--config`` files set."""
        import yaml

        given: set[str] = set()
        words = self.command_line
        for i, word in enumerate(words):
            path = word.split("=", 1)[1] if word.startswith("--config=") else (
                words[i + 1] if word == "--config" and i + 1 < len(words) else None)
            if path and Path(path).is_file():
                model = (yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}
                given |= set(model.get("init_args") or {}) if isinstance(model, dict) else set()
        return given

    def _check_linked_arguments(self) -> None:
        """A ``num_classes`` / ``in_channels`` / ``class_names`` that the user set (command line or config file)
        and that disagrees with the datamodule's stops the run: the link would silently replace it."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        init_args = (config.get("model") or {}).get("init_args") or {}
        given = self.given_model_arguments() | self.config_file_model_arguments()
        for name in DATA_TO_MODEL_LINKS:
            if name not in given or not hasattr(self.datamodule, name) or not hasattr(self.model, name):
                continue
            mine, data = _plain(init_args.get(name)), _attribute(name)(self.datamodule)
            if mine is not None and data is not None and mine != data:
                raise ValueError(model_data_mismatch(name, mine, data, type(self.datamodule).__name__))

    def after_instantiate_classes(self) -> None:
        self._check_linked_arguments()
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
        hparams = self._without_given_arguments(hparams, ckpt_path)
        update = {"class_path": class_key, "dict_kwargs": hparams} if class_key else hparams
        try:
            self.config = self.parser.parse_object({subcommand: {"model": update}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _without_given_arguments(self, hparams: dict[str, Any], ckpt_path: str) -> dict[str, Any]:
        """The checkpoint's hyperparameters less those the user gave on the command line, which win (an
        ``output_dir``, a ``tile_size``); one that fixes the weights' shapes must agree with the checkpoint."""
        given = self.given_model_arguments() & set(hparams)
        if not given:
            return hparams
        subcommand = self.config.get("subcommand")
        init_args = self.config[subcommand]["model"].get("init_args") or {}
        for name in sorted(given & set(WEIGHT_SHAPE_ARGUMENTS)):
            mine, theirs = init_args.get(name), hparams[name]
            if _plain(mine) != _plain(theirs):
                raise ValueError(
                    f"--model.init_args.{name} {mine!r} differs from the checkpoint's {name}={theirs!r} "
                    f"({ckpt_path}): the checkpoint's weights have the shapes of its own. Fix: leave {name} out "
                    f"(the checkpoint's is used), or give a checkpoint trained with {name}={mine!r}."
                )
        return {k: v for k, v in hparams.items() if k not in given}

    def before_test(self) -> None:
        # Weights that do not fit the built network (an older, incompatible checkpoint): name the keys and the
        # checkpoint's version instead of Lightning's bare load_state_dict error.
        ckpt_path = self.config["test"].get("ckpt_path")
        if not ckpt_path:
            rank_zero_warn(
                f"test without --ckpt_path evaluates {type(self.model).__name__} as it was just built: its initial "
                "weights, not a trained model (the report says so in its first line). Fix: pass --ckpt_path "
                "runs/<name>/version_<n>/checkpoints/<file>.ckpt to evaluate a trained model."
            )
        if ckpt_path and Path(ckpt_path).is_file():
            check_state_dict_compatible(read_checkpoint_info(ckpt_path), self.model)


def _plain(value: Any) -> Any:
    """Config values (jsonargparse Namespaces, tuples) as plain dicts and lists, to compare them."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


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


# Exceptions of these types are user errors when their message names the fix (the zoo's convention for every
# message about what the user gave); the zoo's own error classes always are.
PLAIN_USER_ERROR_TYPES = (ValueError, TypeError, FileNotFoundError, KeyError, OSError)


def is_user_error(error: BaseException) -> bool:
    """A mistake in what the user gave (argument, file, checkpoint, data), as opposed to a bug."""
    if isinstance(error, (ZooUserError, DataError)):
        return True
    return isinstance(error, PLAIN_USER_ERROR_TYPES) and "Fix:" in str(error)


def user_error_paragraph(error: BaseException) -> str:
    """What ``train.py`` prints for a user error: the message (what, where, the fix) and how to see more."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return f"error: {message}\n(the traceback: add --debug or set ZOO_DEBUG=1)"


def run(argv: list[str] | None = None) -> int:
    """``train.py``: the CLI on ``argv`` (default ``sys.argv[1:]``); a user error is printed as one paragraph and
    returns exit code 2, with the traceback only under ``--debug`` or ``ZOO_DEBUG=1``; a bug raises as usual."""
    words = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in words or os.environ.get("ZOO_DEBUG", "") not in ("", "0")
    words = [a for a in words if a != "--debug"]
    if argv is None:  # LightningCLI reads sys.argv itself (and warns when given the same words twice)
        sys.argv[1:] = words
    try:
        main(None if argv is None else words)
    except Exception as error:  # noqa: BLE001  (sorted into user errors and bugs right here)
        if debug or not is_user_error(error):
            raise
        print(user_error_paragraph(error), file=sys.stderr, flush=True)
        return 2
    return 0

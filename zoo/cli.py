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

import argparse
import difflib
import inspect
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal, get_type_hints

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichModelSummary, RichProgressBar
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

import datamodules  # noqa: F401  (registers the datamodules for short class names)
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
from zoo.core.precision import precision_choice
from zoo.core.registry import get_model_entry
from zoo.core.reliability import FailureGuard, ResumeCheckpoint, install_atomic_checkpoint_io, reuse_run_dir_for_last

# Attributes that a datamodule may define and a model may take: linked when the model's signature takes them
# (jsonargparse leaves out a link whose target the chosen model class does not have).
DATA_TO_MODEL_LINKS = ("num_classes", "in_channels", "class_names", "task", "class_weights")
# What a link gives when the datamodule has no such attribute (a datamodule of single-label classes has no ``task``).
LINK_DEFAULTS: dict[str, Any] = {"task": "multiclass"}


# Model arguments that define the shapes of a checkpoint's weights: a value given on the command line that differs
# from the checkpoint's is an error (the weights would not fit), where any other given argument wins over it.
WEIGHT_SHAPE_ARGUMENTS = ("network", "network_kwargs", "num_classes", "in_channels")


# Subcommands that only evaluate or predict: no TensorBoard run, no checkpoints, their outputs in one folder.
EVALUATION_SUBCOMMANDS = ("validate", "test", "predict")


class CommandLineError(ZooUserError, argparse.ArgumentError):
    """A mistyped key, an unknown option or a value of the wrong type, in a config file or on the command line."""

    def __init__(self, message: str) -> None:
        argparse.ArgumentError.__init__(self, None, message)

    def __str__(self) -> str:
        return self.message


class ZooArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors are one paragraph (the bad key, where it was given, its close matches)
    instead of the usage and jsonargparse's Union / Namespace dumps."""

    cli_parser = False  # set on the parsers of the command and its subcommands, not on those jsonargparse nests

    def error(self, message: str, ex: Exception | None = None) -> None:  # type: ignore[override]
        if not self.cli_parser:  # a nested parser's error may be caught (another Union subtype is tried)
            super().error(message, ex)
        if isinstance(ex, CommandLineError):  # already one paragraph (a subcommand's parser raised it)
            raise ex
        raise CommandLineError(argument_error_message(self, message)) from ex


def argument_error_message(parser: LightningArgumentParser, message: str) -> str:
    """jsonargparse's error ``message`` as one paragraph: what is wrong with which key, and the fix (the close
    matches of a mistyped key, the expected type of a value)."""
    if "(all options: " in message:  # already rewritten (jsonargparse passes a nested parser's error on)
        return message
    parser = subcommand_parser(parser)
    command = parser.prog.replace(" [options]", "")
    help_hint = f"all options: {command} --help"
    missing = re.search(r"File does not exist: '?([^'\n]+)'?", message)
    if missing and 'Parser key "config"' in message:
        return (f"config file {missing.group(1)} does not exist (--config). Fix: check the path; the zoo's configs "
                f"are in configs/<family>/, a run's own in runs/<name>/version_<n>/config.yaml.")
    lines = [line.strip() for line in message.splitlines()]
    unknown = re.search(r"unrecognized arguments: (\S+)", message) or re.search(
        r"does not accept option '([^']+)'", message)
    class_path = next((m.group(1) for line in lines if (m := re.search(r"given class_path '([^']+)'", line))), None)
    not_accepted = next((m.group(1) for line in lines if (m := re.search(r"Option '([^']+)' is not accepted", line))),
                        None)
    top_key = next((m.group(1) for line in lines if (m := re.match(r'Parser key "([^"]+)"', line))), None)
    if not_accepted and class_path:
        key = f"{top_key}.init_args.{not_accepted}" if top_key else not_accepted
        names = init_argument_names(class_path)
        hint = close_matches_hint(not_accepted, names)
        if hint == "check the spelling":
            hint += f"; its arguments: {', '.join(names)}"
        return (f"{key}: {class_path.rsplit('.', 1)[-1]} has no argument {not_accepted!r}{where_given(key)}. "
                f"Fix: {hint} ({help_hint}).")
    if unknown:
        key = unknown.group(1).lstrip("-").split("=", 1)[0]
        return (f"unknown option {key!r}{where_given(key)}. Fix: {close_matches_hint(key, option_keys(parser))} "
                f"({help_hint}).")
    expected = [m.group(1) for line in lines if (m := re.search(r"Expected a <class '([^']+)'>", line))]
    # A Literal alternative (e.g. precision's 'bf16-mixed', '32-true', ..., and the zoo's 'auto'): name its values.
    choices = [value for line in lines if (m := re.search(r"Expected a typing\.Literal\[(.+)\]$", line))
               for value in m.group(1).split(", ")]  # fmt: skip
    inner_keys = [m.group(1) for line in lines[1:] for m in re.finditer(r'Parser key "([^"]+)"', line)]
    values = [m.group(1) for line in lines for m in re.finditer(r"(?:Got value|Given value): (.+?)(?:\. Got value|$)",
                                                                 line)]
    got = next((v for v in values if not v.startswith(("Namespace(", "NestedArg(", "{"))), None)
    if (expected or choices) and top_key:
        key = ".".join([top_key, "init_args", *inner_keys] if inner_keys and class_path else [top_key, *inner_keys])
        if class_path:  # the NoneType there is the alternative to the whole model / data class, not to this value
            expected = [k for k in expected if k != "NoneType"] or expected
        kinds = " or ".join(dict.fromkeys(k.replace("NoneType", "null") for k in expected))
        if choices:
            kinds = f"one of {', '.join(dict.fromkeys(choices))}" + (f", or {kinds}" if kinds else "")
        fix = "give one of these values" if choices else "give a value of that type"
        return f"{key}: expected {kinds}, got {got}{where_given(key)}. Fix: {fix} ({help_hint})."
    # Anything else: jsonargparse's own words, without the dumps of the value it was given.
    dumps = ("Given value", "Subtypes:", "- Expected a <class 'NoneType'>")
    kept = [line for line in lines if line and not line.startswith(dumps)]
    return " ".join(kept) + f" ({help_hint})."


def subcommand_parser(parser: LightningArgumentParser) -> LightningArgumentParser:
    """The parser of the subcommand on the command line (``fit``, ...), where ``parser`` is the command's."""
    action = getattr(parser, "_subcommands_action", None)
    choices = getattr(action, "choices", None) or {}
    word = next((w for w in _command_line if w in choices), None)
    return choices[word] if word else parser


def init_argument_names(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` (and of its bases, for ``**kwargs`` passed on)."""
    names: list[str] = []
    try:
        cls = import_class(class_path)
    except (ValueError, ImportError):
        return names
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def option_keys(parser: LightningArgumentParser) -> list[str]:
    """The dotted keys the parser takes (``trainer.max_epochs``, ``model``, ``ckpt_path``, ...)."""
    keys = []
    for action in parser._actions:
        keys += [o.lstrip("-") for o in action.option_strings if o.startswith("--")]
    return [k for k in keys if not k.endswith(".help") and k != "help"]


def close_matches_hint(key: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    if not matches and "." in key:  # a typo in one part of a dotted key: match that part
        head, _, tail = key.rpartition(".")
        matches = [f"{head}.{m}" for m in difflib.get_close_matches(tail, [c.rpartition(".")[2] for c in candidates
                                                                              if c.startswith(head)], n=3)]
        matches += [m for m in difflib.get_close_matches(key.split(".")[0], [c.split(".")[0] for c in candidates], n=1)
                    if m != key.split(".")[0]]
        if matches and "." not in matches[-1]:
            matches[-1] = key.replace(key.split(".")[0], matches[-1], 1)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in dict.fromkeys(matches)) + "?"
    return "check the spelling"


# The words of the command being parsed (ZooCLI sets them: in-process callers pass them as ``args``).
_command_line: list[str] = []


def where_given(key: str) -> str:
    """`` (on the command line)`` or `` (in <config file>)``: where the command being parsed sets ``key``."""
    words = _command_line
    short = key.replace(".init_args.", ".")
    if any(w.startswith("--") and w[2:].split("=", 1)[0].replace(".init_args.", ".").startswith(short) for w in words):
        return " (on the command line)"
    for path in config_paths(words):
        if _yaml_has_key(path, key):
            return f" (in {path})"
    return " (on the command line)" if any(key.split(".")[-1] in w for w in words if w.startswith("--")) else ""


def _yaml_has_key(path: str, key: str) -> bool:
    """Whether the YAML file ``path`` sets the dotted ``key`` (``model.init_args.label_smothing``)."""
    import yaml

    try:
        node: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_paths(words: list[str]) -> list[str]:
    """The ``--config`` / ``-c`` files named in ``words``."""
    paths = []
    for i, word in enumerate(words):
        if word.startswith("--config="):
            paths.append(word.split("=", 1)[1])
        elif word in ("--config", "-c") and i + 1 < len(words):
            paths.append(words[i + 1])
    return [p for p in paths if Path(p).is_file()]


class ZooModelSummary(RichModelSummary):
    """Lightning's summary table, less its FLOPs column and total when they would read 0 (the zoo's modules set no
    ``example_input_array``, so Lightning counts nothing): ``python -m zoo.card`` gives the MACs at the configured
    input size instead."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                       total_training_modes, total_flops, **summarize_kwargs)  # fmt: skip
            return
        from pytorch_lightning.utilities.model_summary.model_summary import (
            get_formatted_model_size,
            get_human_readable_count,
        )
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        for name, _ in columns[1:]:
            table.add_column(name, justify="right" if name in ("Params", "In sizes", "Out sizes") else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        console.print(
            f"Params: {get_human_readable_count(int(trainable_parameters)).strip()} trainable, "
            f"{get_human_readable_count(int(total_parameters - trainable_parameters)).strip()} frozen, "
            f"{get_formatted_model_size(model_size)} MB. Modules in train mode: {total_training_modes['train']}, "
            f"in eval mode: {total_training_modes['eval']}. MACs: python -m zoo.card --ckpt <checkpoint>"
        )


class ZooProgressBar(RichProgressBar):
    """Lightning's rich progress bar without ``v_num`` (the logger's version, shown as ``0.000``): the run folder is
    printed once at the start instead.

    It redraws ``refresh_rate`` times a second (rich's own default, 4) instead of Lightning's 100: the redraws run in
    a thread that, on a 2-core CPU, preempts the intra-op threads of the training step itself
    (whole-run pairs on a 2-core EPYC: 1.10x a plain loop with the 100 Hz bar, 1.00x without it; noisy, see the
    README's Lightning overhead section).
    """

    def __init__(self, refresh_rate: int = 4, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class ZooCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The words the user typed: what was given explicitly (and so must take effect) is read from them.
        raw = kwargs.get("args")
        self.command_line: list[str] = [str(a) for a in (sys.argv[1:] if raw is None else raw)]
        _command_line[:] = self.command_line
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.cli_parser = True
        return parser

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
        if config is not None and (config.get("trainer") or {}).get("fast_dev_run"):
            self._fast_dev_run_in_a_temporary_folder(config)
        elif config is not None and self.subcommand in EVALUATION_SUBCOMMANDS:
            self._outputs_in_one_folder(config)
        model = config.get("model") if config is not None else None
        if model is None or not model.get("class_path"):
            return
        model_class = import_class(model["class_path"])
        self._link_data_to_model(model["class_path"])
        family = getattr(model_class, "family", None)
        init_args = model.get("init_args") or {}
        name = init_args.get("network")  # the registry-name argument of every ZooModule
        if family and isinstance(name, str):
            entry = get_model_entry(name, family)
            self._fit_network_kwargs(init_args, entry)
        if init_args.get("fid_classifier") == "auto" and self.subcommand in ("fit", "validate", "test"):
            self._prepare_default_fid_features(config)

    def _link_data_to_model(self, model_class_path: str) -> None:
        """Link each of :data:`DATA_TO_MODEL_LINKS` that the chosen model takes from the datamodule's attribute
        (once the model class is known: a link to an argument the model lacks would reach it as an unknown keyword,
        and a datamodule attribute of the same name may mean something else, as a segmentation set's
        ``class_weights``)."""
        parser = self._parser(self.subcommand)
        if getattr(parser, "_zoo_links_added", False):
            return
        takes = set(init_argument_names(model_class_path))
        for attr in DATA_TO_MODEL_LINKS:
            if attr in takes:
                parser.link_arguments("data", f"model.init_args.{attr}", compute_fn=_attribute(attr),
                                      apply_on="instantiate")  # fmt: skip
        parser._zoo_links_added = True

    def given_trainer_arguments(self) -> set[str]:
        """The trainer arguments given on the command line (``--trainer.X``)."""
        return {w.removeprefix("--trainer.").split("=", 1)[0].split(".", 1)[0]
                for w in self.command_line if w.startswith("--trainer.")}

    def _fast_dev_run_in_a_temporary_folder(self, config: Any) -> None:
        """``fast_dev_run`` checks that the code runs; it writes nothing where the user works: no checkpoints (which
        Lightning's ``save_last`` writes at the end even then), no ``config.yaml``, logs in a temporary folder,
        removed at exit."""
        import atexit
        import shutil

        trainer = config["trainer"]
        if "default_root_dir" not in self.given_trainer_arguments():
            folder = tempfile.mkdtemp(prefix="zoo-fast-dev-run-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            trainer["default_root_dir"] = folder
        self.output_dir = None

    def _outputs_in_one_folder(self, config: Any) -> None:
        """``validate`` / ``test`` / ``predict`` write only their outputs, into one folder that is printed: no
        TensorBoard run (the config's logger is fit's; give ``--trainer.logger`` on the command line to log
        anyway) and no checkpoint callbacks. The folder: ``--report_dir`` (test), the model's ``output_dir`` when
        given (predict), else beside the checkpoint, ``<checkpoint folder>/<report|validate|predict>_<checkpoint>_
        <DataModule>/``; without a checkpoint file, ``runs/<subcommand>_untrained_<DataModule>/``."""
        trainer = config["trainer"]
        given = self.given_trainer_arguments()
        self.logger_left_out = "logger" not in given and trainer.get("logger") not in (None, False)
        if "logger" not in given:
            trainer["logger"] = False
        model_args = (config.get("model") or {}).get("init_args") or {}
        data_name = str((config.get("data") or {}).get("class_path") or "data").rsplit(".", 1)[-1]
        kind = {"test": "report", "validate": "validate", "predict": "predict"}[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        if self.subcommand == "test" and config.get("report_dir"):
            folder = Path(config["report_dir"])
        elif self.subcommand == "predict" and model_args.get("output_dir"):
            folder = Path(model_args["output_dir"])
        elif ckpt_path and Path(ckpt_path).is_file():
            folder = Path(ckpt_path).parent / f"{kind}_{Path(ckpt_path).stem}_{data_name}"
        else:
            folder = Path("runs") / f"{self.subcommand}_untrained_{data_name}"
        if "default_root_dir" not in given:
            trainer["default_root_dir"] = str(folder)
        # The checkpoint callbacks are left out on purpose (they act only in fit): Lightning's advice to add them back
        # asks nothing of the user here.
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
        if self.subcommand == "test":
            config["report_dir"] = str(folder)
            if config.get("report", True):
                from zoo.evaluation.report import check_writable

                check_writable(folder)  # before Lightning's config saving creates it, with the report's message
        if self.subcommand == "predict" and "output_dir" in init_argument_names(
                str((config.get("model") or {}).get("class_path") or "")):
            model_args["output_dir"] = str(folder)
        self.output_dir = folder

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

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # LightningCLI's, except that --trainer.precision also takes ``auto`` (resolved in _instantiate_trainer).
        parser.add_class_arguments(self.trainer_class, "trainer", fail_untyped=False, instantiate=False,
                                   sub_configs=True, skip={"precision"})  # fmt: skip
        parser.groups["trainer"].add_argument(
            "--trainer.precision", type=Literal["auto"] | get_type_hints(pl.Trainer.__init__)["precision"],
            default=None,
            help="Lightning's precision, or auto: bf16-mixed where the accelerator computes bf16 natively (a CPU "
            "with AVX512-BF16 / AMX, a CUDA GPU of compute capability 8.0+), else 32-true (zoo.core.precision)",
        )  # fmt: skip
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
                                        required=self.datamodule_class is not None)  # fmt: skip

    def _resolve_auto_precision(self, config: dict[str, Any]) -> None:
        """``precision: auto``: the precision :func:`zoo.core.precision.preferred_precision` picks for the trainer's
        accelerator, logged with the reason, and recorded in the run's saved ``config.yaml`` (what ran)."""
        if config.get("precision") != "auto":
            return
        chosen, reason = precision_choice(config.get("accelerator"))
        config["precision"] = chosen
        parsed = self.config.get(self.subcommand) if self.subcommand else self.config
        if parsed is not None and parsed.get("trainer") is not None:
            parsed["trainer"]["precision"] = chosen
        rank_zero_info(f"precision auto -> {chosen}: {reason}")

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

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_checkpoint_io(trainer)  # a kill mid-save leaves the previous checkpoint intact
        return trainer

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        self._resolve_auto_precision(config)
        configured = list(config.get("callbacks") or [])
        # --trainer.enable_checkpointing false forbids any checkpoint callback (Lightning refuses the run): the user
        # asked for none, so the resume point and the config's ModelCheckpoint are left out, saying so.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ResumeCheckpoint)]
            dropped = [c for c in configured if isinstance(c, ModelCheckpoint)]
            if dropped and self.subcommand not in EVALUATION_SUBCOMMANDS:
                rank_zero_warn(f"enable_checkpointing=False: the config's {len(dropped)} ModelCheckpoint callback(s) "
                               "are left out; this run saves no checkpoint.")
            configured = [c for c in configured if not isinstance(c, ModelCheckpoint)]
        # --trainer.logger false: Lightning refuses a LearningRateMonitor without a logger at the first step.
        if config.get("logger") is False:
            monitors = [c for c in configured if isinstance(c, LearningRateMonitor)]
            if monitors and self.subcommand == "fit":
                rank_zero_warn("logger=False: the config's LearningRateMonitor is left out (it logs to the logger).")
            configured = [c for c in configured if not isinstance(c, LearningRateMonitor)]
        if self.subcommand in EVALUATION_SUBCOMMANDS or config.get("fast_dev_run"):
            # Checkpoints and learning rates exist only in fit; in test they would only warn ("dirpath has changed").
            def fit_only(c: Any) -> bool:
                return isinstance(c, (ModelCheckpoint, LearningRateMonitor))

            callbacks = [c for c in callbacks if not fit_only(c)]
            configured = [c for c in configured if not fit_only(c)]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            configured.append(ZooProgressBar())
        if config.get("enable_model_summary") is not False and not any(
                isinstance(c, pl.callbacks.ModelSummary) for c in configured):
            configured.append(ZooModelSummary())
        config["callbacks"] = configured
        trainer = super()._instantiate_trainer(config, callbacks)
        if self.subcommand in EVALUATION_SUBCOMMANDS and getattr(self, "output_dir", None) is not None:
            note = (" (the config's logger is fit's: no TensorBoard run; --trainer.logger on the command line logs "
                    "anyway)" if getattr(self, "logger_left_out", False) else "")
            print(f"{self.subcommand}: outputs in {self.output_dir}{note}", flush=True)
        return trainer

    def config_file_model_arguments(self) -> set[str]:
        """The model init arguments that the ``--config`` files set."""
        import yaml

        given: set[str] = set()
        for path in config_paths(self.command_line):
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
        self._hand_weights_preprocessing_to_data()
        if self.subcommand != "test":
            return
        config = self.config[self.subcommand]
        if config.get("report", True):
            from zoo.evaluation import EvaluationReport

            self.trainer.callbacks.append(EvaluationReport(config.get("report_dir"), ckpt_path=config.get("ckpt_path")))

    def _hand_weights_preprocessing_to_data(self) -> None:
        """``normalize: weights``: the datamodule normalizes and evaluates as the model's pretrained weights were
        (their mean, std, resize ratio, interpolation: ``ImageClassifier.weights_preprocessing``)."""
        datamodule = getattr(self, "datamodule", None)
        if getattr(datamodule, "normalize", None) != "weights":
            return
        preprocessing = getattr(self.model, "weights_preprocessing", None)
        if preprocessing is None:
            pretrained = (getattr(self.model, "hparams", {}) or {}).get("pretrained")
            raise ValueError(
                f"data: normalize: weights takes the preprocessing of the model's pretrained weights, but "
                f"{'pretrained is not set' if not pretrained else f'pretrained {pretrained!r} carries none (a file)'}"
                ". Fix: set model.init_args.pretrained to a torchvision: or timm: name (e.g. "
                "torchvision:IMAGENET1K_V2), or set data.init_args.normalize to imagenet or data."
            )
        datamodule.use_weights_preprocessing(**preprocessing)

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
        on_command_line = self.given_model_arguments()
        in_config_files = self.config_file_model_arguments()
        given = (on_command_line | in_config_files) & set(hparams)
        if not given:
            return hparams
        subcommand = self.config.get("subcommand")
        init_args = self.config[subcommand]["model"].get("init_args") or {}
        for name in sorted(given & set(WEIGHT_SHAPE_ARGUMENTS)):
            mine, theirs = init_args.get(name), hparams[name]
            if _same_value(mine, theirs):
                continue
            where = f"--model.init_args.{name}" if name in on_command_line else (
                f"model.init_args.{name} of {', '.join(config_paths(self.command_line))}")
            raise ValueError(
                f"{where} {_plain(mine)!r} differs from the checkpoint's {name}={_plain(theirs)!r} "
                f"({ckpt_path}): the checkpoint's weights have the shapes of its own. Fix: leave {name} out "
                f"(the checkpoint's is used; for a config file, use the run's own config.yaml), or give a "
                f"checkpoint trained with {name}={_plain(mine)!r}."
            )
        return {k: v for k, v in hparams.items() if k not in given}

    def before_fit(self) -> None:
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank asks
        if self.trainer.is_global_zero and self.trainer.logger is not None and not self.trainer.fast_dev_run:
            print(f"fit: run folder {log_dir} (config.yaml, logs, checkpoints/)", flush=True)

    def after_test(self) -> None:
        report = next((c for c in self.trainer.callbacks if type(c).__name__ == "EvaluationReport"), None)
        folder = getattr(report, "resolved_dir", None) or getattr(self, "output_dir", None)
        if folder is not None and self.trainer.is_global_zero:
            print(f"test: report in {folder}/report.html (report.md, metrics.json, figures)", flush=True)

    def after_predict(self) -> None:
        if getattr(self, "output_dir", None) is not None and self.trainer.is_global_zero:
            written = sorted(p.name for p in Path(self.output_dir).glob("*") if p.name != "config.yaml")
            shown = ", ".join(written[:5]) + (f", ... ({len(written)} files)" if len(written) > 5 else "")
            print(f"predict: outputs in {self.output_dir}: {shown or 'nothing written'}", flush=True)

    def before_test(self) -> None:
        self._check_evaluated_weights("test", "evaluates", " (the report says so in its first line)")

    def before_validate(self) -> None:
        self._check_evaluated_weights("validate", "evaluates", "")

    def before_predict(self) -> None:
        self._check_evaluated_weights("predict", "predicts with", "")

    def _check_evaluated_weights(self, subcommand: str, verb: str, note: str) -> None:
        """Without ``--ckpt_path``, a loud warning: the numbers are those of untrained weights. With one, weights that
        do not fit the built network (an older, incompatible checkpoint) name the keys and the checkpoint's version
        instead of Lightning's bare ``load_state_dict`` error."""
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path:
            rank_zero_warn(
                f"{subcommand} without --ckpt_path {verb} {type(self.model).__name__} as it was just built: its "
                f"initial weights, not a trained model{note}. Fix: pass --ckpt_path "
                "runs/<name>/version_<n>/checkpoints/<file>.ckpt to use a trained model."
            )
        if ckpt_path and Path(ckpt_path).is_file():
            check_state_dict_compatible(read_checkpoint_info(ckpt_path), self.model)


def _same_value(a: Any, b: Any) -> bool:
    """Config values equal as plain data; an empty ``network_kwargs`` is the same as none."""
    a, b = _plain(a), _plain(b)
    return a == b or (a in (None, {}) and b in (None, {}))


def _plain(value: Any) -> Any:
    """Config values (jsonargparse Namespaces, tuples) as plain dicts and lists, to compare them."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def _attribute(name: str) -> Any:
    def get(datamodule: pl.LightningDataModule) -> Any:
        value = getattr(datamodule, name, LINK_DEFAULTS.get(name))
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
        parser_class=ZooArgumentParser,
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


def innermost_user_error(error: BaseException) -> BaseException:
    """The user error that ``error`` wraps, if any: jsonargparse wraps an error raised in a link's compute function
    (a datamodule attribute that reads the data) in one that prints the link and the datamodule's repr."""
    cause = error.__cause__
    while cause is not None:
        if is_user_error(cause):
            error = cause
        cause = cause.__cause__
    return error


def user_error_paragraph(error: BaseException) -> str:
    """What ``train.py`` prints for a user error: the message (what, where, the fix) and how to see more."""
    error = innermost_user_error(error)
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return f"error: {message}\n(the traceback: add --debug or set ZOO_DEBUG=1)"


# Lines Lightning prints on every command that ask nothing of the user: hardware that is absent, an advertisement,
# a note on how the schedule's length is found. (Hardware that is present but unused still prints: that one is
# actionable.)
QUIET_MESSAGES = (
    r"GPU available: False, used: False",
    r"TPU available: False, using: 0 TPU cores",
    r"HPU available: False, using: 0 HPUs",
    r"💡 Tip: ",  # advertisements of Lightning's cloud products (litlogger, litmodels)
    r"Loading `train_dataloader` to estimate number of stepping batches",
    r"Trainer already configured with model summary callbacks: \[<class 'zoo\.cli\.ZooModelSummary'>\]",
)
# Warnings raised inside the libraries about their own internals, which no setting of the user's can change.
QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # pytorch_lightning.utilities._pytree on torch >= 2.9
    r"The image decoding and encoding capabilities of TorchVision are deprecated",  # torchvision.io, used to decode
)


class _QuietFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{m})" for m in QUIET_MESSAGES))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(str(record.getMessage()))


def quiet_library_noise() -> None:
    """Silence the lines of :data:`QUIET_MESSAGES` and :data:`QUIET_WARNINGS` (the CLI only: importing the zoo
    changes no logging)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_QuietFilter())
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def run(argv: list[str] | None = None) -> int:
    """``train.py``: the CLI on ``argv`` (default ``sys.argv[1:]``); a user error is printed as one paragraph and
    returns exit code 2, with the traceback only under ``--debug`` or ``ZOO_DEBUG=1``; a bug raises as usual."""
    words = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in words or os.environ.get("ZOO_DEBUG", "") not in ("", "0")
    words = [a for a in words if a != "--debug"]
    if argv is None:  # LightningCLI reads sys.argv itself (and warns when given the same words twice)
        sys.argv[1:] = words
    quiet_library_noise()
    try:
        main(None if argv is None else words)
    except Exception as error:  # noqa: BLE001  (sorted into user errors and bugs right here)
        if debug or not is_user_error(error):
            raise
        print(user_error_paragraph(error), file=sys.stderr, flush=True)
        return 2
    return 0

"""The command line: ``python train.py {fit,validate,test,predict} --config configs/...``.

LightningCLI in subclass mode: a config names any LightningModule of ``zoo`` and any
LightningDataModule of ``datamodules`` by ``class_path``. What the data determines
(``num_classes``, ``in_channels``, ``class_names``) is linked from the datamodule to the model,
so it is typed once. The resolved config is saved next to the logs (``config.yaml``).
"""

from __future__ import annotations

import importlib
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

import datamodules  # noqa: F401  (registers the datamodules for short class names)
import zoo.classification  # noqa: F401
import zoo.segmentation  # noqa: F401
from zoo.registry import get_model_entry

# Attributes that a datamodule may define and a model may take: linked when both have them.
DATA_TO_MODEL_LINKS = ("num_classes", "in_channels", "class_names")


class ZooCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        # An unknown network name fails here with the registry's message (close names listed),
        # instead of deep inside jsonargparse's instantiation of the model.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        model = config.get("model") if config is not None else None
        if model is None or not model.get("class_path"):
            return
        module_name, _, class_name = model["class_path"].rpartition(".")
        model_class = getattr(importlib.import_module(module_name), class_name, None)
        family = getattr(model_class, "model_family", None)
        name = (model.get("init_args") or {}).get(getattr(model_class, "model_name_arg", "backbone"))
        if family and isinstance(name, str):
            get_model_entry(name, family)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in DATA_TO_MODEL_LINKS:
            parser.link_arguments(
                "data", f"model.init_args.{attr}", compute_fn=_attribute(attr), apply_on="instantiate"
            )


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

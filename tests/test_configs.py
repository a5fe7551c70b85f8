"""Every shipped config parses and instantiates its model and datamodule (no data is read)."""

from pathlib import Path

import pytest

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_instantiates(config):
    cli = main(["--config", str(config), "--trainer.logger=false"], run=False)
    assert cli.model is not None and cli.datamodule is not None
    # data-derived arguments come from the datamodule, not typed twice
    assert getattr(cli.model, "num_classes", None) in (None, getattr(cli.datamodule, "num_classes", None))

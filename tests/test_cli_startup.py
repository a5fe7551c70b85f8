"""Start-up: ``train.py --help`` answers without importing Lightning or torch, and a command imports only the
family it runs (``bench/startup.py`` measures the seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from zoo.commands import SUBCOMMANDS, overview

ROOT = Path(__file__).resolve().parents[1]


def imported_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(done.stdout.split("\n")[-2].split())


def test_the_overview_lists_exactly_lightning_clis_subcommands():
    assert list(SUBCOMMANDS) == list(LightningCLI.subcommands())
    text = overview()
    for name in SUBCOMMANDS:
        assert f"  {name} " in text


def test_train_help_imports_neither_lightning_nor_torch():
    code = ("import runpy, sys\nsys.argv = ['train.py', '--help']\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0")
    modules = imported_after(code)
    assert "zoo" in modules and not modules & {"torch", "pytorch_lightning", "lightning_fabric"}


def test_importing_zoo_imports_no_family_and_list_models_sees_every_family():
    assert "torch" not in imported_after("import zoo")
    import zoo

    families = {zoo.get_model_entry(name).family for name in zoo.list_models()}
    assert families == set(zoo.FAMILIES)


def test_a_family_imports_no_other_familys_libraries():
    modules = imported_after("import zoo.classification")
    assert not modules & {"timm", "segmentation_models_pytorch", "pycocotools", "onnx", "captum"}, modules

"""Every ``train.py fit`` command of the README runs as written (with a step limit appended), in the order the
README gives them, in one scratch folder: a command that needs an earlier one's checkpoint finds it where the
README says. Commands that need GPUs or a SLURM cluster are listed and checked to be exactly those."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
STEP_LIMIT = ["--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip
NEEDS_GPUS = ("configs/trainer/ddp_gpu", "configs/trainer/slurm_multinode", "configs/trainer/gpu", "accelerator gpu",
              "torchrun")
# CIFAR is not on this machine and there is no internet to download it: its configs are built by test_configs.py,
# its datamodule is tested on batches in its own format (tests/datamodules/test_cifar.py).
NEEDS_INTERNET = ("configs/classification/cifar10_resnet20.yaml", "configs/classification/cifar100_resnet20.yaml")


def write_users_images(work: Path, shared: Path) -> None:
    """What the README's "Train on your own images" commands point at, made of real MNIST digits: ``my_images/``
    (a folder per class) and ``labels.csv`` with ``images/`` (multi-label 0/1 columns)."""
    from PIL import Image

    from datamodules.mnist import MNISTDataModule

    images, labels = MNISTDataModule(data_dir=str(shared), download=False).load_split(train=False)
    rows = ["image,even,large"]
    for digit in (0, 3, 8):
        (work / "my_images" / f"digit{digit}").mkdir(parents=True)
        for i in (labels == digit).nonzero().flatten()[:10].tolist():
            picture = Image.fromarray((images[i, 0] * 0.3081 + 0.1307).clamp(0, 1).mul(255).byte().numpy())
            picture.save(work / "my_images" / f"digit{digit}" / f"{i}.png")
            (work / "images").mkdir(exist_ok=True)
            picture.save(work / "images" / f"{i}.png")
            rows.append(f"{i}.png,{int(digit % 2 == 0)},{int(digit > 4)}")
    (work / "labels.csv").write_text("\n".join(rows) + "\n")


def readme_commands() -> list[str]:
    """The shell commands of the README's bash blocks (continuation lines joined, comments removed)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def training_commands() -> list[str]:
    commands = []
    for command in readme_commands():
        words = shlex.split(command)
        if ("train.py" in words and "fit" in words) or "zoo.evaluation.fid_features" in words:
            commands.append(command)
    return commands


def test_the_readme_has_training_commands_and_only_gpu_ones_are_left_out():
    commands = training_commands()
    assert len(commands) >= 12
    left_out = [c for c in commands if any(g in c for g in NEEDS_GPUS)]
    assert left_out and all("gpu" in c or "slurm" in c for c in left_out), left_out
    offline = [c for c in commands if any(g in c for g in NEEDS_INTERNET)]
    assert offline and all("cifar" in c and "train.py fit --config" in c for c in offline), offline


def run_as_written(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value prefixes: the environment
        name, _, value = words.pop(0).partition("=")
        env = {**env, name: str((cwd / value).resolve()) if value.startswith("..") else value}
    redirect = None
    if ">" in words:
        redirect = cwd / words[words.index(">") + 1]
        words = words[: words.index(">")]
    if words[0] in ("python", "srun"):
        words = [sys.executable, *words[words.index("python") + 1:]] if "python" in words else words
    if "train.py" in words:
        words[words.index("train.py")] = str(ROOT / "train.py")
        if "--print_config" not in words and "--help" not in words:
            words += STEP_LIMIT
    done = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if redirect is not None:
        redirect.write_text(done.stdout)
    return done


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared data sets (MNIST, ISBI, DSB2018)")
def test_every_readme_training_command_runs(tmp_path):
    shared = shared_data_dir()
    work = tmp_path / "main"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared)  # ../shared/data as seen from the project root
    env = {**os.environ, "ZOO_DATA_DIR": str(shared), "PYTHONPATH": str(ROOT)}
    ran = []
    write_users_images(work, shared)
    for command in training_commands():
        if any(g in command for g in NEEDS_GPUS + NEEDS_INTERNET):
            continue
        done = run_as_written(command, work, env)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        ran.append(command)
    assert "model:" in (work / "my.yaml").read_text() and "trainer:" in (work / "my.yaml").read_text()
    assert len(ran) >= 10

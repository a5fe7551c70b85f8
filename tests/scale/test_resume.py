"""Exact resume: SIGKILL a ``train.py fit`` run mid-epoch, rerun the same command with ``--ckpt_path last``,
and end with the same weights and optimizer state, bit for bit, as a run that was never interrupted.
Also: a crash in the middle of writing a checkpoint leaves the previous one intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zoo.core.reliability import AtomicCheckpointIO, atomic_torch_save, reuse_run_dir_for_last

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 20  # train_subset 640 / batch_size 32
EPOCHS = 2
TIMEOUT = 300  # seconds per run: a hang fails the test instead of blocking the suite


def fit_command(data_root: Path, run_root: Path, *extra: str) -> list[str]:
    """A 2-epoch MNIST run of the default config, made tiny: a width-4 convnet on 640 images."""
    return [
        sys.executable, str(ROOT / "train.py"), "fit",
        "--config", str(ROOT / "configs/classification/mnist.yaml"),
        "--config", str(ROOT / "configs/trainer/cpu.yaml"),
        "--seed_everything", "7", "--trainer.deterministic", "true",
        "--trainer.max_epochs", str(EPOCHS),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(run_root),
        "--data.init_args.data_dir", str(data_root), "--data.init_args.download", "false",
        "--data.init_args.train_subset", "640", "--data.init_args.val_size", "500",
        "--data.init_args.batch_size", "32", "--data.init_args.eval_batch_size", "500",
        "--model.init_args.network_kwargs.width", "4",
        "--resume_checkpoint.every_n_train_steps", "3",
        *extra,
    ]  # fmt: skip


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def last_checkpoint(run_root: Path, name: str = "last") -> Path:
    """``last.ckpt``: the config's ModelCheckpoint (validation ends); ``last-step.ckpt``: ResumeCheckpoint."""
    return run_root / "mnist_convnet" / "version_0" / "checkpoints" / f"{name}.ckpt"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_bitwise_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            assert_bitwise_equal(x, y, f"{what}.{key}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{what}.{key} differs (max abs diff {(x.float() - y.float()).abs().max()})"
        elif isinstance(x, (list, tuple)) and x and isinstance(x[0], (dict, torch.Tensor)):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                assert_bitwise_equal({i: u}, {i: v}, f"{what}.{key}")
        else:
            assert x == y, f"{what}.{key}: {x!r} != {y!r}"


def test_killed_mid_epoch_and_resumed_with_ckpt_path_last_ends_bitwise_equal_to_uninterrupted_run(
    data_root: Path, tmp_path: Path
) -> None:
    env = run_env()
    # 1. the reference: never interrupted
    straight = tmp_path / "straight"
    done = subprocess.run(fit_command(data_root, straight), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = load(last_checkpoint(straight))
    assert reference["global_step"] == EPOCHS * STEPS_PER_EPOCH

    # 2. the same run, slowed down and SIGKILLed in the middle of epoch 1
    killed = tmp_path / "killed"
    markers = tmp_path / "markers"
    throttle = json.dumps({"class_path": "train_helpers.StepThrottle",
                           "init_args": {"marker_dir": str(markers), "delay": 0.1}})
    command = fit_command(data_root, killed, f"--trainer.callbacks+={throttle}")
    kill_after = STEPS_PER_EPOCH + 6  # epoch 1, batch 6: last.ckpt (every 3 steps) is from mid-epoch
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (markers / f"step_{kill_after}").exists():
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run did not reach the step to kill it at"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    interrupted = load(last_checkpoint(killed, "last-step"))  # the newest last*.ckpt: what --ckpt_path last takes
    step = interrupted["global_step"]
    assert STEPS_PER_EPOCH < step < EPOCHS * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH, step  # mid-epoch 1

    # 3. the same command again, with --ckpt_path last: it resumes in the killed run's folder
    resumed = subprocess.run([*command, "--ckpt_path", "last"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    assert not (killed / "mnist_convnet" / "version_1" / "checkpoints").exists()
    final = load(last_checkpoint(killed))
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert_bitwise_equal(final["state_dict"], reference["state_dict"], "state_dict")
    assert_bitwise_equal({"optim": final["optimizer_states"]}, {"optim": reference["optimizer_states"]}, "optimizer")
    assert_bitwise_equal({"sched": final["lr_schedulers"]}, {"sched": reference["lr_schedulers"]}, "scheduler")


def test_crash_in_the_middle_of_a_checkpoint_write_leaves_the_previous_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last-step.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3, "w": torch.arange(1000.0)}, path)

    real_save = torch.save

    def half_then_crash(obj: object, f: object, *args: object, **kwargs: object) -> None:
        import io as _io

        buffer = _io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # type: ignore[attr-defined]
        raise OSError("simulated crash in the middle of a checkpoint write")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="simulated crash"):
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()

    kept = torch.load(path, weights_only=True)
    assert kept["global_step"] == 3 and torch.equal(kept["w"], torch.arange(1000.0))
    assert [p.name for p in path.parent.iterdir()] == ["last-step.ckpt"]  # the half-written temporary file is gone


def test_atomic_save_removes_temporary_files_left_by_a_killed_save(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.abc123.tmp"  # what a SIGKILL during a save leaves behind
    stale.write_bytes(b"half a checkpoint")
    atomic_torch_save({"x": 1}, path)
    assert torch.load(path, weights_only=True) == {"x": 1}
    assert not stale.exists()


def test_ckpt_path_last_reuses_the_newest_run_folder_holding_last_ckpt(tmp_path: Path) -> None:
    from jsonargparse import Namespace

    for version, has_last in ((0, True), (1, True), (2, False)):
        folder = tmp_path / "runs" / "exp" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        if has_last:
            (folder / "last.ckpt").write_bytes(b"x")
    logger = Namespace(class_path="pytorch_lightning.loggers.TensorBoardLogger",
                       init_args=Namespace(save_dir=str(tmp_path / "runs"), name="exp", version=None))
    config = Namespace(ckpt_path="last", trainer=Namespace(logger=logger))
    assert reuse_run_dir_for_last(config) == tmp_path / "runs" / "exp" / "version_1"
    assert config.trainer.logger.init_args.version == 1

    fresh = Namespace(ckpt_path=None, trainer=Namespace(logger=logger.clone()))
    fresh.trainer.logger.init_args.version = None
    assert reuse_run_dir_for_last(fresh) is None and fresh.trainer.logger.init_args.version is None

"""``precision: auto`` (zoo.core.precision, ``--trainer.precision auto``): bf16-mixed where the accelerator computes
bf16 natively, 32-true elsewhere; resolved by the CLI before the Trainer is built, logged, and saved as what ran."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

import zoo.core.precision as precision
from zoo.cli import CommandLineError, main
from zoo.core.precision import accelerator_kind, cpu_has_native_bf16, preferred_precision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch):
    """Set whether the CPU "has" native bf16."""

    def set_to(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)

    return set_to


@pytest.mark.parametrize(("avx512_bf16", "amx", "native"), [(True, False, True), (False, True, True),
                                                           (False, False, False)])  # fmt: skip
def test_an_x86_cpu_has_native_bf16_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    # oneDNN's own check is true on plain AVX512 (emulated bf16): it must not decide on x86
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert cpu_has_native_bf16() is native


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_gets_bf16_mixed_only_with_native_bf16(cpu_bf16, native):
    cpu_bf16(native)
    expected = "bf16-mixed" if native else "32-true"
    assert preferred_precision("cpu") == expected
    chosen, reason = precision.precision_choice("cpu")
    assert chosen == expected and ("natively" in reason if native else "emulated" in reason)


@pytest.mark.parametrize("bf16", [True, False])
def test_a_cuda_gpu_gets_bf16_mixed_where_it_computes_bf16(monkeypatch, cpu_bf16, bf16):
    cpu_bf16(not bf16)  # the CPU's answer must not leak into the GPU's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 and not including_emulation
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    expected = "bf16-mixed" if bf16 else "32-true"
    assert preferred_precision("gpu") == preferred_precision("cuda") == preferred_precision("auto") == expected


def test_accelerator_names_and_instances_resolve_as_lightning_picks(monkeypatch):
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    assert accelerator_kind(CPUAccelerator()) == "cpu" and accelerator_kind(CUDAAccelerator()) == "cuda"
    assert accelerator_kind("GPU") == "cuda" and accelerator_kind("mps") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert accelerator_kind("auto") == accelerator_kind(None) == "cpu"
    assert preferred_precision("mps") == preferred_precision("tpu") == "32-true"


def test_the_benchmarks_read_the_detection_from_the_package():
    from bench import _common

    assert _common.cpu_has_native_bf16 is precision.cpu_has_native_bf16
    assert _common.default_precision() == preferred_precision("auto")


@pytest.mark.parametrize("native", [True, False])
def test_trainer_precision_auto_on_the_command_line_resolves_per_cpu(cpu_bf16, native, data_root, caplog):
    cpu_bf16(native)
    with caplog.at_level(logging.INFO):
        cli = main(["--config", str(ROOT / "configs/classification/mnist.yaml"),
                    f"--data.init_args.data_dir={data_root}", "--trainer.precision=auto", "--trainer.accelerator=cpu",
                    "--trainer.logger=false"], run=False)  # fmt: skip
    expected = "bf16-mixed" if native else "32-true"
    assert cli.trainer.precision == expected
    assert f"precision auto -> {expected}:" in caplog.text


def test_trainer_precision_auto_from_yaml_fits_and_saves_what_ran(data_root, tmp_path):
    preset = tmp_path / "auto.yaml"
    preset.write_text("trainer:\n  accelerator: cpu\n  precision: auto\n")
    cli = main(["fit", "--config", str(ROOT / "configs/classification/mnist.yaml"), "--config", str(preset),
                f"--data.init_args.data_dir={data_root}", "--data.init_args.train_subset=128",
                "--data.init_args.batch_size=32", "--model.init_args.network_kwargs={width: 4}",
                f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=2",
                "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false"])  # fmt: skip
    expected = preferred_precision("cpu")
    assert cli.trainer.precision == expected and cli.trainer.global_step == 2
    saved = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == expected  # the saved config reruns what ran, on any machine


def test_an_unknown_precision_is_still_refused_by_the_parser(data_root):
    with pytest.raises(CommandLineError, match="trainer.precision.*fastest"):
        main(["--config", str(ROOT / "configs/classification/mnist.yaml"), "--trainer.precision=fastest"], run=False)

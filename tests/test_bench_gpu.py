"""``bench/gpu.py`` (issue 21) before it meets a GPU: its smoke mode runs every measurement on the CPU at tiny sizes
and writes numbers; the compiled path times a compiled network; the peak and fraction arithmetic, and the FLOP count
it divides by, are what the script says they are."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu

ROOT = Path(__file__).resolve().parents[1]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_cpu_smoke_writes_every_measurement_as_numbers_including_a_two_process_ddp_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    # Two gloo processes exercise the DDP path (Lightning's launcher re-running the worker command) that a GPU
    # machine with several GPUs takes; without --ddp-devices a CPU run skips it.
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-smoke", "--ddp-devices", "2", "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| eager |" in run.stdout and "DDP (eager" in run.stdout
    result = json.loads(out.read_text())

    assert result["errors"] == []
    assert result["machine"]["torch"] == torch.__version__
    assert _is_number(result["matmul_peak"]["tflops"]) and result["matmul_peak"]["tflops"] > 0
    flops = result["flops_per_image"]
    for key in ("counted_forward", "counted_forward_backward", "counted_forward_backward_224"):
        assert _is_number(flops[key]) and flops[key] > 0, key
    assert flops["counted_forward_backward"] < flops["counted_forward_backward_224"]  # smoke runs at 32 px

    (eager,) = result["training"]
    assert eager["run"] == "eager" and eager["steps"] == 2
    for key in ("images_per_s", "ms_per_step", "first_step_s", "warmup_s", "model_tflops", "fraction_of_peak",
                "fraction_of_peak_issue_flops", "vs_timm_rtx3090"):  # fmt: skip
        assert _is_number(eager[key]) and eager[key] > 0, key
    assert eager["images_per_s"] == pytest.approx(eager["batch_per_device"] * 1000 / eager["ms_per_step"])

    loader = result["loader"]
    assert loader["images"] >= 8 and loader["workers"] == 1
    assert loader["batch_shape"] == [2, 3, 32, 32]  # RandomResizedCrop to the image size
    for key in ("images_per_s", "ratio_to_training"):
        assert _is_number(loader[key]) and loader[key] > 0, key

    ddp = result["ddp"]
    assert ddp["measured"] and ddp["multi"]["devices"] == 2 and ddp["single"]["devices"] == 1
    for key in ("speedup", "efficiency"):
        assert _is_number(ddp[key]) and ddp[key] > 0, key
    assert ddp["efficiency"] == pytest.approx(ddp["speedup"] / 2)


def test_compiled_run_times_the_network_compiled_by_the_zoo_after_its_compilation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Inductor would build ResNet-50's C++ kernels for minutes on this CPU: dynamo's eager backend traces the same
    # graphs (the compile path of ZooModule and the script's timing of it) without generating code.
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager", **kw))
    torch.set_num_threads(1)
    torch._dynamo.reset()
    args = gpu.parse_args(["--cpu-smoke", "--runs", "compiled"])
    result = gpu.train_throughput(args, compile=True)
    assert result["run"] == "compiled"
    assert result["graphs_compiled"] >= 1 and not result["recompiled_in_window"]
    assert _is_number(result["compile_s"]) and _is_number(result["images_per_s"]) and result["images_per_s"] > 0
    assert result["compile_s"] == pytest.approx(result["first_step_s"] - result["ms_per_step"] / 1000)


def test_matmul_peak_is_two_n_cubed_flops_per_product_over_the_timed_seconds() -> None:
    ticks = iter([10.0, 10.5, 20.0, 20.25])  # two rounds: 0.5 s, then 0.25 s
    peak = gpu.matmul_peak(64, iters=4, repeats=2, device=torch.device("cpu"), dtype=torch.float32,
                           clock=lambda: next(ticks))  # fmt: skip
    flops = 2 * 64**3 * 4
    assert peak["tflops_rounds"] == pytest.approx([flops / 0.5 / 1e12, flops / 0.25 / 1e12])
    assert peak["tflops"] == pytest.approx(flops / 0.25 / 1e12)  # the best round


def test_fraction_of_peak_is_model_flops_per_second_over_the_peak() -> None:
    # 3,000 images/s of 24.3 GFLOP on a GPU whose matmuls reach 729 TFLOP/s: 72.9 TFLOP/s, a tenth of it
    assert gpu.fraction_of_peak(3000, 24.3e9, 729e12) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="did not advance"):
        gpu.flop_rate(1e9, 0.0)


def test_resnet50_counts_twice_the_issues_12_3_gflop_because_a_multiply_add_is_two_flops() -> None:
    flops = gpu.training_flops_per_image("resnet50", 224)
    assert flops["forward"] == pytest.approx(2 * 4.09e9, rel=0.01)  # torchvision's 4.09 GMACs
    assert flops["forward_backward"] == pytest.approx(2 * gpu.ISSUE_FLOPS_PER_IMAGE, rel=0.02)


def test_ddp_is_skipped_with_its_reason_on_one_gpu_and_on_a_cpu_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    args = gpu.parse_args(["--cpu-smoke"])
    n, reason = gpu.ddp_plan(args)
    assert n is None and "CPU" in reason
    args.ddp_devices = 2
    assert gpu.ddp_plan(args) == (2, None)
    args.accelerator, args.ddp_devices = "gpu", None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu.ddp_plan(args) == (None, "1 GPU: no scaling measured")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert gpu.ddp_plan(args) == (8, None)


def test_a_failing_part_is_recorded_with_its_error_and_the_others_still_run(capsys: pytest.CaptureFixture) -> None:
    errors: list[dict[str, str]] = []

    def compile_fails() -> dict:
        raise RuntimeError("no C++ compiler")

    assert gpu.attempt("training (compiled)", errors, compile_fails) is None
    assert gpu.attempt("loader", errors, lambda: {"images_per_s": 5.0}) == {"images_per_s": 5.0}
    assert errors == [{"part": "training (compiled)", "error": "RuntimeError: no C++ compiler"}]
    assert "training (compiled) failed: RuntimeError: no C++ compiler" in capsys.readouterr().out

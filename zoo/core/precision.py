"""The training precision that is fast on the machine at hand: ``--trainer.precision auto`` (``zoo.cli``) and the
benchmarks' ``--precision auto`` (``bench/_common.py``) both resolve through :func:`preferred_precision`.

bf16 autocast is only fast where the hardware multiplies bf16 itself: on a CPU with AVX512-BF16 or AMX (Intel
Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later) it nearly halves a training step; without them oneDNN
emulates bf16 in float32 and the step gets many times slower (measured: a U-Net step 56 s instead of 0.9 s on an
AVX2-only EPYC). On CUDA, bf16 needs compute capability 8.0 (Ampere) or newer. Elsewhere the choice is float32.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

# How Lightning names the accelerators that may be given as a string (``--trainer.accelerator``).
CUDA_ACCELERATORS = ("gpu", "cuda")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively. x86: AVX512-BF16 or AMX (``torch.cpu``'s checks; oneDNN's own
    ``mkldnn._is_mkldnn_bf16_supported`` is also true on plain AVX512, where it emulates bf16). Arm: the BF16
    extension (oneDNN's check, which reads it from the CPU there)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def accelerator_kind(accelerator: Any) -> str:
    """``cpu``, ``cuda`` or another name (``mps``, ``tpu``, ...) for a Lightning ``accelerator`` argument: a string,
    an ``Accelerator`` instance, or ``auto`` / None (CUDA when a GPU is visible, else the CPU, as Lightning picks)."""
    if accelerator is None or accelerator == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if not isinstance(accelerator, str):  # an Accelerator instance: CPUAccelerator, CUDAAccelerator, ...
        name = type(accelerator).__name__.lower().removesuffix("accelerator")
        return "cuda" if name in CUDA_ACCELERATORS else name
    name = accelerator.lower()
    return "cuda" if name in CUDA_ACCELERATORS else name


def preferred_precision(accelerator: Any = "auto") -> str:
    """``bf16-mixed`` where ``accelerator`` computes bf16 natively (a CPU with AVX512-BF16 / AMX; a CUDA GPU of
    compute capability 8.0 or more), ``32-true`` elsewhere (CPUs without it, older GPUs, MPS, other accelerators)."""
    return precision_choice(accelerator)[0]


def precision_choice(accelerator: Any = "auto") -> tuple[str, str]:
    """:func:`preferred_precision` and the reason for it, one line (what ``--trainer.precision auto`` logs)."""
    kind = accelerator_kind(accelerator)
    if kind == "cpu":
        if cpu_has_native_bf16():
            return "bf16-mixed", f"the CPU computes bf16 natively (AVX512-BF16 / AMX; {_cpu_capability()})"
        return "32-true", (
            f"the CPU has no native bf16 (no AVX512-BF16 / AMX; {_cpu_capability()}): bf16 autocast would be "
            "emulated, many times slower than float32"
        )
    if kind == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16-mixed", f"{torch.cuda.get_device_name()} computes bf16 natively"
        return "32-true", (
            "no CUDA GPU with native bf16 (compute capability 8.0+); 16-mixed is faster there, but its loss scaling "
            "can overflow: give --trainer.precision 16-mixed to choose it"
        )
    return "32-true", f"accelerator {kind!r}: the zoo picks bf16 only on CPUs and CUDA GPUs that compute it natively"


def _cpu_capability() -> str:
    return f"torch's CPU capability {torch.backends.cpu.get_cpu_capability()}"

"""Numeric precision of training and inference: bf16 autocast where the hardware has it.

``auto`` picks bf16 autocast on a CUDA device that supports it and on a CPU with bf16 units
(AMX-BF16 or AVX512-BF16; measured on this project's 2-core Xeon: a ResNet-56 training step
1.7x faster than fp32); fp32 everywhere else. ``bf16`` forces autocast (slow but correct on a
CPU without bf16 units), ``fp32`` turns it off.

``int8`` is not a PyTorch precision: it names ONNX Runtime's statically quantised graphs
(:mod:`app.ml.bundle.onnx_quantize`), so it is one of :data:`SERVING_PRECISIONS` (what the
service and ``sketchreid evaluate`` accept) and never reaches :func:`autocast_dtype`.
Importing this module does not import PyTorch (the service reads its precision names without
it); :func:`autocast_dtype` does.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
ServingPrecision = Literal["auto", "bf16", "fp32", "int8"]
"""What the service and the evaluation accept: a PyTorch precision or int8 (ONNX Runtime)."""
SERVING_PRECISIONS: tuple[str, ...] = get_args(ServingPrecision)
RunPrecision = Literal["bf16", "fp32", "int8"]
"""How an embedder actually computes (``auto`` resolved)."""
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_CPU_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (Linux ``/proc/cpuinfo``)."""
    return any(flag in _cpu_flags() for flag in _CPU_BF16_FLAGS)


def cpu_has_vnni() -> bool:
    """True when the CPU has 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI or
    AMX-INT8), which accumulate uint8 x int8 products without the 16-bit saturation of
    AVX2's ``VPMADDUBSW``."""
    return any(flag in _cpu_flags() for flag in _CPU_VNNI_FLAGS)


def autocast_dtype(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` under ``precision``, or None for plain fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    return None

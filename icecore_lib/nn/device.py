"""Where torch runs and how it is seeded: one device rule and one seed for Python, NumPy and torch.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PRECISIONS = ("auto", "bf16", "fp32")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype a device computes in under ``precision`` (None = fp32, autocast off).

    ``"auto"``: bf16 where the hardware computes it natively (CUDA, a CPU with AVX512-BF16 or AMX: 2x per image
    step, docs/measurements.md), fp32 elsewhere (emulated bf16 on an older CPU is slower than fp32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    on = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or cpu_has_native_bf16()))
    return torch.bfloat16 if on else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles), where bf16 autocast pays."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here; use device='auto' or 'cpu'")
    return device

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

    ``"auto"``: bf16 on CUDA, fp32 on CPU; ``"bf16"`` pays on a CPU with native bf16 (docs/measurements.md).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    on = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if on else None


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here; use device='auto' or 'cpu'")
    return device

"""Checkpoints as safetensors: a model's weights, and the whole training state a resumed fit continues from.

Nothing is pickled: tensors go in the safetensors body, everything else (loop state, optimizer groups, RNG
positions, fingerprint of the settings) in its JSON metadata.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_path

_META_KEY = "icecore"


def save_weights(model: nn.Module, path: Path | str, **metadata: Any) -> Path:
    """Write the model's state dict as safetensors (atomically), with JSON-able metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return _write_safetensors(path, tensors, {"model": type(model).__name__, **metadata})


def load_weights(model: nn.Module, path: Path | str) -> dict[str, Any]:
    """Load safetensors weights into ``model`` (every key must match); return the stored metadata."""
    tensors, metadata = _read_safetensors(path)
    _load_model_state(model, {k: v for k, v in tensors.items() if not k.startswith(("optimizer.", "rng."))}, path)
    return metadata


def _load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """load_state_dict with an error that names the file."""
    tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise RuntimeError(f"{path}: weights do not fit {type(model).__name__}: {err}") from err


def _write_safetensors(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Atomic safetensors write; the metadata travels as one JSON string."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(metadata)})
    return Path(path)


def _read_safetensors(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on CPU) and the JSON metadata of a safetensors file: no pickle, nothing executed."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get(_META_KEY, "{}"))
    return load_file(str(path), device="cpu"), metadata


def save_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, loop: dict[str, Any],
                        fingerprint: dict[str, Any]) -> None:
    """Model, optimizer, scheduler, the loop's own state and every RNG state in one safetensors file."""
    model_tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_meta = _rng_state()
    metadata = {
        "fingerprint": fingerprint,
        "loop": loop,
        "optimizer": optim_meta,
        "scheduler": scheduler.state_dict(),
        "rng": rng_meta,
    }
    _write_safetensors(path, model_tensors | optim_tensors | rng_tensors, metadata)


def load_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote and return the loop's state; refuse other settings."""
    tensors, metadata = _read_safetensors(path)
    saved = metadata["fingerprint"]
    changed = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if changed:
        raise ValueError(
            f"{path} was written with other settings {changed} (checkpoint, now); "
            "use a fresh out_dir or fit(..., resume=False)"
        )
    _load_model_state(model, {k: v for k, v in tensors.items() if k.startswith("model.")}, path)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, metadata["optimizer"]))
    scheduler.load_state_dict(metadata["scheduler"])
    _set_rng_state(tensors, metadata["rng"])
    return metadata["loop"]


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as named tensors plus JSON (param groups and any non-tensor state)."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``_flatten_optimizer``."""
    state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in meta["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU, every CUDA device), NumPy and Python global RNG states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    numpy_state = np.random.get_state(legacy=False)
    tensors["rng.numpy"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    meta = {
        "python": random.getstate(),
        "numpy": {
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of ``_rng_state`` (CUDA states only where this machine has the devices)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": tensors["rng.numpy"].numpy().astype(np.uint32), "pos": meta["numpy"]["pos"]},
        "has_gauss": meta["numpy"]["has_gauss"],
        "gauss": meta["numpy"]["gauss"],
    })

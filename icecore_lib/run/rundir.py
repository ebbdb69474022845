"""Run directories: a fresh one per run (never reused), found again by later notebooks; the run's versions.

Notebook 00 (or ``icecore run``) creates the directory; notebooks 01-05 continue it: the one they are given,
else the latest one started under the runs folder.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..files import atomic_path, atomic_write_text, atomic_write_yaml
from .artifacts import Run

TRACKED_PACKAGES = (
    "icecore", "numpy", "pandas", "scikit-learn", "scikit-image", "scipy", "torch", "torchvision",
    "xgboost", "shap", "umap-learn", "papermill", "matplotlib", "pillow", "pyarrow", "safetensors",
)


def new_run_dir(root: Path | str, name: str | None = None) -> Path:
    """Create a fresh run directory under ``root``; an existing one is never reused."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stem = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = root / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a fresh run directory named {stem!r} under {root}")


def environment_versions() -> dict[str, Any]:
    """Python, platform and the versions of the packages a result depends on."""
    versions: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in TRACKED_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    versions["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return versions


def project_root(start: Path | str | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding data_manifest.yaml, else ``start``."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "data_manifest.yaml").is_file():
            return folder
    return start


def runs_root() -> Path:
    """Where run directories go: $ICECORE_RUNS, else ``runs/`` in the project root."""
    return Path(os.environ.get("ICECORE_RUNS", project_root() / "runs"))


LATEST_POINTER = "LATEST"
# Files the runner writes into a fresh run directory before notebook 00 starts.
_RUNNER_FILES = frozenset({"params.yaml", "environment.json", "notebooks"})


def start_run(run_dir: Path | str = "", name: str = "", *, latest: bool = True) -> Run:
    """Run directory for notebook 00: the given one (fresh or empty), else a new one under runs_root().

    ``latest``: point the runs folder's latest-run pointer at it (what notebooks 01-05 continue without a run_dir);
    an apply run does not, so the notebooks of a training run never continue it.
    """
    if run_dir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        if any(p for p in path.iterdir() if p.name not in _RUNNER_FILES):
            raise FileExistsError(f"{path} already holds results; run directories are never reused")
    else:
        path = new_run_dir(runs_root(), name or None)
    if latest:
        atomic_write_text(path.parent / LATEST_POINTER, path.name + "\n")
    return Run(path)


def continue_run(run_dir: Path | str = "") -> Run:
    """Run directory for notebooks 01+: the given one, else the latest one notebook 00 started."""
    if run_dir:
        path = Path(run_dir)
    else:
        pointer = runs_root() / LATEST_POINTER
        if not pointer.is_file():
            raise FileNotFoundError(f"no run started yet under {runs_root()}: run notebook 00 first or pass run_dir")
        path = runs_root() / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist: run notebook 00 first")
    return Run(path)


def record_stage(run_dir: Path | str, stage: str, cfg: Any) -> Path:
    """Save a notebook stage's resolved config as ``params/<stage>.yaml`` in the run directory."""
    return atomic_write_yaml(Path(run_dir) / "params" / f"{stage}.yaml", to_dict(cfg))


def copy_into(run_dir: Path | str, source: Path | str, relative: str) -> Path:
    """Copy a file into the run directory (atomically) so the run holds everything it showed."""
    target = Path(run_dir) / relative
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target



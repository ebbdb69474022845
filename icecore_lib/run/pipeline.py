"""The main job: execute the ordered notebooks with papermill into one fresh run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import PROFILE_NAMES, check_overrides
from ..files import atomic_write_json, atomic_write_yaml
from .artifacts import Run
from .report import write_report
from .rundir import environment_versions, new_run_dir
from .rundir import runs_root as default_runs_root

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass(frozen=True)
class NotebookResult:
    """One executed notebook: where it landed and how long it took."""

    name: str
    output: Path
    seconds: float


def notebook_paths(notebooks_dir: Path = NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """The ordered notebooks (``NN_name.ipynb``), optionally only those whose number or name is listed."""
    paths = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb in {notebooks_dir}")
    if only:
        wanted = set(only)
        paths = [p for p in paths if p.stem[:2] in wanted or p.stem in wanted]
        if not paths:
            raise ValueError(f"none of {sorted(wanted)} matches a notebook in {notebooks_dir}")
    return paths


def run_notebooks(
    profile: str = "demo",
    *,
    dataset: str = "",
    name: str = "",
    runs_root: Path | None = None,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    progress: bool = True,
) -> tuple[Path, list[NotebookResult]]:
    """Create a fresh run directory, execute the notebooks in order (stopping on an error), then write report.html."""
    import papermill as pm

    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    check_overrides(overrides or {})
    paths = notebook_paths(notebooks_dir, only)
    run_dir = new_run_dir(runs_root or default_runs_root(), name or f"{time.strftime('%Y%m%d-%H%M%S')}-{profile}")
    parameters = {"profile": profile, "run_dir": str(run_dir.resolve()), "dataset": dataset,
                  "overrides": dict(overrides or {})}
    atomic_write_yaml(run_dir / "params.yaml", {"parameters": parameters, "notebooks": [p.name for p in paths]})
    atomic_write_json(run_dir / "environment.json", environment_versions())
    out_dir = run_dir / "notebooks"
    out_dir.mkdir()
    results = []
    for path in tqdm(paths, desc=f"notebooks -> {run_dir.name}", disable=not progress):
        start = time.perf_counter()
        output = out_dir / path.name
        pm.execute_notebook(
            str(path), str(output), parameters=parameters, cwd=str(notebooks_dir.parent),
            progress_bar=False, kernel_name="python3",
        )
        results.append(NotebookResult(path.stem, output, time.perf_counter() - start))
    timings = {r.name: round(r.seconds, 2) for r in results}
    Run(run_dir).update_metrics("pipeline", {"notebook_seconds": timings, "total_seconds": sum(timings.values())})
    write_report(run_dir, progress=progress)
    return run_dir, results

"""What every notebook's set-up cell does, in one call: its stage config, its run directory, its data.

A notebook's papermill ``parameters`` cell holds ``profile``, ``run_dir``, ``dataset``, ``overrides`` and
``drive_data``; :func:`open_stage` turns them into a :class:`Stage`: the typed config, the run directory
(started by notebook 00, continued by the others), the stage's parameters recorded in it, the data packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd

from ..config import STAGE_CONFIGS, StageConfig, stage_config
from ..data.dataset import DatasetBundle, load_dataset
from .artifacts import Run
from .colab import prepare
from .rundir import continue_run, record_stage, start_run

C = TypeVar("C", bound=StageConfig)
FIRST_STAGE = next(iter(STAGE_CONFIGS))


@dataclass(frozen=True)
class Skipped:
    """A notebook step that had nothing to work on (no core part, no truth file): shown as one markdown line."""

    what: str
    why: str

    def _repr_markdown_(self) -> str:
        """How Jupyter shows it."""
        return f"*Skipped {self.what}: {self.why}.*"

    def __str__(self) -> str:
        return f"skipped {self.what}: {self.why}"


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One notebook's working context: its config, its run directory, its dataset."""

    name: str
    cfg: C
    run: Run
    bundle: DatasetBundle

    @property
    def table(self) -> pd.DataFrame:
        """The labelled particle table (features, label, split), keyed by particle id."""
        return self.bundle.train.table

    def figure(self, filename: str) -> Path:
        """Where one of this notebook's figures is saved."""
        return self.run.figure(filename)


def open_stage(stage: str, profile: str = "ci", *, run_dir: str = "", dataset: str = "",
               overrides: dict[str, Any] | None = None, drive_data: str = "", progress: bool = True) -> Stage:
    """Build a notebook's stage from its parameters: config, run directory (fresh for 00), data checked and packed."""
    if stage not in STAGE_CONFIGS:
        raise ValueError(f"unknown stage {stage!r}; the notebooks' stages are {', '.join(STAGE_CONFIGS)}")
    cfg = stage_config(STAGE_CONFIGS[stage], profile, run_dir=run_dir, dataset=dataset, overrides=overrides)
    run = start_run(cfg.run_dir) if stage == FIRST_STAGE else continue_run(cfg.run_dir)
    record_stage(run, stage, cfg)
    prepare(drive_data)
    bundle = load_dataset(cfg, progress=progress)
    print(f"{stage}: dataset {bundle.name} ({len(bundle.train.table):,} labelled, "
          f"{len(bundle.core.table) if bundle.core is not None else 0:,} core particles) -> run {run.path}")
    return Stage(stage, cfg, run, bundle)

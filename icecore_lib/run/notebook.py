"""What every notebook's set-up cell does, in one call: its stage config, its run directory, its data.

A notebook's papermill ``parameters`` cell holds ``profile``, ``run_dir``, ``dataset``, ``overrides`` and
``drive_data``; :func:`open_stage` turns them into a :class:`Stage`: the typed config, the run directory
(started by notebook 00, continued by the others), the stage's parameters recorded in it, the data packed.

A lab's dataset need not have every part (core, truth) or column (session, sample_id, depth_m) of the synthetic
demo: a stage function decorated with :func:`step` says what it needs and returns :class:`Skipped` (one markdown
line: what, why, what to add) when the dataset lacks it, or when a step it builds on was skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar

import pandas as pd

from ..config import STAGE_CONFIGS, StageConfig, stage_config
from ..data.dataset import DatasetBundle, load_dataset
from ..schema import DEPTH, LABEL, SAMPLE, SESSION, VOLUME
from .artifacts import Run
from .colab import prepare
from .reference import check_key_numbers
from .rundir import continue_run, record_stage, start_run

C = TypeVar("C", bound=StageConfig)
P = ParamSpec("P")
R = TypeVar("R")
FIRST_STAGE = next(iter(STAGE_CONFIGS))
HOLDOUT_SETTING = "holdout_classes"
# What a missing column would hold, for the line that says what to add.
COLUMN_MEANINGS = {
    SAMPLE: "the sample or FlowCam run each particle comes from",
    DEPTH: "each particle's depth in metres",
    SESSION: "the acquisition session each particle was imaged in; a `session_pattern` in the manifest can read it "
             "from the file names",
    VOLUME: "the fluid volume imaged, in ml, of each particle's sample or run",
}


@dataclass(frozen=True)
class Skipped:
    """A notebook step with nothing to work on (no core part, no truth file): shown as one markdown line."""

    what: str
    why: str
    fix: str = ""  # what to add to the dataset to get the step

    @property
    def message(self) -> str:
        """The line as text: what was skipped, why, and what to add."""
        return f"Skipped {self.what}: {self.why}" + (f"; {self.fix}" if self.fix else "") + "."

    def _repr_markdown_(self) -> str:
        """How Jupyter shows it."""
        return f"*{self.message}*"

    def __str__(self) -> str:
        return self.message

    def __iter__(self) -> Iterator[Skipped]:
        """Itself alone: ``display(*step(...))`` shows the line where the step would show its figures."""
        yield self

    def of(self, what: str) -> Skipped:
        """The same reason, for a step that builds on this one."""
        return Skipped(what, self.why, self.fix)


def rounded(value: pd.DataFrame | Skipped, digits: int = 3) -> pd.DataFrame | Skipped:
    """A table rounded for display; a Skipped step as it is."""
    return value if isinstance(value, Skipped) else value.round(digits)


@dataclass(frozen=True)
class Needs:
    """What a step needs of the dataset: a core part, columns of the core or of the labelled table, a truth part."""

    core: bool = False
    core_columns: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    truth: bool = False

    def unmet(self, bundle: DatasetBundle, to: str) -> tuple[str, str] | None:
        """Why the step cannot run on ``bundle`` and what to add ``to`` get it; None when everything is there."""
        if (self.core or self.core_columns or self.truth) and bundle.core is None:
            return "this dataset has no core part", f"add a core part (unlabelled particles) to {to}"
        for part, packed, columns in (("core", bundle.core, self.core_columns), ("labelled", bundle.train, self.columns)):
            missing = [c for c in columns if packed is not None and c not in packed.table]
            if missing:
                return (f"the {part} table has no {missing[0]} column",
                        f"add one ({COLUMN_MEANINGS.get(missing[0], missing[0])}) to {to}")
        if self.truth and bundle.truth is None:
            return ("this dataset has no truth part (the core's true classes, known for synthetic data)",
                    f"add one to {to}")
        return None


def step(what: str, to: str = "", **needs: Any) -> Callable[[Callable[P, R]], Callable[P, R | Skipped]]:
    """Decorate a stage function (its first argument a :class:`Stage`) that needs ``needs`` (see :class:`Needs`).

    It returns :class:`Skipped` ``what`` when the dataset lacks what it needs (the fix says what to add ``to``
    get it, default "get <what>"), or when one of its inputs is a Skipped (that reason is passed on).
    """
    required = Needs(**needs)

    def decorate(function: Callable[P, R]) -> Callable[P, R | Skipped]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R | Skipped:
            reason = required.unmet(args[0].bundle, to or f"get {what}")
            if reason is not None:
                return Skipped(what, *reason)
            skipped = next((a for a in (*args, *kwargs.values()) if isinstance(a, Skipped)), None)
            return skipped.of(what) if skipped is not None else function(*args, **kwargs)
        return run
    return decorate


def check_holdout_classes(overrides: Mapping[str, Any] | None, classes: Iterable[str], dataset: str) -> None:
    """Refuse held-out classes given explicitly (a run override) that the dataset does not have, naming both."""
    if not overrides or HOLDOUT_SETTING not in overrides:
        return
    requested = overrides[HOLDOUT_SETTING]
    requested = [requested] if isinstance(requested, str) else list(requested)
    known = list(classes)
    missing = [c for c in requested if c not in known]
    if missing:
        raise ValueError(f"{HOLDOUT_SETTING}: dataset {dataset!r} has no class {', '.join(map(repr, missing))}; "
                         f"its classes are {', '.join(known)}")


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

    def check_key_numbers(self) -> pd.DataFrame | str:
        """This notebook's key numbers against the synthetic twin's reference ranges (fails when one is out)."""
        return check_key_numbers(self.run, self.name, self.cfg)


def open_stage(stage: str, profile: str = "ci", *, run_dir: str = "", dataset: str = "",
               overrides: dict[str, Any] | None = None, drive_data: str = "", progress: bool = True) -> Stage:
    """Build a notebook's stage from its parameters: config, run directory (fresh for 00), data checked and packed.

    Held-out classes given in ``overrides`` must be classes of the labelled data (an error names the ones it has).
    """
    if stage not in STAGE_CONFIGS:
        raise ValueError(f"unknown stage {stage!r}; the notebooks' stages are {', '.join(STAGE_CONFIGS)}")
    cfg = stage_config(STAGE_CONFIGS[stage], profile, run_dir=run_dir, dataset=dataset, overrides=overrides)
    run = start_run(cfg.run_dir) if stage == FIRST_STAGE else continue_run(cfg.run_dir)
    record_stage(run, stage, cfg)
    prepare(drive_data)
    bundle = load_dataset(cfg, progress=progress)
    present = set(bundle.train.table[LABEL])
    check_holdout_classes(overrides, [k for k in bundle.classes if k in present], bundle.name)
    print(f"{stage}: dataset {bundle.name} ({len(bundle.train.table):,} labelled, "
          f"{len(bundle.core.table) if bundle.core is not None else 0:,} core particles) -> run {run.path}")
    return Stage(stage, cfg, run, bundle)

"""The main job: execute the ordered notebooks with papermill into one fresh run directory; resume one that stopped;
apply a finished run's models to a new core (the apply notebook, into a run directory of its own)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill as pm
import yaml
from tqdm.auto import tqdm

from ..config import PROFILE_NAMES, ApplyConfig, StageConfig, check_overrides, stage_config
from ..data.dataset import load_core, open_dataset
from ..data.resolve import dataset_classes
from ..files import atomic_write_json, atomic_write_yaml
from .artifacts import APPLY_NOTEBOOK, Run
from .card import check_fits, read_model_card
from .export import write_exports
from .notebook import HOLDOUT_SETTING, check_holdout_classes
from .report import write_report
from .rundir import environment_versions, new_run_dir
from .rundir import runs_root as default_runs_root

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
FIRST_NOTEBOOK = "00_data_overview"


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


class RunInterrupted(RuntimeError):
    """A run stopped inside a notebook (Ctrl-C or an error): what was kept, and the command that continues it."""

    def __init__(self, run_dir: Path, notebook: str, finished: list[str], cause: BaseException) -> None:
        self.run_dir, self.notebook, self.finished, self.cause = run_dir, notebook, finished, cause
        how = "interrupted" if isinstance(cause, KeyboardInterrupt) else f"failed ({type(cause).__name__})"
        if notebook == APPLY_NOTEBOOK:
            super().__init__(f"{notebook} {how}; its partial output is in {run_dir} (nothing was trained, so there "
                             "is nothing to continue): run the same `icecore apply` again")
            return
        kept = f"{len(finished)} finished notebook(s)" + (f" ({', '.join(finished)})" if finished else "")
        super().__init__(f"{notebook} {how}; kept {run_dir} with {kept} and every checkpoint under models/; "
                         f"continue with: icecore run --resume {run_dir}")


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
    """Create a fresh run directory, execute the notebooks in order, then write report.html.

    A notebook that fails or is interrupted raises :class:`RunInterrupted`; :func:`resume_run` continues there.
    """
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    check_overrides(overrides or {})
    paths = notebook_paths(notebooks_dir, only)
    _check_holdouts(profile, dataset, overrides or {}, notebooks_dir)
    run_dir = new_run_dir(runs_root or default_runs_root(), name or f"{time.strftime('%Y%m%d-%H%M%S')}-{profile}")
    parameters = {"profile": profile, "run_dir": str(run_dir.resolve()), "dataset": dataset,
                  "overrides": dict(overrides or {})}
    atomic_write_yaml(run_dir / "params.yaml", {"parameters": parameters, "notebooks": [p.name for p in paths],
                                                "notebooks_dir": str(notebooks_dir.resolve())})
    atomic_write_json(run_dir / "environment.json", environment_versions())
    (run_dir / "notebooks").mkdir()
    return run_dir, _execute(Run(run_dir), paths, parameters, progress)


def apply_run(
    train_run: Path | str,
    *,
    dataset: str = "",
    name: str = "",
    runs_root: Path | None = None,
    overrides: dict[str, Any] | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    progress: bool = True,
) -> tuple[Path, list[NotebookResult]]:
    """Apply a finished run's models to a new core: a fresh run directory, the apply notebook executed, report.html.

    The card and the new data are checked first (a dataset the models do not fit is refused before anything is
    written); the training run's profile gives the stage's defaults.
    """
    unknown = sorted(set(overrides or {}) - {f.name for f in dataclasses.fields(ApplyConfig)})
    if unknown:
        raise ValueError(f"apply has no setting(s) {unknown}; known: {sorted(f.name for f in dataclasses.fields(ApplyConfig))}")
    train = Path(train_run).expanduser().resolve()
    card = read_model_card(train)
    profile = yaml.safe_load((train / "params" / "02_cnn.yaml").read_text())["profile"]
    cfg = stage_config(ApplyConfig, profile, dataset=dataset, overrides=overrides,
                       image_size=card["classifier"]["image_size"])
    with contextlib.chdir(notebooks_dir.parent):
        data = load_core(cfg, progress=progress)
    check_fits(card, data.classes, data.core.table, data.name)
    run_dir = new_run_dir(runs_root or default_runs_root(), name or f"{time.strftime('%Y%m%d-%H%M%S')}-apply")
    parameters = {"profile": profile, "train_run": str(train), "run_dir": str(run_dir.resolve()), "dataset": dataset,
                  "overrides": dict(overrides or {})}
    path = notebooks_dir / f"{APPLY_NOTEBOOK}.ipynb"
    atomic_write_yaml(run_dir / "params.yaml", {"parameters": parameters, "notebooks": [path.name],
                                                "notebooks_dir": str(notebooks_dir.resolve())})
    atomic_write_json(run_dir / "environment.json", environment_versions())
    (run_dir / "notebooks").mkdir()
    return run_dir, _execute(Run(run_dir), [path], parameters, progress)


def _check_holdouts(profile: str, dataset: str, overrides: dict[str, Any], notebooks_dir: Path) -> None:
    """Refuse, before anything runs, held-out classes given as overrides that the dataset's classes lack.

    The dataset is found as the notebooks will find it: relative paths from the folder they run in.
    """
    if HOLDOUT_SETTING not in overrides:
        return
    cfg = stage_config(StageConfig, profile, dataset=dataset, overrides=overrides)
    with contextlib.chdir(notebooks_dir.parent):
        manifest, name, _ = open_dataset(cfg, progress=False)
        classes = dataset_classes(manifest, name, cfg.cache_path, progress=False)
    check_holdout_classes(overrides, classes, name)


def resume_run(run_dir: Path | str, *, progress: bool = True) -> tuple[Path, list[NotebookResult]]:
    """Continue an interrupted run: its notebooks from the first that did not finish, with the same parameters.

    Finished notebooks are not run again; the one that stopped runs again from its start, and its training
    resumes from the checkpoints it left (``nn.loop.fit`` continues from ``last.safetensors``). The stopped
    notebook's partial output is kept beside the new one as ``<name>.interrupted.ipynb``.
    """
    run = Run(run_dir)
    if not (run.path / "params.yaml").is_file():
        raise FileNotFoundError(f"{run.path} holds no params.yaml: it is not a run started by `icecore run`")
    params = yaml.safe_load((run.path / "params.yaml").read_text())
    notebooks_dir = Path(params.get("notebooks_dir", NOTEBOOKS_DIR))
    done = set(run.metrics().get("pipeline", {}).get("notebook_seconds", {}))
    todo = [notebooks_dir / name for name in params["notebooks"] if Path(name).stem not in done]
    if not todo:
        raise ValueError(f"every notebook of {run.path} finished already: nothing to resume")
    if todo[0].stem == APPLY_NOTEBOOK:
        raise ValueError(f"{run.path} is an apply run that stopped: nothing was trained, so there is nothing to "
                         f"continue; run `icecore apply {params['parameters']['train_run']}` again")
    if todo[0].stem == FIRST_NOTEBOOK:
        raise ValueError(f"notebook {FIRST_NOTEBOOK} did not finish in {run.path}, so nothing but the data cache "
                         "was kept: start a fresh run (`icecore run`) instead")
    _set_aside(run.path / "notebooks" / todo[0].name)
    return run.path, _execute(run, todo, params["parameters"], progress)


def _set_aside(output: Path) -> None:
    """Keep a stopped notebook's partial output under a name of its own (never overwritten)."""
    if not output.exists():
        return
    target = output.with_suffix(".interrupted.ipynb")
    attempt = 1
    while target.exists():
        target, attempt = output.with_suffix(f".interrupted-{attempt}.ipynb"), attempt + 1
    output.rename(target)


def _execute(run: Run, paths: list[Path], parameters: dict[str, Any], progress: bool) -> list[NotebookResult]:
    """Execute notebooks in order into the run, recording each finished one; write the report at the end."""
    results = []
    for path in tqdm(paths, desc=f"notebooks -> {run.name}", disable=not progress):
        start = time.perf_counter()
        output = run.path / "notebooks" / path.name
        try:
            pm.execute_notebook(str(path), str(output), parameters=parameters, cwd=str(path.parent.parent),
                                progress_bar=False, kernel_name="python3")
        except (KeyboardInterrupt, pm.PapermillExecutionError) as exc:
            raise RunInterrupted(run.path, path.stem, _finished(run), exc) from exc
        results.append(NotebookResult(path.stem, output, time.perf_counter() - start))
        _record(run, path.stem, results[-1].seconds)
    write_exports(run.path)
    write_report(run.path, progress=progress)
    return results


def _finished(run: Run) -> list[str]:
    """The notebooks of the run that finished, in order."""
    return list(run.metrics().get("pipeline", {}).get("notebook_seconds", {}))


def _record(run: Run, notebook: str, seconds: float) -> None:
    """Add a finished notebook's time to the run's ``pipeline`` metrics (what a resume skips)."""
    timings = run.metrics().get("pipeline", {}).get("notebook_seconds", {}) | {notebook: round(seconds, 2)}
    run.update_metrics("pipeline", {"notebook_seconds": timings, "total_seconds": round(sum(timings.values()), 2)})

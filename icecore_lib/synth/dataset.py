"""Write a synthetic dataset in the instrument's format: zipped PNG crops plus a CSV of FlowCam features.

Every particle is drawn from its own generator seeded by (seed, part, index), so a dataset depends only on
the config, never on the number of worker processes. The dataset is written into a temporary sibling folder
and renamed into place at the end: a crash leaves nothing half-made.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..config import SynthConfig, to_dict
from ..files import atomic_write_json
from ..images.features import flowcam_features
from ..schema import CLASSES, DEPTH, FLOWCAM_FEATURES, IMGPATH, LABEL, NEW_CLASS, SAMPLE, SESSION, VOLUME
from .preview import contact_sheet
from .render import RENDERERS
from .sessions import Session, acquire, core_sessions, train_sessions

TRAIN, CORE = "train", "core"
_PART_STREAM = {TRAIN: 1, CORE: 2}
_PLAN_STREAM = 3
_VOLUME_STREAM = 4
# Insoluble particles per ml of meltwater in a sample (a median and its spread, log-normal): the fluid volume
# imaged of each synthetic sample is its particle count divided by a concentration drawn from this.
CONCENTRATION_PER_ML = (2.0e4, 0.5)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 48
_PREVIEW_PER_CLASS = 10

# Mild imbalance of the reference set (multipliers of n_train_per_class; they average to 1).
TRAIN_SHARE: dict[str, float] = {
    "camp": 1.1, "corylus": 0.8, "dust": 1.25, "grim": 0.95, "qrob": 1.0, "qsub": 0.9, "cont": 1.0,
}
# The core's background composition (prior shift: mostly dust, few pollen); ash comes in volcanic layers.
# Look-alikes do not come in equal shares (one oak's pollen outnumbers the other's 3:1, one volcano's ash the
# other's 2:1): with equal shares a classifier's confusions within a pair cancel in its counts, and the
# demo could not show the bias of classify-and-count that prior-shift correction removes.
CORE_SHARE: dict[str, float] = {
    "dust": 0.6, "cont": 0.16, "camp": 0.02, "grim": 0.04, "corylus": 0.06, "qrob": 0.09, "qsub": 0.03,
}
# Share of a volcanic layer's sample taken by its ash.
LAYER_ASH_SHARE = 0.45
# Core sessions: at most this many, each a contiguous run of samples.
MAX_CORE_SESSIONS = 3


@dataclass(frozen=True)
class Task:
    """One particle to render: which part and index (its seed), its class, session, file name, preview or not."""

    part: str
    index: int
    label: str
    session: Session
    name: str
    preview: bool = False


def check_config(cfg: SynthConfig) -> None:
    """Fail naming the field when a synthetic config cannot make a dataset."""
    if cfg.n_train_per_class < 1:
        raise ValueError(f"SynthConfig.n_train_per_class must be >= 1, got {cfg.n_train_per_class}")
    if cfg.n_core < 0:
        raise ValueError(f"SynthConfig.n_core must be >= 0, got {cfg.n_core}")
    if cfg.n_core_samples < 1:
        raise ValueError(f"SynthConfig.n_core_samples must be >= 1, got {cfg.n_core_samples}")
    if not 0.0 <= cfg.diatom_fraction < 1.0:
        raise ValueError(f"SynthConfig.diatom_fraction must be in [0, 1), got {cfg.diatom_fraction}")
    if cfg.workers < 0:
        raise ValueError(f"SynthConfig.workers must be >= 0 (0 = all cores), got {cfg.workers}")
    if not 0 <= cfg.shift_severity <= 4:
        raise ValueError(f"SynthConfig.shift_severity must be in [0, 4] (1 = the demo's shift), got {cfg.shift_severity}")


def _file_name(session: str, index: int, sample: str | None = None) -> str:
    """An instrument-like file name: session (and sample), objective, a running number."""
    stem = session if sample is None else f"{session}_{sample}"
    return f"{stem}_fc80_20x_{index:06d}.png"


def plan_train(cfg: SynthConfig) -> pd.DataFrame:
    """The reference set: ``n_train_per_class`` (mildly imbalanced) per class, each class in its own session."""
    sessions = train_sessions(cfg.seed)
    rows = []
    for label in CLASSES:
        session = sessions[label].name
        count = max(1, round(cfg.n_train_per_class * TRAIN_SHARE[label]))
        rows += [(_file_name(session, i + 1), label, session) for i in range(count)]
    return pd.DataFrame(rows, columns=[IMGPATH, LABEL, SESSION])


def _sample_shares(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    """Class shares per core sample (rows) over ``CORE_SHARE``'s classes: jittered, with two volcanic layers."""
    keys = list(CORE_SHARE)
    base = np.array(list(CORE_SHARE.values()))
    shares = rng.dirichlet(base / base.sum() * 60.0, size=n_samples)
    layers = rng.choice(n_samples, size=min(2, n_samples), replace=False)
    for layer, ash in zip(layers, ("grim", "camp")):
        shares[layer] *= 1 - LAYER_ASH_SHARE
        shares[layer, keys.index(ash)] += LAYER_ASH_SHARE
    return shares / shares.sum(axis=1, keepdims=True)


def plan_core(cfg: SynthConfig) -> pd.DataFrame:
    """The ice-core set: samples down the core, prior-shifted, ash layers, its own sessions, planted diatoms."""
    rng = np.random.default_rng([cfg.seed, _PLAN_STREAM])
    n_samples = cfg.n_core_samples
    tops = 40.0 + np.cumsum(rng.uniform(0.5, 1.5, n_samples))
    lengths = rng.uniform(0.2, 0.45, n_samples)
    sizes = rng.multinomial(cfg.n_core, rng.dirichlet(np.full(n_samples, 10.0)))
    shares = _sample_shares(rng, n_samples)
    sample_of = np.repeat(np.arange(n_samples), sizes)
    keys = np.array(list(CORE_SHARE), dtype=object)
    labels = np.concatenate([rng.choice(keys, size=n, p=p) for n, p in zip(sizes, shares, strict=True)])
    n_diatom = round(cfg.diatom_fraction * cfg.n_core)
    labels[rng.choice(cfg.n_core, size=n_diatom, replace=False)] = NEW_CLASS
    sessions = _core_sessions(cfg)
    session_of = (np.arange(n_samples) * len(sessions)) // n_samples
    depth = tops[sample_of] + rng.uniform(0, 1, cfg.n_core) * lengths[sample_of]
    names = [f"S{k + 1:03d}" for k in range(n_samples)]
    session_names = [sessions[session_of[s]].name for s in sample_of]
    volumes = _fluid_volumes(cfg.seed, sizes)
    return pd.DataFrame({
        IMGPATH: [_file_name(sn, i + 1, names[s]) for i, (sn, s) in enumerate(zip(session_names, sample_of))],
        SAMPLE: [names[s] for s in sample_of],
        DEPTH: np.round(depth, 3),
        SESSION: session_names,
        VOLUME: volumes[sample_of],
        LABEL: labels.astype(str),
    })


def _fluid_volumes(seed: int, sizes: np.ndarray) -> np.ndarray:
    """Each sample's fluid volume imaged (ml, 5 significant digits, as a run summary gives it), from its own stream."""
    rng = np.random.default_rng([seed, _VOLUME_STREAM])
    median, spread = CONCENTRATION_PER_ML
    volumes = np.maximum(sizes, 1) / (median * rng.lognormal(0.0, spread, len(sizes)))
    return np.array([float(f"{v:.5g}") for v in volumes])


def _core_sessions(cfg: SynthConfig) -> list[Session]:
    """The core's sessions: one per contiguous run of samples, at most ``MAX_CORE_SESSIONS``."""
    return core_sessions(cfg.seed, min(MAX_CORE_SESSIONS, cfg.n_core_samples), cfg.shift_severity)


def _tasks(part: str, plan: pd.DataFrame, sessions: dict[str, Session], preview: set[str]) -> list[Task]:
    """Render tasks of a part, in the plan's order; the first few of each class in ``preview`` go to the sheet."""
    shown = plan.groupby(LABEL).cumcount().to_numpy() < _PREVIEW_PER_CLASS
    return [
        Task(part, i, label, sessions[session], name, preview=bool(show and label in preview))
        for i, (label, session, name, show) in enumerate(zip(plan[LABEL], plan[SESSION], plan[IMGPATH], shown))
    ]


def render_particle(task: Task, seed: int) -> np.ndarray:
    """The crop of one particle (uint8), from its own generator: the same for any number of workers."""
    rng = np.random.default_rng([seed, _PART_STREAM[task.part], task.index])
    return acquire(RENDERERS[task.label](rng), task.session, rng)


def _encode(crop: np.ndarray) -> bytes:
    """A crop as grayscale PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _render_chunk(tasks: Sequence[Task], seed: int) -> list[tuple[bytes, np.ndarray, np.ndarray | None]]:
    """Render, measure and encode a chunk of particles (runs in a worker); the preview's crops come back too."""
    out = []
    for task in tasks:
        crop = render_particle(task, seed)
        feats = np.fromiter(flowcam_features(crop).values(), dtype=np.float64, count=len(FLOWCAM_FEATURES))
        out.append((_encode(crop), feats, crop if task.preview else None))
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which containers and job schedulers narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _chunks(tasks: Sequence[Task], size: int) -> list[Sequence[Task]]:
    """Consecutive chunks of tasks."""
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


def _results(chunks: list[Sequence[Task]], seed: int, workers: int) -> Iterator[list[Any]]:
    """Rendered chunks in order, from a process pool (or in this process for one worker)."""
    if workers <= 1:
        for chunk in chunks:
            yield _render_chunk(chunk, seed)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(_RenderChunk(seed), chunks)


@dataclass(frozen=True)
class _RenderChunk:
    """Picklable ``_render_chunk`` bound to a seed, for the process pool."""

    seed: int

    def __call__(self, tasks: Sequence[Task]) -> list[Any]:
        """Render a chunk with the bound seed."""
        return _render_chunk(tasks, self.seed)


def _zip_entry(name: str) -> zipfile.ZipInfo:
    """A zip member header with a fixed date, so the same data gives the same archive bytes."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _render_parts(
    tasks: dict[str, list[Task]], folder: Path, cfg: SynthConfig, progress: bool
) -> tuple[dict[str, pd.DataFrame], dict[str, list[np.ndarray]]]:
    """Render every part into ``folder``/<part>.zip; return each part's feature table and preview crops."""
    workers = cfg.workers or usable_cpus()
    chunks = [c for part in tasks for c in _chunks(tasks[part], _CHUNK)]
    features: dict[str, list[np.ndarray]] = {part: [] for part in tasks}
    examples: dict[str, list[np.ndarray]] = {}
    archives = {part: zipfile.ZipFile(folder / f"{part}.zip", "w") for part in tasks}
    total = sum(len(t) for t in tasks.values())
    try:
        with tqdm(total=total, desc="synth", unit="particle", disable=not progress) as bar:
            for chunk, results in zip(chunks, _results(chunks, cfg.seed, min(workers, len(chunks))), strict=True):
                for task, (png, feats, crop) in zip(chunk, results, strict=True):
                    archives[task.part].writestr(_zip_entry(task.name), png)
                    features[task.part].append(feats)
                    if crop is not None:
                        examples.setdefault(task.label, []).append(crop)
                bar.update(len(chunk))
    finally:
        for archive in archives.values():
            archive.close()
    tables = {
        part: pd.DataFrame(np.array(rows).reshape(-1, len(FLOWCAM_FEATURES)), columns=list(FLOWCAM_FEATURES))
        for part, rows in features.items()
    }
    return tables, examples


def _write_tables(folder: Path, plans: dict[str, pd.DataFrame], features: dict[str, pd.DataFrame]) -> None:
    """The instrument-style CSVs: train with labels, core without, the core's truth apart."""
    train = pd.concat([plans[TRAIN][[IMGPATH, LABEL, SESSION]], features[TRAIN]], axis=1)
    core = pd.concat([plans[CORE][[IMGPATH, SAMPLE, DEPTH, SESSION, VOLUME]], features[CORE]], axis=1)
    train.to_csv(folder / "train.csv", index=False)
    core.to_csv(folder / "core.csv", index=False)
    plans[CORE][[IMGPATH, LABEL]].to_csv(folder / "core_truth.csv", index=False)


def _summary(
    cfg: SynthConfig, plans: dict[str, pd.DataFrame], sessions: dict[str, Session], seconds: float
) -> dict[str, Any]:
    """What synth.json records: the config, counts per part and class, each session's settings, timing."""
    n = sum(len(p) for p in plans.values())
    return {
        "config": to_dict(cfg),
        "counts": {part: {str(k): int(v) for k, v in p[LABEL].value_counts().sort_index().items()}
                   for part, p in plans.items()},
        "n_particles": {part: len(p) for part, p in plans.items()},
        "sessions": {part: sorted(p[SESSION].unique().tolist()) for part, p in plans.items()},
        "session_settings": {name: asdict(s) for name, s in sorted(sessions.items())},
        "seconds": round(seconds, 2),
        "particles_per_s": round(n / max(seconds, 1e-9), 1),
    }


def _share_like_umask(folder: Path) -> None:
    """Give the folder and its files the permissions a plain mkdir/open would (temp files are private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _ready_target(out_dir: Path) -> None:
    """Refuse an output folder that already holds anything."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; choose a new output folder")


def generate(out_dir: Path, cfg: SynthConfig, progress: bool = True) -> dict:
    """Write a synthetic dataset (train/core zips and CSVs, core truth, preview, synth.json); return its summary."""
    out_dir = Path(out_dir)
    check_config(cfg)
    _ready_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plans = {TRAIN: plan_train(cfg), CORE: plan_core(cfg)}
    sessions = {s.name: s for s in [*train_sessions(cfg.seed).values(), *_core_sessions(cfg)]}
    shown = {TRAIN: set(CLASSES), CORE: {NEW_CLASS}}
    tasks = {part: _tasks(part, plan, sessions, shown[part]) for part, plan in plans.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        features, examples = _render_parts(tasks, tmp, cfg, progress)
        _write_tables(tmp, plans, features)
        contact_sheet({k: examples[k] for k in [*CLASSES, NEW_CLASS] if k in examples}, tmp / "preview.png")
        summary = _summary(cfg, plans, sessions, time.perf_counter() - start)
        atomic_write_json(tmp / "synth.json", summary)
        _share_like_umask(tmp)
        _ready_target(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary

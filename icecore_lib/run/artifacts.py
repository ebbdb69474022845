"""Every table, model folder and metrics section a notebook stage leaves in a run directory, named once.

Stages and notebooks ask a :class:`Run` for an artefact by name (``run.read("core_predictions")``); the registry
below says where it lives and which notebook writes it, so a missing one fails with the step to run first.
Tables are Parquet (a CSV copy where a person opens it in a spreadsheet), keyed by ``particle_id``; writes are
atomic. Per-model tables come in two parts: ``labelled`` (the reference set) and ``core``.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..files import atomic_write_json, atomic_write_table, jsonable

PARTS = ("labelled", "core")
NOTEBOOKS = ("00_data_overview", "01_metadata_bdt", "02_cnn_classifier", "03_autoencoder", "04_umap_clustering",
             "05_outlier_gallery")
APPLY_NOTEBOOK = "apply_to_core"  # outside the ordered run: applies a finished run's models to a new core


class MissingArtifact(FileNotFoundError):
    """An artefact a step needs was never written: the message names the notebook that writes it."""


@dataclass(frozen=True)
class Artifact:
    """One thing a stage writes: its path in the run directory (``{fields}`` filled in), its writer, what it holds."""

    name: str
    path: str
    notebook: str
    what: str

    def relative(self, **fields: Any) -> str:
        """The path inside the run directory for these fields; an error names the fields this artefact needs."""
        needed = sorted({f for _, f, _, _ in string.Formatter().parse(self.path) if f})
        missing = [f for f in needed if f not in fields]
        if missing:
            raise TypeError(f"artefact {self.name!r} ({self.path}) needs {missing}; got {sorted(fields)}")
        return self.path.format(**fields)


def _outputs_writer(model: str) -> str:
    """The notebook that writes a model's per-particle outputs, from the model's name."""
    if model.startswith("loco_"):
        return NOTEBOOKS[4]
    if model.startswith("ae"):
        return NOTEBOOKS[3]
    return NOTEBOOKS[1] if model in ("bdt", "mlp") else NOTEBOOKS[2]


ARTIFACTS: dict[str, Artifact] = {a.name: a for a in (
    Artifact("outputs", "tables/{model}_{part}.parquet", "(by model)",
             "one model's per-particle outputs: logits + 40-d embedding (classifiers), loss + latent (autoencoders)"),
    Artifact("model", "models/{model}", "(by model)", "a trained model's folder: weights, history, preprocessing"),
    Artifact("label_issues", "tables/01_label_issues.csv", NOTEBOOKS[1],
             "labelled particles whose label the out-of-fold BDT probabilities contradict (cleanlab), most doubtful first"),
    Artifact("core_predictions", "tables/02_core_predictions.parquet", NOTEBOOKS[2],
             "per core particle: calibrated probabilities, predicted class, unassigned flag, embedding"),
    Artifact("core_predictions_csv", "tables/02_core_predictions.csv", NOTEBOOKS[2],
             "the core predictions without the embedding, for a spreadsheet"),
    Artifact("sample_concentrations", "tables/00_sample_concentrations.csv", NOTEBOOKS[0],
             "all core particles per ml of each sample's (run's) meltwater, with the exact Poisson interval"),
    Artifact("core_concentrations", "tables/02_core_concentrations.csv", NOTEBOOKS[2],
             "particles per ml per sample and predicted class: counting and counting+classification intervals"),
    Artifact("pick_list", "tables/02_tephra_pick_list.csv", NOTEBOOKS[2],
             "per sample and ash class, the surest particles (id, probability, depth) for the microprobe"),
    Artifact("discovery_pick_list", "tables/05_tephra_pick_list.csv", NOTEBOOKS[5],
             "the pick list of notebook 02 with the particles flagged unknown set aside (the one to take to the microprobe)"),
    Artifact("sample_composition", "tables/02_sample_composition.csv", NOTEBOOKS[2],
             "EM-adjusted composition per sample (and depth) of the core, with bootstrap intervals"),
    Artifact("core_size_distribution", "tables/02_core_size_distribution.csv", NOTEBOOKS[2],
             "number and volume distribution of ESD (um) per predicted class, log bins"),
    Artifact("open_set_concentrations", "tables/05_open_set_concentrations.csv", NOTEBOOKS[5],
             "particles per ml per sample and class, the particles flagged unknown counted as class 'unknown'"),
    Artifact("maps", "tables/04_maps_{part}.parquet", NOTEBOOKS[4],
             "every particle's coordinates on each 2-D map (<method>_x, <method>_y)"),
    Artifact("core_clusters", "tables/04_core_clusters.parquet", NOTEBOOKS[4], "HDBSCAN cluster per core particle"),
    Artifact("core_cluster_summary", "tables/04_core_cluster_summary.parquet", NOTEBOOKS[4],
             "one row per core cluster: size, nearest training class, flags"),
    Artifact("loco_separation", "tables/04_loco_separation.parquet", NOTEBOOKS[4],
             "leave-one-class-out separation per (held-out class, space)"),
    Artifact("core_novelty", "tables/05_core_novelty.parquet", NOTEBOOKS[5],
             "every novelty score, the combined rank and the unknown flag per core particle"),
    Artifact("loco_novelty", "tables/05_loco_novelty.parquet", NOTEBOOKS[5],
             "each novelty score's AUROC, FPR95 and recall on the leave-one-class-out folds"),
    Artifact("review", "review.csv", NOTEBOOKS[5], "decisions taken in the explorer (appended)"),
    Artifact("label_review", "label_review.csv", NOTEBOOKS[1],
             "verdicts on the reference set's doubted labels: given, decided label (appended)"),
    Artifact("reference_particles", "tables/02_reference_particles.parquet", NOTEBOOKS[2],
             "label, split and features of every labelled particle: what `icecore apply` compares a new core with"),
    Artifact("applied_predictions", "tables/apply_core_predictions.parquet", APPLY_NOTEBOOK,
             "per particle of a new core: calibrated probabilities, predicted class, unassigned, novelty, unknown flag"),
    Artifact("applied_predictions_csv", "tables/apply_core_predictions.csv", APPLY_NOTEBOOK,
             "the new core's predictions without the embedding, for a spreadsheet"),
    Artifact("applied_composition", "tables/apply_composition.csv", APPLY_NOTEBOOK,
             "the new core's composition by each method (cc, acc, em) with bootstrap intervals"),
    Artifact("applied_sample_composition", "tables/apply_sample_composition.csv", APPLY_NOTEBOOK,
             "EM-adjusted composition per sample (and depth) of the new core"),
    Artifact("applied_concentrations", "tables/apply_concentrations.csv", APPLY_NOTEBOOK,
             "particles per ml per sample and predicted class of the new core, with intervals"),
    Artifact("applied_pick_list", "tables/apply_tephra_pick_list.csv", APPLY_NOTEBOOK,
             "per sample and ash class of the new core, the surest particles for the microprobe"),
    Artifact("applied_drift", "tables/apply_feature_drift.csv", APPLY_NOTEBOOK,
             "per feature: KS, SMD and PSI of the new core against the training particles"),
    Artifact("applied_drift_by_sample", "tables/apply_drift_by_sample.csv", APPLY_NOTEBOOK,
             "per sample: the share of particles in each traffic light (CNN-space distance to training)"),
)}

# metrics.json sections, each written by one notebook.
SECTIONS: dict[str, str] = {
    "data": NOTEBOOKS[0], "01_metadata": NOTEBOOKS[1], "02_cnn": NOTEBOOKS[2], "03_autoencoder": NOTEBOOKS[3],
    "04_umap": NOTEBOOKS[4], "05_discovery": NOTEBOOKS[5], "apply": APPLY_NOTEBOOK, "pipeline": "icecore run",
}


def artifact(name: str) -> Artifact:
    """The registry entry of an artefact; an unknown name lists the known ones."""
    if name not in ARTIFACTS:
        raise KeyError(f"no artefact {name!r}; known: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[name]


def writer(name: str, **fields: Any) -> str:
    """The notebook that writes an artefact (per-model artefacts: by the model's name)."""
    entry = artifact(name)
    return _outputs_writer(str(fields["model"])) if entry.notebook == "(by model)" else entry.notebook


@dataclass(frozen=True)
class Run:
    """A run directory: its artefacts read and written by name, its metrics, its figures folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        """The directory's path, so a Run goes wherever a path does."""
        return os.fspath(self.path)

    @property
    def name(self) -> str:
        """The run directory's name (its timestamp and profile)."""
        return self.path.name

    def file(self, name: str, **fields: Any) -> Path:
        """Where an artefact lives in this run (it may not exist yet)."""
        return self.path / artifact(name).relative(**fields)

    def exists(self, name: str, **fields: Any) -> bool:
        """Whether an artefact has been written."""
        return self.file(name, **fields).exists()

    def require(self, name: str, **fields: Any) -> Path:
        """An artefact's path, or :class:`MissingArtifact` naming the notebook to run first."""
        path = self.file(name, **fields)
        if not path.exists():
            described = ", ".join(f"{k}={v}" for k, v in fields.items())
            raise MissingArtifact(f"{path} is missing ({artifact(name).what}{'; ' + described if described else ''}): "
                                  f"run notebook {writer(name, **fields)} first")
        return path

    def write(self, name: str, frame: pd.DataFrame, **fields: Any) -> Path:
        """Write a table artefact atomically (Parquet or CSV, by its registered suffix)."""
        return atomic_write_table(frame, self.file(name, **fields))

    def read(self, name: str, **fields: Any) -> pd.DataFrame:
        """Read a table artefact; a missing one says which notebook writes it."""
        path = self.require(name, **fields)
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, index_col=0)

    def write_parts(self, name: str, parts: Mapping[str, pd.DataFrame | None], **fields: Any) -> dict[str, Path]:
        """Write the labelled and core tables of a per-part artefact (a part that is None is skipped)."""
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise ValueError(f"parts must be among {PARTS}, got {unknown}")
        return {part: self.write(name, frame, part=part, **fields) for part, frame in parts.items() if frame is not None}

    def read_parts(self, name: str, **fields: Any) -> dict[str, pd.DataFrame | None]:
        """The labelled table (which must exist) and the core table (None when the dataset has no core)."""
        labelled = self.read(name, part="labelled", **fields)
        core = self.read(name, part="core", **fields) if self.exists(name, part="core", **fields) else None
        return {"labelled": labelled, "core": core}

    def folder(self, name: str, **fields: Any) -> Path:
        """A folder artefact (a model's), created when missing."""
        path = self.file(name, **fields)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def figures(self) -> Path:
        """The folder every figure of the run is saved in."""
        return self.path / "figures"

    def figure(self, filename: str) -> Path:
        """Where one figure is saved (``figures/<filename>``)."""
        return self.figures / filename

    def metrics(self) -> dict[str, Any]:
        """metrics.json as a dict (empty before any notebook wrote to it)."""
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def section(self, section: str) -> dict[str, Any]:
        """One notebook's metrics; a missing section names the notebook that writes it."""
        metrics = self.metrics()
        if section not in metrics:
            raise MissingArtifact(f"{self.path}/metrics.json has no {section!r} section: run notebook "
                                  f"{SECTIONS.get(section, '?')} first")
        return metrics[section]

    def update_metrics(self, section: str, values: Mapping[str, Any]) -> Path:
        """Replace one section of metrics.json with ``values``, atomically."""
        metrics = self.metrics()
        metrics[section] = jsonable(dict(values))
        return atomic_write_json(self.path / "metrics.json", metrics)

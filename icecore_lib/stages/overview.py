"""Notebook 00: what is in the labelled set and the core, how they look, how the core differs from the lab set.

Every function takes the notebook's :class:`~icecore_lib.run.notebook.Stage`; figures are saved into the run
and returned for display. A dataset without a core part (or a core without sample_id) gets a line saying what
was skipped, why, and what to add.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ..data.dataset import DatasetBundle
from ..plots import data as data_plots
from ..plots import gallery
from ..run.notebook import Skipped, Stage, step
from ..run.rundir import copy_into
from ..schema import FLOWCAM_FEATURES, LABEL, SAMPLE, SESSION, display_name
from ..shift.drift import feature_drift


def class_table(bundle: DatasetBundle) -> pd.DataFrame:
    """Particles per class: train by split, and the core's true class when the truth is known."""
    train = bundle.train.table
    counts = pd.crosstab(train[LABEL], train["split"]).reindex(columns=["train", "val", "test"], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    if bundle.truth is not None:
        counts = counts.join(bundle.truth.value_counts().rename("core (truth)"), how="outer").fillna(0).astype(int)
    counts.index = [display_name(k, bundle.classes) for k in counts.index]
    counts.index.name = "class"
    return counts


def data_metrics(bundle: DatasetBundle) -> dict[str, Any]:
    """Counts, pack keys and dropped items of every part, for metrics.json."""
    metrics: dict[str, Any] = {"dataset": bundle.name, "classes": list(bundle.classes)}
    for name, packed in bundle.parts().items():
        table = packed.table
        metrics[name] = {
            "particles": len(table),
            "image_size": int(packed.images.shape[1]),
            "pack_key": packed.key,
            "dropped_bad_items": len(packed.report.bad_ids),
            "sessions": int(table[SESSION].nunique()) if SESSION in table else None,
            "samples": int(table[SAMPLE].nunique()) if SAMPLE in table else None,
        }
    metrics["train"]["per_class"] = bundle.train.table[LABEL].value_counts().to_dict()
    return metrics


def class_counts(stage: Stage) -> Figure:
    """Bar chart of the labelled particles per class."""
    return data_plots.class_counts(stage.table, path=stage.figure("00_class_counts.png"))


def examples(stage: Stage) -> Figure:
    """A seeded sample of crops per class, at the models' input size."""
    return gallery.group_gallery(stage.bundle.train.images, stage.table, by=LABEL, per_group=stage.cfg.examples_per_class,
                                 seed=stage.cfg.seed, title="Labelled examples per class",
                                 path=stage.figure("00_examples_per_class.png"))


def synthetic_preview(stage: Stage) -> Path | None:
    """The generator's contact sheet copied into the run (None for real data, which has none)."""
    if stage.bundle.preview is None:
        return None
    return copy_into(stage.run, stage.bundle.preview, "figures/00_synthetic_preview.png")


@step("the core's samples", core_columns=(SAMPLE,), to="see the particles per sample")
def core_samples(stage: Stage) -> Figure:
    """Particles per core sample, by depth where the core has depths."""
    return data_plots.samples_overview(stage.bundle.core.table, path=stage.figure("00_core_samples.png"))


def crop_sizes(stage: Stage) -> Figure:
    """The crops' sizes before resizing, per part."""
    return data_plots.crop_sizes(_part_tables(stage.bundle), path=stage.figure("00_crop_sizes.png"))


def feature_distributions(stage: Stage) -> Figure:
    """Every FlowCam feature's distribution, per part."""
    return data_plots.feature_distributions(_part_tables(stage.bundle), list(FLOWCAM_FEATURES),
                                            path=stage.figure("00_feature_distributions.png"))


def _part_tables(bundle: DatasetBundle) -> dict[str, pd.DataFrame]:
    """The particle table of each part, by part name."""
    return {name: packed.table for name, packed in bundle.parts().items()}


DRIFT_NEEDS = {"core": True, "to": "measure how the core differs from the lab set"}


@step("the lab -> core drift", **DRIFT_NEEDS)
def drift_table(stage: Stage, top: int | None = None) -> pd.DataFrame:
    """Per feature: PSI, KS and standardised mean difference between lab and core, worst PSI first (``top`` rows)."""
    return feature_drift(stage.table, stage.bundle.core.table).head(top)


@step("the lab -> core drift figure", **DRIFT_NEEDS)
def drift_report(stage: Stage) -> Figure:
    """The features that shift most between lab and core (PSI and standardised mean difference)."""
    return gallery.drift_report(drift_table(stage), path=stage.figure("00_feature_drift.png"))


def save_metrics(stage: Stage, per_ml: pd.DataFrame | Skipped | None = None) -> Path:
    """Counts, pack keys, dropped items of every part, and each sample's particles per ml, into metrics.json."""
    metrics = data_metrics(stage.bundle)
    if isinstance(per_ml, pd.DataFrame):
        metrics["core"]["per_ml"] = {str(s): float(v) for s, v in zip(per_ml["sample"], per_ml["per_ml"])}
    return stage.run.update_metrics("data", metrics)

"""Notebooks 00 and 02: particles per ml of meltwater per sample (run), per class, and the size distribution per class.

A sample's fluid volume imaged (``volume_ml``) comes from the FlowCam run summary (raw run folders) or from the
manifest; without it the steps are skipped with the reason. Class concentrations use the calibrated core
predictions of notebook 02, with intervals for counting alone and for counting and classification together.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..concentration import ALL, concentration_table, size_distribution, size_summary, subtract_blanks
from ..plots.concentration import concentration_figure, size_distribution_figure
from ..run.notebook import Skipped, Stage, step
from ..schema import SAMPLE, VOLUME
from .cnn import table_proba

ESD = "Diameter (ESD)"
VOLUMES = {"core": True, "core_columns": (SAMPLE, VOLUME), "to": "turn counts into particles per ml"}


def sample_volumes(core: pd.DataFrame) -> pd.Series:
    """Each sample's fluid volume imaged (ml); a sample whose particles disagree on it is an error naming it."""
    volumes = core.groupby(SAMPLE, sort=False)[VOLUME]
    spread = volumes.nunique(dropna=False)
    if (spread > 1).any():
        sample = spread.index[spread > 1][0]
        raise ValueError(f"sample {sample!r}: its particles give {spread[sample]} different {VOLUME} values; "
                         "one sample (FlowCam run) has one fluid volume imaged")
    return volumes.first()


def parse_count_as(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("Missed=Junk",)`` -> ``{"Missed": "Junk"}``: classes counted as another for concentrations."""
    merge = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"count_as: expected 'Class=OtherClass', got {pair!r}")
        merge[source.strip()] = target.strip()
    return merge


@step("particles per ml per sample", **VOLUMES)
def sample_concentrations(stage: Stage) -> pd.DataFrame:
    """Every core particle per ml of its sample's meltwater, with the exact Poisson interval (written to the run)."""
    core = stage.bundle.core.table
    everything = pd.Series("particle", index=core.index)
    table = concentration_table(everything, core[SAMPLE], sample_volumes(core), classes=["particle"])
    table = table[table["class"] == ALL].drop(columns=["class"]).dropna(axis=1, how="all").reset_index(drop=True)
    stage.run.write("sample_concentrations", table)
    return table


@step("particles per ml per class", **VOLUMES)
def class_concentrations(stage: Stage, predictions: pd.DataFrame) -> pd.DataFrame:
    """Per sample and predicted class: particles per ml with counting and counting+classification intervals."""
    core = stage.bundle.core.table.loc[predictions.index]
    table = class_table(predictions, core, stage.cfg.count_as, stage.cfg.blank_samples, n_boot=stage.cfg.bootstrap,
                        seed=stage.cfg.seed)
    stage.run.write("core_concentrations", table)
    return table


def class_table(predictions: pd.DataFrame, core: pd.DataFrame, count_as: tuple[str, ...], blanks: tuple[str, ...], *,
                n_boot: int, seed: int) -> pd.DataFrame:
    """Particles per ml per sample and predicted class, the procedural blanks subtracted when there are some."""
    table = concentration_table(predictions["pred"], core[SAMPLE], sample_volumes(core),
                                probabilities=table_proba(predictions), merge=parse_count_as(count_as), n_boot=n_boot,
                                seed=seed)
    if blanks:
        table = subtract_blanks(table, blanks, seed=seed)
        print(f"procedural blanks {', '.join(blanks)} subtracted (per_ml_net, with their counting uncertainty)")
    return table


@step("the concentration figure", **VOLUMES)
def concentration_plot(stage: Stage, table: pd.DataFrame) -> Figure:
    """Particles per ml per sample and class, with both intervals."""
    return concentration_figure(table, path=stage.figure("02_concentrations.png"))


@step("the size distributions", core=True, core_columns=(ESD,), to="draw size distributions")
def size_distributions(stage: Stage, predictions: pd.DataFrame) -> tuple[Figure, pd.DataFrame]:
    """Number and volume distributions of ESD (um) per predicted class, and each class's median sizes."""
    esd = stage.bundle.core.table.loc[predictions.index, ESD].astype(float)
    dist = size_distribution(esd, predictions["pred"])
    stage.run.write("core_size_distribution", dist)
    figure = size_distribution_figure(dist, path=stage.figure("02_size_distributions.png"))
    return figure, size_summary(esd, predictions["pred"]).round(2)


def concentration_metrics(table: pd.DataFrame | Skipped) -> dict[str, dict[str, dict[str, float]]]:
    """``{"per_ml": {sample: {class: per_ml}}}`` for notebook 02's metrics (empty when the step was skipped)."""
    if isinstance(table, Skipped):
        return {}
    return {"per_ml": {str(s): dict(zip(g["class"].astype(str), g["per_ml"].astype(float)))
                       for s, g in table.groupby("sample", sort=False)}}


UNKNOWN = "unknown"


@step("particles per ml with the unknowns set aside", **VOLUMES)
def open_set_concentrations(stage: Stage, core_view: pd.DataFrame) -> pd.DataFrame | Skipped:
    """Notebook 05: per sample and class, the particles flagged unknown counted as their own class ``unknown``."""
    if UNKNOWN not in core_view:
        return Skipped("particles per ml with the unknowns set aside", "there is no unknown threshold",
                       "hold out classes in notebook 04 (3 or more classes) to calibrate one")
    predictions = stage.run.read("core_predictions").loc[core_view.index]
    flagged = core_view[UNKNOWN].astype(bool)
    proba = table_proba(predictions).assign(**{UNKNOWN: 0.0})
    proba.loc[flagged] = 0.0
    proba.loc[flagged, UNKNOWN] = 1.0
    labels = predictions["pred"].where(~flagged, UNKNOWN)
    core = stage.bundle.core.table.loc[core_view.index]
    table = concentration_table(labels, core[SAMPLE], sample_volumes(core), probabilities=proba,
                                merge=parse_count_as(stage.cfg.count_as), n_boot=stage.cfg.bootstrap, seed=stage.cfg.seed)
    stage.run.write("open_set_concentrations", table)
    concentration_figure(table, path=stage.figure("05_concentrations_open_set.png"))
    return table

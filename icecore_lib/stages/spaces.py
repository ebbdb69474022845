"""The embedding spaces notebooks 04 and 05 share: CNN penultimate layer, autoencoder latent, standardised metadata.

The metadata space of a run with a core leaves out the features that shift between lab and core within the
same class (background level, focus and contrast move intensity and edge features): they measure the
instrument's session, and would make every core particle look new.

Each space is read from the artefacts notebooks 01-03 wrote (nothing is retrained), as a pair of DataFrames
keyed by particle id: the labelled part and the core.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..data.dataset import DatasetBundle
from ..models.scaler import FeatureScaler
from ..run.artifacts import Run
from ..schema import LABEL, SESSION, SPLIT
from ..shift.align import align_core, session_offsets
from ..shift.drift import class_conditional_shift
from ..train.autoencoder import LATENT_PREFIX, AEOutputs
from ..train.classifier import ClassifierOutputs


@dataclass(frozen=True)
class Space:
    """One embedding space: labelled and core coordinates keyed by particle id."""

    name: str
    labelled: pd.DataFrame
    core: pd.DataFrame | None


def core_model_name(run: Run) -> str:
    """The CNN variant notebook 02 chose for the core (recorded in metrics.json)."""
    return run.section("02_cnn")["core_model"]


def core_predictions(run: Run) -> pd.DataFrame:
    """Notebook 02's per-particle core predictions (predicted class, probabilities, unassigned flag)."""
    return run.read("core_predictions")


def metadata_space(bundle: DatasetBundle) -> Space:
    """The 34 features, log-scaled where skewed and standardised on the training split only."""
    scaler = FeatureScaler().fit(bundle.train.table)
    core = _scaled(scaler, bundle.core.table) if bundle.core is not None else None
    return Space("meta", _scaled(scaler, bundle.train.table), core)


def acquisition_shift(space: Space, bundle: DatasetBundle, core_pred: pd.Series) -> pd.DataFrame:
    """Class-conditional lab -> core shift of each scaled feature (training split vs core, by predicted class)."""
    if space.core is None:
        raise ValueError("this dataset has no core part: there is no lab -> core shift to measure")
    table = bundle.train.table
    train = table.index[table[SPLIT] == "train"]
    return class_conditional_shift(space.labelled.loc[train], table.loc[train, LABEL], space.core, core_pred)


def session_aligned(space: Space, bundle: DatasetBundle, core_pred: pd.Series) -> Space:
    """The space with its core aligned to the lab one session at a time (``shift.align``; one session when the core
    names none)."""
    if space.core is None:
        return space
    return Space(space.name, space.labelled,
                 aligned_core(space.labelled, space.core, bundle.train.table, core_sessions(bundle), core_pred))


def aligned_core(labelled: pd.DataFrame, core: pd.DataFrame, reference: pd.DataFrame, sessions: pd.Series,
                 core_pred: pd.Series) -> pd.DataFrame:
    """Core coordinates (features, an embedding, logits) with each session's offset from the training split of the
    ``reference`` table (label and split by particle id) subtracted (``shift.align``)."""
    train = reference.index[reference[SPLIT] == "train"]
    offsets = session_offsets(labelled.loc[train], reference.loc[train, LABEL], core, core_pred, sessions)
    return align_core(core, sessions, offsets)


def core_sessions(bundle: DatasetBundle) -> pd.Series:
    """Each core particle's instrument session (``sessions_of`` the core's table)."""
    return sessions_of(bundle.core.table)


def sessions_of(core: pd.DataFrame) -> pd.Series:
    """Each particle's instrument session (one session, "core", when the table names none)."""
    return core[SESSION] if SESSION in core else pd.Series("core", index=core.index, name=SESSION)


def robust_metadata_space(bundle: DatasetBundle, core_pred: pd.Series, max_shift: float,
                          align: bool = False) -> tuple[Space, pd.DataFrame]:
    """The metadata space without the features that measure the instrument rather than the particle.

    With ``align`` the core is first aligned to the lab session by session (``session_aligned``). A feature is
    dropped when its median class-conditional shift (``acquisition_shift``) exceeds ``max_shift`` pooled
    within-class SDs, or when it does not vary within the training classes. Distances in the kept features
    compare particles, not sessions; the shift table (with a ``kept`` column) says what was dropped.
    """
    full = metadata_space(bundle)
    if align:
        full = session_aligned(full, bundle, core_pred)
    shift = acquisition_shift(full, bundle, core_pred)
    shift["kept"] = shift["median_abs"] <= max_shift
    kept = list(shift.index[shift["kept"]])
    if not kept:
        raise ValueError(f"every feature shifts by more than {max_shift} SD between lab and core: raise max_shift")
    return Space("meta", full.labelled[kept], full.core[kept]), shift.sort_values("median_abs", ascending=False)


def _scaled(scaler: FeatureScaler, table: pd.DataFrame) -> pd.DataFrame:
    """Scaled features keyed by particle id."""
    return pd.DataFrame(scaler.transform(table), index=table.index, columns=list(scaler.columns))


def _latent(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The latent columns of an autoencoder table."""
    return table.filter(like=LATENT_PREFIX) if table is not None else None


def run_metadata_space(run: Run, bundle: DatasetBundle, max_shift: float, align: bool = False) -> Space:
    """The run's metadata space: acquisition-robust when there is a core (and notebook 02's predictions), else all features."""
    if bundle.core is None:
        return metadata_space(bundle)
    return robust_metadata_space(bundle, core_predictions(run)["pred"], max_shift, align)[0]


def load_spaces(run: Run, bundle: DatasetBundle, ae_dim: int, max_shift: float,
                align: bool = False) -> dict[str, Space]:
    """CNN (the core model of notebook 02), AE (latent ``ae_dim`` of notebook 03) and acquisition-robust metadata;
    with ``align`` each space's core aligned to the lab session by session."""
    cnn = ClassifierOutputs.load(run, core_model_name(run))
    ae = AEOutputs.load(run, ae_dim)
    spaces = {"cnn": Space("cnn", cnn.labelled_embedding, cnn.core_embedding),
              "ae": Space("ae", _latent(ae.labelled), _latent(ae.core))}
    if align and bundle.core is not None:
        core_pred = core_predictions(run)["pred"]
        spaces = {name: session_aligned(space, bundle, core_pred) for name, space in spaces.items()}
    return {**spaces, "meta": run_metadata_space(run, bundle, max_shift, align)}

"""The embedding spaces later notebooks share: CNN penultimate layer, autoencoder latent, standardised metadata.

Each space is read from what notebooks 01-03 wrote into the run directory (nothing is retrained), as a pair
of DataFrames keyed by particle id: the labelled part and the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import autoencode, classify
from .data import DatasetBundle
from .runs import read_metrics
from .torchdata import FeatureScaler


@dataclass(frozen=True)
class Space:
    """One embedding space: labelled and core coordinates keyed by particle id."""

    name: str
    labelled: pd.DataFrame
    core: pd.DataFrame | None


def core_model_name(run_dir: Path) -> str:
    """The CNN variant notebook 02 chose for the core (recorded in metrics.json)."""
    metrics = read_metrics(run_dir).get("02_cnn")
    if metrics is None:
        raise FileNotFoundError(f"{run_dir}/metrics.json has no 02_cnn section: run notebook 02 first")
    return metrics["core_model"]


def metadata_space(bundle: DatasetBundle) -> Space:
    """The 34 features, log-scaled where skewed and standardised on the training split only."""
    scaler = FeatureScaler().fit(bundle.train.table)
    core = _scaled(scaler, bundle.core.table) if bundle.core is not None else None
    return Space("meta", _scaled(scaler, bundle.train.table), core)


def _scaled(scaler: FeatureScaler, table: pd.DataFrame) -> pd.DataFrame:
    """Scaled features keyed by particle id."""
    return pd.DataFrame(scaler.transform(table), index=table.index, columns=list(scaler.columns))


def _latent(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The latent columns of an autoencoder table."""
    return table.filter(like=autoencode.LATENT_PREFIX) if table is not None else None


def load_spaces(run_dir: Path, bundle: DatasetBundle, ae_dim: int) -> dict[str, Space]:
    """CNN (the core model of notebook 02), AE (latent ``ae_dim`` of notebook 03) and metadata spaces."""
    cnn = classify.load_outputs(run_dir, core_model_name(run_dir))
    ae = autoencode.load_outputs(run_dir, ae_dim)
    return {
        "cnn": Space("cnn", cnn.labelled_embedding, cnn.core_embedding),
        "ae": Space("ae", _latent(ae.labelled), _latent(ae.core)),
        "meta": metadata_space(bundle),
    }

"""Each notebook's key numbers on the synthetic twin, with tolerances: its last cell holds the run to them.

The profile's own synthetic set is seeded, so a run repeats its numbers on one machine and moves little across
machines; each key number must land in its range, else the notebook fails naming the number, its value and its
range (under nbval in CI, a regression in any notebook fails the build). The demo ranges are the conclusions the
demo exists to show (images beat metadata by 3 points, ECE under 3%, the planted diatoms found, the corrected
composition no worse than raw counts); the ci ranges bracket the tiny profile's measured numbers. Nothing is
checked on another dataset or with settings changed from the profile's: there is no reference for them.

A key is ``section:dotted.path`` into metrics.json, or the difference of two (``a - b``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..config import StageConfig, stage_config
from .artifacts import Run

Range = tuple[float, float]
# Settings that say where, not what: a run may change them and still be the reference run.
PLACE_SETTINGS = ("run_dir", "dataset", "manifest", "cache_dir", "device")

# profile -> notebook stage -> key -> (lowest, highest) accepted value.
REFERENCE: dict[str, dict[str, dict[str, Range]]] = {
    # ci: 40 particles per class, 2 epochs at 32 px; measured on 2 CPU cores with one thread, +-0.05 to 0.1 (the
    # numbers move with the CPU and the thread count: float rounding changes what 2 epochs on 280 particles learn).
    "ci": {
        "00_data_overview": {"data:train.particles": (280, 280), "data:core.particles": (240, 240)},
        "01_metadata": {"01_metadata:bdt.accuracy": (0.76, 0.87), "01_metadata:bdt.balanced_accuracy": (0.74, 0.86),
                        "01_metadata:mlp.accuracy": (0.38, 0.55)},
        "02_cnn": {"02_cnn:image.accuracy": (0.12, 0.30), "02_cnn:calibration.ece_after": (0.10, 0.27),
                   "02_cnn:composition_mae.acc_abs_error": (0.04, 0.20), "02_cnn:session_probe.accuracy": (0.75, 0.93)},
        "03_autoencoder": {"03_autoencoder:latent_comparison.latent 64.knn_accuracy_test": (0.62, 0.82)},
        "04_umap": {"04_umap:map_comparison.umap-learn.trustworthiness": (0.95, 1.0),
                    "04_umap:map_comparison.parametric.trustworthiness": (0.95, 1.0),
                    "04_umap:loco.corylus/ae.knn_purity": (0.52, 0.75)},
        "05_discovery": {"05_discovery:loco_mean.combined_rank.auroc": (0.75, 0.96),
                         # 0.10-0.30 on an AVX2 CPU, 0.046 on an AVX-512 one: float rounding differs by CPU, and
                         # on 240 core particles the threshold sits at rank 1.0, so a few particles swing it.
                         "05_discovery:core_flagged_unknown_fraction": (0.02, 0.35)},
    },
    # demo: the conclusions (measured 2026-12-06 on 2 cores, bf16: BDT 0.888, image CNN 0.939, ECE 2.0% after scaling,
    # composition error CC 0.0078 / ACC 0.0041 / EM 0.0060, planted diatoms 0.978 in the top 2n).
    "demo": {
        "01_metadata": {"01_metadata:bdt.accuracy": (0.85, 0.95)},
        "02_cnn": {"02_cnn:image.accuracy - 01_metadata:bdt.accuracy": (0.03, 1.0),
                   "02_cnn:calibration.ece_after": (0.0, 0.03),
                   "02_cnn:composition_mae.cc_abs_error - 02_cnn:composition_mae.acc_abs_error": (0.0, 1.0),
                   "02_cnn:composition_mae.cc_abs_error - 02_cnn:composition_mae.em_abs_error": (0.0, 1.0)},
        "05_discovery": {"05_discovery:new_class.combined_rank.recall@2n": (0.8, 1.0)},
    },
}


class KeyNumberOutOfRange(AssertionError):
    """A key number of a run of the synthetic twin left its reference range (or is no longer reported)."""


def is_reference_run(cfg: StageConfig) -> bool:
    """Whether a stage ran the profile's own synthetic set with the profile's own settings."""
    if cfg.dataset and cfg.dataset != f"synthetic-{cfg.profile}":
        return False
    place = {name: getattr(cfg, name) for name in PLACE_SETTINGS}
    return dataclasses.replace(stage_config(type(cfg), cfg.profile), **place) == cfg


def value_of(metrics: Mapping[str, Any], key: str) -> float:
    """A key's value: one ``section:dotted.path`` of metrics.json, or the difference ``a - b`` of two."""
    if " - " in key:
        first, second = key.split(" - ", 1)
        return value_of(metrics, first) - value_of(metrics, second)
    section, _, path = key.partition(":")
    value: Any = metrics
    for part in [section, *path.split(".")]:
        if not isinstance(value, Mapping) or part not in value:
            raise KeyNumberOutOfRange(f"metrics.json has no {key!r}: the notebook no longer reports it")
        value = value[part]
    return float(value)


def check_key_numbers(run: Run, stage: str, cfg: StageConfig) -> pd.DataFrame | str:
    """Compare a finished notebook's key numbers with the reference: a table of them, or why none is checked.

    Raises :class:`KeyNumberOutOfRange` naming every number outside its range.
    """
    ranges = REFERENCE.get(cfg.profile, {}).get(stage, {})
    if not ranges:
        return f"no reference numbers for notebook {stage} under the {cfg.profile} profile"
    if not is_reference_run(cfg):
        return (f"not the {cfg.profile} profile's own synthetic set with its own settings: "
                "its reference numbers do not apply")
    metrics = run.metrics()
    table = pd.DataFrame([{"number": key, "value": value_of(metrics, key), "low": low, "high": high}
                          for key, (low, high) in ranges.items()]).set_index("number")
    table["ok"] = table["value"].between(table["low"], table["high"])
    bad = table[~table["ok"]]
    if len(bad):
        lines = [f"{key} = {row.value:.4f}, expected {row.low} to {row.high}" for key, row in bad.iterrows()]
        raise KeyNumberOutOfRange(f"{stage}: key numbers of the {cfg.profile} synthetic twin out of range:\n  "
                                  + "\n  ".join(lines))
    return table

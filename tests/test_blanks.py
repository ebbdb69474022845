"""Procedural blanks: their particles per ml are subtracted from every sample, their uncertainty carried along."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icecore_lib.concentration import concentration_table, subtract_blanks
from icecore_lib.run.export import depth_table


def _table() -> pd.DataFrame:
    """Two core samples and one blank (1 ml each): 50 and 5 ash particles in the samples, 10 in the blank."""
    counts = {"S1": 50, "S2": 5, "BLANK": 10}
    ids, samples = [], []
    for sample, n in counts.items():
        ids += [f"{sample}_{i}" for i in range(n)]
        samples += [sample] * n
    index = pd.Index(ids, name="particle_id")
    labels = pd.Series("camp", index=index)
    return concentration_table(labels, pd.Series(samples, index=index), pd.Series(1.0, index=list(counts)),
                               classes=["camp"])


def test_the_blank_leaves_the_table_and_its_rate_is_subtracted_with_a_wider_interval():
    gross = _table()
    net = subtract_blanks(gross, ["BLANK"], seed=0)
    assert "BLANK" not in set(net["sample"])
    s1 = net[(net["sample"] == "S1") & (net["class"] == "camp")].iloc[0]
    assert s1["blank_per_ml"] == 10.0 and s1["per_ml_net"] == 40.0
    assert s1["per_ml_net_lo"] < 40.0 < s1["per_ml_net_hi"]
    assert s1["per_ml_net_hi"] - s1["per_ml_net_lo"] > s1["per_ml_hi"] - s1["per_ml_lo"]  # the blank's own noise
    s2 = net[(net["sample"] == "S2") & (net["class"] == "camp")].iloc[0]
    assert s2["per_ml_net"] == -5.0 and s2["per_ml_net_lo"] < 0  # fewer than the blank: kept, not clipped


def test_the_net_interval_covers_the_true_difference_about_as_often_as_it_says():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        n, n_b = rng.poisson(30), rng.poisson(8)
        table = pd.DataFrame({"sample": ["S", "B"], "class": ["camp", "camp"], "n": [n, n_b],
                              "volume_ml": [1.0, 1.0], "per_ml": [float(n), float(n_b)]})
        row = subtract_blanks(table, ["B"], seed=trial, n_draws=2000).iloc[0]
        hits += row["per_ml_net_lo"] <= 22.0 <= row["per_ml_net_hi"]
    assert 0.90 <= hits / 200 <= 0.995


def test_a_blank_the_table_lacks_is_named():
    with pytest.raises(ValueError, match="'B9' not among the samples"):
        subtract_blanks(_table(), ["B9"])


def test_the_depth_table_reports_the_net_concentrations_and_no_row_for_the_blank():
    net = subtract_blanks(_table(), ["BLANK"], seed=0)
    composition = pd.DataFrame({"sample_id": ["S1", "S2", "BLANK"], "depth_m": [10.0, 11.0, np.nan],
                                "class": ["camp"] * 3, "fraction": [1.0] * 3, "ci_low": [1.0] * 3,
                                "ci_high": [1.0] * 3, "n_particles": [50, 5, 10]})
    table = depth_table(composition, net, model_card="x", n_boot=10)
    assert table.index.tolist() == ["S1", "S2"] and table.loc["S1", "camp_per_ml"] == 40.0
    assert "procedural blanks" in table["method"].iloc[0]

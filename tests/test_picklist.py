"""Tephra pick list: per sample and ash class, the surest particles predicted as that class, in depth order."""

from __future__ import annotations

import pandas as pd
import pytest

from icecore_lib.picklist import ash_classes, pick_list, volcanic_layers
from icecore_lib.schema import CLASSES


def _core() -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = pd.Index([f"c{i}.png" for i in range(8)], name="particle_id")
    predictions = pd.DataFrame({
        "p_camp": [0.9, 0.6, 0.1, 0.95, 0.2, 0.7, 0.1, 0.8], "p_dust": [0.1, 0.4, 0.9, 0.05, 0.8, 0.3, 0.9, 0.2],
    }, index=ids)
    predictions["pred"] = predictions[["p_camp", "p_dust"]].idxmax(axis=1).str.removeprefix("p_")
    depths = [120.0, 120.3, 120.1, 120.4, 80.2, 80.0, 80.3, 80.1]  # each particle at its own depth in its sample
    core = pd.DataFrame({"sample_id": ["deep"] * 4 + ["shallow"] * 4, "depth_m": depths}, index=ids)
    return predictions, core


def test_the_ash_classes_are_found_by_name_or_given():
    assert ash_classes(CLASSES) == ["camp", "grim"]
    assert ash_classes(CLASSES, ("grim",)) == ["grim"]
    with pytest.raises(ValueError, match="pumice not among the classes"):
        ash_classes(CLASSES, ("pumice",))


def test_each_sample_lists_its_surest_ash_particles_shallowest_sample_first():
    predictions, core = _core()
    picks = pick_list(predictions, core, ["camp"], per_class=2)
    assert picks["sample_id"].tolist() == ["shallow", "shallow", "deep", "deep"]
    assert picks["particle_id"].tolist() == ["c7.png", "c5.png", "c3.png", "c0.png"]
    assert picks["rank"].tolist() == [1, 2, 1, 2] and picks["probability"].tolist() == [0.8, 0.7, 0.95, 0.9]
    assert set(picks["class"]) == {"camp"} and "c2.png" not in set(picks["particle_id"])  # dust is never picked


def test_particles_flagged_unknown_are_never_picked_and_the_next_surest_take_their_place():
    predictions, core = _core()
    unknown = pd.Series({"c3.png": True, "c7.png": True, "c0.png": False})  # others absent: not flagged
    picks = pick_list(predictions, core, ["camp"], per_class=2, unknown=unknown)
    assert picks["particle_id"].tolist() == ["c5.png", "c0.png", "c1.png"]
    assert picks["rank"].tolist() == [1, 1, 2]


def test_a_core_without_samples_is_refused():
    predictions, core = _core()
    with pytest.raises(ValueError, match="no sample_id column"):
        pick_list(predictions, core.drop(columns=["sample_id"]), ["camp"])


def test_volcanic_layers_are_the_samples_where_ash_stands_out_against_the_cores_median():
    rows = []
    for sample, depth, ash in [("a", 10.0, 0.02), ("b", 10.5, 0.03), ("c", 11.0, 0.40), ("d", 11.5, 0.02),
                               ("e", 12.0, 0.07)]:
        rows += [{"sample_id": sample, "depth_m": depth, "class": "camp", "fraction": ash / 2},
                 {"sample_id": sample, "depth_m": depth, "class": "grim", "fraction": ash / 2},
                 {"sample_id": sample, "depth_m": depth, "class": "dust", "fraction": 1 - ash}]
    composition = pd.DataFrame(rows)
    # The median ash fraction is 0.03: a layer needs 3 x 0.03 = 0.09 (and at least 5%), so 0.07 is not one.
    assert volcanic_layers(composition, ["camp", "grim"]) == [11.0]
    assert volcanic_layers(composition, ["camp", "grim"], factor=2.0) == [11.0, 12.0]
    assert volcanic_layers(composition, []) == []

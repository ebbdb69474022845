"""EcoTaxa export: the TSV follows EcoTaxa's column rules, the zip holds every crop, validated labels come back."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
from helpers import crop, png_bytes

from icecore_lib.run.export import (
    depth_table,
    ecotaxa_name,
    ecotaxa_table,
    read_ecotaxa_tsv,
    tsv_text,
    validated_labels,
    write_ecotaxa_zip,
)
from icecore_lib.schema import FLOWCAM_FEATURES

CLASSES = {"camp": "Ash #1 Campanian", "dust": "Mineral dust"}


def _predictions_and_core(n: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's core predictions and the core table they belong to (ids are image paths, as icecore keys them)."""
    ids = pd.Index([f"S{i // 3}/crop_{i:03d}.png" for i in range(n)], name="particle_id")
    p = np.linspace(0.3, 0.9, n)
    pred = pd.DataFrame({"p_camp": p, "p_dust": 1 - p}, index=ids)
    pred["pred"] = np.where(p >= 0.5, "camp", "dust")
    pred["max_prob"] = np.maximum(p, 1 - p)
    pred["assigned"] = np.where(pred["max_prob"] > 0.6, pred["pred"], "unassigned")
    pred["combined_rank"] = np.linspace(0, 1, n)
    pred["unknown"] = pred["combined_rank"] > 0.9
    rng = np.random.default_rng(0)
    core = pd.DataFrame(rng.normal(10, 1, (n, len(FLOWCAM_FEATURES))), index=ids, columns=FLOWCAM_FEATURES)
    core["sample_id"] = [f"S{i // 3}" for i in range(n)]
    core["depth_m"] = [100.0 + i // 3 for i in range(n)]
    core["session"] = "core_session"
    return pred, core


def _table(**options) -> pd.DataFrame:
    pred, core = _predictions_and_core()
    return ecotaxa_table(pred, core, classes=CLASSES, software="icecore 0.1.0", run="run-1", **options)


def test_the_tsv_has_ecotaxas_header_and_type_rows_and_column_rules():
    text = tsv_text(_table(pixel_um=0.6))
    header, types, *rows = text.rstrip("\n").split("\n")
    names, kinds = header.split("\t"), types.split("\t")
    assert len(rows) == 6 and len(names) == len(kinds)
    assert all(re.fullmatch(r"(img|object|sample|acq|process)_[a-z0-9_]+", n) for n in names)
    assert set(kinds) == {"[t]", "[f]"}
    kind = dict(zip(names, kinds, strict=True))
    assert kind["img_file_name"] == kind["object_id"] == kind["object_annotation_category"] == "[t]"
    assert kind["object_depth_min"] == kind[ecotaxa_name("Area (ABD)")] == kind["process_pixel_um"] == "[f]"
    assert ecotaxa_name("Biovolume (P. Spheroid)") == "object_biovolume_p_spheroid"


def test_the_tsv_reads_back_typed_with_its_values():
    table = _table()
    back = read_ecotaxa_tsv(io.StringIO(tsv_text(table)))
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back["object_area_abd"], table["object_area_abd"])
    assert back["object_annotation_category"].tolist()[:2] == ["Mineral dust", "Mineral dust"]
    assert set(back["object_annotation_status"]) == {"predicted"} and back["object_unknown"].tolist()[-1] == "yes"


def test_validated_labels_from_the_review_are_marked_and_come_back_as_training_labels():
    table = _table(validated={"S0/crop_001.png": "camp", "S1/crop_004.png": "dust"})
    back = read_ecotaxa_tsv(io.StringIO(tsv_text(table)))
    labels = validated_labels(back, CLASSES)
    assert labels.to_dict() == {"S0/crop_001.png": "camp", "S1/crop_004.png": "dust"}
    assert (back["object_annotation_status"] == "validated").sum() == 2


def test_a_validated_category_the_lab_does_not_train_on_is_named():
    back = read_ecotaxa_tsv(io.StringIO(tsv_text(_table(validated={"S0/crop_002.png": "Copepoda"}))))
    with pytest.raises(ValueError, match=r"S0/crop_002.png.*'Copepoda' is none of the classes"):
        validated_labels(back, CLASSES)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("Object Area", 1.0, "lower-case"), ("object_id", "same", "more than once"),
    ("object_annotation_status", "maybe", "is not one of"),
])
def test_a_table_breaking_an_ecotaxa_rule_is_refused_naming_it(column, value, message):
    table = _table()
    table[column] = value
    with pytest.raises(ValueError, match=message):
        tsv_text(table)


def test_the_zip_holds_the_tsv_and_every_original_crop_at_its_img_file_name(tmp_path):
    pred, core = _predictions_and_core()
    images = tmp_path / "crops"
    for i, pid in enumerate(pred.index):
        (images / pid).parent.mkdir(parents=True, exist_ok=True)
        (images / pid).write_bytes(png_bytes(crop(i)))
    table = ecotaxa_table(pred, core, classes=CLASSES, software="icecore", run="r")
    path = write_ecotaxa_zip(tmp_path / "out" / "ecotaxa_r.zip", table, images)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist()[0] == "ecotaxa_r.tsv"
        back = read_ecotaxa_tsv(io.StringIO(zf.read("ecotaxa_r.tsv").decode()))
        for name, pid in zip(back["img_file_name"], back["object_id"], strict=True):
            assert zf.read(name) == (images / pid).read_bytes()


def test_the_depth_table_has_one_row_per_sample_with_fractions_and_concentrations_and_their_bounds():
    composition = pd.DataFrame({
        "sample_id": ["S0", "S0", "S1", "S1"], "depth_m": [100.0, 100.0, 101.0, 101.0],
        "class": ["camp", "dust", "camp", "dust"], "fraction": [0.2, 0.8, 0.6, 0.4],
        "ci_low": [0.1, 0.7, 0.5, 0.3], "ci_high": [0.3, 0.9, 0.7, 0.5], "n_particles": [40, 40, 50, 50]})
    concentrations = pd.DataFrame({
        "sample": ["S0", "S0", "S0", "S1", "S1", "S1"], "class": ["camp", "dust", "all"] * 2,
        "n": [8, 32, 40, 30, 20, 50], "volume_ml": [2.0] * 3 + [5.0] * 3,
        "per_ml": [4.0, 16.0, 20.0, 6.0, 4.0, 10.0], "per_ml_total_lo": [2.0, 12.0, 14.0, 4.0, 2.5, 7.0],
        "per_ml_total_hi": [7.0, 21.0, 27.0, 8.5, 6.0, 13.0]})
    table = depth_table(composition, concentrations, model_card="abc123", n_boot=200)
    assert table.index.tolist() == ["S0", "S1"] and table["depth_m"].tolist() == [100.0, 101.0]
    assert table.loc["S1", "camp_fraction"] == 0.6 and table.loc["S1", "camp_fraction_lo95"] == 0.5
    assert table.loc["S0", "dust_per_ml"] == 16.0 and table.loc["S0", "dust_per_ml_hi95"] == 21.0
    assert table.loc["S1", "volume_ml"] == 5.0 and table.loc["S0", "n_particles"] == 40
    assert (table["model_card"] == "abc123").all() and "200 resamples" in table["method"].iloc[0]
    without_volumes = depth_table(composition, None, model_card="abc123", n_boot=200)
    assert not [c for c in without_volumes if "per_ml" in c]

"""The label review of notebook 01: doubted labels kept or corrected, logged, and trained on by the next run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icecore_lib.data.dataset import load_dataset
from icecore_lib.data.relabel import corrected_labels
from icecore_lib.run.review import append_label_review, label_review_path, load_label_review
from icecore_lib.schema import LABEL
from icecore_lib.widgets import LabelReview

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.set_index")


def _reference(n: int = 5) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """A labelled table, its crops and cleanlab-style issues (given -> suggested) for every particle."""
    ids = pd.Index([f"lab/{i}.png" for i in range(n)], name="particle_id")
    table = pd.DataFrame({LABEL: ["dust", "camp", "dust", "grim", "camp"][:n]}, index=ids)
    issues = pd.DataFrame({"given": table[LABEL], "suggested": ["camp", "grim", "camp", "camp", "dust"][:n]}, index=ids)
    return table, np.zeros((n, 8, 8), np.uint8), issues


def test_a_page_keeps_the_given_labels_unless_a_person_changes_them(tmp_path: Path) -> None:
    table, images, issues = _reference()
    review = LabelReview(issues, table, images, ["camp", "dust", "grim"], tmp_path, per_page=2, thumb_px=16)
    assert review.page_ids() == ["lab/0.png", "lab/1.png"]
    review.choices["lab/1.png"].value = "grim"
    rows = review.record()
    assert rows["label"].tolist() == ["dust", "grim"] and rows["given"].tolist() == ["dust", "camp"]
    assert review.page_ids() == ["lab/2.png", "lab/3.png"] and "relabel=" in review.status.value
    review.take_suggestions()
    review.record()
    logged = load_label_review(tmp_path)
    assert logged["label"].tolist() == ["dust", "grim", "camp", "camp"]
    assert label_review_path(tmp_path).name == "label_review.csv"


def test_a_verdict_outside_the_classes_or_for_a_stranger_is_refused_naming_it(tmp_path: Path) -> None:
    table, _, _ = _reference()
    with pytest.raises(ValueError, match=r"lab/2.png: label 'pollen' is not a class"):
        append_label_review(tmp_path, pd.Series({"lab/2.png": "pollen"}), table[LABEL], ["camp", "dust"])
    with pytest.raises(ValueError, match="lab/9.png: not a labelled particle"):
        append_label_review(tmp_path, pd.Series({"lab/9.png": "dust"}), table[LABEL], ["camp", "dust"])
    assert not label_review_path(tmp_path).exists()


def test_the_latest_verdict_replaces_the_given_label_and_a_stray_id_is_an_error(tmp_path: Path) -> None:
    table, _, _ = _reference()
    append_label_review(tmp_path, pd.Series({"lab/0.png": "camp", "lab/3.png": "dust"}), table[LABEL], ["camp", "dust", "grim"])
    append_label_review(tmp_path, pd.Series({"lab/0.png": "dust"}), table[LABEL], ["camp", "dust", "grim"])
    fixed = corrected_labels(table[LABEL], load_label_review(tmp_path))
    assert fixed.tolist() == ["dust", "camp", "dust", "dust", "camp"]
    with pytest.raises(ValueError, match="lab/0.png was reviewed but is not among the labelled particles"):
        corrected_labels(table[LABEL].drop("lab/0.png"), load_label_review(tmp_path))


def test_a_run_with_relabel_trains_on_the_decided_labels(tiny_stage, tiny_bundle, tmp_path: Path) -> None:
    labels = tiny_bundle.train.table[LABEL]
    ids = labels.index[:3]
    other = {k: next(c for c in sorted(set(labels)) if c != labels[k]) for k in ids}
    append_label_review(tmp_path, pd.Series(other), labels, sorted(set(labels)))
    relabelled = load_dataset(dataclasses.replace(tiny_stage, relabel=str(label_review_path(tmp_path))), progress=False)
    new = relabelled.train.table[LABEL]
    assert new.loc[ids].tolist() == [other[k] for k in ids]
    assert (new.drop(ids) == labels.drop(ids)).all()

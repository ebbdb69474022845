"""The explorer driven from code: selection -> gallery -> decisions in the run's review CSV -> labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icecore_lib.run.review import append_review, load_review, review_to_labels
from icecore_lib.widgets import Explorer

# jupyter-scatter's own pandas 3 deprecation, not ours
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.set_index")


@pytest.fixture
def particles() -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """12 crops, their table (class, score, sample, cluster, a flag) and a 2-D map."""
    n = 12
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "pred": np.array(["dust", "camp", "qrob"])[np.arange(n) % 3],
            "knn_cnn": rng.uniform(size=n),
            "sample_id": np.array(["s1", "s2"])[np.arange(n) // 6],
            "cluster": np.arange(n) // 4,
            "flagged": np.arange(n) > 8,
        },
        index=pd.Index([f"core/{i:03d}.png" for i in range(n)], name="particle_id"),
    )
    images = rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)
    return images, table, rng.normal(size=(n, 2))


def test_explorer_select_and_decide_write_review_rows(particles, tmp_path: Path) -> None:
    images, table, xy = particles
    explorer = Explorer(xy, table, images, tmp_path, color_by="pred", max_thumbnails=3, thumb_px=24)
    explorer.select(["core/005.png", "core/001.png"])
    assert list(explorer.scatter.selection()) == [1, 5]
    assert len(explorer.gallery.children) == 2
    assert explorer.gallery.children[0].children[0].value[:4] == b"\x89PNG"

    explorer.name_box.value = "diatom"
    explorer.candidate_button.click()
    explorer.cluster_dropdown.value = 2  # particles 8-11
    assert len(explorer.gallery.children) == 3  # capped
    explorer.artefact_button.click()

    review = pd.read_csv(tmp_path / "review.csv")
    assert list(review.columns) == ["particle_id", "decision", "name", "timestamp"]
    cluster_2 = [f"core/{i:03d}.png" for i in range(8, 12)]
    assert review["particle_id"].tolist() == ["core/001.png", "core/005.png", *cluster_2]
    assert review["decision"].tolist() == ["candidate"] * 2 + ["artefact"] * 4
    assert review["name"].tolist()[:2] == ["diatom", "diatom"]


def test_lasso_on_the_map_updates_the_gallery(particles, tmp_path: Path) -> None:
    images, table, xy = particles
    explorer = Explorer(xy, table, images, tmp_path)
    explorer.scatter.widget.selection = np.array([0, 3, 4], dtype=np.uint32)  # what a lasso in the browser sets
    assert list(explorer.session.selected) == ["core/000.png", "core/003.png", "core/004.png"]
    assert len(explorer.gallery.children) == 3


def test_candidate_without_name_is_refused_and_nothing_written(particles, tmp_path: Path) -> None:
    images, table, xy = particles
    explorer = Explorer(xy, table, images, tmp_path)
    explorer.select(["core/002.png"])
    explorer.candidate_button.click()
    assert "needs a name" in explorer.status.value
    assert not (tmp_path / "review.csv").exists()


def test_colour_and_lasso_controls_reach_the_map(particles, tmp_path: Path) -> None:
    images, table, xy = particles
    explorer = Explorer(pd.DataFrame(xy, index=table.index), table, images, tmp_path)
    assert set(explorer.color_dropdown.options) == {"(none)", "pred", "knn_cnn", "sample_id", "cluster", "flagged"}
    explorer.color_dropdown.value = "knn_cnn"
    assert explorer.scatter.color()["by"] == "knn_cnn"
    explorer.lasso_toggle.value = "rectangle"
    assert explorer.scatter.lasso()["type"] == "rectangle"
    with pytest.raises(KeyError, match="nope"):
        Explorer(xy, table, images, tmp_path, color_by="nope")


def test_review_reloads_as_labels_latest_decision_wins(tmp_path: Path) -> None:
    append_review(tmp_path, ["a.png", "b.png"], "candidate", "diatom")
    append_review(tmp_path, ["b.png", "c.png"], "artefact")
    review = load_review(tmp_path)
    assert review.index.tolist() == ["a.png", "b.png", "b.png", "c.png"]
    labels = review_to_labels(review)
    assert labels.to_dict() == {"a.png": "diatom", "b.png": "artefact", "c.png": "artefact"}
    assert review_to_labels(review, artefact_label=None).to_dict() == {"a.png": "diatom"}


def test_load_review_names_the_bad_line(tmp_path: Path) -> None:
    assert load_review(tmp_path).empty
    (tmp_path / "review.csv").write_text("particle_id,decision,name,timestamp\na.png,candidate,x,t\nb.png,keep,,t\n")
    with pytest.raises(ValueError, match="review.csv: line 3 has decision 'keep'"):
        load_review(tmp_path)

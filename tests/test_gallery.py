"""Galleries and discovery figures: right panels, right particles, PNGs written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from icecore_lib.novelty.metrics import loco_novelty_table, traffic_light, traffic_light_by_group
from icecore_lib.plots.gallery import (
    discovery_card,
    drift_report,
    gallery,
    group_gallery,
    hardest_reconstructions,
    novelty_heatmap,
    particle_captions,
    top_k_gallery,
    traffic_light_bars,
)
from icecore_lib.shift.drift import feature_drift


@pytest.fixture
def core() -> tuple[np.ndarray, pd.DataFrame]:
    """20 tiny crops (pixel value = row number, so a panel shows which particle it is) and their table."""
    rng = np.random.default_rng(0)
    n = 20
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 8, axis=1).repeat(8, axis=2)
    table = pd.DataFrame(
        {
            "pred": np.array(["dust", "camp"])[np.arange(n) % 2],
            "knn_cnn": np.linspace(0, 1, n),
            "cluster": np.arange(n) % 3,
            "sample_id": np.array(["s1", "s2"])[np.arange(n) // 10],
            "depth_m": np.where(np.arange(n) < 10, 12.0, 3.0),
            "Width": rng.normal(10, 1, n),
            "Length": rng.normal(20, 1, n),
        },
        index=pd.Index([f"core/{i:03d}.png" for i in range(n)], name="particle_id"),
    )
    return images, table


def _shown_values(fig: Figure) -> list[int]:
    """The particle (pixel value) shown in each image panel, in panel order."""
    return [int(ax.images[0].get_array()[0, 0]) for ax in fig.axes if ax.images]


def test_gallery_has_one_panel_per_image_and_saves_png(core, tmp_path: Path) -> None:
    images, table = core
    path = tmp_path / "figs" / "gallery.png"
    captions = particle_captions(table, table.index[:5], ["pred", "knn_cnn"])
    fig = gallery(images[:5], table.index[:5], captions, ncols=3, path=path)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5
    assert "core/" not in fig.axes[0].get_xlabel() and "000.png" in fig.axes[0].get_xlabel()
    assert "pred: dust" in fig.axes[0].get_xlabel()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gallery_rejects_mismatched_ids(core) -> None:
    images, table = core
    with pytest.raises(ValueError, match="3 images but 2 particle ids"):
        gallery(images[:3], table.index[:2])


def test_top_k_gallery_shows_highest_scores_first(core) -> None:
    images, table = core
    fig = top_k_gallery(images, table, "knn_cnn", k=4)
    assert _shown_values(fig) == [19, 18, 17, 16]


def test_hardest_reconstructions_pairs_crop_and_reconstruction(core) -> None:
    images, table = core
    table = table.assign(recon=np.arange(20.0)[::-1], label="dust")
    fig = hardest_reconstructions(images, table, reconstructions=255 - images, k=3)
    assert _shown_values(fig) == [0, 255, 1, 254, 2, 253]


def test_group_gallery_one_row_per_group(core) -> None:
    images, table = core
    fig = group_gallery(images, table, "cluster", per_group=2, order_by="knn_cnn")
    assert _shown_values(fig) == [18, 15, 19, 16, 17, 14]
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["cluster 0", "cluster 1", "cluster 2"]


def test_discovery_card_compares_with_nearest_class_and_saves(core, tmp_path: Path) -> None:
    images, table = core
    rng = np.random.default_rng(1)
    reference = pd.DataFrame({"label": ["dust"] * 30, "Width": rng.normal(10, 1, 30), "Length": rng.normal(5, 1, 30)})
    members = table.index[table["pred"] == "dust"]
    fig = discovery_card(images, table, members, reference, n_features=1, path=tmp_path / "card.png")
    assert len(_shown_values(fig)) == len(members)
    assert "Dust" in fig._suptitle.get_text()
    assert any(ax.get_title() == "Length" for ax in fig.axes)  # the feature that differs most
    assert (tmp_path / "card.png").stat().st_size > 0


def test_summary_figures_render(core, tmp_path: Path) -> None:
    images, table = core
    ids = table.index
    novel = pd.Series(np.arange(20) >= 15, index=ids)
    scores = table[["knn_cnn"]]
    loco = loco_novelty_table({"dust": (scores, novel), "camp": (scores, novel)}, ks=(5,), progress=False)
    heat = novelty_heatmap(loco, "auroc", path=tmp_path / "heat.png")
    assert heat.axes[0].images[0].get_array().shape == (3, 1)
    rng = np.random.default_rng(0)
    drift = feature_drift(table.assign(Width=rng.normal(0, 1, 20)), table, ["Width", "Length"])
    assert len(drift_report(drift, path=tmp_path / "drift.png").axes) == 2
    lights = traffic_light(table["knn_cnn"], np.linspace(0, 1, 50))
    bars = traffic_light_bars(traffic_light_by_group(lights, table["sample_id"]), path=tmp_path / "lights.png")
    assert len(bars.axes[0].patches) == 2 * 3
    assert all((tmp_path / f).exists() for f in ("heat.png", "drift.png", "lights.png"))

"""Notebook 05's choice of the scores the combined rank averages, on hand-made tables."""

from __future__ import annotations

import pandas as pd
import pytest

from icecore_lib import discovery


def _loco(auroc: dict[str, float]) -> pd.DataFrame:
    """A leave-one-class-out table with only its ``mean`` row's AUROCs filled in."""
    columns = pd.MultiIndex.from_product([[*auroc, "combined_rank"], ["auroc", "fpr95"]], names=["score", "metric"])
    row = {(s, m): (auroc.get(s, 0.5) if m == "auroc" else 0.5) for s, m in columns}
    return pd.DataFrame([row, row], index=pd.Index(["dust", "mean"], name="held_out"), columns=columns)


def test_the_best_loco_score_is_skipped_when_the_acquisition_shift_moves_it() -> None:
    loco = _loco({"energy": 0.95, "excess_meta": 0.86, "knn_meta": 0.83, "recon": 0.60})
    shift = pd.Series({"energy": 0.25, "excess_meta": 0.0, "knn_meta": 0.01, "recon": -0.02})
    choice = discovery.choose_scores(loco, shift, margin=0.05, max_shift=0.05)
    assert list(choice.index[choice["chosen"]]) == ["excess_meta", "knn_meta"]
    assert not choice.loc["energy", "stable"] and "combined_rank" not in choice.index
    narrow = discovery.choose_scores(loco, shift, margin=0.01, max_shift=0.05)
    assert list(narrow.index[narrow["chosen"]]) == ["excess_meta"]
    with pytest.raises(ValueError, match="max_score_shift"):
        discovery.choose_scores(loco, shift + 1, margin=0.05, max_shift=0.05)

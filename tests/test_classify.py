"""The notebooks' training workflows: the same model whatever the kernel did before (seeded initial weights), and
the fused model's metadata input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from icecore_lib import autoencode, classify
from icecore_lib.config import AEConfig, CNNConfig, stage_config
from icecore_lib.schema import FLOWCAM_FEATURES, GRAY_LEVEL_FEATURES, feature_set


def _after_other_random_work(seed: int) -> None:
    """Leave torch's global generator where a kernel's earlier cells might (torch seeds itself at random)."""
    torch.manual_seed(seed)
    torch.rand(seed)


def test_a_classifier_trained_twice_is_the_same_model(tiny_bundle, tmp_path: Path) -> None:
    cfg = stage_config(CNNConfig, "ci", device="cpu", epochs=1)
    logits = []
    for state in (1, 2):
        _after_other_random_work(state)
        out = classify.fit_torch_classifier(tiny_bundle, cfg, "mlp", tmp_path / f"mlp{state}", progress=False)
        logits.append(out.labelled_logits)
    pd.testing.assert_frame_equal(*logits)


def test_an_autoencoder_trained_twice_is_the_same_model(tiny_bundle, tmp_path: Path) -> None:
    cfg = stage_config(AEConfig, "ci", device="cpu", epochs=1)
    tables = []
    for state in (1, 2):
        _after_other_random_work(state)
        _, out = autoencode.fit_autoencoder(tiny_bundle, cfg, 8, tmp_path / f"ae{state}", progress=False)
        tables.append(out.labelled)
    pd.testing.assert_frame_equal(*tables)


def _core_logits(bundle, cfg: CNNConfig, out_dir: Path) -> pd.DataFrame:
    """The core logits of a fused model trained on the bundle."""
    return classify.fit_torch_classifier(bundle, cfg, "both", out_dir, progress=False).core_logits


def test_the_fused_model_reads_no_gray_level_feature_by_default(tiny_bundle, tmp_path: Path) -> None:
    """A core imaged under other light (its gray-level features changed) gets the same predictions."""
    relit_table = tiny_bundle.core.table.copy()
    relit_table[list(GRAY_LEVEL_FEATURES)] *= 1.5
    relit = replace(tiny_bundle, core=replace(tiny_bundle.core, table=relit_table))
    for features, same in (("shape", True), ("all", False)):
        cfg = stage_config(CNNConfig, "ci", device="cpu", epochs=1, overrides={"metadata_features": features})
        lab, core = (_core_logits(b, cfg, tmp_path / f"{features}{i}") for i, b in enumerate((tiny_bundle, relit)))
        assert np.allclose(lab.to_numpy(), core.to_numpy(), atol=1e-6) == same, features
    used = json.loads((tmp_path / "shape0" / "preprocessing.json").read_text())["scaler"]["columns"]
    assert len(used) == len(FLOWCAM_FEATURES) - len(GRAY_LEVEL_FEATURES)
    assert not set(used) & set(GRAY_LEVEL_FEATURES)
    assert CNNConfig().metadata_features == "shape"


def test_an_unknown_feature_set_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="'colour'.*all, shape"):
        feature_set("colour")

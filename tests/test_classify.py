"""The notebooks' training workflows give the same model whatever the kernel did before (seeded initial weights)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from icecore_lib import autoencode, classify
from icecore_lib.config import AEConfig, CNNConfig, stage_config


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

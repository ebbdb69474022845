"""The notebooks' classifier workflows: the same model whatever the kernel did before (seeded initial weights),
the fused model's metadata input, and the core's composition."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from icecore_lib.config import AEConfig, CNNConfig, EmbedConfig, stage_config
from icecore_lib.quantify import composition_error
from icecore_lib.run.artifacts import Run
from icecore_lib.schema import FLOWCAM_FEATURES, GRAY_LEVEL_FEATURES, LABEL, feature_set
from icecore_lib.stages.cnn import compositions, sample_errors
from icecore_lib.stages.loco import train_without
from icecore_lib.train.autoencoder import fit_autoencoder
from icecore_lib.train.classifier import ClassifierOutputs, fit_torch_classifier


def _after_other_random_work(seed: int) -> None:
    """Leave torch's global generator where a kernel's earlier cells might (torch seeds itself at random)."""
    torch.manual_seed(seed)
    torch.rand(seed)


def test_a_classifier_trained_twice_is_the_same_model(tiny_bundle, tmp_path: Path) -> None:
    cfg = stage_config(CNNConfig, "ci", device="cpu", epochs=1)
    logits = []
    for state in (1, 2):
        _after_other_random_work(state)
        out = fit_torch_classifier(tiny_bundle, cfg, "mlp", tmp_path / f"mlp{state}", progress=False)
        logits.append(out.labelled_logits)
    pd.testing.assert_frame_equal(*logits)


def test_an_autoencoder_trained_twice_is_the_same_model(tiny_bundle, tmp_path: Path) -> None:
    cfg = stage_config(AEConfig, "ci", device="cpu", epochs=1)
    tables = []
    for state in (1, 2):
        _after_other_random_work(state)
        _, out = fit_autoencoder(tiny_bundle, cfg, 8, tmp_path / f"ae{state}", progress=False)
        tables.append(out.labelled)
    pd.testing.assert_frame_equal(*tables)


def _core_logits(bundle, cfg: CNNConfig, out_dir: Path) -> pd.DataFrame:
    """The core logits of a fused model trained on the bundle."""
    return fit_torch_classifier(bundle, cfg, "both", out_dir, progress=False).core_logits


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


def _outputs_of_a_calibrated_two_class_model(rng: np.random.Generator) -> tuple[ClassifierOutputs, pd.DataFrame, pd.Series]:
    """Lab (balanced train/val) and core (90% 'a') particles of a 1-D model: x ~ N(+-1, 1), logits (x, -x)."""
    lab_y = np.repeat(["a", "b"], 1000)
    core_y = np.repeat(["a", "b"], [1800, 200])

    def logits(y: np.ndarray, prefix: str) -> pd.DataFrame:
        x = rng.normal(np.where(y == "a", 1.0, -1.0), 1.0)
        return pd.DataFrame({"a": x, "b": -x}, index=[f"{prefix}{i}" for i in range(len(y))])

    lab, core = logits(lab_y, "lab"), logits(core_y, "core")
    table = pd.DataFrame({"label": lab_y, "split": np.tile(["train", "val"], 1000)}, index=lab.index)
    outputs = ClassifierOutputs("toy", ["a", "b"], lab, core)
    return outputs, table, pd.Series(core_y, index=core.index)


def test_prior_shift_corrections_beat_raw_counts_on_a_shifted_core() -> None:
    """Notebook 02's compositions: a classifier trained on 50/50 overcounts the rare class of a 90/10 core."""
    outputs, table, truth = _outputs_of_a_calibrated_two_class_model(np.random.default_rng(0))
    found = compositions(outputs, table, 1.0, n_boot=20, seed=0)
    assert list(found) == ["cc", "acc", "em"]
    errors = composition_error({m: c["fraction"] for m, c in found.items()}, truth)
    assert errors.loc["b", "cc_abs_error"] > 0.1  # 16% of the 1,800 'a' particles are counted as 'b'
    assert errors.loc["b", "acc_abs_error"] < 0.03 and errors.loc["b", "em_abs_error"] < 0.03
    for table_ in found.values():
        assert (table_["ci_low"] <= table_["fraction"]).all() and (table_["fraction"] <= table_["ci_high"]).all()


def test_each_core_sample_is_scored_against_its_own_truth() -> None:
    outputs, table, truth = _outputs_of_a_calibrated_two_class_model(np.random.default_rng(1))
    samples = pd.Series(np.repeat(["S1", "S2"], 1000), index=truth.index, name="sample_id")
    errors = sample_errors(outputs, table, 1.0, samples, truth)
    assert list(errors.index) == ["S1", "S2"] and list(errors.columns) == ["cc", "acc", "em", "n_particles"]
    assert errors["n_particles"].tolist() == [1000, 1000]
    assert (errors["cc"] > 0.05).all()  # both samples hold more 'a' than the lab's 50%
    assert errors[["acc", "em"]].lt(errors["cc"], axis=0).all().all()


def test_a_leave_one_class_out_fold_embeds_the_labelled_particles_only(tiny_bundle, tmp_path: Path) -> None:
    """Notebooks 04 and 05 measure a fold on the labelled splits: its models spend no pass on the core."""
    cfg = stage_config(EmbedConfig, "ci", device="cpu", epochs=1, overrides={"ae_latent": 8})
    holdout = sorted(set(tiny_bundle.train.table[LABEL]))[0]
    fold = train_without(tiny_bundle, cfg, holdout, Run(tmp_path), progress=False)
    assert fold.cnn.core_logits is None and fold.ae.core is None
    assert len(fold.cnn.labelled_embedding) == len(fold.ae.labelled) == len(tiny_bundle.train.table)
    assert holdout in set(tiny_bundle.train.table.loc[fold.cnn.labelled_logits.index, LABEL])

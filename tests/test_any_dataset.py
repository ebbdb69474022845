"""Every notebook runs on a lab's own dataset: its own classes, no core or truth, a core without sample_id/depth_m.

The lab datasets are cut from a synthetic one: the seven classes relabelled as three (Junk, Missed, Protist,
unbalanced 77/10/13 %: Missed has too few test particles to be held out), with (a) the labelled part only and no session column, (b) a core without sample_id and
depth_m, (c) a core with sample_id but no depth_m; none has a truth part. One end-to-end run covers (a); (b) and
(c) call the stage functions that read the core's columns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from icecore_lib.config import EmbedConfig, StageConfig, stage_config, synth_config
from icecore_lib.data.dataset import load_dataset
from icecore_lib.run.artifacts import Run
from icecore_lib.run.notebook import Skipped, Stage, check_holdout_classes, step
from icecore_lib.run.pipeline import run_notebooks
from icecore_lib.schema import DEPTH, LABEL, SAMPLE, SESSION, SPLIT
from icecore_lib.stages import cnn, discovery, overview
from icecore_lib.stages.discovery import choose_scores, flag_fraction_by_sample
from icecore_lib.stages.loco import plan_holdouts
from icecore_lib.synth.dataset import generate
from icecore_lib.train.classifier import ClassifierOutputs

LAB_CLASSES = ("Junk", "Missed", "Protist")
THREE = {"dust": "Junk", "cont": "Junk", "camp": "Junk", "grim": "Junk", "qsub": "Junk", "corylus": "Missed",
         "qrob": "Protist"}
SIZES = {"Junk": 205, "Missed": 27, "Protist": 35}  # 77 / 10 / 13 %
CORE_DROPS = {"a": None, "b": [SAMPLE, DEPTH], "c": [DEPTH]}  # None: no core part
# What each notebook of case (a) must say it skipped (a line each); the rest must have run.
SKIPPED_IN_A = {
    "00_data_overview": ["the core's samples: this dataset has no core part; add a core part",
                         "the lab -> core drift: this dataset has no core part"],
    "02_cnn_classifier": ["the shortcut audit: the labelled table has no session column",
                          "the core's predicted classes: this dataset has no core part",
                          "the composition figure: this dataset has no core part"],
    "04_umap_clustering": ["holding out Missed: it has 4 test particle(s), fewer than 5",
                           "the lab -> core feature shift: this dataset has no core part",
                           "the core on the maps: this dataset has no core part",
                           "the core's cluster table: this dataset has no core part; add a core part (unlabelled "
                           "particles) to map and cluster the core"],
    "05_outlier_gallery": ["the most novel core particles: this dataset has no core part",
                           "the unknowns per sample: this dataset has no core part",
                           "the explorer: this dataset has no core part"],
}


@pytest.fixture(scope="module")
def lab_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest with the datasets lab-a, lab-b and lab-c (see the module docstring)."""
    root = tmp_path_factory.mktemp("labs")
    generate(root / "synth", synth_config("ci", seed=0, n_train_per_class=60, n_core=60), progress=False)
    train = pd.read_csv(root / "synth" / "train.csv").assign(label=lambda t: t[LABEL].map(THREE))
    rng = np.random.default_rng(0)
    train = pd.concat([rows.iloc[np.sort(rng.choice(len(rows), SIZES[k], replace=False))]
                       for k, rows in train.groupby(LABEL)])
    datasets = {f"lab-{case}": _lab_dataset(root, case, train, drop) for case, drop in CORE_DROPS.items()}
    manifest = root / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"classes": {k: k for k in LAB_CLASSES}, "datasets": datasets}))
    return manifest


def _lab_dataset(root: Path, case: str, train: pd.DataFrame, core_drop: list[str] | None) -> dict:
    """Write one lab dataset's CSVs and zips under ``root/<case>``; its manifest entry."""
    folder = root / case
    folder.mkdir()
    (train.drop(columns=[SESSION]) if core_drop is None else train).to_csv(folder / "train.csv", index=False)
    shutil.copy(root / "synth" / "train.zip", folder / "train.zip")
    parts = {"train": {"csv": "train.csv", "images": "train.zip"}}
    if core_drop is not None:
        pd.read_csv(root / "synth" / "core.csv").drop(columns=core_drop).to_csv(folder / "core.csv", index=False)
        shutil.copy(root / "synth" / "core.zip", folder / "core.zip")
        parts["core"] = {"csv": "core.csv", "images": "core.zip"}
    return {"root": str(folder), "classes": {k: k for k in LAB_CLASSES}, "parts": parts}


def _stage(manifest: Path, case: str, tmp_path: Path) -> Stage:
    """A ci stage on lab dataset ``case``, its run directory under ``tmp_path``."""
    cfg = stage_config(StageConfig, "ci", dataset=f"lab-{case}", manifest=str(manifest),
                       cache_dir=str(manifest.parent / "cache"))
    return Stage("02_cnn", cfg, Run(tmp_path), load_dataset(cfg, progress=False, workers=1))


def _outputs(stage: Stage) -> ClassifierOutputs:
    """Made-up logits for every particle of the stage's dataset (the steps under test only read their shape)."""
    rng = np.random.default_rng(0)
    frames = [pd.DataFrame(rng.normal(size=(len(p.table), len(LAB_CLASSES))), index=p.table.index,
                           columns=list(LAB_CLASSES)) for p in (stage.bundle.train, stage.bundle.core)]
    return ClassifierOutputs("made-up", list(LAB_CLASSES), *frames)


def _texts(notebook: Path) -> str:
    """Every text an executed notebook shows: printed lines, markdown and plain displays, errors."""
    texts = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            texts += [out.get("text", ""), data.get("text/markdown", ""), data.get("text/plain", ""),
                      out.get("ename", "")]
    return "\n".join(texts)


@pytest.mark.slow
def test_every_notebook_runs_on_a_train_only_dataset_with_three_classes(lab_manifest: Path, tmp_path: Path) -> None:
    overrides = {"manifest": str(lab_manifest), "cache_dir": str(lab_manifest.parent / "cache"),
                 "variants": ["image"], "latent_dims": [32], "ae_latent": 32}
    run_dir, results = run_notebooks("ci", dataset="lab-a", runs_root=tmp_path, overrides=overrides, progress=False)
    assert len(results) == 6
    texts = {r.name: _texts(r.output) for r in results}
    for name, lines in SKIPPED_IN_A.items():
        for line in lines:
            assert f"Skipped {line}" in texts[name], f"{name} does not say: Skipped {line}"
    assert "Skipped" not in texts["03_autoencoder"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["classes"] == list(LAB_CLASSES) and "core" not in metrics["data"]
    assert {"bdt", "mlp"} <= set(metrics["01_metadata"]) and metrics["02_cnn"]["core_model"] == "image"
    assert [t["class"] for t in metrics["02_cnn"]["thresholds"]] == list(LAB_CLASSES)
    assert "session_probe" not in metrics["02_cnn"] and "core_clusters" not in metrics["04_umap"]
    held_out = {key.split("/")[0] for key in metrics["04_umap"]["loco"]}
    assert held_out == {"Protist"}  # every class but the largest (Junk) and the tiny one; folds run without a core
    assert set(metrics["05_discovery"]["loco_mean"]) and "unknown_threshold" in metrics["05_discovery"]


def test_a_holdout_class_the_dataset_lacks_is_refused_before_the_run_starts(lab_manifest: Path, tmp_path: Path) -> None:
    for holdout in (["corylus", "Missed"], "Protists"):
        with pytest.raises(ValueError, match="lab-a' has no class .* its classes are Junk, Missed, Protist"):
            run_notebooks("ci", dataset="lab-a", runs_root=tmp_path, progress=False,
                          overrides={"manifest": str(lab_manifest), "holdout_classes": holdout})
    assert not list(tmp_path.iterdir())
    check_holdout_classes({"holdout_classes": "Missed"}, LAB_CLASSES, "lab-a")
    assert stage_config(EmbedConfig, "ci", overrides={"holdout_classes": "Missed"}).holdout_classes == ("Missed",)


def _labelled(counts: dict[str, int]) -> pd.DataFrame:
    """A labelled table with ``counts`` particles per class, every seventh in the test split."""
    labels = [k for k, n in counts.items() for _ in range(n)]
    return pd.DataFrame({LABEL: labels, SPLIT: ["test" if i % 7 == 0 else "train" for i in range(len(labels))]})


def test_the_held_out_classes_come_from_the_data_unless_it_has_every_configured_one() -> None:
    table = _labelled({"Junk": 300, "Missed": 40, "Protist": 50, "Rare": 14})
    configured = plan_holdouts(table, ["Junk", "Missed", "Protist", "Rare"], ("Missed", "Junk"))
    assert configured.classes == ("Missed", "Junk") and not configured.skipped
    own = plan_holdouts(table, ["Junk", "Missed", "Protist", "Rare"], ("corylus", "Missed"))
    assert own.classes == ("Missed", "Protist") and "every class but the largest (Junk)" in own.rule
    [rare] = own.skipped
    assert rare.what == "holding out Rare" and "2 test particle(s), fewer than 5" in rare.why
    two = plan_holdouts(_labelled({"Junk": 90, "Protist": 40}), ["Junk", "Protist"], ("corylus",))
    assert not two.classes and "leaves fewer than 2 to train on" in two.skipped[0].why


def test_a_step_says_what_it_skipped_why_and_what_to_add(lab_manifest: Path, tmp_path: Path) -> None:
    stage = _stage(lab_manifest, "a", tmp_path)

    @step("the thing", core_columns=(SAMPLE,), to="do the thing")
    def thing(stage: Stage, upstream: object = None) -> str:
        return "done"

    assert thing(stage).message == ("Skipped the thing: this dataset has no core part; add a core part (unlabelled "
                                    "particles) to do the thing.")
    assert step("the next step")(lambda stage, x: x)(stage, thing(stage)).why == "this dataset has no core part"
    assert list(thing(stage)) == [thing(stage)]  # display(*step(...)) shows the one line


def test_a_core_without_sample_id_and_depth_skips_only_the_per_sample_steps(lab_manifest: Path, tmp_path: Path) -> None:
    stage = _stage(lab_manifest, "b", tmp_path)
    assert not isinstance(overview.drift_table(stage), Skipped)
    for skipped in (overview.core_samples(stage), cnn.sample_profile(stage, _outputs(stage), None),
                    discovery.flagged_by_sample(stage, pd.DataFrame(), None),
                    discovery.traffic_lights(stage, None, pd.DataFrame())):
        assert isinstance(skipped, Skipped) and skipped.why == "the core table has no sample_id column", skipped
        assert skipped.fix.startswith("add one (the sample or FlowCam run each particle comes from)")


def test_a_core_with_samples_but_no_depths_is_shown_per_sample(lab_manifest: Path, tmp_path: Path) -> None:
    stage = _stage(lab_manifest, "c", tmp_path)
    core = stage.bundle.core.table
    assert isinstance(overview.core_samples(stage), Figure)
    calibration = cnn.Calibration(1.0, 0.0, 0.0, {})
    per_sample = cnn.sample_profile(stage, _outputs(stage), calibration)
    assert list(per_sample.columns) == list(LAB_CLASSES) and list(per_sample.index) == sorted(core[SAMPLE].unique())
    assert np.allclose(per_sample.sum(axis=1), 1.0, atol=0.01)
    unknown = pd.Series(np.arange(len(core)) % 4 == 0, index=core.index)
    flagged = flag_fraction_by_sample(unknown, core)
    assert flagged["n"].sum() == len(core) and list(flagged.index.names) == [SAMPLE]


def test_without_folds_or_a_core_the_combined_rank_keeps_every_stable_score() -> None:
    shift = pd.Series({"knn_cnn": 0.01, "energy": 0.3, "recon": np.nan})
    choice = choose_scores(None, shift, margin=0.05, max_shift=0.05)
    assert set(choice.index[choice["chosen"]]) == {"knn_cnn", "recon"}  # NaN: no core to measure the shift on

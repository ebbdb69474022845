"""Train once, apply to every new core: the model card's checks, apply's exactness on the training run's own core."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from icecore_lib.cli import main
from icecore_lib.run.card import CardMismatch, check_fits
from icecore_lib.run.export import read_ecotaxa_tsv
from icecore_lib.run.pipeline import RunInterrupted, apply_run, run_notebooks
from icecore_lib.schema import FLOWCAM_FEATURES

CARD = {"id": "abc123", "training_run": "runs/trained", "classes": {"camp": "Campanian ash", "dust": "Dust"},
        "classifier": {"scaler_columns": ["Area (ABD)", "Circularity"]}, "novelty": {"meta_features": ["Length"]}}


def _core(columns: list[str]) -> pd.DataFrame:
    """A core table with some feature columns."""
    return pd.DataFrame({c: [1.0, 2.0] for c in columns}, index=pd.Index(["p0", "p1"], name="particle_id"))


def test_a_core_only_dataset_or_one_with_the_models_classes_fits():
    table = _core(list(FLOWCAM_FEATURES))
    check_fits(CARD, {"unlabelled": "unlabelled"}, table, "new-core")
    check_fits(CARD, {"camp": "Campanian ash", "dust": "Dust", "qrob": "Q. robur"}, table, "lab-set")


def test_a_dataset_with_other_classes_is_refused_naming_them():
    with pytest.raises(CardMismatch, match=r"declares the classes pollen, ash.*dust are not among them"):
        check_fits(CARD, {"pollen": "Pollen", "ash": "Ash", "camp": "Campanian ash"}, _core(list(FLOWCAM_FEATURES)),
                   "other-lab")


@pytest.mark.parametrize("missing", ["Circularity", "Length"])
def test_a_core_without_a_feature_the_models_read_is_refused_naming_it(missing):
    table = _core([c for c in FLOWCAM_FEATURES if c != missing])
    with pytest.raises(CardMismatch, match=rf"lacks the feature column\(s\) {missing}.*card abc123"):
        check_fits(CARD, {"unlabelled": "unlabelled"}, table, "new-core")


def test_apply_to_a_run_without_a_model_card_says_what_to_run(tmp_path, capsys):
    assert main(["-q", "apply", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model_card.json is missing" in err and "icecore run" in err


def _other_classes_core(root: Path, source: Path) -> Path:
    """A manifest whose dataset ``other`` is the ci core under a class vocabulary of another lab."""
    manifest = {"classes": {"pollen": "Pollen", "ash": "Ash"},
                "datasets": {"other": {"root": str(source), "parts": {"core": {"csv": "core.csv",
                                                                                  "images": "core.zip"}}}}}
    path = root / "other.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.mark.slow
def test_apply_reproduces_the_training_runs_core_predictions_and_refuses_a_mismatched_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ci key numbers were measured with one thread, as nbval runs
    trained, _ = run_notebooks("ci", only=["00", "02"], runs_root=tmp_path, name="trained", progress=False)
    card = json.loads((trained / "model_card.json").read_text())
    applied, results = apply_run(trained, runs_root=tmp_path, name="applied", progress=False)
    # The notebook's last cell asserts the identity itself; the tables are compared here too.
    ours = pd.read_parquet(applied / "tables" / "apply_core_predictions.parquet")
    theirs = pd.read_parquet(trained / "tables" / "02_core_predictions.parquet")
    pd.testing.assert_frame_equal(ours[theirs.columns], theirs, check_exact=True)
    metrics = json.loads((applied / "metrics.json").read_text())["apply"]
    assert metrics["model_card"] == card["id"] and metrics["particles"] == len(theirs) == 240
    assert metrics["drift"]["verdict"] in ("green", "amber", "red") and "flagged_unknown_fraction" not in metrics
    assert json.loads((applied / "training_model_card.json").read_text()) == card
    assert (tmp_path / "LATEST").read_text().strip() == "trained"  # notebooks 01-05 never continue an apply run
    assert "apply_to_core" in (applied / "report.html").read_text() and results[0].name == "apply_to_core"
    for run, name in ((trained, "trained"), (applied, "applied")):  # every run that classified a core exports it
        with zipfile.ZipFile(run / "exports" / f"ecotaxa_{name}.zip") as zf:
            tsv = read_ecotaxa_tsv(io.StringIO(zf.read(f"ecotaxa_{name}.tsv").decode()))
            assert len(tsv) == 240 and len(zf.namelist()) == 241
        depths = pd.read_parquet(run / "exports" / f"depth_table_{name}.parquet")
        assert len(depths) == 4 and depths["model_card"].eq(card["id"]).all() and "grim_per_ml_hi95" in depths

    source = Path(card["dataset"]["parts"]["core"]["images"]).parent
    manifest = _other_classes_core(tmp_path, source)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(CardMismatch, match="declares the classes ash, pollen"):
        apply_run(trained, dataset="other", runs_root=tmp_path, overrides={"manifest": str(manifest)}, progress=False)
    assert sorted(tmp_path.iterdir()) == before


def test_an_apply_run_that_stopped_says_to_apply_again_rather_than_resume(tmp_path, capsys):
    run_dir = tmp_path / "20261202-apply"
    (run_dir / "notebooks").mkdir(parents=True)
    params = {"parameters": {"train_run": "runs/trained"}, "notebooks": ["apply_to_core.ipynb"]}
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params))
    stop = RunInterrupted(run_dir, "apply_to_core", [], KeyboardInterrupt())
    assert "run the same `icecore apply` again" in str(stop) and "--resume" not in str(stop)
    assert main(["-q", "run", "--resume", str(run_dir)]) == 2
    assert "run `icecore apply runs/trained` again" in capsys.readouterr().err

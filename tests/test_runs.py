"""Run directories are never reused; writes are atomic; metrics merge per notebook."""

import json

import pandas as pd
import pytest

from icecore_lib import runs


def test_new_run_dir_never_reuses_an_existing_one(tmp_path):
    first = runs.new_run_dir(tmp_path, "demo")
    (first / "keep.txt").write_text("results")
    second = runs.new_run_dir(tmp_path, "demo")
    assert first != second and second.name == "demo-1"
    assert (first / "keep.txt").read_text() == "results"


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    runs.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_metrics_merge_sections_and_nan_becomes_null(tmp_path):
    runs.update_metrics(tmp_path, "bdt", {"accuracy": 0.9})
    runs.update_metrics(tmp_path, "cnn", {"accuracy": float("nan")})
    assert runs.read_metrics(tmp_path) == {"bdt": {"accuracy": 0.9}, "cnn": {"accuracy": None}}


def test_tables_by_suffix(tmp_path):
    df = pd.DataFrame({"x": [1, 2]}, index=pd.Index(["a", "b"], name="particle_id"))
    pd.testing.assert_frame_equal(pd.read_parquet(runs.atomic_write_table(df, tmp_path / "t.parquet")), df)
    with pytest.raises(ValueError, match="parquet or .csv"):
        runs.atomic_write_table(df, tmp_path / "t.xlsx")


def test_start_run_refuses_a_used_directory_and_continue_finds_the_latest(tmp_path, monkeypatch):
    monkeypatch.setenv("ICECORE_RUNS", str(tmp_path))
    run = runs.start_run()
    assert runs.continue_run() == run
    (run / "figures").mkdir()
    with pytest.raises(FileExistsError, match="never reused"):
        runs.start_run(run)


def test_continue_run_without_a_started_run_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("ICECORE_RUNS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="notebook 00"):
        runs.continue_run()


def test_environment_versions_name_the_key_packages():
    versions = runs.environment_versions()
    assert versions["python"] and versions["numpy"] and versions["torch"]


def test_atomic_writes_follow_the_umask_not_private_0600(tmp_path):
    import os
    import stat

    path = runs.atomic_write_text(tmp_path / "shared.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask

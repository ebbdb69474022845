"""Run directories are never reused; writes are atomic; metrics merge per notebook."""

import json

import pandas as pd
import pytest

from icecore_lib.files import atomic_path, atomic_write_json, atomic_write_table, atomic_write_text
from icecore_lib.run.artifacts import Run
from icecore_lib.run.rundir import continue_run, environment_versions, new_run_dir, start_run


def test_new_run_dir_never_reuses_an_existing_one(tmp_path):
    first = new_run_dir(tmp_path, "demo")
    (first / "keep.txt").write_text("results")
    second = new_run_dir(tmp_path, "demo")
    assert first != second and second.name == "demo-1"
    assert (first / "keep.txt").read_text() == "results"


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_metrics_merge_sections_and_nan_becomes_null(tmp_path):
    run = Run(tmp_path)
    run.update_metrics("bdt", {"accuracy": 0.9})
    run.update_metrics("cnn", {"accuracy": float("nan")})
    assert run.metrics() == {"bdt": {"accuracy": 0.9}, "cnn": {"accuracy": None}}


def test_tables_by_suffix(tmp_path):
    df = pd.DataFrame({"x": [1, 2]}, index=pd.Index(["a", "b"], name="particle_id"))
    pd.testing.assert_frame_equal(pd.read_parquet(atomic_write_table(df, tmp_path / "t.parquet")), df)
    with pytest.raises(ValueError, match="parquet or .csv"):
        atomic_write_table(df, tmp_path / "t.xlsx")


def test_start_run_refuses_a_used_directory_and_continue_finds_the_latest(tmp_path, monkeypatch):
    monkeypatch.setenv("ICECORE_RUNS", str(tmp_path))
    run = start_run()
    assert continue_run() == run
    run.figures.mkdir()
    with pytest.raises(FileExistsError, match="never reused"):
        start_run(run)


def test_continue_run_without_a_started_run_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("ICECORE_RUNS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="notebook 00"):
        continue_run()


def test_environment_versions_name_the_key_packages():
    versions = environment_versions()
    assert versions["python"] and versions["numpy"] and versions["torch"]


def test_atomic_writes_follow_the_umask_not_private_0600(tmp_path):
    import os
    import stat

    path = atomic_write_text(tmp_path / "shared.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask

"""The main job's mechanics: a fresh run directory with parameters, versions, metrics and executed notebooks."""

import json

import nbformat
import pytest
import yaml

from icecore_lib.run.pipeline import notebook_paths, run_notebooks


def test_a_setting_no_stage_has_is_refused_before_a_run_starts(tmp_path):
    with pytest.raises(ValueError, match="epoch'"):
        run_notebooks("ci", only=["00"], runs_root=tmp_path, overrides={"epoch": 3}, progress=False)
    assert not list(tmp_path.iterdir())


def test_notebooks_are_ordered_and_selectable():
    names = [p.stem for p in notebook_paths()]
    assert names == sorted(names) and names[0] == "00_data_overview"
    assert [p.stem for p in notebook_paths(only=["00"])] == ["00_data_overview"]


def test_run_writes_a_complete_fresh_run_directory(tmp_path):
    run_dir, results = run_notebooks("ci", only=["00"], runs_root=tmp_path, name="t", overrides={"bootstrap": 7},
                                     progress=False)
    again, _ = run_notebooks("ci", only=["00"], runs_root=tmp_path, name="t", progress=False)
    assert run_dir != again and run_dir.name == "t"
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert params["parameters"]["profile"] == "ci" and params["notebooks"] == ["00_data_overview.ipynb"]
    assert json.loads((run_dir / "environment.json").read_text())["torch"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["train"]["particles"] > 0 and "00_data_overview" in metrics["pipeline"]["notebook_seconds"]
    executed = nbformat.read(results[0].output, as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert (run_dir / "figures" / "00_synthetic_preview.png").stat().st_size > 10_000
    stage = yaml.safe_load((run_dir / "params" / "00_data_overview.yaml").read_text())
    assert stage["bootstrap"] == 7 and params["parameters"]["overrides"] == {"bootstrap": 7}
    assert "00_data_overview" in (run_dir / "report.html").read_text()

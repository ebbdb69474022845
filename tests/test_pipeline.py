"""The main job's mechanics: a fresh run directory with parameters, versions, metrics and executed notebooks."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
import yaml

from icecore_lib.cli import main
from icecore_lib.run.pipeline import RunInterrupted, notebook_paths, run_notebooks


def test_a_setting_no_stage_has_is_refused_before_a_run_starts(tmp_path):
    with pytest.raises(ValueError, match="epoch'"):
        run_notebooks("ci", only=["00"], runs_root=tmp_path, overrides={"epoch": 3}, progress=False)
    assert not list(tmp_path.iterdir())


def test_notebooks_are_ordered_and_selectable():
    names = [p.stem for p in notebook_paths()]
    assert names == sorted(names) and names[0] == "00_data_overview"
    assert [p.stem for p in notebook_paths(only=["00"])] == ["00_data_overview"]


@pytest.mark.slow
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


def _notebook(path, *code):
    """A tiny notebook with a papermill parameters cell and the given code cells."""
    params = nbformat.v4.new_code_cell('profile = ""\nrun_dir = ""\ndataset = ""\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, *map(nbformat.v4.new_code_cell, code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _two_notebooks(folder):
    """00 appends to a log each time it runs; 01 fails until a flag file exists beside the run."""
    folder.mkdir()
    _notebook(folder / "00_first.ipynb",
              "from pathlib import Path\nwith open(Path(run_dir) / 'runs.log', 'a') as log: log.write('00\\n')")
    _notebook(folder / "01_second.ipynb",
              "from pathlib import Path\nassert (Path(run_dir).parent / 'go').exists(), 'no flag yet'\n"
              "with open(Path(run_dir) / 'runs.log', 'a') as log: log.write('01\\n')")
    return folder


def test_a_run_that_stops_says_what_was_kept_and_resumes_from_the_unfinished_notebook(tmp_path, capsys):
    notebooks = _two_notebooks(tmp_path / "nbs")
    with pytest.raises(RunInterrupted) as stop:
        run_notebooks("ci", runs_root=tmp_path / "runs", name="r", notebooks_dir=notebooks, progress=False)
    run_dir = stop.value.run_dir
    assert stop.value.notebook == "01_second" and stop.value.finished == ["00_first"]
    assert f"continue with: icecore run --resume {run_dir}" in str(stop.value)
    (tmp_path / "runs" / "go").write_text("")
    assert main(["-q", "run", "--resume", str(run_dir)]) == 0
    assert (run_dir / "runs.log").read_text() == "00\n01\n"  # 00 was not run again
    assert (run_dir / "notebooks" / "01_second.interrupted.ipynb").is_file()
    assert set(json.loads((run_dir / "metrics.json").read_text())["pipeline"]["notebook_seconds"]) == {
        "00_first", "01_second"}
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_two_runs_started_at_once_each_write_only_into_their_own_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("ICECORE_RUNS", str(tmp_path / "runs"))
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "00_start.ipynb", "import time\nfrom icecore_lib.run.rundir import start_run\n"
              "start_run(run_dir)\ntime.sleep(1)")
    _notebook(folder / "01_continue.ipynb", "from icecore_lib.run.rundir import continue_run\n"
              "run = continue_run(run_dir)\n(run.path / 'continued.txt').write_text(str(run.path))")
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run_notebooks, "ci", runs_root=tmp_path / "runs", name=name, notebooks_dir=folder,
                               progress=False) for name in ("first", "second")]
        dirs = [f.result()[0] for f in futures]
    assert dirs[0] != dirs[1]
    for run_dir in dirs:  # whichever started last holds the latest-run pointer; each continued its own
        assert (run_dir / "continued.txt").read_text() == str(run_dir.resolve())


def test_the_command_line_prints_one_line_when_a_run_stops(tmp_path, capsys, monkeypatch):
    notebooks = _two_notebooks(tmp_path / "nbs")
    monkeypatch.setattr("icecore_lib.run.pipeline.NOTEBOOKS_DIR", notebooks)
    monkeypatch.setattr("icecore_lib.cli.run_notebooks", lambda *a, **k: run_notebooks(*a, **k, notebooks_dir=notebooks))
    assert main(["-q", "run", "--profile", "ci", "--runs-root", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("icecore run: 01_second failed") and "--resume" in err[0]


def _icecore(*args: str) -> list[str]:
    """The console command as a subprocess argument list (this interpreter's environment)."""
    return [sys.executable, "-m", "icecore_lib", *args]


@pytest.mark.slow
def test_a_run_killed_in_the_middle_of_training_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = ["-q", "run", "--profile", "ci", "--only", "00", "02", "--runs-root", str(tmp_path),
              "-p", "epochs=6", "-p", "patience=6", "-p", "variants=[image]"]
    assert main([*common, "--name", "whole"]) == 0
    run = subprocess.Popen(_icecore(*common, "--name", "killed"), stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    checkpoint = tmp_path / "killed" / "models" / "cnn_image" / "last.safetensors"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before its first checkpoint: nothing was interrupted"
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole process group
    _, err = run.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("icecore run:")]
    assert run.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0]
    assert f"icecore run --resume {tmp_path / 'killed'}" in lines[0]
    assert main(["-q", "run", "--resume", str(tmp_path / "killed")]) == 0
    whole, killed = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("whole", "killed"))
    assert {k: v for k, v in killed.items() if k != "pipeline"} == {k: v for k, v in whole.items() if k != "pipeline"}

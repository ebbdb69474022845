"""The run report: one self-contained page a user can e-mail (notebooks without code, images inline, no CDN)."""

import base64
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from helpers import png_bytes
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from icecore_lib.cli import main
from icecore_lib.files import atomic_write_json, atomic_write_table, atomic_write_yaml
from icecore_lib.run.artifacts import Run
from icecore_lib.run.report import metrics_tables

CODE = {"00_first": "hidden_source_alpha = 40 + 2\nprint(hidden_source_alpha)", "01_second": "hidden_source_beta = 7"}


def _png(value: int) -> str:
    """A tiny gray PNG as base64 text, different for each value."""
    return base64.b64encode(png_bytes(np.full((6, 9), value, dtype=np.uint8))).decode("ascii")


def _notebook(stem: str) -> nbformat.NotebookNode:
    """A notebook with a markdown cell and a code cell whose outputs are a text line and a PNG image."""
    outputs = [
        new_output("stream", name="stdout", text=f"text output of {stem}\n"),
        new_output("display_data", data={"image/png": _png(len(stem)), "text/plain": "<Figure>"}),
    ]
    return new_notebook(cells=[
        new_markdown_cell(f"# {stem}\n\nMarkdown prose of {stem}."),
        new_code_cell(CODE[stem], outputs=outputs, execution_count=1),
    ])


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run: two executed notebooks (a third planned but not run), metrics, parameters, a table, a figure."""
    run = tmp_path / "20260101-120000-ci"
    for stem in CODE:
        (run / "notebooks").mkdir(parents=True, exist_ok=True)
        nbformat.write(_notebook(stem), run / "notebooks" / f"{stem}.ipynb")
    atomic_write_yaml(run / "params.yaml", {
        "parameters": {"profile": "ci", "run_dir": str(run), "dataset": "", "epochs": 17},
        "notebooks": ["00_first.ipynb", "01_second.ipynb", "02_third.ipynb"],
    })
    atomic_write_json(run / "environment.json", {"python": "3.11.7", "torch": "9.9.9-test"})
    atomic_write_json(run / "metrics.json", {
        "data": {"dataset": "synthetic-ci"},
        "01_second": {"bdt": {"accuracy": 0.875, "macro_f1": 0.5, "params": {"eta": 0.3}},
                      "mlp": {"accuracy": 0.625, "macro_f1": 0.25},
                      "calibration": {"temperature": 1.5},
                      "thresholds": [{"class": "camp", "threshold": 0.9}, {"class": "dust", "threshold": None}]},
        "pipeline": {"notebook_seconds": {"00_first": 3.5, "01_second": 75.0}, "total_seconds": 78.5},
    })
    table = pd.DataFrame({"score": [0.1, 0.9]}, index=pd.Index(["a.png", "b.png"], name="particle_id"))
    atomic_write_table(table, run / "tables" / "x.parquet")
    return run


def test_report_is_one_self_contained_page_without_code(run_dir):
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "Markdown prose of 00_first" in page and "Markdown prose of 01_second" in page
    assert "text output of 00_first" in page
    assert not any(source in page for source in ("hidden_source_alpha", "hidden_source_beta"))
    assert f"data:image/png;base64,{_png(len('01_second'))}" in page
    assert page.count(_png(len("00_first"))) == 1, "an inline figure is embedded once"
    assert all(src.startswith("data:") for src in re.findall(r"\bsrc\s*=\s*['\"]([^'\"]*)", page))
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*['\"]?\s*(https?:)?//", page, re.I)
    assert 'href="tables/x.parquet"' in page and 'href="notebooks/00_first.ipynb"' in page
    assert "<td>parameters.epochs</td><td>17</td>" in page and "<td>torch</td><td>9.9.9-test</td>" in page
    assert "synthetic-ci" in page and "1 min 15 s" in page and "not run" in page


def test_with_code_keeps_code_cells_and_links_follow_the_page(run_dir, tmp_path):
    out = tmp_path / "shared" / "page.html"
    assert main(["-q", "report", str(run_dir), "--with-code", "--out", str(out)]) == 0
    page = out.read_text()
    assert "hidden_source_alpha" in page and "hidden_source_beta" in page
    assert f'href="../{run_dir.name}/tables/x.parquet"' in page
    assert not (run_dir / "report.html").exists()


def test_metrics_become_readable_tables(run_dir):
    tables = metrics_tables(Run(run_dir).metrics())
    models = tables["01_second / bdt, mlp"]
    assert models.loc["accuracy", "bdt"] == 0.875 and models.loc["macro_f1", "mlp"] == 0.25
    assert models.loc["params.eta", "bdt"] == 0.3 and pd.isna(models.loc["params.eta", "mlp"])
    assert tables["01_second"].loc["calibration.temperature", "value"] == 1.5
    assert list(tables["01_second / thresholds"]["class"]) == ["camp", "dust"]
    assert "pipeline" not in tables, "timings are in the header, not repeated as metrics"


def test_a_folder_that_is_not_a_run_directory_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not an icecore run directory" in err
    assert not (tmp_path / "report.html").exists()

"""The run directory's artefacts: named once, one writer and one reader, a missing one names the step to run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from icecore_lib.run.artifacts import ARTIFACTS, MissingArtifact, Run
from icecore_lib.run.notebook import Skipped

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _table(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"x": range(n)}, index=pd.Index([f"p{i}.png" for i in range(n)], name="particle_id"))


def test_a_table_written_by_name_reads_back_by_name(tmp_path: Path) -> None:
    run = Run(tmp_path)
    path = run.write("core_predictions", _table())
    assert path == tmp_path / "tables" / "02_core_predictions.parquet"
    pd.testing.assert_frame_equal(run.read("core_predictions"), _table())


def test_a_missing_artefact_names_the_notebook_that_writes_it(tmp_path: Path) -> None:
    run = Run(tmp_path)
    with pytest.raises(MissingArtifact, match="run notebook 04_umap_clustering first"):
        run.read("core_clusters")
    with pytest.raises(MissingArtifact, match="run notebook 02_cnn_classifier first"):
        run.read_parts("outputs", model="both")
    with pytest.raises(MissingArtifact, match="run notebook 03_autoencoder first"):
        run.read_parts("outputs", model="ae64")
    with pytest.raises(MissingArtifact, match="run notebook 04_umap_clustering first"):
        run.read_parts("outputs", model="loco_dust_cnn")
    with pytest.raises(MissingArtifact, match="no '02_cnn' section: run notebook 02_cnn_classifier first"):
        run.section("02_cnn")


def test_per_part_tables_keep_the_core_optional(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.write_parts("outputs", {"labelled": _table(), "core": None}, model="mlp")
    parts = run.read_parts("outputs", model="mlp")
    assert parts["core"] is None and len(parts["labelled"]) == 3
    with pytest.raises(ValueError, match="parts must be among"):
        run.write_parts("outputs", {"test": _table()}, model="mlp")


def test_names_and_fields_are_checked(tmp_path: Path) -> None:
    run = Run(tmp_path)
    with pytest.raises(KeyError, match="no artefact 'tabels'"):
        run.file("tabels")
    with pytest.raises(TypeError, match=r"needs \['model', 'part'\]"):
        run.file("outputs")


def test_metrics_sections_are_replaced_one_at_a_time(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.update_metrics("02_cnn", {"core_model": "both"})
    run.update_metrics("03_autoencoder", {"x": float("nan")})
    assert run.section("02_cnn") == {"core_model": "both"}
    assert json.loads((tmp_path / "metrics.json").read_text())["03_autoencoder"] == {"x": None}


def test_skipped_steps_show_as_one_markdown_line() -> None:
    skipped = Skipped("the lab -> core drift", "this dataset has no core part")
    assert skipped._repr_markdown_() == "*Skipped the lab -> core drift: this dataset has no core part.*"


def test_notebooks_never_spell_an_artefact_path() -> None:
    paths = [a.path.split("{")[0] for a in ARTIFACTS.values()]
    for notebook in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        spelled = [p for p in paths if p and p in code] + [s for s in (".parquet", "tables/", "metrics.json") if s in code]
        assert not spelled, f"{notebook.name} spells {spelled}: ask the run for the artefact by name"

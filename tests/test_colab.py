"""Colab staging: data copied once to local disk, atomically, and refreshed when the source changes."""

import os

import pytest

from icecore_lib.run.colab import prepare, stage_files


def test_stage_files_copies_once_and_refreshes_a_changed_source(tmp_path):
    drive, local = tmp_path / "drive", tmp_path / "local"
    drive.mkdir()
    (drive / "train.zip").write_bytes(b"zip bytes")
    [copy] = stage_files([drive / "train.zip"], local, progress=False)
    assert copy.read_bytes() == b"zip bytes"
    os.utime(copy, (1, 1))
    os.utime(drive / "train.zip", (1, 1))
    stage_files([drive / "train.zip"], local, progress=False)
    assert copy.stat().st_mtime == 1, "an intact copy is not copied again"
    (drive / "train.zip").write_bytes(b"new zip bytes")
    stage_files([drive / "train.zip"], local, progress=False)
    assert copy.read_bytes() == b"new zip bytes"
    assert sorted(p.name for p in local.iterdir()) == ["train.zip"], "no temporary files left behind"


def test_missing_source_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.zip"):
        stage_files([tmp_path / "nothing.zip"], tmp_path / "local", progress=False)


def test_prepare_outside_colab_only_reports_the_device(capsys, monkeypatch):
    monkeypatch.delenv("ICECORE_DATA", raising=False)
    assert prepare("/content/drive/MyDrive/data") is None
    assert "GPU" in capsys.readouterr().out and "ICECORE_DATA" not in os.environ

"""The icecore command as a user types it: check names every problem, pack reuses, errors exit non-zero."""

import zipfile

import pandas as pd
from helpers import write_instrument_dataset

from icecore_lib.cli import main


def _check(manifest, tmp_path, *extra):
    return main(["-q", "check", "lab", "--manifest", str(manifest), "--cache-dir", str(tmp_path / "cache"), *extra])


def test_check_passes_clean_data(tmp_path, capsys):
    manifest = write_instrument_dataset(tmp_path / "lab")
    assert _check(manifest, tmp_path) == 0
    assert "lab / train" in capsys.readouterr().out


def test_check_names_the_row_without_an_image_and_fails_strictly(tmp_path, capsys):
    manifest = write_instrument_dataset(tmp_path / "lab")
    csv = tmp_path / "lab" / "camp.csv"
    table = pd.read_csv(csv)
    table.loc[len(table)] = table.iloc[0].to_dict() | {"imgpaths": "camp/missing_007.png"}
    table.to_csv(csv, index=False)
    assert _check(manifest, tmp_path) == 1
    out = capsys.readouterr().out
    assert "camp/missing_007.png" in out and "camp.csv" in out
    assert _check(manifest, tmp_path, "--skip-bad") == 0


def test_check_rejects_a_hostile_zip_member(tmp_path, capsys):
    manifest = write_instrument_dataset(tmp_path / "lab")
    with zipfile.ZipFile(tmp_path / "lab" / "images.zip", "a") as zf:
        zf.writestr("../../evil.png", b"not an image")
    assert _check(manifest, tmp_path) != 0
    assert "refusing unsafe name '../../evil.png'" in capsys.readouterr().err
    assert not (tmp_path.parent / "evil.png").exists()


def test_pack_twice_reuses_the_cache(tmp_path, capsys):
    manifest = write_instrument_dataset(tmp_path / "lab", n_per_class=4)
    args = ["-q", "pack", "lab", "--manifest", str(manifest), "--cache-dir", str(tmp_path / "cache"), "--image-size", "32"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert "train: 8 particles, 32 px" in first and first.splitlines()[0] == capsys.readouterr().out.splitlines()[0]


def test_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    manifest = write_instrument_dataset(tmp_path / "lab")
    assert main(["check", "nope", "--manifest", str(manifest)]) == 2
    assert "nope" in capsys.readouterr().err

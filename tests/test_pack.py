"""The packed cache: written once, reused without decoding, aligned with its table; splits; load_dataset."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_IMAGE_SIZE, crop, png_bytes

import icecore_lib.data.pack as pack_mod
import icecore_lib.data.splits as splits_mod
import icecore_lib.images.decode as decode_mod
from icecore_lib.data.manifest import load_manifest
from icecore_lib.data.pack import pack_part
from icecore_lib.data.resolve import resolve_part
from icecore_lib.data.splits import assign_split, packed_split
from icecore_lib.data.validate import DataError
from icecore_lib.images.decode import decode_gray
from icecore_lib.schema import CLASSES, LABEL, ORIG_HEIGHT, ORIG_WIDTH, SESSION, SPLIT

MakeData = Callable[..., Path]
SIZE = 16


def _pack(manifest: Path, cache: Path, **options: object) -> pack_mod.Packed:
    """Pack the hand-made dataset's train part quietly in this process."""
    part = resolve_part(load_manifest(manifest), "lab", "train")
    return pack_part(part, SIZE, cache, progress=False, workers=1, **options)


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images pack asks to decode."""
    calls: list[int] = []
    real = pack_mod.decode_many

    def counting(source: object, names: list[str], **kwargs: object) -> object:
        calls.append(len(names))
        return real(source, names, **kwargs)

    monkeypatch.setattr(pack_mod, "decode_many", counting)
    return calls


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_pack_decodes_once_and_is_reused(instrument_dataset: MakeData, tmp_path: Path, decode_calls: list[int],
                                         layout: str) -> None:
    manifest = instrument_dataset(layout=layout)
    first = _pack(manifest, tmp_path / "cache")
    second = _pack(manifest, tmp_path / "cache")
    assert decode_calls == [6]
    assert second.key == first.key and second.path == first.path
    assert [p.name for p in (tmp_path / "cache" / "packed").iterdir() if p.suffix != ".lock"] == [first.key]
    np.testing.assert_array_equal(first.images, second.images)
    pd.testing.assert_frame_equal(first.table, second.table)


def test_an_interrupted_pack_resumes_with_the_chunks_it_had_not_finished(
        instrument_dataset: MakeData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = instrument_dataset()
    reference = _pack(manifest, tmp_path / "reference")
    real_decode, real_chunk = pack_mod.decode_many, decode_mod._decode_chunk
    monkeypatch.setattr(pack_mod, "decode_many", lambda *a, **kw: real_decode(*a, **{**kw, "chunk_size": 2}))
    decoded: list[int] = []

    def interrupted_at_row_4(task: tuple[int, list[str]]) -> object:
        if task[0] >= 4:
            raise KeyboardInterrupt
        decoded.append(task[0])
        return real_chunk(task)

    monkeypatch.setattr(decode_mod, "_decode_chunk", interrupted_at_row_4)
    with pytest.raises(KeyboardInterrupt):
        _pack(manifest, tmp_path / "cache")
    partial = next((tmp_path / "cache" / "packed").glob(".*.partial"))
    assert sorted(p.name for p in (partial / "journal").iterdir()) == ["000000000000.json", "000000000002.json"]

    def counting(task: tuple[int, list[str]]) -> object:
        decoded.append(task[0])
        return real_chunk(task)

    monkeypatch.setattr(decode_mod, "_decode_chunk", counting)
    resumed = _pack(manifest, tmp_path / "cache")
    assert decoded == [0, 2, 4]  # the first run's two chunks, then only the missing one
    assert not partial.exists()
    np.testing.assert_array_equal(resumed.images, reference.images)
    pd.testing.assert_frame_equal(resumed.table, reference.table)


def test_packed_rows_are_the_decoded_crops_of_their_table_rows(instrument_dataset: MakeData, tmp_path: Path) -> None:
    manifest = instrument_dataset()
    packed = _pack(manifest, tmp_path / "cache")
    assert isinstance(packed.images, np.memmap) and not packed.images.flags.writeable
    assert packed.images.shape == (6, SIZE, SIZE) and packed.images.dtype == np.uint8
    with zipfile.ZipFile(manifest.parent / "images.zip") as zf:
        for i, pid in enumerate(packed.table.index):
            data = zf.read(pid)
            np.testing.assert_array_equal(packed.images[i], decode_gray(data, pid, size=SIZE))
            assert (packed.table[ORIG_HEIGHT].iloc[i], packed.table[ORIG_WIDTH].iloc[i]) == decode_gray(data, pid).shape
    assert packed.table.loc["dust/dust_001.png", LABEL] == "dust"


def test_an_edited_csv_gives_a_new_key(instrument_dataset: MakeData, tmp_path: Path, decode_calls: list[int]) -> None:
    manifest = instrument_dataset()
    first = _pack(manifest, tmp_path / "cache")
    table = pd.read_csv(manifest.parent / "camp.csv")
    table.loc[0, "Width"] += 1
    table.to_csv(manifest.parent / "camp.csv", index=False)
    second = _pack(manifest, tmp_path / "cache")
    assert second.key != first.key and decode_calls == [6, 6]
    assert second.table.loc["camp/camp_000.png", "Width"] == first.table.loc["camp/camp_000.png", "Width"] + 1


def test_skip_bad_drops_an_undecodable_image_and_keeps_rows_aligned(
    instrument_dataset: MakeData, tmp_path: Path
) -> None:
    manifest = instrument_dataset()
    rows = pd.read_csv(manifest.parent / "camp.csv")
    pd.concat([rows, rows.tail(1).assign(imgpaths="camp/cut.png")]).to_csv(manifest.parent / "camp.csv", index=False)
    with zipfile.ZipFile(manifest.parent / "images.zip", "a") as zf:
        zf.writestr("camp/cut.png", png_bytes(crop(4))[:70])
    with pytest.raises(DataError, match="undecodable.*camp/cut.png"):
        _pack(manifest, tmp_path / "cache")
    # nothing is published; the decoded work stays in the hidden partial folder for a --skip-bad rerun
    assert not [p for p in (tmp_path / "cache" / "packed").iterdir() if not p.name.startswith(".")]
    with pytest.warns(UserWarning, match="1 particle"):
        packed = _pack(manifest, tmp_path / "cache", skip_bad=True)
    assert "camp/cut.png" not in packed.table.index and len(packed.images) == len(packed.table) == 6
    with zipfile.ZipFile(manifest.parent / "images.zip") as zf:
        for i in (2, 3):
            pid = packed.table.index[i]
            np.testing.assert_array_equal(packed.images[i], decode_gray(zf.read(pid), pid, size=SIZE))
    with pytest.raises(DataError, match="camp/cut.png"):
        _pack(manifest, tmp_path / "cache")


def _labelled(n_per_class: dict[str, int], groups_per_class: int = 1) -> pd.DataFrame:
    """A table of labels (and sessions: ``groups_per_class`` per class, plus some shared ones)."""
    labels = [label for label, n in n_per_class.items() for _ in range(n)]
    sessions = [f"s{i % (groups_per_class * 3)}" if label != "rare" else "r0" for i, label in enumerate(labels)]
    return pd.DataFrame({LABEL: labels, SESSION: sessions}, index=[f"p{i}" for i in range(len(labels))])


def test_split_is_stratified_and_reproducible() -> None:
    table = _labelled({"camp": 40, "dust": 100, "qrob": 20})
    split = assign_split(table, seed=3, val_fraction=0.15, test_fraction=0.25)
    counts = pd.crosstab(table[LABEL], split)
    assert counts.loc["dust"].to_dict() == {"test": 25, "train": 60, "val": 15}
    assert counts.loc["qrob"].to_dict() == {"test": 5, "train": 12, "val": 3}
    assert split.equals(assign_split(table, seed=3, val_fraction=0.15, test_fraction=0.25))
    assert not split.equals(assign_split(table, seed=4, val_fraction=0.15, test_fraction=0.25))
    assert split.index.equals(table.index) and split.name == SPLIT


def test_grouped_split_keeps_each_group_in_one_split_with_every_class_in_each() -> None:
    table = _labelled({"camp": 60, "dust": 90, "qrob": 30}, groups_per_class=3)
    split = assign_split(table, seed=0, val_fraction=0.2, test_fraction=0.2, group_by=SESSION)
    assert (pd.crosstab(table[SESSION], split) > 0).sum(axis=1).eq(1).all()
    assert (pd.crosstab(table[LABEL], split) > 0).all().all()


def test_grouped_split_says_which_classes_have_too_few_groups() -> None:
    table = _labelled({"camp": 30, "rare": 10}, groups_per_class=2)
    with pytest.raises(ValueError, match=r"too few session groups: rare \(1\); need 3"):
        assign_split(table, seed=0, val_fraction=0.2, test_fraction=0.2, group_by=SESSION)


def test_splits_are_saved_by_parameters_and_reloaded(instrument_dataset: MakeData, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    packed = _pack(instrument_dataset(n_per_class=10), tmp_path / "cache")
    first = packed_split(packed, seed=1, val_fraction=0.2, test_fraction=0.2)
    other = packed_split(packed, seed=2, val_fraction=0.2, test_fraction=0.2)
    assert len(list((packed.path / "splits").glob("*.parquet"))) == 2
    monkeypatch.setattr(splits_mod, "assign_split", lambda *a, **k: pytest.fail("split recomputed"))
    again = packed_split(packed, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert again.equals(first) and not first.equals(other)


def test_load_dataset_packs_train_and_core_with_split_truth_and_names(tiny_bundle: object) -> None:
    bundle = tiny_bundle
    train, core = bundle.train, bundle.core
    assert train.images.shape[1:] == core.images.shape[1:] == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert set(train.table[SPLIT]) == {"train", "val", "test"}
    assert set(train.table[LABEL]) == set(CLASSES) and bundle.classes == CLASSES
    assert {"sample_id", "depth_m", ORIG_HEIGHT} <= set(core.table.columns)
    assert bundle.truth.index.name == "particle_id" and set(bundle.truth.index) == set(core.table.index)
    assert set(bundle.parts()) == {"train", "core"}


def test_the_saved_report_names_tiny_crops_and_colour_crops_made_gray(
    instrument_dataset: MakeData, tmp_path: Path
) -> None:
    manifest = instrument_dataset()
    rgb = np.stack([crop(7), crop(7) // 2, np.full_like(crop(7), 200)], axis=-1)
    extra = {"camp/dot.png": png_bytes(np.full((1, 1), 40, dtype=np.uint8)), "camp/rgb.png": png_bytes(rgb)}
    rows = pd.read_csv(manifest.parent / "camp.csv")
    pd.concat([rows, *(rows.tail(1).assign(imgpaths=name) for name in extra)]).to_csv(
        manifest.parent / "camp.csv", index=False)
    with zipfile.ZipFile(manifest.parent / "images.zip", "a") as zf:
        for name, data in extra.items():
            zf.writestr(name, data)
    packed = _pack(manifest, tmp_path / "cache")
    assert len(packed.table) == 8 and packed.table.loc["camp/dot.png", [ORIG_HEIGHT, ORIG_WIDTH]].tolist() == [1, 1]
    row = list(packed.table.index).index("camp/rgb.png")
    np.testing.assert_array_equal(packed.images[row], decode_gray(extra["camp/rgb.png"], "rgb", size=SIZE))
    saved = (packed.path / "report.json").read_text()
    assert packed.report.ok and '"kind": "tiny_crop"' in saved and "camp/dot.png" in saved
    assert "1x1 px" in saved and "1 of 8 crop(s) are colour images, converted to gray with ITU-R 601 luma" in saved

"""The torch data path: feature scaling, image stats, the two batch sources, augmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from icecore_lib.models.scaler import FeatureScaler
from icecore_lib.nn.augment import augment
from icecore_lib.nn.batches import DeviceBatches, LoaderBatches, choose_batches, make_loader
from icecore_lib.schema import FLOWCAM_FEATURES, PARTICLE_ID, SPLIT


def _table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A feature table: heavy-tailed positive columns, one signed column, a split column."""
    rng = np.random.default_rng(seed)
    data = {c: rng.lognormal(3, 1.5, n) for c in FLOWCAM_FEATURES}
    data["Feret Angle Max"] = rng.normal(0, 50, n)
    table = pd.DataFrame(data, index=pd.Index([f"p{i}.png" for i in range(n)], name=PARTICLE_ID))
    table[SPLIT] = np.resize(["train", "train", "val", "test"], n)
    return table


def _packed(tmp_path, n: int = 23, size: int = 8) -> np.memmap:
    """A read-only uint8 memmap like the packed cache, each image filled with its row number."""
    path = tmp_path / "images.u8"
    writer = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, size, size))
    writer[:] = np.arange(n, dtype=np.uint8)[:, None, None]
    writer.flush()
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, size, size))


def test_scaler_fits_on_train_rows_only():
    table = _table()
    scaler = FeatureScaler().fit(table)
    shifted = table.copy()
    held_out = shifted[SPLIT] != "train"
    shifted.loc[held_out, list(FLOWCAM_FEATURES)] *= 1000.0
    refit = FeatureScaler().fit(shifted)
    np.testing.assert_array_equal(scaler.mean_, refit.mean_)
    np.testing.assert_array_equal(scaler.std_, refit.std_)
    train = scaler.transform(table[~held_out])
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-5)


def test_scaler_logs_skewed_positive_columns_and_round_trips():
    table = _table()
    scaler = FeatureScaler().fit(table)
    log = dict(zip(scaler.columns, scaler.log_, strict=True))
    assert log["Area (ABD)"] and not log["Feret Angle Max"]
    X = scaler.transform(table)
    assert X.dtype == np.float32 and X.shape == (len(table), len(FLOWCAM_FEATURES))
    assert np.abs(X).max() < 6  # lognormal tails tamed by log1p
    again = FeatureScaler.from_state_dict(scaler.state_dict()).transform(table)
    np.testing.assert_array_equal(X, again)


def test_scaler_errors_name_column_and_particle():
    table = _table()
    table.loc["p5.png", "Perimeter"] = np.nan
    with pytest.raises(ValueError, match=r"'Perimeter'.*'p5.png'"):
        FeatureScaler().fit(table)
    with pytest.raises(KeyError, match="Width"):
        FeatureScaler().fit(table.drop(columns="Width"))


@pytest.mark.parametrize("source", ["loader", "device"])
def test_batches_cover_each_index_once_per_epoch(tmp_path, source):
    images = _packed(tmp_path)
    indices = np.array([0, 2, 3, 5, 8, 9, 10, 13, 14, 17, 19, 22])
    labels, features = np.arange(23) % 3, np.arange(23, dtype=np.float32)[:, None] * [1.0, -1.0]
    build = make_loader if source == "loader" else DeviceBatches
    batches = build(images, indices, labels, features, batch_size=5, shuffle=True, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        batches.set_epoch(epoch)
        seen = list(batches)
        assert len(seen) == len(batches) == 3
        order = torch.cat([b["index"] for b in seen]).numpy()
        assert sorted(order) == sorted(indices)
        for b in seen:
            assert b["image"].dtype == torch.float32 and b["image"].shape[1:] == (1, 8, 8)
            np.testing.assert_array_equal(b["image"][:, 0, 0, 0].numpy(), b["index"].numpy())
            np.testing.assert_array_equal(b["label"].numpy(), labels[b["index"].numpy()])
            np.testing.assert_array_equal(b["features"].numpy(), features[b["index"].numpy()])
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(orders[0], orders[2])


def test_both_sources_give_the_same_epoch_and_keep_order_unshuffled(tmp_path):
    images = _packed(tmp_path)
    indices = np.array([9, 4, 17, 1, 12, 6, 20])
    for shuffle in (True, False):
        sets = [
            [set(b["index"].tolist()) for b in build(images, indices, batch_size=3, shuffle=shuffle, seed=1)]
            for build in (make_loader, DeviceBatches)
        ]
        assert sets[0] == sets[1]
    unshuffled = make_loader(images, indices, batch_size=3, shuffle=False)
    np.testing.assert_array_equal(torch.cat([b["index"] for b in unshuffled]).numpy(), indices)


def test_choose_batches_on_cpu_and_bad_input(tmp_path):
    images = _packed(tmp_path)
    assert isinstance(choose_batches(images, np.arange(5), batch_size=2, shuffle=False), LoaderBatches)
    features_only = choose_batches(None, np.arange(5), features=np.zeros((23, 2)), batch_size=2, shuffle=False)
    assert isinstance(features_only, DeviceBatches)
    with pytest.raises(IndexError, match="23 rows"):
        make_loader(images, np.array([0, 23]), batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match="one row per particle"):
        make_loader(images, np.arange(3), labels=np.zeros(5), batch_size=2, shuffle=False)


def _dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a square image."""
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.flip(-1) for r in rotations]


def test_augment_flips_and_rotations_only_move_pixels():
    x = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 255
    out = augment(x, torch.Generator().manual_seed(1), jitter=0.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for original, moved in zip(x, out, strict=True):
        matches = [i for i, t in enumerate(_dihedral(original)) if torch.equal(t, moved)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 8  # every flip/rotation occurs in 64 draws


def test_augment_is_seeded_and_jitter_is_mild():
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    unmoved = augment(x.float(), torch.Generator().manual_seed(5), flips=False, rotations=False, jitter=0.1)
    ratio = unmoved.mean(dim=(1, 2, 3)) / x.float().mean(dim=(1, 2, 3))
    assert not torch.equal(unmoved, x.float())
    assert ((ratio > 0.85) & (ratio < 1.15)).all()


def test_defocus_and_noise_augmentation_soften_edges_and_stay_seeded():
    x = torch.full((16, 1, 32, 32), 110.0)
    x[:, :, 8:24, 8:24] = 30.0
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = augment(x, gen(), flips=False, rotations=False, jitter=0.0)
    blurred = augment(x, gen(), flips=False, rotations=False, jitter=0.0, blur=2.0)
    noisy = augment(x, gen(), flips=False, rotations=False, jitter=0.0, noise=5.0)
    torch.testing.assert_close(plain, x)
    edge = lambda t: (t[..., 1:] - t[..., :-1]).abs().amax(dim=(1, 2, 3))  # noqa: E731
    assert (edge(blurred) < 0.9 * edge(x)).float().mean() >= 0.5, "most samples draw a visible defocus"
    torch.testing.assert_close(blurred.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1.0, rtol=0)
    assert 0 < (noisy - x).std() < 5.0
    torch.testing.assert_close(noisy, augment(x, gen(), flips=False, rotations=False, jitter=0.0, noise=5.0))

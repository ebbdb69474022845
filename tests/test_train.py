"""The one training loop: resume equals an uninterrupted run, early stopping, learning, inference, figures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file
from torch import nn

from icecore_lib.config import TrainConfig
from icecore_lib.models.autoencoder import ConvAutoencoder
from icecore_lib.models.mlp import MetadataMLP
from icecore_lib.nn.batches import DeviceBatches, make_loader
from icecore_lib.nn.checkpoint import load_weights
from icecore_lib.nn.device import seed_everything
from icecore_lib.nn.loop import BEST_FILE, LAST_FILE, fit, model_inputs, per_sample_loss, predict, read_history
from icecore_lib.plots.training import learning_curves, reconstruction_grid

CFG = TrainConfig(device="cpu", seed=1, epochs=4, batch_size=16, patience=0, lr=1e-2)


def _toy(n: int, size: int = 32, n_features: int = 4, seed: int = 0):
    """Two classes: a bright or a dark centred square on a noisy background; features shifted by class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.normal(100, 10, (n, size, size))
    q = size // 4
    images[:, q:-q, q:-q] += np.where(labels == 1, 60, -60)[:, None, None]
    features = rng.normal(0, 1, (n, n_features)) + np.where(labels == 1, 1.5, -1.5)[:, None]
    return np.clip(images, 0, 255).astype(np.uint8), labels, features.astype(np.float32)


class _InterruptAt:
    """Batches that die when epoch ``at`` starts, as a lost Colab session would."""

    def __init__(self, batches, at: int):
        self.batches, self.at, self.epoch = batches, at, 0
        self.device, self.shuffle = batches.device, batches.shuffle

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        if self.epoch == self.at:
            raise KeyboardInterrupt
        return iter(self.batches)


class _Linear(nn.Module):
    """The smallest model following the batch convention."""

    input_keys = ("features",)

    def __init__(self, n_features: int = 4):
        super().__init__()
        self.fc = nn.Linear(n_features, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class _TinyCNN(nn.Module):
    """Images and features, BatchNorm and dropout: every kind of state a resume must restore, at test speed."""

    input_keys = ("image", "features")

    def __init__(self, n_features: int = 4):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4 + n_features, 2))

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv((image - 100) / 30), features], dim=1))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    images, labels, features = _toy(24)
    train_idx, val_idx = np.arange(16), np.arange(16, 24)

    def batches(wrap_at: int | None = None):
        train = make_loader(images, train_idx, labels, features, batch_size=8, shuffle=True, seed=CFG.seed)
        val = DeviceBatches(images, val_idx, labels, features, batch_size=8, shuffle=False, progress=False)
        return (train if wrap_at is None else _InterruptAt(train, wrap_at)), val

    def model(seed: int) -> _TinyCNN:
        seed_everything(seed)
        return _TinyCNN()

    whole = model(0)
    fit(whole, *batches(), cfg=CFG, out_dir=tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(model(0), *batches(wrap_at=3), cfg=CFG, out_dir=tmp_path / "split", progress=False)
    assert len(read_history(tmp_path / "split")) == 2
    resumed = model(123)  # different initial weights: everything must come from the checkpoint
    history = fit(resumed, *batches(), cfg=CFG, out_dir=tmp_path / "split", progress=False)

    assert list(history.frame.index) == [1, 2, 3, 4]
    a, b = load_file(tmp_path / "whole" / LAST_FILE), load_file(tmp_path / "split" / LAST_FILE)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    metrics = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    np.testing.assert_array_equal(read_history(tmp_path / "whole")[metrics], history.frame[metrics])


def test_early_stopping_stops_and_a_finished_run_is_not_redone(tmp_path):
    _, labels, features = _toy(64)
    train = DeviceBatches(None, np.arange(48), labels, features, batch_size=16, shuffle=True)
    val = DeviceBatches(None, np.arange(48, 64), labels, features, batch_size=16, shuffle=False)
    cfg = dataclasses.replace(CFG, epochs=10, patience=2, lr=0.0)  # frozen weights: no epoch improves on the first
    history = fit(_Linear(), train, val, cfg=cfg, out_dir=tmp_path, progress=False)
    assert history.stopped_early and history.best_epoch == 1
    assert list(history.frame.index) == [1, 2, 3]
    again = fit(_Linear(), train, val, cfg=cfg, out_dir=tmp_path, progress=False)
    assert list(again.frame.index) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"other settings.*'lr'"):
        fit(_Linear(), train, val, cfg=dataclasses.replace(cfg, lr=1e-3), out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mlp_learns_separable_toy_set_and_predict_follows_indices(tmp_path, precision):
    _, labels, features = _toy(300, n_features=6)
    val_idx = np.arange(200, 300)[::-1]  # unsorted on purpose: outputs must follow this order
    train = DeviceBatches(None, np.arange(200), labels, features, batch_size=32, shuffle=True, seed=1)
    val = DeviceBatches(None, val_idx, labels, features, batch_size=32, shuffle=False)
    seed_everything(0)
    model = MetadataMLP(n_features=6, n_classes=2)
    cfg = dataclasses.replace(CFG, epochs=6, precision=precision)
    history = fit(model, train, val, cfg=cfg, out_dir=tmp_path, progress=False)
    assert history.frame["val_acc"].max() > 0.95

    logits, embeddings = predict(model, val, progress=False, precision=precision)
    assert logits.shape == (100, 2) and embeddings.shape == (100, 40)
    accuracy = (logits.argmax(axis=1) == labels[val_idx]).mean()
    assert accuracy == pytest.approx(history.frame.loc[history.best_epoch, "val_acc"])
    losses = per_sample_loss(model, val, progress=False, precision=precision)
    assert losses.mean() == pytest.approx(history.frame.loc[history.best_epoch, "val_loss"], rel=1e-5)

    fresh = MetadataMLP(n_features=6, n_classes=2)
    assert load_weights(fresh, tmp_path / BEST_FILE)["epoch"] == history.best_epoch
    np.testing.assert_array_equal(predict(fresh, val, progress=False, precision=precision)[0], logits)
    with pytest.raises(ValueError, match="shuffle=False"):
        predict(model, train, progress=False)


def test_autoencoder_trains_with_the_same_loop(tmp_path):
    images, _, _ = _toy(64)
    train = DeviceBatches(images, np.arange(48), batch_size=16, shuffle=True, progress=False)
    val = DeviceBatches(images, np.arange(48, 64), batch_size=16, shuffle=False, progress=False)
    seed_everything(0)
    model = ConvAutoencoder(image_size=32, latent_dim=8)
    cfg = dataclasses.replace(CFG, epochs=3, lr=3e-3)
    history = fit(model, train, val, cfg=cfg, out_dir=tmp_path, task="reconstruct", progress=False)
    assert set(history.frame.columns) >= {"train_loss", "val_loss"} and "val_acc" not in history.frame
    assert history.frame["train_loss"].iloc[-1] < history.frame["train_loss"].iloc[0]
    scores, latent = predict(model, val, progress=False)
    assert scores.shape == (16,) and latent.shape == (16, 8)
    np.testing.assert_allclose(per_sample_loss(model, val, progress=False), scores, rtol=1e-6)
    with pytest.raises(TypeError, match="reconstruction_loss"):
        fit(MetadataMLP(4, 2), train, val, cfg=CFG, out_dir=tmp_path / "x", task="reconstruct", progress=False)


def test_missing_batch_key_is_named():
    with pytest.raises(KeyError, match=r"reads batch key\(s\) \['features'\]"):
        model_inputs(_Linear(), {"image": torch.zeros(1), "index": torch.zeros(1)})


def test_training_figures(tmp_path):
    frame = pd.DataFrame(
        {
            "train_loss": [1.0, 0.6, 0.5],
            "val_loss": [0.9, 0.7, 0.8],
            "train_acc": [0.5, 0.7, 0.8],
            "val_acc": [0.6, 0.7, 0.7],
        },
        index=pd.Index([1, 2, 3], name="epoch"),
    )
    fig = learning_curves(frame, path=tmp_path / "curves.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "best epoch 2" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert (tmp_path / "curves.png").stat().st_size > 0
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 16, 16)).astype(np.uint8)
    grid = reconstruction_grid(images, images[:, 0] * 0.5, n=4, path=tmp_path / "grid.png")
    assert len(grid.axes) == 8
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_grid(images, images[:3])


def test_learning_curves_shade_half_size_epochs_and_never_call_one_best():
    frame = pd.DataFrame({"train_loss": [1.0, 0.5, 0.6, 0.55], "val_loss": [0.2, 0.3, 0.9, 0.7],
                          "image_scale": [0.5, 0.5, 1.0, 1.0]}, index=pd.Index([1, 2, 3, 4], name="epoch"))
    labels = [t.get_text() for t in learning_curves(frame).axes[0].get_legend().get_texts()]
    assert "best epoch 4" in labels and "images at half size" in labels

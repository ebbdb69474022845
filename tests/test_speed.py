"""What makes training and mapping fast on a CPU gives the same results: bf16 where native, matmul weight gradients,
half-size epochs, stratified shares for the leave-one-class-out folds, numba's cache for umap-learn, the reference
numbers' check."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from icecore_lib.config import CNNConfig, TrainConfig, stage_config
from icecore_lib.data.splits import stratified_subset
from icecore_lib.models.cnn import ParticleCNN
from icecore_lib.nn.batches import DeviceBatches
from icecore_lib.nn.conv import MatmulGradConv2d, matmul_grad_pays, use_matmul_grads
from icecore_lib.nn.device import autocast_dtype
from icecore_lib.nn.loop import at_low_res, fit
from icecore_lib.run.artifacts import Run
from icecore_lib.run.reference import REFERENCE, KeyNumberOutOfRange, check_key_numbers, is_reference_run, value_of


@pytest.mark.parametrize(("in_channels", "size", "stride"), [(1, 32, 2), (64, 2, 1), (32, 4, 2), (16, 9, 1)])
def test_matmul_weight_gradient_equals_the_plain_convolutions(in_channels: int, size: int, stride: int) -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(in_channels, 24, 3, stride=stride, padding=1, bias=True)
    fast = use_matmul_grads(nn.Sequential(nn.Conv2d(in_channels, 24, 3, stride=stride, padding=1, bias=True)))[0]
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(5, in_channels, size, size)
    for conv in (plain, fast):
        xi = x.clone().requires_grad_(True)
        conv(xi).square().sum().backward()
        conv.input_grad = xi.grad
    assert isinstance(fast, MatmulGradConv2d)
    for a, b in [(fast.weight.grad, plain.weight.grad), (fast.bias.grad, plain.bias.grad),
                 (fast.input_grad, plain.input_grad)]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_matmul_path_is_taken_only_where_it_was_measured_to_pay() -> None:
    stem, tiny, wide = nn.Conv2d(1, 64, 7, 2, 3), nn.Conv2d(512, 512, 3, 1, 1), nn.Conv2d(64, 64, 3, 1, 1)
    assert matmul_grad_pays(torch.zeros(2, 1, 64, 64), stem)
    assert matmul_grad_pays(torch.zeros(2, 512, 2, 2), tiny)
    assert not matmul_grad_pays(torch.zeros(2, 64, 16, 16), wide)
    with torch.no_grad():
        assert not matmul_grad_pays(torch.zeros(2, 512, 2, 2), tiny)


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_is_bf16_where_the_hardware_has_it(native: bool, monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cuda, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cuda, "auto") is torch.bfloat16
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if native else None)
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype(cpu, "fp16")


def test_the_cnn_learns_under_cpu_bf16_autocast_on_onednns_own_gradients(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = rng.normal(100, 10, (64, 32, 32))
    images[:, 8:-8, 8:-8] += np.where(labels == 1, 60, -60)[:, None, None]
    images = np.clip(images, 0, 255).astype(np.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not matmul_grad_pays(torch.zeros(2, 512, 2, 2, requires_grad=True), nn.Conv2d(512, 512, 3, 1, 1))
    cfg = TrainConfig(device="cpu", epochs=6, batch_size=16, patience=0, lr=3e-3, augment=False, precision="bf16")
    train = DeviceBatches(images, np.arange(48), labels, batch_size=16, shuffle=True, seed=0, device="cpu")
    val = DeviceBatches(images, np.arange(48, 64), labels, batch_size=16, shuffle=False, seed=0, device="cpu")
    torch.manual_seed(0)
    history = fit(ParticleCNN(2), train, val, cfg=cfg, out_dir=tmp_path, progress=False)
    assert np.isfinite(history.frame["train_loss"]).all()
    assert history.frame["val_acc"].max() == 1.0


def test_the_cnn_keeps_torchvisions_state_dict_keys() -> None:
    model = ParticleCNN(3)
    assert "trunk.conv1.weight" in model.state_dict() and "trunk.layer4.1.conv2.weight" in model.state_dict()
    assert isinstance(model.trunk.layer4[1].conv2, MatmulGradConv2d)


def test_progressive_resizing_halves_the_first_epochs_of_a_resizable_model_only() -> None:
    cfg = TrainConfig(epochs=10, low_res_fraction=0.5)
    cnn = ParticleCNN(3)
    assert [at_low_res(cnn, cfg, e, 64) for e in range(1, 11)] == [True] * 5 + [False] * 5
    assert not at_low_res(cnn, cfg, 1, 32)  # 16 px is below what the CNN takes
    assert not at_low_res(nn.Linear(2, 2), cfg, 1, 64)  # the autoencoder has no min_image_size: fixed size
    assert not at_low_res(cnn, dataclasses.replace(cfg, low_res_fraction=0.0), 1, 64)


def test_a_stratified_subset_keeps_every_class_in_proportion() -> None:
    rows = np.arange(100, 400)
    labels = np.repeat(["a", "b", "c"], [200, 90, 10])
    subset = stratified_subset(rows, labels, 0.5, seed=3)
    picked = labels[np.searchsorted(rows, subset)]
    assert {k: int((picked == k).sum()) for k in "abc"} == {"a": 100, "b": 45, "c": 5}
    assert np.array_equal(subset, np.sort(subset)) and np.array_equal(subset, stratified_subset(rows, labels, 0.5, 3))
    assert np.array_equal(stratified_subset(rows, labels, 1.0, 0), rows)
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(rows, labels, 0.0, 0)


def test_umap_kernels_use_numbas_cache_in_the_icecore_cache(monkeypatch, tmp_path) -> None:
    from icecore_lib.numba_cache import numba_cache_dir, umap_module

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("ICECORE_CACHE", str(tmp_path))
    assert numba_cache_dir() == tmp_path / "numba"
    umap = umap_module()
    from umap import umap_ as kernels

    assert umap.UMAP and kernels.smooth_knn_dist._cache.cache_path  # no longer numba's NullCache


def _run_with(tmp_path, metrics: dict) -> Run:
    """A run directory holding only a metrics.json."""
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    return Run(tmp_path)


def test_key_numbers_out_of_range_fail_naming_number_value_and_range(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(REFERENCE, "demo", {"02_cnn": {
        "02_cnn:image.accuracy - 01_metadata:bdt.accuracy": (0.03, 1.0), "02_cnn:calibration.ece_after": (0, 0.03)}})
    cfg = stage_config(CNNConfig, "demo")
    good = {"01_metadata": {"bdt": {"accuracy": 0.89}}, "02_cnn": {"image": {"accuracy": 0.95},
                                                                   "calibration": {"ece_after": 0.01}}}
    assert check_key_numbers(_run_with(tmp_path, good), "02_cnn", cfg)["ok"].all()
    bad = json.loads(json.dumps(good))
    bad["02_cnn"]["image"]["accuracy"] = 0.90
    with pytest.raises(KeyNumberOutOfRange, match=r"image.accuracy - 01_metadata:bdt.accuracy = 0.0100, expected 0.03"):
        check_key_numbers(_run_with(tmp_path, bad), "02_cnn", cfg)
    with pytest.raises(KeyNumberOutOfRange, match="no longer reports"):
        value_of(good, "02_cnn:image.balanced_accuracy")


def test_key_numbers_apply_only_to_the_profiles_own_data_and_settings() -> None:
    assert is_reference_run(stage_config(CNNConfig, "ci", run_dir="runs/x", device="cpu"))
    assert not is_reference_run(stage_config(CNNConfig, "ci", epochs=5))
    assert not is_reference_run(stage_config(CNNConfig, "ci", dataset="my-lab"))


def test_half_size_epochs_train_and_validate_small_and_are_never_the_kept_model(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (24, 64, 64), dtype=np.uint8)
    labels = np.arange(24) % 2
    cfg = TrainConfig(device="cpu", epochs=4, batch_size=8, patience=0, low_res_fraction=0.5, augment=False)
    seen: list[int] = []
    model = ParticleCNN(2)
    model.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].shape[-1]))
    train = DeviceBatches(images, np.arange(16), labels, batch_size=8, shuffle=True, seed=0, device="cpu")
    val = DeviceBatches(images, np.arange(16, 24), labels, batch_size=8, shuffle=False, seed=0, device="cpu")
    history = fit(model, train, val, cfg=cfg, out_dir=tmp_path, progress=False)
    assert history.frame["image_scale"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert history.best_epoch >= 3
    assert seen == [32] * 6 + [64] * 6  # per epoch: two training batches, one validation batch

"""Several processes: shards that interleave into the single-process batches, two gloo ranks training exactly
like one process, the helpers outside a process group, the torchrun entry point, and the untouched single path."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from icecore_lib.config import TrainConfig
from icecore_lib.nn.batches import DeviceBatches, LoaderBatches, Shard, make_loader
from icecore_lib.nn.device import seed_everything
from icecore_lib.nn.distributed import (
    all_reduce_sum,
    barrier,
    cleanup,
    init_from_env,
    is_main,
    main_first,
    world,
    wrap_ddp,
)
from icecore_lib.nn.loop import LAST_FILE, fit, read_history
from icecore_lib.stages.torchrun import main

# fp32: the hand-written reference loop below computes in fp32 (precision "auto" is bf16 on a native-bf16 CPU).
CFG = TrainConfig(device="cpu", seed=3, epochs=2, batch_size=16, patience=0, lr=1e-2, augment=False, precision="fp32")
N_TRAIN, N_VAL = 56, 13  # 56 = 3 full batches of 16 and one of 8; 13 val rows split 7 + 6 over two ranks
SPAWN_LIMIT_S = 120  # a hang guard only: the two ranks take seconds


def _toy_features(n: int = N_TRAIN + N_VAL, n_features: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Two classes whose features are shifted apart."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    features = rng.normal(0, 1, (n, n_features)) + np.where(labels == 1, 1.0, -1.0)[:, None]
    return labels, features.astype(np.float32)


class _MLP(nn.Module):
    """A classifier without BatchNorm or dropout: two ranks of half batches are then one process exactly."""

    input_keys = ("features",)

    def __init__(self, n_features: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class _FeatureAE(nn.Module):
    """The 'reconstruct' task on features: its loss is a method, not forward, yet DDP must synchronise it."""

    input_keys = ("features",)

    def __init__(self, n_features: int = 4) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(n_features, 2), nn.Linear(2, n_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.tanh(self.encoder(features)))

    def reconstruction_loss(self, features: torch.Tensor) -> torch.Tensor:
        return (self(features) - features).square().mean(dim=1)


class _Recorded:
    """A batch source noting the rows of every batch it yields, also once fit has sharded it."""

    def __init__(self, batches: DeviceBatches | LoaderBatches, seen: list[list[int]]) -> None:
        self.batches, self.seen = batches, seen
        self.device, self.shuffle = batches.device, batches.shuffle

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def shard(self, rank: int, world: int, *, even: bool = False) -> _Recorded:
        return _Recorded(self.batches.shard(rank, world, even=even), self.seen)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            self.seen.append(sorted(batch["index"].tolist()))
            yield batch


def _train_both(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, list[list[int]]]]:
    """Train the classifier (DataLoader path) and the autoencoder (device path); their weights and batch rows."""
    labels, features = _toy_features()
    train_rows, val_rows = np.arange(N_TRAIN), np.arange(N_TRAIN, N_TRAIN + N_VAL)
    seen: dict[str, list[list[int]]] = {"mlp": [], "ae": []}
    torch.manual_seed(0)
    mlp, ae = _MLP(), _FeatureAE()
    train = make_loader(None, train_rows, labels, features, batch_size=16, shuffle=True, seed=CFG.seed)
    val = DeviceBatches(None, val_rows, labels, features, batch_size=16, shuffle=False)
    fit(mlp, _Recorded(train, seen["mlp"]), val, cfg=CFG, out_dir=out_dir / "mlp", progress=False)
    train = DeviceBatches(None, train_rows, features=features, batch_size=16, shuffle=True, seed=CFG.seed)
    val = DeviceBatches(None, val_rows, features=features, batch_size=16, shuffle=False)
    fit(ae, _Recorded(train, seen["ae"]), val, cfg=CFG, out_dir=out_dir / "ae", task="reconstruct", progress=False)
    weights = {f"mlp.{k}": v for k, v in mlp.state_dict().items()} | {f"ae.{k}": v for k, v in ae.state_dict().items()}
    return weights, seen


def _rank_main(rank: int, port: int, out: Path) -> None:
    """One of two gloo ranks, set up as torchrun would; writes its final weights and the rows it trained on."""
    os.environ |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_num_threads(1)
    assert init_from_env() == (rank, 2)
    try:
        weights, seen = _train_both(out / "ddp")
    finally:
        cleanup()
    save_file({k: v.contiguous() for k, v in weights.items()}, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


def _free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_two_ranks(out: Path) -> None:
    """Run ``_rank_main`` in two processes; a failing rank fails the test, and no process outlives it."""
    context = mp.spawn(_rank_main, args=(_free_port(), out), nprocs=2, join=False)
    deadline = time.monotonic() + SPAWN_LIMIT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the two ranks did not finish within {SPAWN_LIMIT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join()


@pytest.mark.slow
def test_two_gloo_ranks_train_exactly_like_one_process(tmp_path):
    _spawn_two_ranks(tmp_path)
    single, single_seen = _train_both(tmp_path / "single")
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    for key in single:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"ranks disagree on {key}"
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    for model in ("mlp", "ae"):
        assert len(seen[0][model]) == len(seen[1][model]) == len(single_seen[model]) == 2 * 4
        for step, rows in enumerate(single_seen[model]):
            r0, r1 = seen[0][model][step], seen[1][model][step]
            assert len(r0) == len(r1) == len(rows) // 2 and not set(r0) & set(r1)
            assert sorted(r0 + r1) == rows
        columns = ["train_loss", "val_loss", "lr"] + (["train_acc", "val_acc"] if model == "mlp" else [])
        ddp, one = read_history(tmp_path / "ddp" / model), read_history(tmp_path / "single" / model)
        np.testing.assert_allclose(ddp[columns], one[columns], rtol=1e-5)


@pytest.mark.parametrize("source", ["device", "loader"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_interleave_into_the_unsharded_batches(source, shuffle):
    def batches(n: int, world: int = 1):
        make = DeviceBatches if source == "device" else make_loader
        whole = make(None, np.arange(100, 100 + n), features=np.zeros((200, 1)), batch_size=6, shuffle=shuffle,
                     seed=5)
        whole.set_epoch(2)
        return whole, [whole.shard(r, world, even=shuffle) for r in range(world)]

    def rows(source_) -> list[list[int]]:
        return [sorted(b["index"].tolist()) for b in source_]

    whole, (default,) = batches(24)
    assert rows(default) == rows(whole) and len(default) == len(whole)
    whole, shards = batches(24, world=3)
    per_rank = [rows(s) for s in shards]
    assert [len(s) for s in shards] == [len(r) for r in per_rank] == [len(whole)] * 3
    for k, expected in enumerate(rows(whole)):
        assert sorted(row for r in per_rank for row in r[k]) == expected
    _, shards = batches(23, world=2)
    seen = [row for s in shards for b in rows(s) for row in b]
    if shuffle:  # training shards drop the epoch's odd sample so both ranks run as many batches
        assert len(shards[0]) == len(shards[1]) and len(seen) == len(set(seen)) == 22
    else:  # evaluation shards keep every sample once
        assert sorted(seen) == list(range(100, 123))


def test_shard_rejects_what_ranks_cannot_split():
    labels, features = _toy_features()
    batches = DeviceBatches(None, np.arange(10), labels, features, batch_size=6, shuffle=True)
    with pytest.raises(ValueError, match="batch_size 6 must be a positive multiple of the world size 4"):
        batches.shard(0, 4)
    with pytest.raises(ValueError, match=r"rank must be in 0\.\.1"):
        Shard(rank=2, world=2)


def test_helpers_are_no_ops_outside_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() == (0, 1) and world() == (0, 1) and is_main()
    barrier()
    values = torch.tensor([1.5, 2.0])
    assert all_reduce_sum(values) is values
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, torch.device("cpu")) is model
    ran = []
    with main_first():
        ran.append("block")
    assert ran == ["block"]
    cleanup()


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "2"}, "RANK is not set: start the processes with torchrun"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer, got 'two'"),
])
def test_bad_torchrun_environment_is_named(monkeypatch, env, message):
    monkeypatch.delenv("RANK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=message):
        init_from_env()


def test_fit_without_process_group_is_the_plain_training_loop(tmp_path):
    """One process: fit is AdamW + one-cycle over the seeded batches, nothing else (bit for bit)."""
    labels, features = _toy_features()
    model_cfg = dataclasses.replace(CFG, epochs=3)

    def model() -> nn.Module:
        torch.manual_seed(1)
        net = _MLP()
        net.net.insert(2, nn.Dropout(0.3))  # dropout draws from the global RNG: fit must not reseed it
        return net

    def batches() -> DeviceBatches:
        return DeviceBatches(None, np.arange(N_TRAIN), labels, features, batch_size=16, shuffle=True, seed=3)

    fit(model(), batches(), None, cfg=model_cfg, out_dir=tmp_path, progress=False)

    reference, source = model(), batches()
    seed_everything(model_cfg.seed)
    decay = [p for p in reference.parameters() if p.ndim > 1]
    no_decay = [p for p in reference.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": model_cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=model_cfg.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=model_cfg.lr,
                                                   total_steps=model_cfg.epochs * len(source))
    reference.train()
    for epoch in range(1, model_cfg.epochs + 1):
        source.set_epoch(epoch)
        for batch in source:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(reference(batch["features"]), batch["label"], reduction="none").mean().backward()
            optimizer.step()
            schedule.step()
    saved = load_file(tmp_path / LAST_FILE)
    for key, value in reference.state_dict().items():
        assert torch.equal(saved[f"model.{key}"], value), key


@pytest.mark.parametrize(("stage", "params", "folder", "table"), [
    ("cnn", ["variants=[mlp]"], "cnn_mlp", "mlp_labelled.parquet"),
    ("autoencoder", ["latent_dims=[4]"], "ae4", "ae4_core.parquet"),
])
def test_entry_point_trains_a_notebook_stage_into_the_run(tiny_stage, tiny_bundle, tmp_path, capsys, stage, params,
                                                          folder, table):
    run = tmp_path / "run"
    run.mkdir()
    overrides = [f"manifest={tiny_stage.manifest}", f"cache_dir={tiny_stage.cache_dir}",
                 f"image_size={tiny_stage.image_size}", "epochs=1", *params]
    argv = [stage, "--profile", "ci", "--run-dir", str(run), "--dataset", tiny_stage.dataset, "-q"]
    assert main(argv + [a for p in overrides for a in ("-p", p)]) == 0
    assert (run / "models" / folder / "best.safetensors").is_file()
    assert (run / "tables" / table).is_file() and (run / "params" / f"{stage}_torchrun.yaml").is_file()
    assert f"trained on 1 process(es): {run / 'models' / folder}" in capsys.readouterr().out

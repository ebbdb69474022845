"""The one training loop for every torch model (metadata MLP, ResNet18 +/- metadata, autoencoder).

Convention: a batch is a dict of device tensors (``icecore_lib.nn.batches``); a model names the keys it
reads in ``input_keys`` and is called as ``model(*(batch[k] for k in model.input_keys))``. Task
``"classify"`` trains logits against ``batch["label"]`` with cross-entropy; task ``"reconstruct"``
trains ``model.reconstruction_loss`` (the autoencoder).

``fit`` writes into ``out_dir``: ``history.csv`` (one row per epoch), ``best.safetensors`` (the model
at the lowest monitored loss: validation loss, or training loss without validation batches) and
``last.safetensors`` (model, optimizer, scheduler, loop and RNG states after the latest epoch). Run it
again on the same ``out_dir`` after an interruption and it resumes from ``last.safetensors`` with the
same result as an uninterrupted run (bit for bit on CPU): each epoch's shuffling and augmentation are
drawn from ``(seed, epoch)``, and the global RNG that dropout uses is restored.

Under ``torchrun`` (a process group of several ranks, see ``icecore_lib.nn.distributed``) the same call
trains with DistributedDataParallel: each rank takes its shard of every epoch, ``cfg.batch_size`` is the
global batch, and rank 0 alone writes the files above.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..files import atomic_write_table
from .augment import augment
from .batches import Batch, BatchSource
from .checkpoint import load_training_state, load_weights, save_training_state, save_weights
from .device import autocast_dtype, resolve_device, seed_everything
from .distributed import all_reduce_sum, barrier, world, wrap_ddp

Task = Literal["classify", "reconstruct"]
TASKS = ("classify", "reconstruct")
SCHEDULES = ("onecycle", "cosine")
HISTORY_FILE = "history.csv"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
_HISTORY_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s", "image_scale")
# Offsets that keep the seeds of an epoch's augmentation, of its dropout under DDP, and of each rank apart.
_AUGMENT_STREAM = 7919
_DROPOUT_STREAM = 104_729
_RANK_STREAM = 1_000_003


@dataclass(frozen=True)
class History:
    """What fit returns: the per-epoch metrics, the best epoch, whether early stopping ended training."""

    frame: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    best_path: Path


@dataclass
class _LoopState:
    """The loop's own state, saved in every checkpoint."""

    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    rows: list[dict[str, float]] = field(default_factory=list)

    def record(self, row: dict[str, float], patience: int) -> bool:
        """Add an epoch's metrics; update early stopping; True when this epoch is the best so far. A half-size
        epoch of progressive resizing is recorded but never the best: the model is kept and used at full size."""
        self.epoch = int(row["epoch"])
        self.rows.append(row)
        if row.get("image_scale", 1.0) < 1:
            return False
        loss = row.get("val_loss", row["train_loss"])
        improved = loss < self.best_loss
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, self.epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped_early = patience > 0 and self.bad_epochs >= patience
        return improved

    def frame(self) -> pd.DataFrame:
        """The history as a DataFrame indexed by epoch, metrics first, then learning rate and timing."""
        frame = pd.DataFrame(self.rows).astype({"epoch": int}).set_index("epoch")
        return frame[[c for c in _HISTORY_COLUMNS if c in frame.columns]]


class _BatchLoss(nn.Module):
    """A batch's per-sample losses and correct count as one module call, so that DDP, which synchronises
    gradients only through a wrapped module's forward, sees every task (reconstruction is not ``forward``)."""

    def __init__(self, model: nn.Module, task: Task, label_smoothing: float) -> None:
        super().__init__()
        self.model, self.task, self.label_smoothing = model, task, label_smoothing

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses and the number of correct predictions (see ``_losses``)."""
        return _losses(self.model, batch, self.task, self.label_smoothing)


@dataclass
class _Loop:
    """Everything one fit call works with: ``step`` trains (DDP-wrapped in a process group), ``loss`` evaluates."""

    model: nn.Module
    loss: _BatchLoss
    step: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: TrainConfig
    task: Task
    device: torch.device
    progress: bool
    rank: int = 0
    world: int = 1


def fit(
    model: nn.Module,
    train_batches: BatchSource,
    val_batches: BatchSource | None = None,
    *,
    cfg: TrainConfig,
    out_dir: Path | str,
    task: Task = "classify",
    progress: bool = True,
    resume: bool = True,
) -> History:
    """Train ``model`` with AdamW and a one-cycle/cosine schedule, early stopping on validation loss.

    Resumes from ``out_dir/last.safetensors`` when ``resume`` and it exists. On return the model holds
    the best epoch's weights. ``cfg.precision`` (``nn.device.autocast_dtype``): bf16 autocast and channels_last on
    hardware with native bf16 (CUDA, AVX512-BF16/AMX CPUs), fp32 elsewhere; cuDNN autotuning on CUDA.
    In a process group of several ranks: DDP on each rank's shard, files written by rank 0 (see module doc).
    """
    rank, size = world()
    train_batches, val_batches = _shard(train_batches, val_batches, rank, size)
    _check_fit_args(model, train_batches, val_batches, cfg, task)
    out_dir = Path(out_dir)
    device = train_batches.device
    progress = progress and rank == 0
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _place(model, device, cfg.precision)
    optimizer = _optimizer(model, cfg)
    loss = _BatchLoss(model, task, cfg.label_smoothing)
    scheduler = _scheduler(optimizer, cfg, len(train_batches))
    loop = _Loop(model, loss, loss, optimizer, scheduler, cfg, task, device, progress, rank, size)
    fingerprint = _fingerprint(loop, len(train_batches))
    state = _LoopState()
    if resume and (out_dir / LAST_FILE).exists():
        state = _LoopState(**load_training_state(out_dir / LAST_FILE, model, optimizer, scheduler, fingerprint))
    if cfg.compile:
        model.compile()
    loop.step = wrap_ddp(loss, device)
    epochs = range(state.epoch + 1, cfg.epochs + 1) if not state.stopped_early else range(0)
    for epoch in tqdm(epochs, desc=f"{type(model).__name__} epochs", disable=not progress):
        row = _epoch_row(loop, train_batches, val_batches, epoch)
        improved = state.record(row, cfg.patience)
        if rank == 0:
            if improved:
                save_weights(model, out_dir / BEST_FILE, epoch=epoch, loss=state.best_loss)
            save_training_state(out_dir / LAST_FILE, model, optimizer, scheduler, dataclasses.asdict(state), fingerprint)
            atomic_write_table(state.frame(), out_dir / HISTORY_FILE)
        if state.stopped_early:
            break
    barrier()  # the other ranks read the best weights only once rank 0 has written them
    load_weights(model, out_dir / BEST_FILE)
    return History(state.frame(), state.best_epoch, state.stopped_early, out_dir / BEST_FILE)


def _shard(train: BatchSource, val: BatchSource | None, rank: int, size: int) -> tuple[BatchSource, BatchSource | None]:
    """Each rank's share of the batches: training ranks get equal batch counts (their steps meet in
    collectives), validation keeps every sample. Unchanged with one process."""
    if size == 1:
        return train, val
    return train.shard(rank, size, even=True), None if val is None else val.shard(rank, size)


def _check_fit_args(model: nn.Module, train: BatchSource, val: BatchSource | None, cfg: TrainConfig, task: str) -> None:
    """Fail early, and clearly, on a configuration the loop cannot honour."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "reconstruct" and not hasattr(model, "reconstruction_loss"):
        raise TypeError(f"task 'reconstruct' needs a model with reconstruction_loss; {type(model).__name__} has none")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.epochs < 1 or len(train) == 0:
        raise ValueError(f"need at least one epoch and one training batch (epochs={cfg.epochs}, batches={len(train)})")
    wanted = resolve_device(cfg.device)
    for name, batches in (("train_batches", train), ("val_batches", val)):
        if batches is not None and batches.device.type != wanted.type:
            raise ValueError(
                f"{name} live on {batches.device} but cfg.device={cfg.device!r} means {wanted}: build them with "
                f"choose_batches(..., device=resolve_device(cfg.device))"
            )


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and normalisation parameters (1-D) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step one-cycle (warm-up to ``cfg.lr``, then cosine down) or plain cosine decay."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


def _fingerprint(loop: _Loop, steps_per_epoch: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (a change here would change the result)."""
    keys = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "label_smoothing", "seed", "augment",
            "low_res_fraction", "precision")
    return {
        "model": type(loop.model).__name__,
        "task": loop.task,
        "steps_per_epoch": steps_per_epoch,
        **{k: getattr(loop.cfg, k) for k in keys},
    }


def _epoch_row(loop: _Loop, train_batches: BatchSource, val_batches: BatchSource | None, epoch: int) -> dict[str, float]:
    """Train one epoch, validate, and return the history row (accuracy only when classifying)."""
    train = _pass(loop, train_batches, epoch, train=True)
    if not math.isfinite(train["loss"]):
        raise FloatingPointError(f"training loss is not finite in epoch {epoch}: lower cfg.lr (now {loop.cfg.lr})")
    row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"]}
    if val_batches is not None:
        val = _pass(loop, val_batches, epoch, train=False)
        row |= {"val_loss": val["loss"], "val_acc": val["acc"]}
    if loop.task != "classify":
        row = {k: v for k, v in row.items() if not k.endswith("_acc")}
    lr = loop.optimizer.param_groups[0]["lr"]
    return row | {"lr": lr, "seconds": train["seconds"], "images_per_s": train["n"] / train["seconds"],
                  "image_scale": train["scale"]}


def _pass(loop: _Loop, batches: BatchSource, epoch: int, *, train: bool) -> dict[str, float]:
    """One pass over ``batches``: training steps with augmentation, or no-grad evaluation in eval mode.

    Returns the mean loss, accuracy, sample count and seconds over every rank; losses are summed on the
    device and read once at the end, so the pass never waits on the GPU. Evaluation does not go through
    DDP: it needs no gradients, and its ranks may run different numbers of batches.
    """
    module = loop.step if train else loop.loss
    module.train(train)
    batches.set_epoch(epoch)
    generator = torch.Generator(device=loop.device).manual_seed(_stream_seed(loop, epoch, _AUGMENT_STREAM))
    if train and loop.world > 1:
        torch.manual_seed(_stream_seed(loop, epoch, _DROPOUT_STREAM))  # each rank its own dropout, resumable
    totals, n, low_res = torch.zeros(2, device=loop.device), 0, False
    start = time.perf_counter()
    desc = f"epoch {epoch}" if train else "validate"
    with torch.set_grad_enabled(train):
        for batch in tqdm(batches, total=len(batches), desc=desc, leave=False, disable=not loop.progress):
            if train and loop.cfg.augment and "image" in batch:
                batch["image"] = augment(batch["image"], generator, blur=loop.cfg.augment_blur,
                                         noise=loop.cfg.augment_noise)
            if "image" in batch and at_low_res(loop.model, loop.cfg, epoch, batch["image"].shape[-1]):
                batch["image"] = F.avg_pool2d(batch["image"], 2)  # validated at the size it trains on, too
                low_res = True
            with _autocast(loop.device, loop.cfg.precision):
                losses, correct = module(_prepare(batch, loop.device, loop.cfg.precision))
            if train:
                loop.optimizer.zero_grad(set_to_none=True)
                losses.mean().backward()
                loop.optimizer.step()
                loop.scheduler.step()
            totals += torch.stack([losses.detach().sum(), correct])
            n += len(losses)
    sums = all_reduce_sum(torch.tensor([*totals.tolist(), n], dtype=torch.float64))
    loss_sum, n_correct, n = sums.tolist()
    return {"loss": loss_sum / n, "acc": n_correct / n, "n": n, "seconds": time.perf_counter() - start,
            "scale": 0.5 if low_res else 1.0}


def at_low_res(model: nn.Module, cfg: TrainConfig, epoch: int, size: int) -> bool:
    """Whether an epoch sees its ``size``-px images at half size: among the first ``cfg.low_res_fraction`` of the
    epochs (never the last), for a model that takes any image size down to its ``min_image_size`` (ParticleCNN,
    not the autoencoder)."""
    floor = getattr(model, "min_image_size", 0)
    low_epochs = min(round(cfg.low_res_fraction * cfg.epochs), cfg.epochs - 1)
    return epoch <= low_epochs and floor > 0 and size // 2 >= floor


def _stream_seed(loop: _Loop, epoch: int, stream: int) -> int:
    """The seed of one random stream of an epoch on this rank (rank 0's are those of a single process)."""
    return loop.cfg.seed * 100_003 + epoch + stream + loop.rank * _RANK_STREAM


def _losses(model: nn.Module, batch: Batch, task: str, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses (float32) and the number of correct predictions (0 for reconstruction)."""
    inputs = model_inputs(model, batch)
    if task == "reconstruct":
        losses = model.reconstruction_loss(*inputs)
        return losses, torch.zeros((), device=losses.device)
    if "label" not in batch:
        raise KeyError(f"task 'classify' needs labelled batches: these hold {sorted(batch)}")
    logits = model(*inputs).float()
    labels = batch["label"]
    losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return losses, (logits.argmax(dim=1) == labels).sum().float()


def model_inputs(model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    """The batch values a model reads, in the order of its ``input_keys``."""
    keys = getattr(model, "input_keys", None)
    if keys is None:
        raise TypeError(f"{type(model).__name__} has no input_keys naming the batch keys it reads")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{type(model).__name__} reads batch key(s) {missing} but the batches hold {sorted(batch)}")
    return [batch[k] for k in keys]


def _place(model: nn.Module, device: torch.device, precision: str) -> None:
    """Move the model to ``device``, channels_last where it computes in bf16: training and inference share one layout,
    so a model loaded from its file predicts exactly what it predicted at the end of training."""
    model.to(device)
    if autocast_dtype(device, precision) is not None:
        model.to(memory_format=torch.channels_last)


def _prepare(batch: Batch, device: torch.device, precision: str) -> Batch:
    """Images in channels_last where the device computes in bf16 (faster convolutions); unchanged elsewhere."""
    if autocast_dtype(device, precision) is not None and "image" in batch:
        return batch | {"image": batch["image"].contiguous(memory_format=torch.channels_last)}
    return batch


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast where ``autocast_dtype`` says so; fp32 (disabled) elsewhere."""
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def predict(model: nn.Module, batches: BatchSource, *, progress: bool = True,
            precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Outputs and embeddings of every sample, in ``batches.indices`` order, from one no-grad pass.

    Classifiers give ``(logits, 40-unit embeddings)``; the autoencoder gives
    ``(per-sample reconstruction MSE, latent codes)``. ``precision`` as in training (``TrainConfig.precision``).
    """
    outputs, embeddings = _collect(model, batches, _predict_step, "predict", progress, precision)
    return outputs, embeddings


def _predict_step(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own one-pass (outputs, embeddings) on a batch."""
    return model.predict_step(*model_inputs(model, batch))


def per_sample_loss(model: nn.Module, batches: BatchSource, *, progress: bool = True,
                    precision: str = "auto") -> np.ndarray:
    """Each sample's loss in ``batches.indices`` order: reconstruction MSE for the autoencoder,
    cross-entropy against the batch labels for a classifier."""
    task = "reconstruct" if hasattr(model, "reconstruction_loss") else "classify"
    (losses,) = _collect(model, batches, lambda m, b: (_losses(m, b, task, 0.0)[0],), "per-sample loss", progress,
                         precision)
    return losses


@torch.no_grad()
def _collect(
    model: nn.Module,
    batches: BatchSource,
    step: Callable[[nn.Module, Batch], tuple[torch.Tensor, ...]],
    desc: str,
    progress: bool,
    precision: str,
) -> list[np.ndarray]:
    """Run ``step`` over unshuffled batches in eval mode; concatenate each of its outputs as float32 arrays."""
    if batches.shuffle:
        raise ValueError("inference needs batches built with shuffle=False, so outputs follow batches.indices")
    model.eval()
    _place(model, batches.device, precision)
    parts: list[list[torch.Tensor]] = []
    for batch in tqdm(batches, total=len(batches), desc=desc, disable=not progress):
        with _autocast(batches.device, precision):
            outputs = step(model, _prepare(batch, batches.device, precision))
        parts.append([o.float() for o in outputs])
    return [torch.cat(column).cpu().numpy() for column in zip(*parts, strict=True)]


def read_history(path: Path | str) -> pd.DataFrame:
    """A ``history.csv`` written by fit (a run directory's folder or the file itself), indexed by epoch."""
    path = Path(path)
    path = path / HISTORY_FILE if path.is_dir() else path
    return pd.read_csv(path, index_col="epoch")

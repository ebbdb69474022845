"""From a packed part to torch batches: two batch sources on one base, and the options a training stage gives them.

Every batch is a dict of tensors already on the training device:

- ``"image"``: ``(B, 1, S, S)`` float32 raw intensities (0-255; the model normalises them with the
  image mean/std it stores in its buffers, so a saved model carries its own normalisation),
- ``"features"``: ``(B, F)`` float32 scaled metadata (see :class:`icecore_lib.models.scaler.FeatureScaler`),
- ``"label"``: ``(B,)`` int64 class codes,
- ``"index"``: ``(B,)`` int64 row positions in the packed part (to map outputs back to ``particle_id``).

Keys appear only for the arrays given. Two sources yield them, both a :class:`BatchSource` (``__iter__``,
``__len__``, ``set_epoch``, ``shard``, ``device``, ``indices``, ``shuffle``): :class:`DeviceBatches` (the selected uint8 rows moved to the device once, batches sliced there) and
:class:`LoaderBatches` (a DataLoader slicing the memory-mapped array one fancy-index per batch).
Both shuffle with a permutation drawn from ``(seed, epoch)``, so an epoch's order does not depend on
what ran before it (a resumed run sees the same batches) nor on which source feeds it. Under data
parallelism each process iterates ``source.shard(rank, world)``: its :class:`Shard` of every epoch.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..config import TrainConfig
from .device import resolve_device

Batch = dict[str, torch.Tensor]
Order = TypeVar("Order", np.ndarray, torch.Tensor)
Source = TypeVar("Source", bound="BatchSource")


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The order of ``n`` samples in an epoch: a permutation drawn from (seed, epoch), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


@dataclass(frozen=True)
class Shard:
    """One process's share of every epoch under data parallelism (the default, rank 0 of 1, is everything).

    Rank ``r`` takes every ``world``-th position of the epoch's order starting at ``r``, in batches of
    ``batch_size // world``; so batch ``k`` of all ranks together is exactly batch ``k`` of the unsharded
    source, and gradients averaged over the ranks are those of one process with the whole batch.
    ``even`` first drops the epoch's last ``n % world`` positions (other samples each shuffled epoch) so
    every rank runs as many equal batches, as the collectives of a training step need; without it
    (evaluation) every sample is kept and ranks may differ by one batch.
    """

    rank: int = 0
    world: int = 1
    even: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in 0..{self.world - 1} for a world of {self.world}, got {self.rank}")

    def batch_size(self, global_batch_size: int) -> int:
        """This rank's batch size: the global batch split evenly over the ranks."""
        if global_batch_size < 1 or global_batch_size % self.world:
            raise ValueError(
                f"batch_size {global_batch_size} must be a positive multiple of the world size {self.world}: "
                "it is the global batch, split evenly over the processes"
            )
        return global_batch_size // self.world

    def take(self, order: Order) -> Order:
        """This rank's positions of an epoch's order."""
        end = len(order) - (len(order) % self.world if self.even else 0)
        return order[self.rank : end : self.world]

    def n_batches(self, n: int, global_batch_size: int, drop_last: bool) -> int:
        """This rank's batches per epoch of ``n`` samples."""
        end = n - (n % self.world if self.even else 0)
        return _n_batches(len(range(self.rank, end, self.world)), self.batch_size(global_batch_size), drop_last)

    def batches(self, order: Order, global_batch_size: int, drop_last: bool) -> Iterator[Order]:
        """This rank's batches of an epoch's order."""
        mine, size = self.take(order), self.batch_size(global_batch_size)
        for b in range(_n_batches(len(mine), size, drop_last)):
            yield mine[b * size : (b + 1) * size]


class PackedImageDataset(Dataset):
    """Rows ``indices`` of a packed ``(N, S, S)`` uint8 array; an item or a whole batch of rows per call.

    ``labels`` and ``features`` are aligned with ``images`` row by row (length N). Indexing with a
    sequence of positions reads all their rows with one fancy index (sorted reads from a memmap are
    sequential), so the DataLoader should hand it whole batches: see :func:`make_loader`.
    Images stay uint8 here; conversion happens on the batch, on the device.
    """

    def __init__(
        self,
        images: np.ndarray | None,
        indices: np.ndarray,
        labels: np.ndarray | None = None,
        features: np.ndarray | None = None,
    ) -> None:
        self.indices = _check_indices(indices, _part_length(images, labels, features))
        self.images = images
        self.labels, self.features = _as_arrays(labels, features)

    def __len__(self) -> int:
        """Number of selected rows."""
        return len(self.indices)

    def __getitem__(self, position: int | Sequence[int] | np.ndarray) -> Batch:
        """The rows at ``position`` (one int, or a batch of positions) as CPU tensors."""
        rows = self.indices[position]
        item: Batch = {"index": torch.as_tensor(rows)}
        if self.images is not None:
            item["image"] = torch.from_numpy(np.asarray(self.images[rows])).unsqueeze(-3)
        if self.features is not None:
            item["features"] = torch.as_tensor(self.features[rows])
        if self.labels is not None:
            item["label"] = torch.as_tensor(self.labels[rows])
        return item


def _part_length(images: np.ndarray | None, labels: np.ndarray | None, features: np.ndarray | None) -> int:
    """The packed part's row count; fails when the arrays given disagree on it."""
    given = {"images": images, "labels": labels, "features": features}
    lengths = {name: len(a) for name, a in given.items() if a is not None}
    if not lengths:
        raise ValueError("give at least one of images, labels, features")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"images, labels and features must have one row per particle; got lengths {lengths}")
    if images is not None and (images.ndim != 3 or images.dtype != np.uint8):
        raise ValueError(f"images must be an (N, S, S) uint8 array, got {images.dtype} {images.shape}")
    return next(iter(lengths.values()))


def _as_arrays(labels: Any, features: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Labels as int64 and features as float32 numpy arrays (pandas objects lose their index here)."""
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    features = None if features is None else np.asarray(features, dtype=np.float32)
    return labels, features


def _check_indices(indices: np.ndarray, n: int) -> np.ndarray:
    """Row positions as a private int64 copy, each within the part and used once."""
    indices = np.array(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D array of row positions, got shape {indices.shape}")
    if indices.min() < 0 or indices.max() >= n:
        raise IndexError(f"indices out of range for a part of {n} rows: min {indices.min()}, max {indices.max()}")
    if np.unique(indices).size != indices.size:
        raise ValueError("indices must not repeat a row (each particle once per epoch)")
    return indices


class BatchSource(abc.ABC):
    """What both batch paths share: the selected rows, the batch size, each epoch's seeded order and this
    process's :class:`Shard` of it. Subclasses say how a batch of positions becomes a batch on the device."""

    def __init__(self, indices: np.ndarray, *, batch_size: int, shuffle: bool, seed: int, device: torch.device | str,
                 drop_last: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.indices, self.batch_size, self.shuffle, self.seed = indices, batch_size, shuffle, seed
        self.device, self.drop_last = torch.device(device), drop_last
        self.share = Shard()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch (this process's share)."""
        return self.share.n_batches(len(self.indices), self.batch_size, self.drop_last)

    def order(self) -> torch.Tensor:
        """This epoch's order of the selected rows' positions (a permutation drawn from (seed, epoch), or 0..n-1)."""
        return epoch_permutation(len(self.indices), self.seed, self.epoch, self.shuffle)

    def shard(self: Source, rank: int, world: int, *, even: bool = False) -> Source:
        """The same batches cut to one process's :class:`Shard` (a new source; this one is unchanged)."""
        share = Shard(rank, world, even)
        share.batch_size(self.batch_size)
        sharded = copy.copy(self)
        sharded.share = share
        return sharded

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Batch]:
        """This epoch's batches, on the device."""


class _PositionBatches(Sampler[np.ndarray]):
    """A loader source's epoch cut into batches of positions, each sorted when shuffled so that a batch reads the
    memmap front to back (split selections are sorted)."""

    def __init__(self, source: LoaderBatches) -> None:
        self.source = source

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.source)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Position batches; unshuffled ones keep the given order."""
        s = self.source
        for batch in s.share.batches(s.order().numpy(), s.batch_size, s.drop_last):
            yield np.sort(batch) if s.shuffle else batch


def _n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch for ``n`` samples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a CPU batch to ``device``; images travel as uint8 and become float32 there."""
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "image" in moved:
        moved["image"] = moved["image"].float()
    return moved


class LoaderBatches(BatchSource):
    """The CPU path: a DataLoader reading one fancy-indexed slice of the packed array per batch."""

    def __init__(self, dataset: PackedImageDataset, *, batch_size: int, shuffle: bool, seed: int = 0,
                 num_workers: int = 0, device: torch.device | str = "cpu", drop_last: bool = False) -> None:
        super().__init__(dataset.indices, batch_size=batch_size, shuffle=shuffle, seed=seed, device=device,
                         drop_last=drop_last)
        self.dataset, self.num_workers = dataset, num_workers

    def __iter__(self) -> Iterator[Batch]:
        """Batches on the device (workers hand whole batches; pinned memory for CUDA)."""
        loader = DataLoader(self.dataset, sampler=_PositionBatches(self), batch_size=None,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(self.seed))
        for batch in loader:
            yield _to_device(batch, self.device)


def make_loader(
    images: np.ndarray | None,
    indices: np.ndarray,
    labels: np.ndarray | None = None,
    features: np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> LoaderBatches:
    """Batches from the packed array through a DataLoader (workers read whole batches; pinned for CUDA)."""
    return LoaderBatches(PackedImageDataset(images, indices, labels, features), batch_size=batch_size,
                         shuffle=shuffle, seed=seed, num_workers=num_workers, device=device, drop_last=drop_last)


class DeviceBatches(BatchSource):
    """The GPU path: the selected rows moved to the device once (uint8), batches sliced and converted there."""

    def __init__(
        self,
        images: np.ndarray | None,
        indices: np.ndarray,
        labels: np.ndarray | None = None,
        features: np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        chunk: int = 8192,
        progress: bool = True,
    ) -> None:
        super().__init__(_check_indices(indices, _part_length(images, labels, features)), batch_size=batch_size,
                         shuffle=shuffle, seed=seed, device=device, drop_last=drop_last)
        labels, features = _as_arrays(labels, features)
        self.tensors: Batch = {"index": torch.from_numpy(self.indices).to(self.device)}
        if images is not None:
            self.tensors["image"] = _upload_images(images, self.indices, self.device, chunk, progress)
        if features is not None:
            self.tensors["features"] = torch.from_numpy(features[self.indices]).to(self.device)
        if labels is not None:
            self.tensors["label"] = torch.from_numpy(labels[self.indices]).to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        """Batches of the epoch's permutation, sliced from the device tensors; images become float32 there."""
        for take in self.share.batches(self.order().to(self.device), self.batch_size, self.drop_last):
            batch = {k: v[take] for k, v in self.tensors.items()}
            if "image" in batch:
                batch["image"] = batch["image"].float()
            yield batch


def _upload_images(
    images: np.ndarray, rows: np.ndarray, device: torch.device, chunk: int, progress: bool
) -> torch.Tensor:
    """Copy the selected rows to one ``(n, 1, S, S)`` uint8 tensor on ``device``, a chunk at a time."""
    size = images.shape[1:]
    out = torch.empty((len(rows), 1, *size), dtype=torch.uint8, device=device)
    for start in tqdm(range(0, len(rows), chunk), desc=f"images -> {device}", disable=not progress, leave=False):
        block = np.asarray(images[rows[start : start + chunk]])
        out[start : start + len(block), 0] = torch.from_numpy(block).to(device, non_blocking=False)
    return out


def choose_batches(
    images: np.ndarray | None,
    indices: np.ndarray,
    labels: np.ndarray | None = None,
    features: np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    memory_fraction: float = 0.5,
    progress: bool = True,
) -> DeviceBatches | LoaderBatches:
    """Device-resident batches on CUDA when the rows fit in ``memory_fraction`` of free GPU memory (or when
    there are no images: features alone are small), else the DataLoader path."""
    device = torch.device(device)
    common = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, device=device)
    if images is None or (device.type == "cuda" and _fits_on_device(images, len(indices), device, memory_fraction)):
        return DeviceBatches(images, indices, labels, features, progress=progress, **common)
    return make_loader(images, indices, labels, features, num_workers=num_workers, **common)


def _fits_on_device(images: np.ndarray, n_rows: int, device: torch.device, memory_fraction: float) -> bool:
    """Whether ``n_rows`` uint8 images fit in a fraction of the device's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return n_rows * images[0].nbytes <= memory_fraction * free




def batch_options(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """The keyword arguments every batch source of a training stage shares (device resolved once)."""
    return dict(batch_size=cfg.batch_size, seed=cfg.seed, device=resolve_device(cfg.device),
                num_workers=cfg.num_workers, progress=progress)

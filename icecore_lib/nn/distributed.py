"""Several GPUs (or CPU processes): the training loop under ``torchrun`` with DistributedDataParallel.

One process per GPU; each joins the process group from torchrun's environment (:func:`init_from_env`),
builds the same batch sources as a single process would, and calls :func:`icecore_lib.nn.loop.fit`, which
then, when the group holds more than one process:

- shards every epoch: each rank takes a strided share of the same seeded permutation
  (:class:`icecore_lib.nn.batches.Shard`), so ``cfg.batch_size`` is the *global* batch, split evenly over
  the ranks, and N processes take the same optimisation steps as one process with the whole batch
  (same learning rate, same schedule, checkpoints resumable with another number of GPUs when the steps
  per epoch agree);
- wraps the model in DDP (gradients averaged over the ranks); on CUDA its BatchNorm layers become
  SyncBatchNorm, so batch statistics cover the global batch (same weights and state-dict keys; they act as
  BatchNorm in eval mode and outside a process group). SyncBatchNorm needs GPUs: on CPU (gloo) BatchNorm
  keeps per-rank batch statistics and rank 0's running statistics are broadcast to the others every step;
- draws each rank's augmentation and dropout from its own stream seeded by (seed, epoch, rank);
- reduces the logged losses and accuracies over the ranks (sums and counts, so the history is exact);
- lets rank 0 alone write ``history.csv`` and the checkpoints; every rank then loads the best weights.
  ``out_dir`` must therefore be on a file system every rank sees (always so on one machine).

Inference after ``fit`` (``predict``) runs whole on every rank. From the command line, one notebook
stage's training under torchrun, into the run directory the notebook then continues (its ``fit``
finds the finished checkpoints, given the same parameters, and does not train again)::

    torchrun --standalone --nproc_per_node=4 -m icecore_lib.stages.torchrun cnn --profile full --run-dir RUN
    torchrun --standalone --nproc_per_node=4 -m icecore_lib.stages.torchrun autoencoder --profile full -p latent_dims=[64]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def _env_int(name: str, default: int | None = None) -> int:
    """An integer from torchrun's environment, with an error naming the variable."""
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"{name} is not set: start the processes with torchrun (it sets RANK, WORLD_SIZE, ...)")
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_from_env(backend: str = "") -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); return ``(rank, world)``.

    A no-op without WORLD_SIZE or with WORLD_SIZE=1. ``backend`` defaults to nccl when CUDA is available
    (each process then uses GPU LOCAL_RANK) and gloo otherwise. Call it before anything touches the GPU.
    """
    if _env_int("WORLD_SIZE", 1) <= 1 or dist.is_initialized():
        return world()
    rank, size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", 0)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=size)
    return world()


def cleanup() -> None:
    """Leave the process group (a no-op outside one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a process group."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes files and shows progress)."""
    return world()[0] == 0


def _comm_device() -> torch.device:
    """Where the backend's collectives want their tensors: the current GPU for nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (a no-op outside a process group)."""
    if world()[1] == 1:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks, on ``tensor``'s device (unchanged with one process).

    Sums rather than means: losses are reduced as (sum, count) pairs, so ranks holding different numbers
    of samples still give the exact global mean.
    """
    if world()[1] == 1:
        return tensor
    buffer = tensor.to(_comm_device(), copy=True)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (BatchNorm -> SyncBatchNorm on CUDA); unchanged with one process.

    The model must already be on ``device``; DDP starts every rank from rank 0's weights.
    """
    if world()[1] == 1:
        return model
    if device.type != "cuda":
        if dist.get_backend() == "nccl":
            raise ValueError(f"training on {device} needs the gloo backend: init_from_env(backend='gloo')")
        return DistributedDataParallel(model)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    index = torch.cuda.current_device() if device.index is None else device.index
    return DistributedDataParallel(model, device_ids=[index], output_device=index)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks: rank 0 fills the caches (synthetic data,
    packed arrays) that the others then read instead of building them again at the same time."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


"""Data-parallel training across processes (torch.distributed): who this process is, and the
few collective steps the trainer needs.

`torchrun --nproc-per-node N -m train.huse ...` sets RANK/WORLD_SIZE/LOCAL_RANK and a rendezvous;
`init_from_env()` joins it (gloo on CPU, NCCL on CUDA). Tests spawn ranks with
torch.multiprocessing and a file store instead (`init`). Without either, everything here is a
no-op for the one process, so the single-machine path is unchanged.

The rules the trainer keeps (train.loop, train.pipeline):
- every rank draws the same epoch permutation and takes an equal slice of each global batch;
- each rank's embeddings are gathered (with gradients) so every loss term sees the whole global
  batch, as one process would: a batch-level loss (the semantic graph's pairs) is unchanged;
- DistributedDataParallel averages the gradients, so every rank takes the same step;
- rank 0 alone writes checkpoints, the bundle, the report and the index; the semantic graph is
  broadcast from rank 0, so every rank trains against the same one;
- `shutdown()` waits at a barrier before destroy_process_group (without it, gloo runs aborted).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Rank:
    """This process's place in the job (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def current() -> Rank:
    """The running job's rank and size; Rank() when torch.distributed is not initialised."""
    if not _initialized():
        return Rank()
    import torch.distributed as dist

    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init(rank: int, world: int, init_method: str, backend: str | None = None) -> Rank:
    """Join a job of `world` processes at `init_method` (e.g. file:///tmp/store)."""
    import torch.distributed as dist

    if init_method.startswith("file:"):  # one machine: gloo's pairs talk over loopback only
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend or _backend(), init_method=init_method, rank=rank,
                            world_size=world)
    return current()


def init_from_env() -> Rank:
    """Join the job torchrun described in the environment; Rank() when there is none."""
    if _initialized() or not all(k in os.environ for k in ENV_KEYS):
        return current()
    if int(os.environ["WORLD_SIZE"]) < 2:
        return Rank()
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():  # "cuda" then means this rank's own GPU, in every stage
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(_backend(), init_method="env://")
    rank = current()
    logger.info("rank %d of %d (local rank %d)", rank.rank, rank.world, rank.local_rank)
    return rank


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    """Leave the job: barrier first, so no rank tears down while another still talks."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling the feature cache), then the others."""
    rank = current()
    if not rank.main:
        barrier()
    yield
    if rank.main:
        barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (any picklable value)."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (e.g. each rank's RNG state for a checkpoint)."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def local_rows(rows: np.ndarray, rank: Rank) -> np.ndarray:
    """This rank's equal slice of a global batch (rows past a multiple of the world size are
    left out, at most world - 1 per epoch, so every rank steps on the same number of rows)."""
    if not rank.parallel:
        return rows
    per = len(rows) // rank.world
    return rows[rank.rank * per : (rank.rank + 1) * per]


def gather(x: Any) -> Any:
    """Every rank's rows of `x` stacked in rank order; gradients flow back to each rank's own
    rows (torch.distributed.nn.all_gather), so a loss over the result is the global batch's."""
    if not _initialized():
        return x
    import torch
    import torch.distributed.nn.functional as dist_fn

    if x.requires_grad:
        return torch.cat(dist_fn.all_gather(x))
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def wrap(model: Any, rank: Rank, device: Any) -> Any:
    """DistributedDataParallel around `model` when the job has several ranks, else `model`."""
    if not rank.parallel:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)

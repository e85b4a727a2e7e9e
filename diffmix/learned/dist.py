"""Several training processes (``torchrun``): the process group, the split of the work by
rank, and the gradient all-reduce.

Each step's global batch is drawn from the seed alone, as in one process; rank ``r`` of
``W`` takes its rows ``r, r + W, ...`` (the split DistributedSampler makes), scales its
mean loss by its share of the batch, and the gradients are summed over ranks in one
all-reduce. Every rank then takes the same optimiser step, so the weights stay equal
across ranks and equal to a one-process run on the same global batch (to float summation
order). Gloo on the CPU, NCCL on CUDA (one GPU per process: ``LOCAL_RANK``). Only rank 0
writes logs, states and checkpoints. Without ``torchrun`` (``WORLD_SIZE`` unset or 1)
everything here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as td
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if td.is_available() and td.is_initialized():
        return td.get_rank(), td.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes (gloo for CPU, nccl for CUDA) and
    return the device this rank trains on (its own GPU: ``cuda:LOCAL_RANK``)."""
    if not launched() or td.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def close(wait: bool = True) -> None:
    """Leave the process group; ``wait``: after a barrier, so no rank leaves one still
    talking (a rank that failed doesn't wait for the others)."""
    if td.is_available() and td.is_initialized():
        if wait:
            td.barrier()
        td.destroy_process_group()


def barrier() -> None:
    if world()[1] > 1:
        td.barrier()


def rows(n: int) -> Tensor:
    """This rank's rows of a global batch of ``n``: ``rank, rank + W, ...``."""
    rank, size = world()
    return torch.arange(rank, n, size)


def mine(items: Iterable[int]) -> list[int]:
    """The items (batch numbers) this rank makes: every ``W``-th, from its rank."""
    rank, size = world()
    return [k for i, k in enumerate(items) if i % size == rank]


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients over ranks, in one flat all-reduce (a missing gradient is zero)."""
    if world()[1] == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    td.all_reduce(flat)
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i : i + n].view_as(p).clone()
        i += n


def _reduce(t: Tensor) -> Tensor:
    """The sum over ranks of ``t``, on ``t``'s device (NCCL reduces on this rank's GPU)."""
    where = torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else t.device
    out = t.detach().to(where, copy=True)
    td.all_reduce(out)
    return out.to(t.device)


def total(value: Tensor) -> Tensor:
    """``value`` summed over ranks (itself in one process)."""
    return value if world()[1] == 1 else _reduce(value)


def assemble(parts: Tensor) -> Tensor:
    """Rows each rank filled (zeros elsewhere) -> the whole tensor on every rank.

    Each row is filled by exactly one rank, so the sum is exact (``x + 0 == x``).
    """
    return parts if world()[1] == 1 else _reduce(parts)

"""Distributed set-up for training: one process per device, launched by ``torchrun`` (or alone).

``torchrun --nproc_per_node N`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in
each process's environment; :func:`init_distributed` reads them and joins the process group (gloo
on CPU, NCCL on CUDA). Without those variables the trainers run as one plain process, so the
same command works with and without torchrun. Multi-node is torchrun's business
(``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``); nothing here changes for it.

Only rank 0 logs at INFO level (the others log warnings and errors), and per-process randomness is
derived from ``seed + rank`` (:func:`seed_everything`) or from (seed, rank, step, stream)
(:func:`step_generator`), so a run is reproducible for a given world size.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from openhart.utils.hashing import derive_seed

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int  # global rank, 0..world_size − 1
    world_size: int
    local_rank: int  # rank on this node: picks the CUDA device
    device: torch.device
    backend: str | None  # "gloo" / "nccl", None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name} must be an int, got {value!r}") from error


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local GPU), then MPS, then CPU."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {choice!r}")
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if choice == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device: 'mps' requested but Apple MPS is not available")
    return torch.device(choice)


def init_distributed(device: str = "auto", timeout: timedelta | None = None) -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process context.

    The backend follows the device: NCCL for CUDA, gloo otherwise (CPU; MPS has no collective
    backend of its own, so multi-process MPS is refused). ``timeout``: how long a collective may
    wait for the slowest rank (None: torch's default, 30 min for gloo); jobs whose ranks finish
    far apart, such as dataset synthesis, pass more.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    torch_device = resolve_device(device, local_rank)
    if world_size == 1:
        return DistributedContext(0, 1, 0, torch_device, None)
    if torch_device.type == "mps":
        raise ValueError("device: multi-process training on Apple MPS is not supported; use cpu or cuda")
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    return DistributedContext(rank, world_size, local_rank, torch_device, backend)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def setup_logging(rank: int = 0, verbose: bool = False) -> None:
    """Rank 0 logs INFO (DEBUG when verbose); other ranks only warnings, tagged with their rank."""
    level = (logging.DEBUG if verbose else logging.INFO) if rank == 0 else logging.WARNING
    prefix = "" if rank == 0 else f"[rank {rank}] "
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed torch (all devices), numpy and ``random`` with ``seed + rank``; returns that seed.

    The trainers draw their own numbers from explicit generators (:func:`step_generator`); this
    covers third-party code that reads the global streams (dropout, data workers).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    process_seed = seed + rank
    random.seed(process_seed)
    np.random.seed(process_seed % 2**32)
    torch.manual_seed(process_seed)  # also seeds every CUDA device
    return process_seed


def step_generator(seed: int, step: int, stream: str, rank: int | None = None) -> torch.Generator:
    """A CPU generator for one purpose (``stream``) at one training step.

    Deriving generators from (seed, step, stream[, rank]) instead of carrying one stream through the
    run makes a resumed run draw exactly the numbers an uninterrupted one would, with no generator
    state to save. ``rank=None`` gives the same numbers on every rank (decisions the ranks must
    agree on); a rank gives each process its own numbers (noise, token sampling).
    """
    return torch.Generator().manual_seed(derive_seed(seed, step, stream, "all" if rank is None else rank))


# ---------------------------------------------------------------------- collectives (no-ops alone)
def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``source``'s values (no-op alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(tensor, src=source)
    return tensor


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()

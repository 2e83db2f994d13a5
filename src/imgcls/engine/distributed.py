"""Distributed data parallel through torchrun: process-group setup from the environment torchrun provides.

``torchrun --nproc_per_node=N -m imgcls train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain ``imgcls train``
does not, and everything below degrades to a single process. Backend: nccl with CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0))
    )


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Send a picklable object from rank 0 to every rank (e.g. the run folder path)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank (one element without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank; a no-op without a process group.

    DDP averages gradients, so parameters stay identical, but each rank updates its BatchNorm statistics from its own
    shard after DDP's start-of-forward broadcast: after the last step of an epoch they differ. Call this before
    evaluating or saving so that every rank evaluates (and rank 0 saves) the same model.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src)


def all_reduce_means(means: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Combine per-rank means over ``count`` samples into means over every rank's samples (and the total count).

    One small all-reduce: used once per epoch for the training loss/accuracy, which each rank measures on its shard.
    A no-op without a process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(means), count
    keys = sorted(means)
    t = torch.tensor([means[k] * count for k in keys] + [float(count)], dtype=torch.float64)
    dist.all_reduce(t)
    total = float(t[-1])
    return {k: float(v) / max(total, 1.0) for k, v in zip(keys, t[:-1].tolist(), strict=True)}, int(total)


def select_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` -> cuda (the local rank's GPU under torchrun) if available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"run.device={name} but CUDA is not available; use run.device=cpu or auto")
        if name == "cuda" and info is not None and info.enabled:
            name = f"cuda:{info.local_rank}"
        device = torch.device(name)
        torch.cuda.set_device(device)
        return device
    return torch.device(name)

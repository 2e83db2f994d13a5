"""Distributed data parallel through torchrun: process-group setup from the environment torchrun provides.

``torchrun --nproc_per_node=N -m imgcls train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain ``imgcls train``
does not, and everything below degrades to a single process. Backend: nccl with CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from imgcls.config import UserFacingError

T = TypeVar("T")


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


def device_type_for(run_device: str) -> str:
    """``cuda`` or ``cpu``: what ``run.device`` resolves to, which decides the backend (nccl or gloo)."""
    return "cuda" if run_device.startswith("cuda") or (run_device == "auto" and torch.cuda.is_available()) else "cpu"


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks (torchrun set ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def elastic_job_id() -> str | None:
    """The job id torchrun gives its workers (``--rdzv-id``; a fresh one per ``--standalone`` launch), or None.

    An elastic job runs one worker group at a time: when torchrun restarts the group (``--max-restarts``), every
    process of the previous group has been stopped first, on every node, so a run lock left by a process of the same
    job is stale whatever host it names.
    """
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        if device_type == "cuda" and torch.cuda.is_available():
            # before the first collective (the resume decision can come before the model's device is chosen): NCCL
            # runs it on the current device, which must be this rank's GPU, not cuda:0 for every rank of a node
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        if dist.get_rank() == 0 and restarts_share_the_agent_store():
            print(f"warning: {SHARED_STORE_WARNING}", flush=True)
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0))
    )


SHARED_STORE_WARNING = (
    "torchrun --max-restarts with the c10d rendezvous shares one store across restarts, and a restarted group can "
    "read the addresses of the group before it and fail to connect (pytorch/pytorch#135712); set "
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment on every node"
)


def restarts_share_the_agent_store() -> bool:
    """Whether torchrun may restart this group (``--max-restarts`` > 0) while its workers use the agent's store.

    Since torch 2.5 the c10d rendezvous shares its TCPStore with the workers (``TORCHELASTIC_USE_AGENT_STORE``) and
    keeps it across restarts, but the process group's keys are not separated per restart: a restarted rank can read
    a key the previous group wrote (a peer's address) before the new peer rewrites it. Seen here as ``Gloo
    connectFullMesh failed ... Connection refused`` on restart; ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` gives every
    group a fresh store.
    """
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return shared and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def decided_by_rank0(decide: Callable[[], T], info: DistInfo) -> T:
    """``decide()`` run on rank 0 only, its result (or the :class:`UserFacingError` it raised) on every rank.

    For decisions that read shared state which rank 0 is about to change (which run folder to resume: rank 0 locks
    it as soon as it starts training, and a rank that looked a moment later would see it "in use"); every rank must
    call it (a collective under DDP).
    """
    if not info.enabled:
        return decide()
    box: list[object] = [None]
    if info.is_main:
        try:
            box[0] = ("ok", decide())
        except UserFacingError as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]  # type: ignore[misc]
    if kind == "error":
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


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

"""How many CPU threads a job uses: ``run.threads``, or the cores that are idle when it starts.

PyTorch's default is one intra-op thread per core. On a machine where something else is busy that is the worst
choice: every parallel region waits for its slowest thread, and a thread that shares its core with another process
is slow. Measured on a 2-core VM (issue #15's note): ``imgcls train quickstart`` took 27.6 s alone, 68.9 s beside
one CPU-bound process with 2 threads, and 39.2 s beside it with 1. So unless told, a job measures how busy the cores
are for a moment (``/proc/stat``) and uses the idle ones, at least one. ``OMP_NUM_THREADS`` set in the environment is
respected.
"""

from __future__ import annotations

import os
import time

import torch


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_s: float = 0.25) -> float | None:
    """How many cores' worth of CPU the machine (all processes) used over ``sample_s`` seconds; None if unknown."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def choose_threads(requested: int | None, *, sample_s: float = 0.25) -> tuple[int, str]:
    """(threads, why) for a job: ``requested``, else ``OMP_NUM_THREADS``, else the idle cores (at least 1)."""
    if requested:
        return int(requested), "run.threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = usable_cores()
    busy = busy_cores(sample_s)
    if busy is None:
        return cores, f"all {cores} cores"
    idle = max(1, min(cores, int(cores - busy + 0.5)))
    why = f"{idle} of {cores} cores idle" if idle < cores else f"all {cores} cores idle"
    return idle, why


def apply_threads(requested: int | None) -> tuple[int, str]:
    """Set torch's intra-op threads as :func:`choose_threads` says; returns (threads, why)."""
    threads, why = choose_threads(requested)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads, why

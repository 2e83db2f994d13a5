"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

A checkpoint is a plain dict: ``model`` (state dict), ``optimizer``, ``scaler``, ``ema``, ``schedule`` (extra
scheduler state), ``epoch`` (completed epochs), ``step`` (optimizer steps), ``rng`` (torch/cuda/numpy/python
states), ``config`` (the resolved config as a dict), ``classes``, ``preprocess`` (input size, channels, mean, std,
interpolation), ``metrics`` (of the epoch) and ``format`` (version).
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not an imgcls checkpoint. The message names the file."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an imgcls checkpoint safely. Raises :class:`CheckpointError` with the path and the cause."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "best.pt", path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise CheckpointError(f"no checkpoint in run folder {path} (expected checkpoints/best.pt or last.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt or not a PyTorch file ({e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not an imgcls checkpoint (no 'model'/'config' entries)")
    ckpt["path"] = str(path)
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG state the training touches, in types that ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

A checkpoint is a plain dict: ``model`` (state dict), ``optimizer``, ``scaler``, ``ema``, ``schedule`` (extra
scheduler state), ``epoch`` (completed epochs), ``step`` (optimizer steps), ``rng`` (torch/cuda/numpy/python
states), ``config`` (the resolved config as a dict), ``classes``, ``preprocess`` (input size, channels, mean, std,
interpolation), ``metrics`` (of the epoch), ``versions`` (imgcls, python, torch, ...), ``git`` (commit of imgcls's
source, when it runs from a checkout), ``data_fingerprint`` (:func:`imgcls.data.fingerprint.data_fingerprint`),
``format`` (version) and ``sha256`` (a hash of all of the above).

The hash is over the content (every tensor's bytes and every other value), not the file: a flipped byte in a tensor
loads without any error from ``torch.load``, so it is the only way to notice one. Files written before format 2 carry
no hash and load unverified; files written before format 3 carry no provenance (versions, git, data fingerprint),
and readers treat those entries as unknown.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.engine.model_registry import is_model_uri, resolve

FORMAT_VERSION = 3  # 2: content hash ("sha256"); 3: provenance ("versions", "git", "data_fingerprint")

#: how torch's safe unpickler names a refused callable or class ("... unsupported GLOBAL posix.system ...",
#: "Unsupported global: GLOBAL x.Y"); its advice to retry unsafely is deliberately not repeated to the user
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not an imgcls checkpoint. The message names the file."""


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a crash never leaves half a file.

    The file gets the mode the umask gives any new file (``mkstemp`` alone would make it 0600, unlike the rest of the
    run folder). A temp file left by a killed write is removed by :func:`remove_stale_temp_files`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed :func:`atomic_save` left in ``folder``; returns them. Call it only
    while holding the run's lock (no other process is writing there)."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _hash_value(h: Any, value: Any) -> None:
    """Feed ``value`` into the hash ``h``: tensors by dtype, shape and bytes; containers recursively (lists and
    tuples alike, as a load may give back either); everything else by ``repr``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        t = (t.int_repr() if t.is_quantized else t).contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(repr(k).encode())
            _hash_value(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _hash_value(h, v)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


def content_hash(ckpt: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (every entry but ``sha256`` and ``path``)."""
    h = hashlib.sha256()
    _hash_value(h, {k: v for k, v in ckpt.items() if k not in ("sha256", "path")})
    return h.hexdigest()


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint with its content hash (see :func:`content_hash`), atomically."""
    atomic_save({**ckpt, "sha256": content_hash(ckpt)}, path)


def _way_on(path: Path) -> str:
    """What to do instead of loading a damaged ``path``: the run's other checkpoint, if there is one."""
    other = path.with_name("best.pt" if path.name != "best.pt" else "last.pt")
    if other.is_file():
        return f"; resume from the other checkpoint with run.resume={other} (or delete {path.name})"
    return (
        "; the run has no other checkpoint: restore it from a backup or retrain"
        if path.parent.name == "checkpoints"
        else ""
    )


def _read(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects (code: {refused.group(1)}) besides tensors, which "
                "imgcls never runs; nothing from it was loaded. Only an imgcls checkpoint (or a plain state dict) "
                "is accepted"
            ) from e
        raise CheckpointError(f"checkpoint {path} is damaged or not a PyTorch file{_way_on(path)}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is damaged or not a PyTorch file ({reason}){_way_on(path)}") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an imgcls checkpoint safely (``weights_only``) and verify its content hash. Raises
    :class:`CheckpointError` with the path, the cause and, for a damaged file, the way on.

    ``path``: a checkpoint file, a run folder (its best.pt, else last.pt), or a registry reference
    ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (:func:`imgcls.engine.model_registry.resolve`: the local copy
    of that version, whose hash must also be the one it was registered with)."""
    registered = None
    if is_model_uri(path):
        found = resolve(str(path))
        path, registered = found.checkpoint, found.sha256
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
    ckpt = _read(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not an imgcls checkpoint (no 'model'/'config' entries)")
    expected = ckpt.get("sha256")
    if expected is not None and content_hash(ckpt) != expected:
        raise CheckpointError(f"checkpoint {path} is damaged: its content does not match its hash{_way_on(path)}")
    if registered is not None and expected != registered:
        raise CheckpointError(
            f"{path} is not the checkpoint its registry version was registered with (hash {expected} instead of "
            f"{registered}); delete that local copy to download it again"
        )
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

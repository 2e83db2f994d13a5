"""Where a model came from: the versions of the software that trained it and the git commit of imgcls's source.

Recorded in every checkpoint (``versions``, ``git``) next to the data fingerprint
(:func:`imgcls.data.fingerprint.data_fingerprint`), and shown in the model card.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import imgcls

#: the distributions whose versions a checkpoint records (the ones that change what a model computes)
PACKAGES = ("torch", "torchvision", "timm", "numpy")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def software_versions() -> dict[str, str | None]:
    """``{"imgcls": ..., "python": ..., "torch": ..., ...}`` of this process (None: not installed)."""
    return {"imgcls": imgcls.__version__, "python": platform.python_version(), **{p: _version(p) for p in PACKAGES}}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # no git on this machine, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def git_state(source: str | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout imgcls runs from (``source``: another folder), or None
    when it is not one (installed from a wheel) or git is missing. ``dirty``: tracked files differ from the commit,
    so the commit alone does not say which code trained the model."""
    folder = Path(source) if source else Path(imgcls.__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], folder)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    return {"commit": commit, "dirty": bool(status)}

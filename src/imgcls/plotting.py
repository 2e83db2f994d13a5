"""The one way every command writes a matplotlib figure to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def save_figure(fig: Any, path: str | Path, *, dpi: float | None = None) -> Path:
    """Save ``fig`` as ``path`` (parent folders created), release it from pyplot, and return the path.

    Args:
        fig: a matplotlib Figure (pyplot-managed or not).
        path: output file; the format follows the suffix.
        dpi: resolution (None: the figure's own).
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **({"dpi": dpi} if dpi is not None else {}))
    plt.close(fig)  # pyplot keeps every figure alive until closed; a no-op for plain Figure objects
    return path

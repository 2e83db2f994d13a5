"""The figure of one explained image: the input beside the heat map over it, the class, its probability and a colour
bar, so that a reader can see what the model saw, what it said, and what red means.

A heat map alone (the overlay as a bare PNG) answers none of that: it does not say which class it explains, how sure
the model was, or that the colours are scaled per image ("red" is this image's strongest evidence, not an absolute
amount). :func:`explanation_figure` draws input | overlay with the colour bar of the map and a title with the
predicted class and probability (and the true class when known, and the explained class when it is not the
predicted one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from imgcls.explain.gradcam import overlay_heatmap, to_display_image
from imgcls.plotting import save_figure

#: the colour map of every heat map (the report's gallery uses the same: red = most evidence)
HEATMAP_CMAP = "jet"


@dataclass(frozen=True)
class Prediction:
    """What the model said about one image, for a figure's title.

    Attributes:
        predicted: the top-1 class name; probability: its softmax probability.
        explained: the class the map explains (None: the predicted one); explained_probability: its probability.
        true: the true class name when it is known (an ImageFolder parent folder, a dataset label), else None.
    """

    predicted: str
    probability: float
    explained: str | None = None
    explained_probability: float | None = None
    true: str | None = None

    @classmethod
    def from_probs(
        cls, probs: torch.Tensor, classes: Sequence[str], *, explained: int | None = None, true: int | None = None
    ) -> Prediction:
        """From one image's probabilities [K] and class names; ``explained``/``true`` are class indices."""
        top = int(probs.argmax())
        return cls(
            predicted=str(classes[top]),
            probability=float(probs[top]),
            explained=None if explained is None or explained == top else str(classes[explained]),
            explained_probability=None if explained is None or explained == top else float(probs[explained]),
            true=None if true is None else str(classes[true]),
        )

    def headline(self) -> str:
        """``predicted 3 (97.1%)``, then ``· true 3 (correct)`` when the true class is known."""
        head = f"predicted {self.predicted} ({100 * self.probability:.1f}%)"
        if self.true is not None:
            head += f" · true {self.true} ({'correct' if self.true == self.predicted else 'wrong'})"
        return head

    def title(self, method: str) -> str:
        """:meth:`headline` and, on a second line, which class the ``method`` map explains."""
        head = self.headline()
        if self.explained is not None:
            p = self.explained_probability
            return f"{head}\n{method} for class {self.explained}" + (f" ({100 * p:.1f}%)" if p is not None else "")
        return f"{head}\n{method} for the predicted class"


def explanation_figure(
    image: torch.Tensor | np.ndarray,
    heatmap: np.ndarray,
    *,
    prediction: Prediction,
    method: str,
    source: str = "",
    alpha: float = 0.45,
) -> Figure:
    """Input | heat map over the input, a colour bar for the map and the prediction in the title.

    Args:
        image: what the model saw, for display ([C, H, W] tensor or [H, W(, C)] array; see ``to_display_image``).
        heatmap: [h, w] in [0, 1] (resized to the image when it differs).
        prediction: the class, probability and (when known) the true class.
        method: the map's name ("Grad-CAM (stages.1)", "attention rollout"), in the title and the colour bar.
        source: the image's file name, shown above the input.
        alpha: the weight of the heat map in the overlay.

    Returns:
        A matplotlib Figure with two image axes and a colour bar axis.
    """
    base = to_display_image(image)
    fig = Figure(figsize=(6.4, 3.5), layout="constrained")
    ax_in, ax_map = fig.subplots(1, 2)
    ax_in.imshow(base, interpolation="nearest")
    ax_in.set_title(f"input{': ' + source if source else ''}", fontsize=9)
    ax_map.imshow(overlay_heatmap(base, heatmap, alpha=alpha, cmap=HEATMAP_CMAP), interpolation="nearest")
    ax_map.set_title(method, fontsize=9)
    for ax in (ax_in, ax_map):
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=HEATMAP_CMAP), ax=ax_map, fraction=0.046, pad=0.03)
    bar.set_label("evidence (scaled per image: 1 = its strongest)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(prediction.title(method.split(" (")[0]), fontsize=10)
    return fig


def save_explanation(
    path: str | Path,
    image: torch.Tensor | np.ndarray,
    heatmap: np.ndarray,
    *,
    prediction: Prediction,
    method: str,
    source: str = "",
) -> Path:
    """:func:`explanation_figure` written as a PNG; returns the path."""
    fig = explanation_figure(image, heatmap, prediction=prediction, method=method, source=source)
    return save_figure(fig, path, dpi=110)

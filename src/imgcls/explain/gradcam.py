"""Grad-CAM (Selvaraju et al., 2017) and Grad-CAM++ (Chattopadhyay et al., 2018), written with two hooks.

For a conv layer with activations ``A`` [C, h, w] and the gradient ``G = d score_c / d A`` of the class score:

- Grad-CAM weights each channel by its mean gradient, ``w_k = mean_ij G_kij``, and keeps ``ReLU(sum_k w_k A_k)``;
- Grad-CAM++ weights by positive gradients with per-pixel coefficients
  ``alpha_kij = G^2 / (2 G^2 + sum_ij(A_k) G^3)`` (the closed form for an exponential score), which spreads
  credit over several instances of a class instead of the strongest one.

The map is upsampled (bilinear) to the input size and scaled to [0, 1]. Written by hand rather than with the
``grad-cam`` package: it is about forty lines, has no OpenCV dependency, and works with any ``nn.Module`` whose
target layer outputs [B, C, h, w].
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def find_cam_layer(model: nn.Module, layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM looks at: ``layer`` (a dotted name or a module), else ``model.cam_layer``, else the last
    ``nn.Conv2d``. Returns (name, module); raises ``ValueError`` when there is none."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        return "<module>", layer
    name = layer or getattr(model, "cam_layer", "") or ""
    if name:
        try:
            return name, model.get_submodule(name)
        except AttributeError as e:
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            raise ValueError(f"model has no layer '{name}'; conv layers: {', '.join(convs[-8:]) or 'none'}") from e
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no Conv2d layer for Grad-CAM; for transformers use attention maps/rollout")
    return convs[-1]


class GradCAM:
    """Class activation maps from the gradients of a class score at one layer.

    Args:
        model: the classifier (put in eval mode here; its weights are not changed).
        target_layer: dotted module name (``model.get_submodule``) or a module; default ``model.cam_layer``, falling
            back to the last Conv2d.
        plus_plus: use Grad-CAM++ weights.

    Example:
        >>> cam = GradCAM(model).generate_cam(image)  # [H, W] in [0, 1]
    """

    def __init__(self, model: nn.Module, target_layer: str | nn.Module | None = None, plus_plus: bool = False) -> None:
        self.model = model.eval()
        self.layer_name, self.layer = find_cam_layer(model, target_layer)
        self.plus_plus = plus_plus

    def _weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights [B, C, 1, 1] from activations and gradients [B, C, h, w]."""
        if not self.plus_plus:
            return grads.mean(dim=(2, 3), keepdim=True)
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
        return (alpha * grads.clamp_min(0)).sum(dim=(2, 3), keepdim=True)

    def __call__(
        self, images: torch.Tensor, class_idx: int | list[int] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps for a batch.

        Args:
            images: [B, C, H, W] preprocessed input.
            class_idx: the class to explain per image (an int for all, or B of them); default: the predicted one.

        Returns:
            (cams [B, H, W] in [0, 1], logits [B, K]).
        """
        store: dict[str, torch.Tensor] = {}

        def forward_hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise ValueError(
                    f"Grad-CAM needs a layer with [B, C, h, w] output; '{self.layer_name}' gives "
                    f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}"
                )
            store["acts"] = output
            output.register_hook(lambda g: store.__setitem__("grads", g))

        handle = self.layer.register_forward_hook(forward_hook)
        device = next(self.model.parameters()).device
        # input needs grad so that the layer's activations do even when the backbone is frozen
        x = images.detach().to(device).requires_grad_(True)
        try:
            with torch.enable_grad():
                logits = self.model(x)
                if class_idx is None:
                    idx = logits.argmax(1)
                else:
                    idx = torch.as_tensor(class_idx, device=logits.device).long().expand(logits.shape[0])
                score = logits.gather(1, idx[:, None]).sum()
                self.model.zero_grad(set_to_none=True)
                score.backward()
        finally:
            handle.remove()
        acts, grads = store["acts"].detach().float(), store["grads"].detach().float()
        cam = F.relu((self._weights(acts, grads) * acts).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.flatten(1).min(1).values[:, None, None]
        hi = cam.flatten(1).max(1).values[:, None, None]
        cam = torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))
        self.model.zero_grad(set_to_none=True)
        return cam.cpu(), logits.detach().cpu()

    def generate_cam(self, image: torch.Tensor, class_idx: int | None = None) -> np.ndarray:
        """The map of one image.

        Args:
            image: [C, H, W] or [1, C, H, W] preprocessed input.
            class_idx: class to explain (default: the predicted class).

        Returns:
            float32 [H, W] in [0, 1] (all zeros if nothing in the layer supports the class).
        """
        x = image[None] if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"expected one image [C, H, W] or [1, C, H, W], got {tuple(image.shape)}")
        cams, _ = self(x, class_idx)
        return cams[0].numpy().astype(np.float32)


def to_display_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image for display -> uint8 [H, W, 3].

    Tensors are [C, H, W] or [H, W]; arrays [H, W, C], [H, W] or (when the last axis is not 1 or 3) [C, H, W].
    uint8 is kept as is; floats are taken to be in [0, 1].
    """
    if isinstance(image, torch.Tensor):
        a = image.detach().cpu().numpy()
        if a.ndim == 3:
            a = a.transpose(1, 2, 0)
    else:
        a = np.asarray(image)
        if a.ndim == 3 and a.shape[-1] not in (1, 3) and a.shape[0] in (1, 3):
            a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def overlay_heatmap(
    image: torch.Tensor | np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, cmap: str = "jet"
) -> np.ndarray:
    """Blend a [h, w] map in [0, 1] (resized to the image if needed) over an image; returns uint8 [H, W, 3]."""

    base = to_display_image(image).astype(np.float32) / 255.0
    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape != base.shape[:2]:
        t = torch.from_numpy(h)[None, None]
        h = F.interpolate(t, size=base.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    colored = matplotlib.colormaps[cmap](np.clip(h, 0, 1))[..., :3]
    return (np.clip((1 - alpha) * base + alpha * colored, 0, 1) * 255).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path, *, scale: int = 1) -> Path:
    """Write a uint8 [H, W, 3] array as PNG, optionally enlarged ``scale`` times (nearest, for tiny images)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path

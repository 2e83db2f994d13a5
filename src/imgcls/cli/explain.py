"""``imgcls explain gradcam|attention|embeddings|features``: heatmaps, embeddings and feature maps from a checkpoint
(thin wiring)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

# Library imports sit inside the commands ("deferred"): they pull in torch, which `imgcls --help` should not wait for.


def _out_dir(args: argparse.Namespace, ckpt_path: str, sub: str) -> Path:
    return Path(args.out) if args.out else Path(ckpt_path).parent.parent / "explain" / sub


def _display_base(raw: torch.Tensor, image_size: int, min_side: int = 224) -> np.ndarray:
    """The image at the model's input size, enlarged (nearest) to at least ``min_side`` pixels: uint8 [H, W, 3]."""
    import numpy as np  # deferred
    from PIL import Image
    from torchvision.transforms import v2

    from imgcls.explain.gradcam import to_display_image

    resized = v2.Resize((image_size, image_size), antialias=True)(raw)
    base = to_display_image(resized)
    scale = max(1, math.ceil(min_side / image_size))
    return np.asarray(Image.fromarray(base).resize((image_size * scale,) * 2, Image.NEAREST))


def _class_index(value: str | None, classes: list[str]) -> int | None:
    if value is None:
        return None
    if value in classes:
        return classes.index(value)
    if value.isdigit() and int(value) < len(classes):
        return int(value)
    more = " ..." if len(classes) > 20 else ""
    raise ValueError(f"unknown class '{value}'; classes: {', '.join(classes[:20])}{more}")


def _images(predictor, paths: list[str]):  # noqa: ANN001, ANN202
    """(path, raw uint8 image, model input) for each readable image; unreadable ones are reported and skipped."""
    from imgcls.data.images import BadImageError, decode_image_file

    for path in paths:
        try:
            raw = decode_image_file(path, predictor.preprocess.in_chans)
        except (BadImageError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        yield path, raw, predictor.transform(raw)


def _true_class(path: str, classes: list[str], given: str | None) -> int | None:
    """The true class of an image: ``--true`` when given, else its parent folder when that is a class name (the
    ImageFolder layout, ``root/<class>/<image>``), else unknown."""
    if given is not None:
        return _class_index(given, classes)
    parent = Path(path).resolve().parent.name
    return classes.index(parent) if parent in classes else None


def cmd_gradcam(args: argparse.Namespace) -> int:
    from imgcls.evaluate.infer import Predictor
    from imgcls.explain.figures import Prediction, save_explanation
    from imgcls.explain.gradcam import GradCAM

    predictor = Predictor.from_checkpoint(args.checkpoint)
    classes = predictor.classes
    cam = GradCAM(predictor.model, target_layer=args.layer, plus_plus=args.plus_plus)
    target = _class_index(args.target_class, classes)
    out = _out_dir(args, predictor.checkpoint["path"], "gradcam")
    name = "gradcampp" if args.plus_plus else "gradcam"
    method = f"{'Grad-CAM++' if args.plus_plus else 'Grad-CAM'} ({cam.layer_name})"
    n = 0
    for path, raw, x in _images(predictor, args.images):
        maps, logits = cam(x[None], target)
        probs = logits.softmax(1)[0]
        shown = int(probs.argmax()) if target is None else target
        prediction = Prediction.from_probs(
            probs, classes, explained=target, true=_true_class(path, classes, args.true_class)
        )
        dest = save_explanation(
            out / f"{Path(path).stem}_{name}_{classes[shown]}.png",
            _display_base(raw, predictor.preprocess.image_size),
            maps[0].numpy(),
            prediction=prediction,
            method=method,
            source=Path(path).name,
        )
        print(
            f"{path}: predicted {classes[int(probs.argmax())]} ({float(probs.max()):.3f}); {name} for "
            f"'{classes[shown]}' at {cam.layer_name} -> {dest}"
        )
        n += 1
    return 0 if n == len(args.images) else 2


def cmd_attention(args: argparse.Namespace) -> int:
    from imgcls.evaluate.infer import Predictor
    from imgcls.explain.attention import attention_rollout, layer_attention, save_head_grid, upsample_map
    from imgcls.explain.figures import Prediction, save_explanation

    predictor = Predictor.from_checkpoint(args.checkpoint)
    model = predictor.model
    if not hasattr(model, "get_attention_maps"):
        raise ValueError(
            f"{predictor.checkpoint['config']['model']['name']} has no attention maps; "
            "use 'imgcls explain gradcam' for CNNs"
        )
    out = _out_dir(args, predictor.checkpoint["path"], "attention")
    n_layers = len(getattr(model, "blocks", ())) or None
    known = n_layers is not None and -n_layers <= args.layer_idx < n_layers
    layer = f"layer {args.layer_idx % n_layers + 1} of {n_layers}" if known else f"layer index {args.layer_idx}"
    n = 0
    for path, raw, x in _images(predictor, args.images):
        base = _display_base(raw, predictor.preprocess.image_size)
        probs = predictor.predict_proba(x[None])[0]
        prediction = Prediction.from_probs(
            probs, predictor.classes, true=_true_class(path, predictor.classes, args.true_class)
        )
        heads = layer_attention(model, x[None], args.layer_idx)[0]
        dest = save_head_grid(
            base,
            heads,
            out / f"{Path(path).stem}_attention_layer{args.layer_idx}.png",
            title=f"class-token attention, {layer} · {prediction.headline()}",
        )
        print(f"{path}: layer {args.layer_idx} attention ({heads.shape[0]} heads) -> {dest}")
        if args.rollout:
            grid = attention_rollout(model, x[None], head_fusion=args.head_fusion, discard_ratio=args.discard_ratio)
            dest = save_explanation(
                out / f"{Path(path).stem}_rollout.png",
                base,
                upsample_map(grid[0], base.shape[:2]),
                prediction=prediction,
                method=f"attention rollout ({args.head_fusion} over heads)",
                source=Path(path).name,
            )
            print(f"{path}: attention rollout -> {dest}")
        n += 1
    return 0 if n == len(args.images) else 2


def cmd_embeddings(args: argparse.Namespace) -> int:
    from imgcls.explain.embeddings import write_embeddings

    png, csv_path = write_embeddings(
        args.checkpoint,
        split=args.split,
        method=args.method,
        out_dir=args.out,
        max_samples=args.max_samples or None,
        overrides=args.overrides,
        seed=args.seed,
    )
    print(f"embedding plot: {png}\nembedding coordinates: {csv_path}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from imgcls.evaluate.infer import Predictor
    from imgcls.explain.features import UnknownLayerError, feature_maps, plot_feature_maps, viewable_layers
    from imgcls.plotting import save_figure

    predictor = Predictor.from_checkpoint(args.checkpoint)
    out = _out_dir(args, predictor.checkpoint["path"], "features")
    n = 0
    for path, raw, x in _images(predictor, args.images):
        if not args.layer:
            layers = ", ".join(viewable_layers(predictor.model, x[None]))
            raise UnknownLayerError(f"name the layer(s) to show with --layer; layers with feature maps: {layers}")
        maps = feature_maps(predictor.model, x[None], args.layer)
        for layer, m in maps.items():
            fig = plot_feature_maps(m[0], image=raw, layer=layer, channels=args.channels)
            dest = save_figure(fig, out / f"{Path(path).stem}_features_{layer.replace('.', '-')}.png", dpi=110)
            print(f"{path}: {layer} ({m.shape[1]} channels of {m.shape[2]}x{m.shape[3]}) -> {dest}")
        n += 1
    return 0 if n == len(args.images) else 2


def _guarded(fn):  # noqa: ANN001, ANN202
    """Bad user input in explain commands (a wrong layer name, a missing optional package): one line, exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, ImportError, IndexError) as e:
            from imgcls.config import ConfigError

            if isinstance(e, ConfigError):
                raise  # the main CLI reports these
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


def _add_true_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--true",
        dest="true_class",
        default=None,
        help="the images' true class, for the title (default: the parent folder when it is a class name)",
    )


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imgcls explain`` and its subcommands."""
    explain = subparsers.add_parser(
        "explain", help="Grad-CAM, ViT attention, feature embeddings and feature maps of a checkpoint"
    )
    sub = explain.add_subparsers(dest="explain_command", required=True, metavar="WHAT")

    p = sub.add_parser("gradcam", help="Grad-CAM heatmaps overlaid on images (CNNs, hybrids)")
    p.add_argument("checkpoint", help="a checkpoint file, a run folder or models:/NAME@ALIAS (or /VERSION)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--layer", default=None, help="dotted module name (default: the model's cam_layer / last conv)")
    p.add_argument("--plus-plus", action="store_true", help="Grad-CAM++ weighting")
    p.add_argument("--class", dest="target_class", default=None, help="class name or index (default: predicted)")
    _add_true_flag(p)
    p.add_argument("--out", default=None, help="output folder (default: <run>/explain/gradcam)")
    p.set_defaults(func=_guarded(cmd_gradcam))

    p = sub.add_parser("attention", help="ViT class-token attention of a layer, and attention rollout")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--layer-idx", type=int, default=-1, help="block index (negative: from the end)")
    p.add_argument("--rollout", action="store_true", help="also write the attention rollout over all layers")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"])
    p.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: drop this fraction of weak weights")
    _add_true_flag(p)
    p.add_argument("--out", default=None, help="output folder (default: <run>/explain/attention)")
    p.set_defaults(func=_guarded(cmd_attention))

    p = sub.add_parser("embeddings", help="t-SNE/UMAP of penultimate features of a split, PNG + CSV")
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="data overrides (e.g. data.root=...)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--method", default="tsne", choices=["tsne", "umap", "pca"])
    p.add_argument("--max-samples", type=int, default=2000, help="random subset size (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: <run>/explain)")
    p.set_defaults(func=_guarded(cmd_embeddings))

    p = sub.add_parser("features", help="feature maps of any layer for images (CNN maps, ViT patch-token grids)")
    p.add_argument("checkpoint", help="a checkpoint file, a run folder or models:/NAME@ALIAS (or /VERSION)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        help="dotted module name, e.g. stages.0 (repeat for several; without it, the valid names are listed)",
    )
    p.add_argument("--channels", type=int, default=16, help="how many of the strongest channels to show")
    p.add_argument("--out", default=None, help="output folder (default: <run>/explain/features)")
    p.set_defaults(func=_guarded(cmd_features))

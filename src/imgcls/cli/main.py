"""The ``imgcls`` command line: a thin layer that parses arguments and calls the library.

Every command that builds a config takes an optional preset name and ``dotted.key=value`` overrides, e.g.
``imgcls train cifar10_resnet18 model.name=resnet18 training.optimizer.name=adamw training.epochs=5``.
Failures the user can fix (unknown key, bad value, missing dataset or package, unreadable checkpoint, training that
diverged, a full disk, a read-only folder) end with a one-line ``error: ...`` saying what to do, and exit status 2;
:func:`main` maps them in one place. ``--debug`` (or ``IMGCLS_DEBUG=1``) shows their traceback instead. Anything else
is a bug, and shows its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import os
import sys
from collections.abc import Sequence

import yaml

from imgcls.cli import explain, export, lr, preview, publish, serve, study, tune
from imgcls.cli.common import config_from_args
from imgcls.config import (
    ConfigError,
    UserFacingError,
    build_config,
    describe_keys,
    list_presets,
    preset_description,
    to_yaml,
)

# Library imports sit inside the commands (each marked "deferred"): the library pulls in torch and torchvision
# (several seconds), which `imgcls --help` and a mistyped command should not wait for.

#: modules that contribute subcommands through ``add_cli(subparsers)``
COMMAND_MODULES = (explain, export, lr, preview, publish, serve, study, tune)


# --------------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from imgcls.engine.runs import resume_config, writing  # deferred
    from imgcls.evaluate.post_run import train_and_report

    cfg, _, overrides = config_from_args(args.args)
    cfg, resume_path = resume_config(cfg, overrides)
    with writing(cfg.run.dir):  # a failed write that names no file (a full disk) is at least placed in run.dir
        result = train_and_report(cfg, resume_path=resume_path)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        if result.test is not None:
            tta = result.summary.get("test_tta") or 1
            views = f" (TTA {tta} views)" if tta > 1 else ""
            if result.summary.get("multilabel"):
                print(f"TEST mAP {result.summary['test_map_macro']:.4f}{views}")
            print(f"TEST ACCURACY {result.test.acc:.4f}{views}")
        print(f"RUN FOLDER {result.run_dir}")
    return 0


def _print_presets() -> None:
    names = list_presets()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {preset_description(name)}")


def _print_keys(patterns: Sequence[str]) -> int:
    """``imgcls config keys [PATTERN ...]``: key, type, default and one-line help of every (matching) key."""
    keys = [k for k in describe_keys() if not patterns or any(fnmatch.fnmatch(k.key, p) for p in patterns)]
    if not keys:
        raise ConfigError(f"no config key matches {' '.join(patterns)}; `imgcls config keys` lists them all")
    rows = [(k.key, k.type + (f" {k.valid}" if k.valid else ""), _yaml_value(k.default), k.help) for k in keys]
    w_key, w_type, w_def = (min(max(len(r[i]) for r in rows), cap) for i, cap in ((0, 40), (1, 34), (2, 16)))
    print(f"{'key':<{w_key}}  {'type':<{w_type}}  {'default':<{w_def}}  help")
    for key, tp, default, text in rows:
        print(f"{key:<{w_key}}  {_cut(tp, w_type):<{w_type}}  {_cut(default, w_def):<{w_def}}  {text}")
    return 0


def _yaml_value(value: object) -> str:
    """A default as one would type it in an override (null, true, [0.9, 0.999], ...)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "presets":
        _print_presets()
        return 0
    if args.action == "keys":
        return _print_keys(args.args)
    from imgcls.engine.build import check_config  # deferred

    cfg, _, _ = config_from_args(args.args)
    check_config(cfg)
    print(to_yaml(cfg), end="")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from imgcls.engine.threads import apply_threads  # deferred
    from imgcls.evaluate.run_eval import run_eval

    apply_threads(args.threads)

    run_eval(
        args.checkpoint,
        split=args.split,
        overrides=args.overrides,
        tta=args.tta,
        ensemble=args.ensemble,
        ensemble_mode=args.ensemble_mode,
        batch_size=args.batch_size,
        out_dir=args.out,
        report=not args.no_report,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from imgcls.data.images import BadImageError  # deferred
    from imgcls.evaluate.infer import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint)
    status = 0
    for path in args.images:
        try:
            x = predictor.load_image(path)
        except (BadImageError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        probs = predictor.predict_proba(x[None])
        if predictor.multilabel:  # the labels at or above their thresholds, each with its own probability
            labels = predictor.labels(probs)[0]
            print(f"{path}: labels " + (", ".join(f"{name} {p:.3f}" for name, p in labels) or "(none)"))
            continue
        top = predictor.topk(probs, args.topk)[0]
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    return status


def _count(n: int) -> str:
    """12_345 -> '12.3k', 11_173_962 -> '11.17M'."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console  # deferred
    from rich.table import Table

    from imgcls.models import list_models
    from imgcls.models.complexity import model_table
    from imgcls.models.zoo_results import cifar10_note, read_results

    names = [args.pattern] if args.pattern.startswith("timm:") else list_models(args.pattern)
    if not names:
        raise ConfigError(f"no model matches '{args.pattern}'; `imgcls models` lists them all")
    try:
        rows = model_table(
            names,
            num_classes=args.num_classes,
            input_size=args.input_size,
            freeze_backbone=args.freeze_backbone,
            freeze_layers=args.freeze_layers,
        )
    except (ValueError, RuntimeError) as e:  # a freeze depth or an input size the model cannot take
        flags = {"--input-size": args.input_size, "--freeze-layers": args.freeze_layers or None}
        given = "".join(f" {k} {v}" for k, v in flags.items() if v is not None)
        raise ConfigError(f"imgcls models {args.pattern}{given}: {' '.join(str(e).split())}") from e
    table = Table(title="imgcls models", caption="CIFAR-10: test accuracy measured by benchmarks/zoo.py (budget)")
    for col in ("model", "params", "trainable", "MACs", "input", "CIFAR-10"):
        table.add_column(col, justify="left" if col in ("model", "input", "CIFAR-10") else "right")
    zoo = read_results()
    for r in rows:
        macs = f"{r['macs'] / 1e6:,.1f}M" if r.get("macs") is not None else "-"
        table.add_row(
            r["name"],
            _count(r["params"]),
            _count(r["trainable_params"]),
            macs,
            str(r["input_size"]),
            cifar10_note(r["name"], zoo),
        )
    Console(width=140).print(table)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import torch  # deferred
    from rich.console import Console
    from rich.table import Table

    from imgcls.data.build import build_splits
    from imgcls.data.datasets import list_datasets
    from imgcls.engine.build import check_config

    if args.list or not args.dataset:
        print("\n".join(list_datasets()))
        return 0
    cfg = build_config(None, [f"data.name={args.dataset}", *args.overrides])
    check_config(cfg)
    splits = build_splits(cfg)
    console = Console(width=120)
    size = splits.train.source.image_size
    size_text = f"{size[0]}x{size[1]}" if size else "varies"
    mean, std = [round(m, 4) for m in splits.mean], [round(s, 4) for s in splits.std]
    console.print(
        f"[bold]{args.dataset}[/bold]: {splits.num_classes} classes, {splits.in_chans} channel(s), "
        f"image size {size_text}, mean {mean}, std {std}" + (", multi-label" if splits.multilabel else "")
    )
    table = Table(title="samples per class and split")
    table.add_column("class")
    views = {n: v for n, v in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if v is not None}
    for n in views:
        table.add_column(n, justify="right")
    # multi-label: images carrying each label (a row of the total counts each image once)
    counts = {
        n: (v.targets.sum(0).long() if splits.multilabel else torch.bincount(v.targets, minlength=splits.num_classes))
        for n, v in views.items()
    }
    counts = {n: c.tolist() for n, c in counts.items()}
    for k, name in enumerate(splits.classes):
        table.add_row(name, *(str(counts[n][k]) for n in views))
    table.add_row("[bold]total[/bold]", *(f"[bold]{len(v)}[/bold]" for v in views.values()))
    console.print(table)
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Train, understand and ship image classifiers.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors too (also: IMGCLS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model: imgcls train [PRESET] [key=value ...]")
    p.add_argument("args", nargs="*", metavar="[PRESET] key=value", help="a preset name and dotted overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "config",
        help="show the resolved config, list presets or keys",
        description="show [PRESET] [key=value ...]: the resolved, validated config; presets: the shipped presets "
        "with a line each; keys [PATTERN ...]: every key (or those matching, e.g. 'training.optimizer.*') with its "
        "type, valid range, default and what it does",
    )
    p.add_argument("action", choices=["show", "presets", "keys"])
    p.add_argument("args", nargs="*", metavar="[PRESET] key=value | PATTERN")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("eval", help="evaluate a checkpoint: metrics, confusion matrix, report")
    p.add_argument(
        "checkpoint",
        help="a checkpoint file, a run folder, models:/NAME@ALIAS (or /VERSION), or a model name with published "
        "ImageNet weights (efficientnet_lite0: then data.root=FOLDER of ImageNet class folders, named by WordNet id "
        "or class name)",
    )
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="data overrides (e.g. data.root=...)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--tta", type=int, default=1, help="test-time augmentation views (1 = off)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the idle cores, as run.threads)")
    p.add_argument("--ensemble", nargs="*", default=[], metavar="CKPT", help="more checkpoints to average with")
    p.add_argument(
        "--ensemble-mode",
        default="probs",
        choices=["probs", "weights"],
        help="average probabilities, or weights (alone: the run's best and last)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k predictions for image files")
    p.add_argument(
        "checkpoint",
        help="a checkpoint file, a run folder, models:/NAME@ALIAS (or /VERSION), or a model name with published "
        "ImageNet weights (efficientnet_lite0: ImageNet's 1000 classes)",
    )
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list models with parameter counts and MACs")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--freeze-layers", type=int, default=0)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="describe a dataset: sizes, classes, counts per split")
    p.add_argument("dataset", nargs="?")
    p.add_argument("overrides", nargs="*", metavar="data.key=value")
    p.add_argument("--list", action="store_true", help="list registered datasets")
    p.set_defaults(func=cmd_data)

    for module in COMMAND_MODULES:
        module.add_cli(sub)
    return parser


#: what to say about an OSError the user can fix, by errno ({path}: the file, {strerror}: the system's words)
OS_ERRORS = {
    errno.ENOSPC: "disk full writing {path}: free space there, or set run.dir=... (--out for exports) to a folder "
    "on a disk with room",
    errno.EACCES: "{strerror}: {path}: fix its permissions, or set run.dir=... (--out for exports) to a folder you "
    "can write",
    errno.ENOTDIR: "{strerror}: {path}: a file stands where a folder is expected; set run.dir=... (--out for "
    "exports) to a folder",
}
OS_ERRORS[errno.EDQUOT] = OS_ERRORS[errno.ENOSPC]
OS_ERRORS[errno.EPERM] = OS_ERRORS[errno.EROFS] = OS_ERRORS[errno.EACCES]


def user_error_message(error: BaseException, user_errors: tuple[type[BaseException], ...]) -> str | None:
    """The one line to print for a failure the user can fix, or None for anything else (a bug: show the traceback).

    Args:
        error: what was raised.
        user_errors: exception types whose message already says what to do.
    """
    if isinstance(error, user_errors):
        return str(error)
    if isinstance(error, OSError) and error.errno in OS_ERRORS:
        path = error.filename if error.filename is not None else "a file"
        return OS_ERRORS[error.errno].format(path=path, strerror=error.strerror or "OS error")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imgcls`` command. Returns the exit status: 0, 2 for a failure the user can fix (one line
    on stderr, see :func:`user_error_message`), 130 when interrupted; a bug raises (traceback)."""
    from imgcls.data.datasets import DatasetNotFoundError  # deferred: after parsing (--help is fast)
    from imgcls.data.images import BadImageError
    from imgcls.engine.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("IMGCLS_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error_message(e, (UserFacingError, DatasetNotFoundError, CheckpointError, BadImageError))
        if message is None or debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()

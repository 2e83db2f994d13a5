"""``imgcls lr-plot`` and ``imgcls lr-find`` (thin wiring over :mod:`imgcls.engine.lr_tools`)."""

from __future__ import annotations

import argparse

from imgcls.cli.common import config_from_args


def _cmd_lr_plot(args: argparse.Namespace) -> int:
    from imgcls.engine.lr_tools import lr_plot  # deferred: keeps `imgcls --help` free of torch

    cfg, _, _ = config_from_args(args.args)
    path = lr_plot(cfg, args.out, steps_per_epoch=args.steps_per_epoch)
    print(f"LR PLOT {path}")
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from imgcls.engine.lr_tools import lr_find  # deferred: keeps `imgcls --help` free of torch

    cfg, _, _ = config_from_args(args.args)
    result = lr_find(cfg, args.out, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.num_steps)
    stop = "stopped early: the loss diverged" if result.diverged else "full sweep"
    last = result.lrs[-1] if result.lrs else args.start_lr
    print(f"swept {len(result.lrs)} steps from {args.start_lr:g} to {last:.3g} ({stop})")
    if result.suggested_lr is None:
        print("SUGGESTED LR none (too few steps before divergence: lower --start-lr or raise --num-steps)")
    else:
        print(
            f"SUGGESTED LR {result.suggested_lr:.3g}  (set training.optimizer.lr={result.suggested_lr:.3g}; many "
            "prefer a value a few times lower)"
        )
    print(f"LR FIND PLOT {result.plot}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``lr-plot`` and ``lr-find`` on the ``imgcls`` command line (each sets ``func``)."""
    p = subparsers.add_parser("lr-plot", help="draw the learning-rate schedule a config would use (PNG)")
    p.add_argument("args", nargs="*", metavar="[PRESET] key=value", help="a preset name and dotted overrides")
    p.add_argument("--out", default="lr_schedule.png", help="PNG path (default: lr_schedule.png)")
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="optimizer steps per epoch (default: from the dataset size and batch size)",
    )
    p.set_defaults(func=_cmd_lr_plot)

    p = subparsers.add_parser("lr-find", help="LR range test: loss-vs-lr plot and a suggested learning rate")
    p.add_argument("args", nargs="*", metavar="[PRESET] key=value", help="a preset name and dotted overrides")
    p.add_argument("--out", default="lr_find.png", help="PNG path (default: lr_find.png)")
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--num-steps", type=int, default=100, help="optimizer steps in the sweep")
    p.set_defaults(func=_cmd_lr_find)

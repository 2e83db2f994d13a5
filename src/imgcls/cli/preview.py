"""``imgcls augment-preview``: a PNG grid of original vs augmented (and mixed) training samples (thin wiring)."""

from __future__ import annotations

import argparse

from imgcls.cli.common import config_from_args


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """The ``augment-preview`` command: build the config from [PRESET] key=value ..., write the grid."""
    from imgcls.data.preview import augment_preview  # deferred: keeps `imgcls --help` free of torch

    cfg, _, _ = config_from_args(args.args)
    out = augment_preview(cfg, args.out, n=args.n)
    print(f"wrote {out}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imgcls augment-preview [PRESET] [key=value ...] [--out PATH] [--n N]``."""
    p = subparsers.add_parser("augment-preview", help="PNG grid of original vs augmented (and mixed) train samples")
    p.add_argument("args", nargs="*", metavar="[PRESET] key=value", help="a preset name and dotted overrides")
    p.add_argument("--out", default="augment_preview.png", help="PNG to write (default: augment_preview.png)")
    p.add_argument("--n", type=int, default=8, help="number of samples (columns)")
    p.set_defaults(func=cmd_augment_preview)

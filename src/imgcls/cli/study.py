"""``imgcls study NAME... [--dataset digits|cifar10] [--epochs N] [--seeds N] [--out DIR] [key=value ...]``
(thin wiring over :func:`imgcls.studies.runner.run_study`)."""

from __future__ import annotations

import argparse

# Library imports sit inside the commands (deferred): they pull in torch, which `imgcls --help` should not wait for;
# optional extras (onnx, fastapi, optuna) are checked for first, with an install hint.


def cmd_study(args: argparse.Namespace) -> int:
    from imgcls.config import ConfigError
    from imgcls.studies.definitions import get_study, list_studies

    names = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    if args.collect:
        from pathlib import Path

        from imgcls.studies.runner import collect_markdown

        dirs = sorted(p.parent for p in Path(args.collect).rglob("study.json"))
        text = collect_markdown(dirs)
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text)
        return 0
    if args.list or not names:
        for name in list_studies():
            s = get_study(name)
            print(f"{name:18s} {len(s.variants)} variants, {s.seeds} seed(s), metric {s.metric}: {s.title}")
        return 0
    if names == ["all"]:
        names = list_studies()
    if args.out and len(names) > 1:
        raise ConfigError("--out takes one study; with several, each goes to <runs-dir>/studies/<study>-<dataset>")
    from imgcls.studies.runner import print_result, run_study

    for name in names:
        result = run_study(
            name,
            dataset=args.dataset,
            epochs=args.epochs,
            seeds=args.seeds,
            out_dir=args.out,
            overrides=overrides,
            runs_dir=args.runs_dir,
            fresh=args.fresh,
            threads=args.threads,
        )
        print_result(result)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imgcls study``."""
    p = subparsers.add_parser(
        "study",
        help="run a classic experiment (variants x seeds) and write a table, plots and a reading",
        description="Run one or more registered studies (`imgcls study --list`; `all` runs every study). Extra "
        "key=value overrides apply to every run, after the study's own.",
    )
    p.add_argument("items", nargs="*", metavar="NAME | key=value", help="study names and dotted overrides")
    p.add_argument(
        "--dataset",
        default=None,
        choices=["digits", "cifar10", "digit_pairs"],
        help="the study's base data (default: the study's first: digits, or digit_pairs for multi-label studies)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training.epochs for every run")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the study's)")
    p.add_argument("--out", default=None, help="output folder (default: <runs-dir>/studies/<study>-<dataset>)")
    p.add_argument("--runs-dir", default="runs", help="runs folder for the default output folder")
    p.add_argument("--fresh", action="store_true", help="retrain even if a finished run with the same config exists")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads during the study (1 is fastest on a busy shared CPU)"
    )
    p.add_argument("--list", action="store_true", help="list the studies")
    p.add_argument(
        "--collect",
        default=None,
        metavar="DIR",
        help="print (or write to --out) every study result under DIR as Markdown",
    )
    p.set_defaults(func=cmd_study)

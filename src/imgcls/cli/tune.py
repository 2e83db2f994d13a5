"""``imgcls compare`` and ``imgcls tune``: thin wiring over :mod:`imgcls.tune.compare` and
:mod:`imgcls.tune.search`."""

from __future__ import annotations

import argparse

# Library imports sit inside the commands (deferred): they pull in torch, which `imgcls --help` should not wait for;
# optional extras (onnx, fastapi, optuna) are checked for first, with an install hint.


def cmd_compare(args: argparse.Namespace) -> int:
    from imgcls.config import ConfigError
    from imgcls.tune.compare import CompareError, compare
    from imgcls.tune.table import print_comparison

    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    try:
        comparison, outputs = compare(
            args.runs, all_runs=args.all, runs_dir=args.runs_dir, out_dir=args.out, keep_all=args.keep_all
        )
        print_comparison(comparison, columns=columns, width=args.width, transpose=args.transpose)
    except CompareError as e:
        raise ConfigError(str(e)) from None
    print(f"written: {outputs.markdown}, {outputs.csv}, {outputs.curves or '(no curves)'}, {outputs.html}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from imgcls.cli.common import split_preset_and_overrides
    from imgcls.tune.search import tune

    preset, overrides = split_preset_and_overrides(args.args)
    tune(
        preset,
        overrides,
        params=args.param,
        trials=args.trials,
        study_name=args.study_name,
        resume=args.resume,
        metric=args.metric,
        runs_dir=args.runs_dir,
        prune=not args.no_prune,
        startup_trials=args.startup_trials,
        seed=args.seed,
        timeout_s=args.timeout,
        storage=args.storage,
        heartbeat_s=args.heartbeat,
    )
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imgcls compare`` and ``imgcls tune``."""
    p = subparsers.add_parser("compare", help="compare run folders: config differences, metrics, overlaid curves")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders")
    p.add_argument("--all", action="store_true", help="every run folder under --runs-dir (recursively)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default=None, help="output folder (default: <runs-dir>/compare-<timestamp>)")
    p.add_argument("--keep-all", action="store_true", help="also show run.dir and other incidental keys")
    p.add_argument(
        "--columns",
        default=None,
        metavar="A,B,...",
        help="the terminal table's columns, names or patterns (e.g. 'training.*,test_acc'); the files keep all",
    )
    p.add_argument("--width", type=int, default=None, help="fit the table to this many characters (default: terminal)")
    p.add_argument(
        "--transpose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one row per column and one column per run (default: only when one row per run does not fit)",
    )
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "tune",
        help="hyperparameter search with Optuna (SQLite study in the runs folder or --storage URL, median pruning)",
        description="imgcls tune [PRESET] [key=value ...] --param KEY=SPEC ... --trials N. SPEC: log:LOW:HIGH, "
        "float:LOW:HIGH[:STEP], int:LOW:HIGH[:STEP] or choice:A,B,C. Run the same command with "
        "--resume in several processes for parallel workers, or after a crash.",
    )
    p.add_argument("args", nargs="*", metavar="[PRESET] key=value", help="a preset name and fixed overrides")
    p.add_argument("--param", action="append", default=[], metavar="KEY=SPEC", help="a search dimension (repeat)")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should reach")
    p.add_argument("--study-name", default=None, help="default: the preset's name")
    p.add_argument("--resume", action="store_true", help="continue the study (needed when it exists)")
    p.add_argument("--metric", default="val_acc", help="metrics.csv column to optimise (*loss* is minimised)")
    p.add_argument("--runs-dir", default=None, help="default: the config's run.dir")
    p.add_argument("--no-prune", action="store_true", help="no median pruning")
    p.add_argument("--startup-trials", type=int, default=3, help="trials before pruning starts")
    p.add_argument("--seed", type=int, default=None, help="sampler seed")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="where the study lives, for workers on several machines: a SQLAlchemy URL (postgresql+psycopg2://user:"
        "password@host/db, mysql+pymysql://..., sqlite:///path) or journal:PATH (Optuna's journal file on a shared "
        "file system); default: SQLite in <runs>/tune-<study>/study.db",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="SECONDS",
        help="seconds between a running trial's heartbeats; another worker marks a trial FAIL (and queues it again) "
        "once its heartbeat is 5 beats old (default: 60)",
    )
    p.set_defaults(func=cmd_tune)

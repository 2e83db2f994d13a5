"""CLI wiring for ``imgcls card`` (the model card of a run) and ``imgcls registry register|list|alias``."""

from __future__ import annotations

import argparse
from datetime import datetime

# Library imports sit inside the commands (deferred): they pull in torch (and mlflow), which `imgcls --help` should
# not wait for.

_URI_HELP = (
    "MLflow tracking URI of the registry (default: $IMGCLS_REGISTRY_URI, else $MLFLOW_TRACKING_URI, else "
    "sqlite:///runs/registry.db in the current folder)"
)


def cmd_card(args: argparse.Namespace) -> int:
    from imgcls.engine.threads import apply_threads  # deferred
    from imgcls.evaluate.publish import write_model_card

    apply_threads(args.threads)
    path = write_model_card(args.checkpoint, out=args.out, split=args.split)
    print(f"model card written to {path}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from imgcls.engine.model_registry import registry_uri  # deferred
    from imgcls.engine.threads import apply_threads
    from imgcls.evaluate.publish import register_run

    apply_threads(args.threads)
    uri = registry_uri(args.registry_uri)
    done = register_run(args.run, args.name, uri=uri)
    v = done.version
    print(f"registered {args.run} as {v.uri} in {uri} ({', '.join(sorted(done.files))})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console  # deferred
    from rich.table import Table

    from imgcls.engine.model_registry import list_versions, registry_uri

    uri = registry_uri(args.registry_uri)
    versions = list_versions(uri)
    if not versions:
        print(f"no registered models in {uri}; add one with: imgcls registry register RUN --name NAME")
        return 0
    table = Table(title=f"registered models ({uri})")
    for col in ("model", "version", "aliases", "test acc", "run", "registered"):
        table.add_column(col, justify="right" if col in ("version", "test acc") else "left")
    for v in versions:
        acc = v.tags.get("test_acc")
        table.add_row(
            v.name,
            v.version,
            ", ".join(sorted(v.aliases)),
            acc or "",
            v.tags.get("imgcls_run", ""),
            datetime.fromtimestamp(v.created).strftime("%Y-%m-%d %H:%M"),
        )
    Console(width=140).print(table)
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    from imgcls.engine.model_registry import registry_uri, set_alias  # deferred

    uri = registry_uri(args.registry_uri)
    v = set_alias(args.name, args.version, args.alias, uri)
    print(f"models:/{v.name}@{args.alias} -> version {v.version} (aliases now: {', '.join(sorted(v.aliases))})")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``imgcls card`` and ``imgcls registry``."""
    p = sub.add_parser(
        "card",
        help="write a run's model card (MODEL_CARD.md, Hugging Face format)",
        description="Write MODEL_CARD.md for a run: a YAML metadata header (model-index with the test metrics) and "
        "sections on the task, data (with its fingerprint), preprocessing, recipe, metrics, limitations and versions.",
    )
    p.add_argument("checkpoint", help="a run folder, a checkpoint file or models:/NAME@ALIAS")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the evaluation it reports")
    p.add_argument("--out", default=None, help="output file (default: <run>/MODEL_CARD.md)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the idle cores, as run.threads)")
    p.set_defaults(func=cmd_card)

    reg = sub.add_parser(
        "registry",
        help="a model registry (MLflow): register runs as versions, list them, set aliases",
        description="Named models with numbered versions and aliases, on MLflow's model registry (pip install "
        "'imgcls[registry]'). predict, eval, export, serve and explain take models:/NAME@ALIAS or models:/NAME/VERSION "
        "wherever they take a checkpoint.",
    )
    rsub = reg.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    p = rsub.add_parser("register", help="register a run's best checkpoint as a new version of NAME")
    p.add_argument("run", help="a run folder or a checkpoint file")
    p.add_argument("--name", required=True, help="the registered model's name")
    p.add_argument("--registry-uri", default=None, help=_URI_HELP)
    p.add_argument("--threads", type=int, default=None, help="CPU threads, when the run must be evaluated first")
    p.set_defaults(func=cmd_register)
    p = rsub.add_parser("list", help="every registered version, with aliases and test accuracy")
    p.add_argument("--registry-uri", default=None, help=_URI_HELP)
    p.set_defaults(func=cmd_list)
    p = rsub.add_parser("alias", help="point ALIAS of model NAME at VERSION (e.g. prod)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("alias")
    p.add_argument("--registry-uri", default=None, help=_URI_HELP)
    p.set_defaults(func=cmd_alias)

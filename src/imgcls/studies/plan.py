"""What a study will run: each variant's config (dataset base, study, variant, command line, seed), its
``{ckpt:NAME}`` references, and the finished run in ``<out>/runs`` that already trained a config (reused)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from imgcls.config import Config, ConfigError, build_config, from_dict, to_dict
from imgcls.studies.definitions import CKPT_REF, DATASETS, StudyDefinition, Variant

#: config keys that do not change what is trained (ignored when looking for a finished run to reuse); "" is the root
INCIDENTAL = {
    "run": ("dir", "name", "progress", "progress_interval", "tracker", "report", "resume", "log_interval", "threads"),
    "data": ("download",),  # whether missing files may be fetched, not which data
    "": ("preset",),
}


def slug(text: str) -> str:
    """A file-name-safe version of a variant name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "variant"


def substitute_refs(overrides: Sequence[str], ckpts: dict[str, str]) -> list[str]:
    """Replace ``{ckpt:NAME}`` by the path in ``ckpts[NAME]``.

    Raises:
        KeyError: a referenced variant has no checkpoint in ``ckpts``.
    """
    return [CKPT_REF.sub(lambda m: ckpts[m.group(1)], o) for o in overrides]


def variant_overrides(
    study: StudyDefinition,
    variant: Variant,
    dataset: str,
    *,
    seed: int,
    extra: Sequence[str] = (),
    ckpts: dict[str, str] | None = None,
) -> list[str]:
    """Every override of one run, in order: dataset base, study, variant, ``extra`` (command line), ``run.seed``.

    ``ckpts`` maps variant names to checkpoint paths for ``{ckpt:NAME}``; without it the references are left as
    they are (fine for display).
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown study dataset '{dataset}'. Valid: {', '.join(DATASETS)}")
    overrides = [*DATASETS[dataset].overrides, *study.overrides_for(variant, dataset), *extra, f"run.seed={seed}"]
    return substitute_refs(overrides, ckpts) if ckpts is not None else overrides


def variant_config(
    study: StudyDefinition,
    variant: Variant,
    dataset: str,
    *,
    seed: int = 0,
    extra: Sequence[str] = (),
    ckpts: dict[str, str] | None = None,
) -> Config:
    """The config of one run (see :func:`variant_overrides`); references without a path get a placeholder."""
    refs = {name: f"<best checkpoint of '{name}'>" for name in variant.references()}
    refs.update(ckpts or {})
    overrides = variant_overrides(study, variant, dataset, seed=seed, extra=extra, ckpts=refs)
    return build_config(DATASETS[dataset].preset, overrides)


def normalized(tree: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a config tree without the :data:`INCIDENTAL` keys (tuples as lists, as in JSON)."""
    tree = json.loads(json.dumps(tree))  # deep copy, tuples -> lists
    for section, keys in INCIDENTAL.items():
        node = tree.get(section, {}) if section else tree
        for k in keys:
            node.pop(k, None)
    return tree


def config_key(cfg: Config) -> str:
    """One string per trained config: two configs that train the same thing have the same key."""
    return json.dumps(normalized(to_dict(cfg)), sort_keys=True)


def find_finished_run(runs_dir: Path, cfg: Config) -> Path | None:
    """A finished run (``summary.json`` present) in ``runs_dir`` whose config equals ``cfg`` up to incidental keys
    (and up to keys added to the config tree since, which take their default values)."""
    if not runs_dir.is_dir():
        return None
    want = normalized(to_dict(cfg))
    for d in sorted(runs_dir.iterdir()):
        if not ((d / "summary.json").is_file() and (d / "config.yaml").is_file()):
            continue
        try:  # through from_dict: keys added to the config tree since that run get their defaults
            have = normalized(to_dict(from_dict(yaml.safe_load((d / "config.yaml").read_text()) or {})))
        except (yaml.YAMLError, ConfigError):
            continue
        if have == want:
            return d
    return None

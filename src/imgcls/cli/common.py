"""Argument helpers every command shares: ``[PRESET] key=value ...`` -> a config."""

from __future__ import annotations

from collections.abc import Sequence

from imgcls.config import Config, ConfigError, build_config


def split_preset_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[PRESET] key=value ...`` -> (preset, overrides). The preset is the one item without '='."""
    preset = None
    overrides = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif preset is None:
            preset = item
        else:
            raise ConfigError(f"'{item}': expected key=value (a preset, '{preset}', was already given)")
    return preset, overrides


def config_from_args(
    items: Sequence[str], default_preset: str | None = "quickstart"
) -> tuple[Config, str | None, list[str]]:
    """(config, preset name, overrides) from ``[PRESET] key=value ...``; no preset means ``default_preset``."""
    preset, overrides = split_preset_and_overrides(items)
    return build_config(preset or default_preset, overrides), preset or default_preset, overrides

"""The ``imgcls`` command line: the top layer. It parses arguments, calls the library and prints; no logic of its own.

:mod:`imgcls.cli.main` holds the parser and the core commands; each other module adds a group of commands through
``add_cli(subparsers)``.
"""

from imgcls.cli.common import config_from_args, split_preset_and_overrides
from imgcls.cli.main import build_parser, main

__all__ = ["build_parser", "config_from_args", "main", "split_preset_and_overrides"]

"""One small registry used for models, datasets, losses, optimizers, schedules and augmentations.

Entry points are plain callables registered under a name. ``create`` drops keyword arguments that are ``None`` so an
unset config value means "use the entry point's default" (the timm habit). An entry may carry metadata (plain data
given to ``register``, e.g. which loaders an augmentation supports), so that code and tests can iterate over the
registry instead of keeping hand lists; :meth:`Registry.ordered` gives the registration order where order matters
(augmentations are applied in it).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A name -> callable table with helpful errors.

    Args:
        kind: what the registry holds ("model", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}  # in registration order
        self._meta: dict[str, Mapping[str, Any]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``fn`` under ``name`` (default: the function's name). Raises on duplicates.

        Args:
            name: the registry key.
            **meta: metadata stored with the entry (read back with :meth:`meta`).
        """

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._entries:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            self._entries[key] = fn
            self._meta[key] = MappingProxyType(dict(meta))
            return fn

        return deco

    def add(self, name: str, fn: T, **meta: Any) -> None:
        """Register ``fn`` under ``name`` (with ``meta``) without a decorator."""
        self.register(name, **meta)(fn)

    def meta(self, name: str) -> Mapping[str, Any]:
        """The (read-only) metadata registered with ``name``; empty when none was given."""
        self.get(name)
        return self._meta[name]

    def ordered(self) -> list[str]:
        """Names in registration order (iteration and :meth:`list` are sorted by name)."""
        return list(self._entries)

    def get(self, name: str) -> T:
        """Return the entry point for ``name`` or raise a KeyError that lists close matches and all valid names."""
        if name not in self._entries:
            raise KeyError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Valid: {', '.join(sorted(self._entries))}"

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the entry point for ``name`` with ``kwargs`` minus those that are ``None``."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

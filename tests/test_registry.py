"""The one Registry class: lookup errors, ``create`` dropping unset kwargs, metadata and registration order."""

from __future__ import annotations

import pytest

from imgcls.registry import Registry


def test_create_drops_none_and_unknown_names_list_close_matches() -> None:
    reg: Registry = Registry("widget")

    @reg.register("square")
    def square(side: float = 2.0) -> float:
        return side * side

    assert reg.create("square", side=None) == 4.0 and reg.create("square", side=3.0) == 9.0
    with pytest.raises(KeyError, match="unknown widget 'squar'. Did you mean 'square'"):
        reg.get("squar")
    with pytest.raises(KeyError, match="already registered"):
        reg.add("square", square)


def test_metadata_and_registration_order() -> None:
    reg: Registry = Registry("step")
    reg.add("zeta", lambda: 0, stage="late")
    reg.add("alpha", lambda: 1)
    assert reg.ordered() == ["zeta", "alpha"] and list(reg) == ["alpha", "zeta"] == reg.list()
    assert reg.meta("zeta") == {"stage": "late"} and reg.meta("alpha") == {}
    with pytest.raises(TypeError):
        reg.meta("zeta")["stage"] = "early"  # read-only: metadata is data about the entry, not state
    with pytest.raises(KeyError, match="unknown step"):
        reg.meta("beta")

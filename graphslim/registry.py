"""Pass registry: kebab-case name -> pass class.

The built-in passes live in the ``passes`` package, which imports ``graphslim`` and never the
reverse; they are declared as entry points in the ``graphslim.passes`` group
(``pyproject.toml``), so this module finds them without importing ``passes`` by name, and a
third-party package can add passes the same way. Every class is checked against the pass
contract when it is added.
"""

from __future__ import annotations

import difflib
import functools
from importlib.metadata import entry_points

from graphslim.contract import Pass, check_pass_class
from graphslim.errors import OptionsError

ENTRY_POINT_GROUP = "graphslim.passes"


class Registry:
    def __init__(self) -> None:
        self._passes: dict[str, type[Pass]] = {}

    def add(self, cls: type[Pass]) -> type[Pass]:
        check_pass_class(cls)
        known = self._passes.get(cls.name)
        if known is not None and known is not cls:
            raise ValueError(
                f"pass name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}"
            )
        self._passes[cls.name] = cls
        return cls

    def get(self, name: str) -> type[Pass]:
        try:
            return self._passes[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._passes, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise OptionsError(
                f"unknown pass '{name}'{hint} (run `graphslim passes` for the list)"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._passes)

    def __contains__(self, name: object) -> bool:
        return name in self._passes

    def __iter__(self):
        return iter(self._passes[n] for n in self.names())


@functools.cache
def default_registry() -> Registry:
    """The installed passes (entry points of group ``graphslim.passes``), loaded once."""
    reg = Registry()
    eps = entry_points(group=ENTRY_POINT_GROUP)
    if not eps:
        raise RuntimeError(
            "no graphslim passes are installed (entry point group 'graphslim.passes' is empty); "
            "install the project with `pip install -e .`"
        )
    for ep in sorted(eps, key=lambda e: e.name):
        cls = ep.load()
        if cls.name != ep.name:
            raise TypeError(f"entry point {ep.name!r} loads pass named {cls.name!r}")
        reg.add(cls)
    return reg


def get_pass(name: str) -> type[Pass]:
    return default_registry().get(name)

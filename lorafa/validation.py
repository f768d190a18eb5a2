"""The one way configuration is checked: specs validate in __post_init__ with these helpers.

Every message names the field as the user wrote it (`trainer.lr`, `AdapterConfig.r`,
`model.path`), the value, and what is allowed, so a typo in a 300-run sweep is one readable
line before any model is built.
"""

from __future__ import annotations

import math
from typing import Iterable, NoReturn

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               tuple: "a list", dict: "a mapping", type(None): "null"}


def fail(field: str, value, allowed: str) -> NoReturn:
    raise ValueError(f"{field}={value!r} is invalid; allowed: {allowed}")


def require(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        fail(field, value, allowed)


def require_type(field: str, value, types: tuple) -> None:
    """isinstance with YAML in mind: `lr: true` is a typo, so bool passes only where it is named."""
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = [_TYPE_NAMES.get(t, t.__name__) for t in types if not (t is int and float in types)]
        raise ValueError(f"{field}={value!r} has type {type(value).__name__}; "
                         f"allowed: {' or '.join(dict.fromkeys(names))}")


def require_choice(field: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    require(value in choices, field, value, ", ".join(map(str, choices)))


def require_int(field: str, value, minimum: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= minimum
    require(ok, field, value, f"an integer >= {minimum}" + (" or null" if allow_none else ""))


def is_number(value) -> bool:
    """A finite int or float, and not a bool (YAML's `true` is no learning rate)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def require_known_keys(section: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{section}: unknown keys {unknown}; allowed: {', '.join(sorted(allowed))}")

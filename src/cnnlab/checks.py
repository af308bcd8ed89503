"""Argument checks, in one place: each returns the value it accepts, or raises a ValueError
that names the argument, what was expected and what came::

    `filters` must be a positive int, got 0

A layer adds its own name in front (``Conv2D 'conv2d': ...``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np


def _fail(name: str, expected: str, value) -> ValueError:
    return ValueError(f"`{name}` must be {expected}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def boolean(name: str, value) -> bool:
    """``value``, if it is True or False (NumPy's bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, "True or False", value)
    return bool(value)


def integer(name: str, value) -> int:
    """``value`` as an int, if it is an integer."""
    if not _is_int(value):
        raise _fail(name, "an int", value)
    return int(value)


def int_at_least(name: str, value, minimum: int) -> int:
    """``value`` as an int, if it is an integer of at least ``minimum``."""
    if not _is_int(value) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise _fail(name, expected, value)
    return int(value)


def positive_int(name: str, value) -> int:
    """``value`` as an int, if it is an integer of at least 1."""
    return int_at_least(name, value, 1)


def number_in(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, if it is a finite real number in the interval from ``low`` to
    ``high`` (either None: no bound but finiteness; ``*_open``: the end itself excluded). NaN
    and the infinities are never in it."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise _fail(name, _interval(low, high, low_open, high_open), value)
    return float(value)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    if low is None:
        return f"< {high:g}" if high_open else f"<= {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def positive_number(name: str, value) -> float:
    """``value`` as a float, if it is a real number > 0."""
    return number_in(name, value, 0.0, low_open=True)


def optional_positive_number(name: str, value) -> float | None:
    """None, or ``value`` as a float if it is > 0."""
    if value is None:
        return None
    try:
        return positive_number(name, value)
    except ValueError:
        raise _fail(name, "> 0 or None", value) from None


def choice(name: str, value, choices: Sequence[str]) -> str:
    """``value`` lower-cased, if it is one of ``choices``."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise _fail(name, f"one of {tuple(choices)}", value)
    return value.lower()


def int_pair(name: str, value) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; a pair of positive ints as a tuple."""
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(is_positive_int, pair))):
        raise _fail(name, "a positive int or a pair of them", value)
    return (int(pair[0]), int(pair[1]))


def is_positive_int(value) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least 1."""
    return _is_int(value) and value > 0


# -- saved state read back from a file ------------------------------------------------------
COUNT, NUMBER = "count", "number"  # an int >= 0; a real number (NaN and inf included)


def matches(value, schema, where: str) -> None:
    """Raise a ValueError naming ``where`` (e.g. ``state['epoch']``) unless ``value`` has the
    form ``schema`` gives: :data:`COUNT`, :data:`NUMBER`, ``bool``, ``str``, ``dict`` (any
    dict), a tuple of alternatives (``(NUMBER, None)``), ``[schema]`` (a list of those) or
    ``{key: schema}`` (a dict with those keys, ``str: schema`` for any string keys)."""
    if isinstance(schema, tuple):
        problems = []
        for alternative in schema:
            try:
                return matches(value, alternative, where)
            except ValueError as err:
                problems.append(err)
        raise problems[0]
    if isinstance(schema, list):
        _expect(isinstance(value, list), where, "a list", value)
        for i, item in enumerate(value):
            matches(item, schema[0], f"{where}[{i}]")
    elif isinstance(schema, dict):
        _expect(isinstance(value, dict), where, "a dict", value)
        if str in schema:
            for key, item in value.items():
                _expect(isinstance(key, str), where, "string keys", key)
                matches(item, schema[str], f"{where}[{key!r}]")
        else:
            for key, item_schema in schema.items():
                _expect(key in value, where, f"an entry {key!r}", value)
                matches(value[key], item_schema, f"{where}[{key!r}]")
    elif schema == COUNT:
        _expect(_is_int(value) and value >= 0, where, "an int >= 0", value)
    elif schema == NUMBER:
        _expect(
            isinstance(value, numbers.Real) and not isinstance(value, bool),
            where,
            "a number",
            value,
        )
    elif schema is None:
        _expect(value is None, where, "null", value)
    else:
        _expect(isinstance(value, schema), where, schema.__name__, value)


def _expect(ok: bool, where: str, expected: str, value) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"{where} must be {expected}, got {shown}")

"""One validation of the scalar arguments shared by the ops -- ``scale``, ``eps``, ``dropout_p`` -- so that every op
accepts and refuses the same values with the same message naming the argument (SDPA's rules: a finite ``scale``,
``dropout_p`` in [0, 1)). A value of the wrong type raises :class:`ScalarTypeError`, both a TypeError and a
ValueError (some ops documented one, some the other); a value out of range a ValueError. Each returns a float."""

from __future__ import annotations

import math
import numbers


class ScalarTypeError(TypeError, ValueError):
    """A scalar argument that is not a real number (a bool, a tensor, a string, ...)."""


def _real(name: str, value, expected: str) -> float:
    # float and int first: the common case costs two type comparisons.
    if type(value) is float or type(value) is int or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return float(value)
    raise ScalarTypeError(f"argument `{name}` must be a real number {expected}; got {value!r}")


def scale(value, *, optional: bool = False) -> float | None:
    """``scale``: a finite real number (or None when ``optional``: the op's default then applies)."""
    if value is None and optional:
        return None
    expected = "(finite) or None" if optional else "(finite)"
    number = _real("scale", value, expected)
    if not math.isfinite(number):
        raise ValueError(f"argument `scale` must be a real number {expected}; got {value!r}")
    return number


def eps(value) -> float:
    """``eps``: a finite real number >= 0."""
    number = _real("eps", value, "(finite, >= 0)")
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(f"argument `eps` must be a real number (finite, >= 0); got {value!r}")
    return number


def dropout_p(value) -> float:
    """``dropout_p``: a real number in [0, 1)."""
    number = _real("dropout_p", value, "in [0, 1)")
    if not 0.0 <= number < 1.0:
        raise ValueError(f"argument `dropout_p` must be a real number in [0, 1); got {value!r}")
    return number

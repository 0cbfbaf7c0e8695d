"""The rules input is checked against, each written once.

The command line's argument types (:mod:`torchloops.support.console`) and ``configure``
(:mod:`torchloops.measurement.runner`, for callers of the Python API) apply the same rules; they only
word the message their own way (argparse names the option itself).  A rule returns the
value or raises :class:`Invalid`, whose message says what is valid ("must be a positive
integer").
"""

from __future__ import annotations

import math

from torchloops.core.data import MAX_SEED


class Invalid(ValueError):
    """A value outside its rule; the message says what is valid."""


def _finite(value) -> float:
    try:
        number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int beyond float range
        number = math.inf
    return number


def positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Invalid("must be a positive integer")
    return value


def non_negative_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid("must be a non-negative integer")
    return value


def positive_float(value) -> float:
    number = _finite(value)
    if not math.isfinite(number) or number <= 0:
        raise Invalid("must be a positive finite number")
    return number


def non_negative_float(value) -> float:
    number = _finite(value)
    if not math.isfinite(number) or number < 0:
        raise Invalid("must be a finite number >= 0")
    return number


def seed(value) -> int:
    """A seed scikit-learn accepts as ``random_state``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise Invalid(f"must be an integer from 0 to {MAX_SEED}")
    return value

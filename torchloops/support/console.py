"""What every command shares: the argument parser and argument types, the table formatter and
progress bars.  Output files, and the checks of their paths, are in :mod:`torchloops.support.outputs`.

The commands (:mod:`torchloops.commands`) and ``scripts/gpu_check.py`` print every table
with :func:`format_table`; nothing here knows a workload, and nothing here imports the
runner or a command.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional, Sequence

from torchloops.core import validation

PROG = "torchloops"  # the command's name in its messages

# Every negative number float() reads: argparse's own pattern (-1, -0.5) misses -1e-9 and -inf,
# and takes them for options ("expected one argument") before any rule has seen them.
NEGATIVE_NUMBER = re.compile(r"-(?:(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:e[-+]?\d[\d_]*)?|inf(?:inity)?|nan)\Z",
                             re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, reading every negative number as an option's value, so that its rule (its
    ``type``) names what is valid.  (argparse has no public setting for this: the pattern is
    the attribute its own ``__init__`` sets, read each time an argument is classified.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER


def _argument_type(parse, rule, doc: str):
    """An argparse type: ``parse`` the text, then apply ``rule`` (:mod:`torchloops.core.validation`);
    text that does not parse is None, which every rule refuses with its own message."""

    def convert(text: str):
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            value = None
        try:
            return rule(value)
        except validation.Invalid as error:
            raise argparse.ArgumentTypeError(f"{error}, got {text!r}") from None

    convert.__doc__ = doc
    convert.__name__ = rule.__name__
    return convert


positive_int = _argument_type(int, validation.positive_int, "argparse type: a positive integer.")
non_negative_int = _argument_type(int, validation.non_negative_int, "argparse type: an integer >= 0.")


def progress_trackers(bar, count: int):
    """One ``progress(step, total)`` callback per interleaved configuration, all advancing one
    tqdm ``bar`` by each configuration's new steps (None without a bar)."""
    if bar is None:
        return None
    done = [0] * count

    def tracker(i):
        def update(step, _total):
            bar.update(step - done[i])
            done[i] = step
        return update

    return [tracker(i) for i in range(count)]


positive_float = _argument_type(float, validation.positive_float, "argparse type: a positive finite number.")
non_negative_float = _argument_type(float, validation.non_negative_float, "argparse type: a finite number >= 0.")
seed = _argument_type(int, validation.seed, "argparse type: a seed sklearn accepts.")


def format_table(headers: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def seconds_interval(value: Optional[float], interval: Optional[Sequence[float]]) -> str:
    """A time with its 95 % interval, e.g. ``318 us [310-325]`` (the unit of the point)."""
    if value is None:
        return "-"
    if not interval:
        return seconds(value)
    text = seconds(value)
    number, unit = text.split(" ")
    scale = {"us": 1e6, "ms": 1e3, "s": 1.0}[unit]
    digits = 0 if unit == "us" else 2
    low, high = (f"{bound * scale:.{digits}f}" for bound in interval)
    return f"{number} [{low}-{high}] {unit}"


def comparison_cell(record: dict) -> str:
    """A record's paired ratio to its reference: ``0.52x [0.50-0.55]``, ``≈ same``, or ``reference``."""
    found = record.get("comparison")
    if not found:
        return "reference" if record.get("block_steps") else "-"
    return ratio_cell(found, samples="rounds")


def ratio_cell(found: Optional[dict], samples: str = "samples") -> str:
    """A ratio of a results document (``{"ratio", "interval", samples}``) as a cell:
    ``0.52x [0.50-0.55]``, ``≈ same`` (the verdict's band), or ``-`` when there is none."""
    from torchloops.support.stats import Estimate, format_ratio

    if not found:
        return "-"
    low, high = found["interval"] or (None, None)
    return format_ratio(Estimate(found["ratio"], low, high, found[samples]))


def progress_bar(quiet: bool, label: str, total: Optional[int] = None, unit: str = "step"):
    """A tqdm bar on stderr, shown only on a terminal and only for runs longer than 2 s."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=label, total=total, unit=unit, delay=2.0, leave=False, file=sys.stderr)

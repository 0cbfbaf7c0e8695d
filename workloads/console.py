"""What every command shares: argument types, the table formatter, progress bars, output
paths checked before any work, and atomic JSON files.

The commands (:mod:`workloads.commands`) and ``scripts/gpu_check.py`` print every table
with :func:`format_table`; nothing here knows a workload, and nothing here imports the
runner or a command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from typing import List, Optional, Sequence

from . import validation
from .registry import UsageError

PROG = "torchloops"  # the command's name in its messages


def _argument_type(parse, rule, doc: str):
    """An argparse type: ``parse`` the text, then apply ``rule`` (:mod:`workloads.validation`);
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
    from .stats import Estimate, format_ratio

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


def check_json_path(path: str, option: str = "--json") -> None:
    """Fail before any work if ``path`` cannot be written."""
    if not path or "\0" in path:
        raise UsageError(f"{option} {path!r} is not a usable file path")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file path")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: {folder!r} is a file, not a folder")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: folder {folder!r} does not exist")
    _probe(folder, f"{option} {path!r}: folder {folder!r} is not writable")


def _probe(folder: str, message: str) -> None:
    """Create and remove a folder in ``folder``: a real probe, where ``os.access`` says yes to
    root even when the filesystem refuses (/proc)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".torchloops-probe-", dir=folder))
    except OSError as error:
        raise UsageError(f"{message} ({error.strerror})") from None


def check_out_dir(path: str, option: str = "--out") -> None:
    """Fail before any work if the folder ``path`` cannot be created (or used) there."""
    if not path or "\0" in path:
        raise UsageError(f"{option} {path!r} is not a usable folder path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path!r} exists and is not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{option} {path!r}: {existing!r} is not a directory")
    _probe(existing, f"{option} {path!r}: cannot create folders in {existing!r}")


@contextlib.contextmanager
def atomic_file(path: str, suffix: str, mode: str = "w", error=UsageError):
    """A file handle on a temporary file beside ``path``, renamed onto it on success.

    Interrupted at any point (an exception, SIGINT, SIGTERM through the CLI's handler),
    the previous ``path`` is untouched and the temporary file is removed.  Concurrent
    writers to one path: each rename is atomic, the last one wins, never a mixture.
    A file system error is ``error`` (one line, a :class:`UsageError` by default).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".torchloops-", suffix=suffix + ".tmp", dir=folder)
    except OSError as why:
        raise error(f"cannot write {path!r}: {why.strerror or why}") from None
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a results file wants
        os.replace(tmp, path)
    except OSError as why:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise error(f"cannot write {path!r}: {why.strerror or why}") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, payload) -> None:
    """``payload`` as JSON at ``path``, never half-written (see :func:`atomic_file`)."""
    with atomic_file(path, ".json") as handle:
        json.dump(payload, handle, indent=1)
        handle.write("\n")

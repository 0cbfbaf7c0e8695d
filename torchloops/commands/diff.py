"""``torchloops diff BASE.json NEW.json [--max-slowdown PCT]``: the CI gate for a noisy runner.

One row per configuration the two files share: the instruction ratio NEW/BASE (when both
sides have counts), the wall-time ratio of the step medians with its 95 % interval, and a
verdict saying which evidence decided it.  Exit 1 when a configuration is slower beyond
PCT (by counts: ratio > 1 + PCT/100; by wall time: the whole interval above 1 + PCT/100),
0 otherwise, 2 with one line on bad input.  The matching and verdicts live in
:mod:`torchloops.measurement.diffing`; see docs/diff.md.
"""

from __future__ import annotations

import argparse
import math


DEFAULT_MAX_SLOWDOWN = 5.0  # percent

HEADERS = ("workload", "style", "device", "seed", "instructions", "wall time (95 % interval)", "verdict", "gate")


def max_slowdown(text: str) -> float:
    """argparse type: a percentage, 0 or more ("5" and "5%" are 5 %)."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a percentage, 0 or more (5 means 5 %), got {text!r}")
    return value


def add_parser(subparsers):
    p = subparsers.add_parser(
        "diff", help="compare two results files configuration by configuration; exit 1 on a slowdown beyond PCT",
        description="Match the records of BASE and NEW (run --json, count --json or compare's results.json) by "
        "workload, style, device (and seed), and print the instruction and wall-time ratios NEW/BASE with a "
        "verdict. Exit 1 when a configuration is slower beyond PCT, 0 otherwise, 2 on bad input.",
    )
    p.add_argument("base", metavar="BASE.json")
    p.add_argument("new", metavar="NEW.json")
    p.add_argument("--max-slowdown", type=max_slowdown, default=DEFAULT_MAX_SLOWDOWN, metavar="PCT",
                   help=f"percent: fail on a slowdown beyond it (default {DEFAULT_MAX_SLOWDOWN:g}, i.e. "
                   f"{DEFAULT_MAX_SLOWDOWN:g} %%)")
    return p


def main(args) -> int:
    from torchloops.measurement import diffing
    from torchloops.support.console import format_table

    if not isinstance(args.max_slowdown, float):  # called without the parser
        args.max_slowdown = max_slowdown(str(args.max_slowdown))
    pct = args.max_slowdown
    base, new = diffing.load(args.base), diffing.load(args.new)
    result = diffing.diff(base, new, pct / 100)
    rows = [_row(c) for c in result.comparisons]
    print(format_table(HEADERS, rows))
    print()
    print(f"BASE {args.base}, NEW {args.new}: ratios are NEW/BASE; gate: slower beyond {pct:g} %")
    notes = list(result.notes)
    if result.seed_mismatches:
        pairs = ", ".join(f"{label} (BASE seed {b}, NEW seed {n})" for label, b, n in result.seed_mismatches)
        notes.append(f"seeds differ, matched anyway (one seed on each side): {pairs}")
    if result.only_base:
        notes.append(f"only in BASE (not compared): {', '.join(result.only_base)}")
    if result.only_new:
        notes.append(f"only in NEW (not compared): {', '.join(result.only_new)}")
    alarms = [c for c in result.comparisons if c.evidence == diffing.INSTRUCTIONS and c.wall_beyond and not c.fails]
    if alarms:
        notes.append(
            "wall time beyond the gate where instruction counts are not (the counts decide; a slowdown outside "
            "the instruction stream, e.g. waiting or memory stalls, would show only here): "
            + ", ".join(f"{c.label} {_wall(c.wall)}" for c in alarms)
        )
    blind = [c.label for c in result.comparisons if c.verdict is None]
    if blind:
        notes.append(f"no evidence on both sides (one side counts, the other times): {', '.join(blind)}")
    for note in notes:
        print(f"note: {note}")
    failed = [c for c in result.comparisons if c.fails]
    if failed:
        what = ", ".join(f"{c.label} ({_evidence(c)})" for c in failed)
        print(f"{len(failed)} slower beyond {pct:g} %: {what}")
        return 1
    print(f"no configuration slower beyond {pct:g} % ({len(result.comparisons)} compared)")
    return 0


def _row(c) -> list:
    from torchloops.support import stats

    seed = "-" if c.base.seed is None and c.new.seed is None else (
        str(c.base.seed) if c.base.seed == c.new.seed else f"{c.base.seed}/{c.new.seed}")
    instructions = "-" if c.instructions is None else f"{c.instructions:.4f}x"
    if c.verdict is None:
        verdict = "-"
    else:
        verdict = {stats.SAME: "≈ same"}.get(c.verdict, c.verdict) + f" ({c.evidence})"
    gate = "FAIL" if c.fails else ("ok" if c.verdict is not None else "-")
    return [c.base.workload, c.base.style, c.base.device, seed, instructions, _wall(c.wall), verdict, gate]


def _wall(estimate) -> str:
    if estimate is None:
        return "-"
    if estimate.low is None:
        return f"{estimate.point:.3f}x (no interval)"
    return f"{estimate.point:.3f}x [{estimate.low:.3f}-{estimate.high:.3f}]"


def _evidence(c) -> str:
    if c.evidence == "instructions":
        return f"instructions {c.instructions:.4f}x"
    return f"wall time {_wall(c.wall)}"


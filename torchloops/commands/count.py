"""``torchloops count``: instructions per optimizer step under valgrind's callgrind.

Every requested workload x style runs in ONE valgrind process (:mod:`torchloops.measurement.counting`);
the table goes to stdout, ``--json`` writes one record per configuration (atomically).
"""

from __future__ import annotations

import argparse
import sys

from torchloops import STYLES, WORKLOADS
from torchloops.support.console import format_table, non_negative_int, positive_int
from torchloops.support.outputs import check_output_path, write_json
from torchloops.support.console import seed as seed_type

EPILOG = """\
what is counted: per configuration, WARMUP uncounted steps, then STEPS steps with callgrind's
collection on (torch._C._valgrind_toggle); each step is what the runner times: next batch,
trainer.step, device sync; cpu, 1 thread.  Instructions (event Ir) per step = total / STEPS.

exit status:
  0  counted (table on stdout; --json written)
  1  the valgrind child failed (one line: the tail of its stderr); nothing written
  2  bad input (one line); nothing runs, nothing written
  3  counting unavailable here: valgrind missing, or torch without valgrind hooks
     (torch._C._valgrind_supported_platform() is False); one line, nothing written
"""


def add_parser(subparsers):
    from torchloops.measurement.counting import DEFAULT_STEPS, DEFAULT_WARMUP

    def _heavy(index: int) -> str:  # the workloads that declare their own (Workload.count_steps)
        declared = {name: wl.count_steps for name, wl in WORKLOADS.entries.items() if wl.count_steps}
        return ", ".join(f"{name} {pair[index]}" for name, pair in declared.items()) or "none declares other"

    c = subparsers.add_parser(
        "count",
        help="instructions per optimizer step under valgrind's callgrind (deterministic; cpu, 1 thread)",
        description="Count the instructions of steady-state optimizer steps of every requested "
        "workload x style, all in one valgrind (callgrind) process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("workload", nargs="?", default="all", choices=WORKLOADS.names() + ["all"], metavar="WORKLOAD|all")
    c.add_argument("--style", default="all", choices=STYLES.names() + ["all"])
    c.add_argument("--steps", type=positive_int, default=None,
                   help=f"counted steps per configuration (default {DEFAULT_STEPS}; {_heavy(0)})")
    c.add_argument("--warmup", type=non_negative_int, default=None,
                   help=f"uncounted steps before the counted ones (default {DEFAULT_WARMUP}; {_heavy(1)})")
    c.add_argument("--seed", type=seed_type, default=0)
    c.add_argument("--json", metavar="PATH", help="write the list of count records here (-: standard output)")
    c.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return c


def main(args) -> int:
    from torchloops.measurement import counting

    if args.json:
        check_output_path(args.json, standard_output=True)
    skipped: list = []
    planned = counting.configs(args.workload, args.style, args.seed, steps=args.steps, warmup=args.warmup,
                               skipped=skipped)
    problem = counting.valgrind_problem()
    if problem is not None:
        print(f"torchloops: cannot count instructions: {problem}", file=sys.stderr)
        return counting.EXIT_UNAVAILABLE

    def progress(done: int, total: int, label: str) -> None:
        if not args.quiet:
            print(f"torchloops count: {done}/{total} {label}", file=sys.stderr, flush=True)

    if not args.quiet:
        print(f"torchloops count: {len(planned)} configuration(s) in one valgrind process "
              "(python + torch start-up under valgrind: about a minute)", file=sys.stderr, flush=True)
    try:
        records = counting.count(planned, steps=args.steps, warmup=args.warmup, progress=progress)
    except counting.CountUnavailable as why:
        print(f"torchloops: cannot count instructions: {why}", file=sys.stderr)
        return counting.EXIT_UNAVAILABLE
    except counting.CountFailed as why:
        print(f"torchloops: error: {' '.join(str(why).split())}", file=sys.stderr)
        return 1
    rows = [[r["workload"], r["style"], str(r["steps"]), f"{r['instructions_per_step']:,.0f}"] for r in records]
    rows += [[workload, style, "-", f"skipped: {why}"] for workload, style, why in skipped]
    print(format_table(("workload", "style", "counted steps", "instructions/step"), rows))
    if args.json:
        write_json(args.json, records)
    return 0

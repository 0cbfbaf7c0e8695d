"""``torchloops compare``: every style to its quality target, next to the scikit-learn peers.

One table per workload, ``results.json`` and PNG plots in ``--out``; the runs, ratios
and peers are :mod:`torchloops.measurement.compare`'s, the plots :mod:`torchloops.measurement.plots`'.  Exit 1
when a run diverged, 2 with one line on bad input (nothing runs, nothing written).
"""

from __future__ import annotations

import os
from typing import List

from torchloops import PLACEMENTS, WORKLOADS, UsageError
from torchloops.measurement.compare import PEER_FITS, compare
from torchloops.support.console import format_table, positive_int, ratio_cell, seconds, seconds_interval
from torchloops.support.console import seed as seed_type
from torchloops.support.outputs import check_out_dir, write_json
from torchloops.measurement.plots import make_plots
from torchloops.measurement.runner import BLOCK_STEPS, BLOCK_WARMUP_STEPS

DEFAULT_OUT = os.path.join("results", "compare")
HEADERS = ("style / peer", "device", "to target", "time to target [95 % CI]", "step time [95 % CI]",
           "vs module (paired)", "vs best peer", "final metric", "% of peak", "notes")


def add_parser(subparsers):
    c = subparsers.add_parser(
        "compare", help="every style (and the sklearn peers) to its quality target: tables, results.json, plots")
    c.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                   help=f"workloads to compare (default: all): {', '.join(WORKLOADS.names())}")
    c.add_argument("--device", action="append", choices=PLACEMENTS.names(),
                   help="a placement (repeatable; default: every placement, unavailable ones listed as skipped)")
    c.add_argument("--seeds", type=positive_int, default=1, help="seeds per style (default 1)")
    c.add_argument("--seed", type=seed_type, help="first seed (default: each workload's reference median seed)")
    c.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads (default 1)")
    c.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--count", action="store_true",
                   help="also count instructions per step of every style on the cpu (callgrind, one valgrind "
                        "process, minutes): instructions_per_step in the records and the tables")
    return c


def main(args) -> int:
    check_out_dir(args.out)
    if args.count:
        from torchloops.measurement.counting import valgrind_problem

        problem = valgrind_problem()
        if problem:
            raise UsageError(f"--count: instructions cannot be counted here: {problem}")
    measured = compare(args.workloads, devices=args.device, seeds=args.seeds, seed=args.seed,
                       threads=args.threads, quiet=args.quiet, count=args.count)
    for section in measured["workloads"]:
        print_section(section)
    for skip in measured["skipped"]:
        what = skip["device"] if skip["style"] == "all" else f"{skip['workload']}/{skip['style']} on {skip['device']}"
        print(f"skipped {what}: {skip['reason']}")
    options = {"workloads": [s["workload"] for s in measured["workloads"]], "device": args.device,
               "seeds": args.seeds, "seed": args.seed, "threads": args.threads, "out": args.out}
    document = {"options": options, **measured}
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.json")
    write_json(results, document)
    paths = make_plots(document, args.out)
    print(f"wrote {results}, " + ", ".join(paths) + f" ({document['wall_s']:.1f} s)")
    return 1 if any(r.get("diverged") for r in document["records"]) else 0


def table_rows(rows: List[dict], metric: str) -> List[List[str]]:
    """The table's cells of one workload's rows (:func:`torchloops.measurement.compare.rows_of`)."""
    out = []
    for r in rows:
        if not r["reached"]:
            to_target = "not reached"
        elif r["steps_to_target"] is None:
            to_target = "closed form"  # a peer without iterations (LinearRegression)
        else:
            to_target = (f"{r['steps_to_target']:g} it" if r["kind"] == "peer" else f"step {r['steps_to_target']:g}")
        if r["runs"] > 1:
            to_target += f" ({r['reached']}/{r['runs']})"
        notes = []
        if r["dead_classes"]:
            notes.append(f"dead class {','.join(map(str, r['dead_classes']))} (never predicted)")
        if r["diverged"]:
            notes.append("DIVERGED")
        if r["kind"] == "peer" and not r["reached"]:
            notes.append(f"fit {seconds(r['fit_time_s'])}, short of the target")
        if r["convergence_warning"]:
            notes.append("ConvergenceWarning")
        if r.get("instructions_per_step"):
            notes.append(f"{r['instructions_per_step']:,.0f} instructions/step")
        share = "-" if r["peak_share"] is None else f"{100 * r['peak_share']:.3g} %"
        versus = "reference" if r["kind"] == "style" and r["style"] == "module" and r["device"] == "cpu" else \
            ratio_cell(r["vs_reference"])
        out.append([r["style"], r["device"], to_target,
                    seconds_interval(r["time_to_target_s"], r.get("time_to_target_interval_s")),
                    seconds_interval(r["step_time_median_s"], r.get("step_time_interval_s")), versus,
                    ratio_cell(r["vs_best_peer"]), f"{r['metric_value']:.4g}", share, "; ".join(notes)])
    return out


FOOTNOTE = (
    "Styles: step time = the median over blocks of each block's mean step (interleaved blocks: {warmup} steps timed "
    "apart, then {steps} timed); time to target = steps to target x step time.  sk: peers, fitted after the "
    "styles in their own phase: time = the median of {fits} fits, it = n_iter_, step time = fit time / n_iter_.  "
    "vs module: step-time ratio paired per round; vs best peer: (steps to target x block step times) over the "
    "fastest peer's fit times; [95 % bootstrap CI]; \u2248 same: interval straddles 1 or within \u00b13 %").format(
        warmup=BLOCK_WARMUP_STEPS, steps=BLOCK_STEPS, fits=PEER_FITS)


def print_section(section: dict) -> None:
    """One workload's header line, its table and its comparisons."""
    arrow = ">=" if section["higher_is_better"] else "<="
    seeds = section["seeds"]
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    if section["typical_seed"]:
        which += " (the reference's median seed)"
    print(f"\n{section['workload']}: {section['metric']} {arrow} {section['target']:g}; {which}; "
          f"{section['flops_per_step']:.3g} FLOPs/step (fwd+bwd); measured {section['dtype']} matmul peak "
          f"{section['peak_flops'] / 1e9:.1f} GFLOP/s")
    print(format_table(HEADERS, table_rows(section["rows"], section["metric"])), flush=True)
    found = section.get("as_written_vs_fastest")
    if found and found["as_written_over_fastest"]:
        counts = ""
        if found.get("as_written_instructions") and found.get("fastest_instructions"):
            counts = (f"; instructions per step {found['as_written_instructions']:,.0f} and "
                      f"{found['fastest_instructions']:,.0f} "
                      f"({found['as_written_instructions'] / found['fastest_instructions']:.2f}x)")
        print(f"as written vs fastest: as_written {seconds(found['as_written_step_s'])} a step, fastest "
              f"({found['fastest']}) {seconds(found['fastest_step_s'])}: as_written / {found['fastest']} = "
              f"{ratio_cell(found['as_written_over_fastest'])}{counts}")
    race = section.get("fastest_vs_peers")
    if race and race["peers"]:
        words = {"faster": "beats", "slower": "loses to", "same": "ties with"}
        parts = [f"{words[p['verdict']]} {p['peer']} ({ratio_cell(p['ratio'])})" for p in race["peers"]]
        print(f"fastest style to target ({race['fastest']}): " + "; ".join(parts))
    print(FOOTNOTE)

"""``torchloops converge WORKLOAD``: steps-to-target over seeds (a convergence distribution).

One row per seed, a summary line; ``--json`` writes the distribution in the format of the
shipped references (``workloads/reference/<workload>.json``), ``--check`` checks the runs
against the shipped one (exit 1 when inconsistent).  The statistics are
:mod:`torchloops.measurement.convergence`'s.
"""

from __future__ import annotations

import time
from typing import List

from torchloops import PLACEMENTS, STYLES, WORKLOADS, Unavailable, UsageError, configure
from torchloops.support.console import PROG, format_table, positive_float, positive_int, seconds
from torchloops.support.console import seed as seed_type
from torchloops.measurement.compare import machine, versions
from torchloops.support.outputs import check_output_path, write_json
from torchloops.measurement.convergence import check_cap, check_consistency, converge_runs, summarise
from torchloops.core.data import MAX_SEED
from torchloops.support.references import load_reference, reference_path

HEADERS = ("seed", "to target", "final metric", "best metric", "step median", "notes")


def add_parser(subparsers):
    v = subparsers.add_parser("converge", help="steps-to-target over seeds (a convergence distribution)")
    v.add_argument("workload", choices=WORKLOADS.names(), metavar="WORKLOAD")
    v.add_argument("--seeds", type=positive_int, default=25, help="number of seeds (default 25)")
    v.add_argument("--seed", type=seed_type, default=0, help="first seed (default 0)")
    v.add_argument("--style", default="raw", choices=STYLES.names(), help="default raw")
    v.add_argument("--device", default="cpu", choices=PLACEMENTS.names())
    v.add_argument("--lr", type=positive_float, help="override the documented learning rate")
    v.add_argument("--steps", type=positive_int, help="cap on the steps of each run")
    v.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads (default 1)")
    v.add_argument("--json", metavar="PATH", help="write the distribution (the reference format) here")
    v.add_argument("--check", action="store_true",
                   help="check the runs against the shipped reference (exit 1 when inconsistent)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    return v


def main(args) -> int:
    if args.json:
        check_output_path(args.json, standard_output=True)
    reference, steps = _reference(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    if seeds[-1] > MAX_SEED:
        raise UsageError(f"--seed + --seeds goes past the largest seed {MAX_SEED}")
    started = time.perf_counter()
    try:
        runs = converge_runs(args.workload, seeds, style=args.style, device=args.device, lr=args.lr,
                             threads=args.threads, steps=steps, quiet=args.quiet)
    except Unavailable as why:
        raise UsageError(f"--device {args.device} --style {args.style} is not available here: {why}") from None
    wall = time.perf_counter() - started
    config = configure(args.workload, args.style, args.device, seeds[0], lr=args.lr, steps=steps)
    wl = config.workload
    arrow = ">=" if wl.metric.higher_is_better else "<="
    print(f"{args.workload}: {wl.metric.name} {arrow} {wl.target:g}; style {args.style}, {args.device}, "
          f"lr {config.lr:g}, threads {args.threads}, at most {config.total_steps} steps, eval every "
          f"{config.eval_every}")
    print(format_table(HEADERS, [_row(r) for r in runs]))
    summary = summarise(runs)
    print(_summary_line(summary) + f" ({wall:.1f} s)")
    if args.json:
        write_json(args.json, _distribution(args, config, seeds, wall, summary, runs))
    if reference is not None:
        return _check(args.workload, reference, runs)
    return 0


def _reference(args):
    """``--check``: the shipped reference (else None), and the step cap of each run."""
    if not args.check:
        return None, args.steps
    reference = load_reference(args.workload)
    if reference is None:
        declared = reference_path(args.workload)
        where = f"expected {declared}" if declared else "it declares none: Workload.reference"
        raise UsageError(f"--check: no reference distribution for {args.workload} ({where})")
    cap = check_cap(reference)
    return reference, cap if args.steps is None else min(args.steps, cap)


def _row(r: dict) -> List[str]:
    notes = []
    if r.get("dead_classes"):
        notes.append(f"dead class {','.join(map(str, r['dead_classes']))}")
    if r.get("diverged"):
        notes.append("DIVERGED")
    best = "-" if r["best_metric_value"] is None else f"{r['best_metric_value']:.4g}"
    return [str(r["seed"]), f"step {r['steps_to_target']}" if r["reached"] else f"never ({r['steps']} steps)",
            f"{r['metric_value']:.4g}", best, seconds(r["step_time_median_s"]), "; ".join(notes)]


def _summary_line(summary: dict) -> str:
    line = f"{summary['reached']} of {summary['n']} seeds reach the target"
    if summary["reached"]:
        line += (f"; steps-to-target min {summary['min']}, p10 {summary['p10']:g}, median {summary['median']:g}, "
                 f"p90 {summary['p90']:g}, max {summary['max']}")
    if summary["dead_class_seeds"]:
        line += f"; dead class in seeds {summary['dead_class_seeds']}"
    return line


def _distribution(args, config, seeds, wall: float, summary: dict, runs) -> dict:
    """The ``--json`` document: the format of ``workloads/reference/<workload>.json``."""
    wl = config.workload
    return {
        "workload": args.workload, "style": args.style, "device": args.device, "threads": args.threads,
        "lr": config.lr, "target": wl.target, "metric": wl.metric.name,
        "higher_is_better": wl.metric.higher_is_better, "eval_every": config.eval_every,
        "max_steps": config.total_steps, "seeds": seeds,
        "generated_by": " ".join([PROG, "converge", args.workload, "--seeds", str(args.seeds), "--seed",
                                  str(args.seed), "--style", args.style, "--threads", str(args.threads)]),
        "generated_at": time.strftime("%Y-%m-%d"), "wall_s": round(wall, 1),
        "versions": versions(), "machine": machine(),
        "summary": summary, "runs": runs,
    }


def _check(workload: str, reference: dict, runs) -> int:
    """``--check``: the verdict against the shipped reference; exit 1 when inconsistent."""
    verdict = check_consistency(reference, runs)
    print(f"check against {reference_path(workload).name} "
          f"(seeds {reference['seeds'][0]}-{reference['seeds'][-1]}, torch {reference['versions']['torch']}):")
    for text in verdict["lines"]:
        print("  " + text)
    print("  consistent with the reference" if verdict["ok"] else "  NOT consistent with the reference")
    return 0 if verdict["ok"] else 1

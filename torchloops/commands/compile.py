"""``torchloops compile [WORKLOAD ...]``: ``torch.compile`` of the ``module`` step against eager.

One line per workload: the compile time apart from the steady-state step median, the
speed-up and the break-even step count (``--json PATH`` writes the records).  The size
options are the scaling benchmarks' (one at a time).  The measurement is
:func:`torchloops.measurement.compiled.measure`.
"""

from __future__ import annotations

from torchloops import WORKLOADS, Unavailable, UsageError
from torchloops.support.console import positive_int
from torchloops.support.console import seed as seed_type
from torchloops.support.outputs import check_output_path, write_json

MODES = ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def add_parser(subparsers):
    c = subparsers.add_parser("compile", help="torch.compile of the module step: compile time apart from the "
                              "steady-state step, against eager (a measurement, not a style)")
    c.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="default: every workload")
    c.add_argument("--steps", type=positive_int, default=300, help="steps of each of the two runs (default 300)")
    c.add_argument("--seed", type=seed_type, default=0)
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    c.add_argument("--mode", default=None, choices=MODES)
    c.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads (default 1)")
    size = c.add_mutually_exclusive_group()
    size.add_argument("--rows", type=positive_int, help="training rows (the scaling benchmarks' tiling)")
    size.add_argument("--batch-size", type=positive_int)
    size.add_argument("--hidden", type=positive_int, help="hidden width (classification, mlp_sgd, mlp_adam)")
    c.add_argument("--json", metavar="PATH", help="write the list of records here (-: standard output)")
    return c


def main(args) -> int:
    from torchloops.measurement.compiled import measure

    names = _check(args)
    scale = dict(rows=args.rows, batch_size=args.batch_size, hidden=args.hidden)
    records = []
    for name in names:
        try:
            record = measure(name, steps=args.steps, seed=args.seed, backend=args.backend, mode=args.mode,
                             threads=args.threads, device=args.device, **scale)
        except Unavailable as why:
            print(f"{name}: skipped: {why}", flush=True)
            continue
        records.append(record)
        print(describe(record), flush=True)
    if args.json:
        write_json(args.json, records)
    return 0


def _check(args) -> list:
    """The workloads to measure; every option checked before anything compiles."""
    names = list(dict.fromkeys(args.workloads)) or WORKLOADS.names()
    for name in names:
        WORKLOADS.get(name)  # an unknown name: one line listing the valid ones
    if args.json is not None:
        check_output_path(args.json, standard_output=True)
    import torch._dynamo

    if args.backend not in torch._dynamo.list_backends(exclude_tags=()):
        shown = [b for b in torch._dynamo.list_backends(exclude_tags=()) if "TESTING" not in b and "minifier" not in b]
        raise UsageError(f"--backend {args.backend!r} is not a torch.compile backend; valid: {', '.join(shown)}")
    if args.hidden is not None:
        from torchloops.measurement.benchmarking import scaling_workloads

        wrong = [n for n in names if n not in scaling_workloads()]
        if wrong:
            raise UsageError(f"--hidden applies to {', '.join(scaling_workloads())}, not {', '.join(wrong)}")
    return names


def describe(r: dict) -> str:
    """One record as the command's line."""
    if r["step_median_s"] is None:
        return _no_steady_state(r)
    pays = (f"pays back after {r['break_even_steps']:,.0f} steps" if r["break_even_steps"] is not None
            else "never pays off (the compiled step is not faster)")
    scale = "".join(f" {k}={v}" for k, v in r.get("scale", {}).items())
    return (f"{r['workload']}{scale}: compile {r['compile_s']:.1f} s ({r['backend']}); step median "
            f"{r['step_median_s'] * 1e6:.0f} us compiled vs {r['eager_step_median_s'] * 1e6:.0f} us eager "
            f"({r['speedup']:.2f}x); {pays}; max relative loss difference {r['max_rel_loss_diff']:.1e}")


def _no_steady_state(r: dict) -> str:
    """The line of a record whose every compiled call compiled: no steady-state step to compare."""
    scale = "".join(f" {k}={v}" for k, v in r.get("scale", {}).items())
    why = ("its one step compiled" if r["steps"] == 1
           else f"each of its {r['steps']} steps met a new batch shape and compiled")
    return (f"{r['workload']}{scale}: compile {r['compile_s']:.1f} s ({r['backend']}); no steady-state step "
            f"median: {why} (raise --steps); eager step median {r['eager_step_median_s'] * 1e6:.0f} us; "
            f"max relative loss difference {r['max_rel_loss_diff']:.1e}")

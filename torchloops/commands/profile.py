"""``torchloops profile WORKLOAD``: one style's training step by ATen operation (torch.profiler).

Prints the ATen operations by self CPU time per step (self time, calls, share of the
step), the share of the step spent outside ATen kernels, and FLOPs per step from
FlopCounterMode; ``--trace PATH`` writes torch.profiler's Chrome trace (Perfetto,
``chrome://tracing``).  CPU only: another ``--device`` is one line "skipped: reason".
See :mod:`torchloops.measurement.profiling` and docs/profile.md.
"""

from __future__ import annotations

from torchloops.support.console import format_table, non_negative_int, positive_int, seconds
from torchloops.support.console import seed as seed_type
from torchloops.support.outputs import check_output_path

DEFAULT_STEPS = 50
DEFAULT_WARMUP = 10
DEFAULT_TOP = 15


def add_parser(subparsers):
    from torchloops import PLACEMENTS, STYLES, WORKLOADS

    p = subparsers.add_parser("profile", help="one style's training step by ATen operation (torch.profiler), "
                              "the share outside ATen, FLOPs per step; --trace writes a Chrome trace")
    p.add_argument("workload", choices=WORKLOADS.names(), metavar="WORKLOAD")
    p.add_argument("--style", default="module", choices=STYLES.names())
    p.add_argument("--device", default="cpu", choices=PLACEMENTS.names(),
                   help="only cpu is profiled; another placement is listed as skipped")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                   help=f"profiled steady-state steps (default {DEFAULT_STEPS})")
    p.add_argument("--warmup", type=non_negative_int, default=DEFAULT_WARMUP,
                   help=f"unprofiled steps first (default {DEFAULT_WARMUP})")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--top", type=positive_int, default=DEFAULT_TOP,
                   help=f"ATen operations listed (default {DEFAULT_TOP}; the rest summed in one row)")
    p.add_argument("--trace", metavar="PATH", help="write torch.profiler's Chrome trace (JSON) here")
    return p


def _skip_reason(device: str) -> str:
    from torchloops import PLACEMENTS

    available = PLACEMENTS.get(device).availability()
    why = available.reason if not available.ok else "available here, but"
    return f"{why}; torchloops profile measures CPU steps only (--device cpu)"


def report(result, top: int = DEFAULT_TOP) -> str:
    """The command's text: a header, the ATen table, the outside-ATen share and FLOPs."""
    step = result.profiled_step_s
    rows = [[op.name, seconds(op.self_s), f"{op.calls:g}", f"{100 * op.share:.1f} %"] for op in result.ops[:top]]
    rest = result.ops[top:]
    if rest:
        rest_s = sum(op.self_s for op in rest)
        rows.append([f"({len(rest)} other ATen ops)", seconds(rest_s), f"{sum(op.calls for op in rest):g}",
                     f"{100 * rest_s / step:.1f} %"])
    rows.append(["all ATen ops (self)", seconds(result.aten_s), f"{sum(op.calls for op in result.ops):g}",
                 f"{100 * result.aten_share:.1f} %"])
    rows.append(["outside ATen (framework, Python)", seconds(max(0.0, step - result.aten_s)), "-",
                 f"{100 * result.outside_share:.1f} %"])
    lines = [
        f"{result.workload} / {result.style} on cpu: {result.steps} profiled steps after {result.warmup} warm-up "
        f"(seed {result.seed}, {result.threads} thread{'s' if result.threads != 1 else ''}); medians over the "
        f"steps; step {seconds(step)} under the profiler, {seconds(result.step_s)} without",
        format_table(("ATen op", "self time/step", "calls/step", "share of step"), rows),
        f"outside ATen kernels: {100 * result.outside_share:.1f} % of the step "
        f"(step wall time minus the ATen ops' self time)",
        f"FLOPs/step (FlopCounterMode, one real step): {result.flops:.4g}",
    ]
    if result.trace:
        lines.append(f"Chrome trace: {result.trace}")
    return "\n".join(lines)


def main(args) -> int:
    from torchloops import get_workload
    from torchloops.measurement.profiling import profile

    workload = get_workload(args.workload).name
    if args.device != "cpu":
        print(f"{workload}/{args.style} on {args.device}: skipped: {_skip_reason(args.device)}")
        return 0
    if args.trace is not None:
        check_output_path(args.trace, "--trace")
    result = profile(workload, args.style, steps=args.steps, warmup=args.warmup, seed=args.seed,
                     threads=args.threads, trace=args.trace)
    print(report(result, args.top))
    return 0

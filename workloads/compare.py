"""``torchloops compare`` and ``torchloops converge``: the main job and the convergence references.

``compare`` trains every style of each workload on every placement available in
this process to its quality target (capped at the documented length), fits the
scikit-learn estimators a user would pick instead on the same split
(:mod:`workloads.peers`), and reports one table per workload, ``results.json`` and
PNG plots (:mod:`workloads.plots`), with each workload's FLOPs per step against the
machine's measured matmul throughput (:mod:`workloads.flops`).

``converge`` records steps-to-target over seeds, the way MLPerf's reference
convergence points do.  The repository ships one such distribution per workload
in ``workloads/reference/<workload>.json`` (written by ``converge --json``), and
:func:`check_consistency` is the one-sided check a fresh set of seeds must pass:

* speed: the median steps-to-target of the fresh seeds that reach the target lies in
  ``[p10 / FACTOR - q, p90 * FACTOR + q]`` of the reference's runs that reached it,
  where ``q`` is the evaluation interval (steps-to-target is only known to within one
  interval) -- neither suspiciously faster nor slower than the reference's spread;
* reliability: the number of fresh seeds that never reach the target is not
  improbably high for the reference's never-reached rate: a one-sided binomial test
  at ``ALPHA``, with the rate Laplace-smoothed ``(never + 1) / (n + 2)`` so that a
  reference where every seed converged still allows an occasional miss.

A fresh run being checked is capped at ``p_max * FACTOR + q`` steps (``p_max``: the
reference's slowest steps-to-target; never beyond the documented length): a run
that has not reached the target by then is slower than the reference allows and
counts as never reaching it.

``add_commands(subparsers)`` adds both sub-commands to the CLI's parser and returns
their handlers by name.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch

from . import peers as _peers
from .console import check_json_path, format_table, progress_trackers, seconds_interval, positive_float, positive_int, progress_bar, seconds, write_json_atomic
from .console import seed as seed_type
from .flops import step_flops, throughputs
from .placements import PLACEMENTS
from .references import REFERENCE_DIR, load_reference, reference_path, typical_seed  # noqa: F401 (re-exported)
from .registry import WORKLOADS, UsageError
from .interleave import paired_records, run_interleaved
from .runner import BLOCK_STEPS, MAX_SEED, Unavailable, configure, run
from .stats import Estimate, format_ratio, median_interval, two_sample_ratio, verdict
from .styles import STYLES

PROG = "torchloops"
DEFAULT_OUT = os.path.join("results", "compare")
FACTOR = 1.25  # the reference band's widening (and the fresh runs' step cap) for the speed check
ALPHA = 0.01  # one-sided level of the never-reached (reliability) check


# --------------------------------------------------------------------------- argument types


# --------------------------------------------------------------------------- small helpers


def _check_out_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path!r} exists and is not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--out {path!r}: {existing!r} is not a directory")
    try:  # a real probe: os.access says yes to root even where the filesystem refuses (/proc)
        os.rmdir(tempfile.mkdtemp(prefix=".torchloops-probe-", dir=existing))
    except OSError as error:
        raise UsageError(f"--out {path!r}: cannot create folders in {existing!r} ({error.strerror})") from None


def versions() -> dict:
    import numpy
    import sklearn

    from importlib import metadata

    try:
        own = metadata.version("torchloops")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        own = "unknown"
    return {"torchloops": own, "torch": torch.__version__, "sklearn": sklearn.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


# --------------------------------------------------------------------------- convergence runs


def converge_record(result) -> dict:
    """The part of a run's record a convergence distribution keeps (one seed)."""
    history = result.history
    values = [h["metric_value"] for h in history if math.isfinite(h["metric_value"])]
    best = (max(values) if result.higher_is_better else min(values)) if values else None
    return {
        "seed": result.seed,
        "reached": result.reached_target,
        "steps_to_target": result.steps_to_target,
        "steps": result.steps,
        "metric_value": result.metric_value,
        "best_metric_value": best,
        "dead_classes": result.dead_classes,
        "diverged": result.diverged,
        "time_to_target_s": result.time_to_target_s,
        "step_time_median_s": result.step_time_median_s,
    }


def converge_runs(workload: str, seeds: Sequence[int], *, style: str = "raw", device: str = "cpu",
                  lr: Optional[float] = None, threads: int = 1, steps: Optional[int] = None,
                  quiet: bool = True) -> List[dict]:
    """Train ``workload`` once per seed until its target (capped at ``steps`` or the documented length)."""
    configs = [configure(workload, style, device, s, lr=lr, threads=threads, steps=steps, until_target=True)
               for s in seeds]  # every input checked before anything trains
    bar = progress_bar(quiet, f"converge {workload}/{style}", len(configs), unit="seed")
    out = []
    try:
        for config in configs:
            out.append(converge_record(run(config)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(runs: Sequence[dict]) -> dict:
    reached = [r["steps_to_target"] for r in runs if r["reached"]]
    summary = {
        "n": len(runs),
        "reached": len(reached),
        "never_reached": len(runs) - len(reached),
        "never_reached_seeds": [r["seed"] for r in runs if not r["reached"]],
        "dead_class_seeds": [r["seed"] for r in runs if r.get("dead_classes")],
    }
    if reached:
        summary.update(
            min=min(reached), p10=_percentile(reached, 10), median=_percentile(reached, 50),
            p90=_percentile(reached, 90), max=max(reached),
        )
    return summary


def eval_interval(workload: str) -> int:
    """The steps between evaluations: the quantum of a steps-to-target."""
    config = configure(workload, "raw", "cpu", 0, steps=1)
    return config.workload.eval_every or config.steps_per_epoch


def check_cap(reference: dict) -> int:
    """The step cap of a fresh run being checked: beyond it, it is slower than the reference allows."""
    s = reference["summary"]
    return min(reference["max_steps"], math.ceil(s["max"] * FACTOR + reference["eval_every"]))


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def check_consistency(reference: dict, fresh: Sequence[dict], factor: float = FACTOR,
                      alpha: float = ALPHA) -> dict:
    """Whether fresh seeds' steps-to-target agree with a reference distribution (see the module doc).

    Returns ``{"ok": bool, "speed_ok", "reliability_ok", "lines": [...], ...}``.
    """
    s = reference["summary"]
    q = reference["eval_every"]
    low = s["p10"] / factor - q
    high = s["p90"] * factor + q
    reached = [r["steps_to_target"] for r in fresh if r["reached"]]
    never = len(fresh) - len(reached)
    median = statistics.median(reached) if reached else None
    speed_ok = median is not None and low <= median <= high
    rate = (s["never_reached"] + 1) / (s["n"] + 2)
    p_value = _binomial_tail(never, len(fresh), rate)
    reliability_ok = p_value >= alpha
    lines = [
        f"reference: {s['n']} seeds, {s['never_reached']} never reach the target; steps-to-target "
        f"p10 {s['p10']:g}, median {s['median']:g}, p90 {s['p90']:g} (eval every {q} steps)",
        f"speed: fresh median {median if median is not None else 'n/a'} over {len(reached)} reached "
        f"of {len(fresh)}; allowed [{low:g}, {high:g}] = [p10/{factor:g} - {q}, p90*{factor:g} + {q}]: "
        + ("ok" if speed_ok else ("FAIL (faster)" if median is not None and median < low else "FAIL (slower)")),
        f"reliability: {never} of {len(fresh)} never reach it; P(>= {never} | rate {rate:.3f}) = "
        f"{p_value:.3g} {'>=' if reliability_ok else '<'} {alpha:g}: " + ("ok" if reliability_ok else "FAIL"),
    ]
    return {"ok": speed_ok and reliability_ok, "speed_ok": speed_ok, "reliability_ok": reliability_ok,
            "median": median, "band": [low, high], "never_reached": never, "p_value": p_value, "lines": lines}


CONVERGE_HEADERS = ("seed", "to target", "final metric", "best metric", "step median", "notes")


def _converge_row(r: dict) -> List[str]:
    notes = []
    if r.get("dead_classes"):
        notes.append(f"dead class {','.join(map(str, r['dead_classes']))}")
    if r.get("diverged"):
        notes.append("DIVERGED")
    best = "-" if r["best_metric_value"] is None else f"{r['best_metric_value']:.4g}"
    return [str(r["seed"]), f"step {r['steps_to_target']}" if r["reached"] else f"never ({r['steps']} steps)",
            f"{r['metric_value']:.4g}", best, seconds(r["step_time_median_s"]), "; ".join(notes)]


def cmd_converge(args) -> int:
    if args.json:
        check_json_path(args.json)
    reference = None
    steps = args.steps
    if args.check:
        reference = load_reference(args.workload)
        if reference is None:
            raise UsageError(f"--check: no reference distribution for {args.workload} "
                             f"(expected {reference_path(args.workload)})")
        cap = check_cap(reference)
        steps = cap if steps is None else min(steps, cap)
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
    print(format_table(CONVERGE_HEADERS, [_converge_row(r) for r in runs]))
    summary = summarise(runs)
    line = f"{summary['reached']} of {summary['n']} seeds reach the target"
    if summary["reached"]:
        line += (f"; steps-to-target min {summary['min']}, p10 {summary['p10']:g}, median {summary['median']:g}, "
                 f"p90 {summary['p90']:g}, max {summary['max']}")
    if summary["dead_class_seeds"]:
        line += f"; dead class in seeds {summary['dead_class_seeds']}"
    print(line + f" ({wall:.1f} s)")
    if args.json:
        payload = {
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
        write_json_atomic(args.json, payload)
    if reference is not None:
        verdict = check_consistency(reference, runs)
        print(f"check against {reference_path(args.workload).name} "
              f"(seeds {reference['seeds'][0]}-{reference['seeds'][-1]}, torch {reference['versions']['torch']}):")
        for text in verdict["lines"]:
            print("  " + text)
        print("  consistent with the reference" if verdict["ok"] else "  NOT consistent with the reference")
        return 0 if verdict["ok"] else 1
    return 0


# --------------------------------------------------------------------------- compare


COMPARE_HEADERS = ("style / peer", "device", "to target", "time to target", "step median [95 % CI]",
                   "vs module (paired)", "vs best peer", "final metric", "% of peak", "notes")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _estimate(estimate: Optional[Estimate]) -> Optional[dict]:
    if estimate is None:
        return None
    return {"ratio": estimate.point, "interval": estimate.interval, "samples": estimate.samples}


def aggregate(records: List[dict], flops_per_step: float, peak: float) -> dict:
    """One table row's numbers from the records of one style (or peer) on one placement over seeds."""
    first = records[0]
    reached = [r for r in records if r["reached_target"]]
    step_median = _median([r["step_time_median_s"] for r in records])
    blocks = [b for r in records for b in (r.get("step_time_blocks_s") or [])]
    row = {
        "kind": first.get("kind", "style"), "style": first["style"], "device": first["device"],
        "seeds": [r["seed"] for r in records], "reached": len(reached), "runs": len(records),
        "steps_to_target": _median([r["steps_to_target"] for r in reached]),
        "time_to_target_s": _median([r["time_to_target_s"] for r in reached]),
        "step_time_median_s": step_median,
        # one run: its own interval; several seeds: the interval of the median over their blocks
        "step_time_interval_s": (first.get("step_time_interval_s") if len(records) == 1
                                 else median_interval(blocks).interval if blocks else None),
        "fit_time_s": _median([r.get("fit_time_s") for r in records]),
        "metric_value": _median([r["metric_value"] for r in records]),
        "dead_classes": sorted({c for r in records for c in (r.get("dead_classes") or [])}),
        "diverged": any(r.get("diverged") for r in records),
        "convergence_warning": any(r.get("convergence_warning") for r in records),
        "vs_reference": None, "vs_best_peer": None,
    }
    row["peak_share"] = (flops_per_step / step_median / peak
                         if row["kind"] == "style" and step_median and peak else None)
    return row


def _time_to_target_samples(records: List[dict]) -> List[float]:
    """A style's time to target as ``steps_to_target x`` each block's median step time."""
    return [r["steps_to_target"] * b for r in records if r["reached_target"] for b in r["step_time_blocks_s"] or []]


def rows_of(groups: List[List[dict]], flops_per_step: float, peak: float) -> List[dict]:
    """The table rows of one workload: each style's paired ratio to ``module`` (pooled over
    seeds) and its time-to-target ratio to the fastest peer that reached the target."""
    rows = [aggregate(g, flops_per_step, peak) for g in groups]
    styles = [(row, g) for row, g in zip(rows, groups) if row["kind"] == "style"]
    reference = next((g for row, g in styles if row["style"] == "module" and row["device"] == "cpu"), None)
    peers = [(row, g) for row, g in zip(rows, groups) if row["kind"] == "peer" and row["reached"]]
    best_peer = min(peers, key=lambda p: p[0]["time_to_target_s"], default=None)
    for row, g in styles:
        if reference is not None and g is not reference:
            row["vs_reference"] = _estimate(paired_records(g, reference))
        samples = _time_to_target_samples(g)
        if best_peer is not None and samples:
            fits = [t for r in best_peer[1] for t in r.get("fit_times_s", [r["fit_time_s"]])]
            row["vs_best_peer"] = _estimate(two_sample_ratio(fits, samples))
            row["best_peer"] = best_peer[0]["style"]
    return rows


def fastest_vs_peers(groups: List[List[dict]]) -> Optional[dict]:
    """The fastest style on the CPU against every scikit-learn peer that reached the target:
    time-to-target ratio (fastest / peer) with its interval, and which one wins."""
    cpu = [g for g in groups if g[0].get("kind", "style") == "style" and g[0]["device"] == "cpu"]
    reached = [g for g in cpu if all(r["reached_target"] for r in g)]
    if not reached:
        return None
    fastest = min(reached, key=lambda g: _median([r["time_to_target_s"] for r in g]))
    samples = _time_to_target_samples(fastest)
    out = []
    for g in groups:
        if g[0].get("kind") != "peer" or not all(r["reached_target"] for r in g):
            continue
        fits = [t for r in g for t in r.get("fit_times_s", [r["fit_time_s"]])]
        estimate = two_sample_ratio(fits, samples)
        out.append({"peer": g[0]["style"], "ratio": _estimate(estimate), "verdict": verdict(estimate)})
    return {"fastest": fastest[0]["style"], "peers": out}


def as_written_vs_fastest(groups: List[List[dict]]) -> Optional[dict]:
    """The notes' program as written against the fastest style on the CPU, paired per round."""
    cpu = {g[0]["style"]: g for g in groups if g[0].get("kind", "style") == "style" and g[0]["device"] == "cpu"}
    if "as_written" not in cpu:
        return None
    fastest = min(cpu, key=lambda name: _median([r["step_time_median_s"] for r in cpu[name]]))
    estimate = paired_records(cpu["as_written"], cpu[fastest])
    return {"fastest": fastest, "as_written_step_s": _median([r["step_time_median_s"] for r in cpu["as_written"]]),
            "fastest_step_s": _median([r["step_time_median_s"] for r in cpu[fastest]]),
            "as_written_over_fastest": _estimate(estimate)}


def _ratio_cell(found: Optional[dict]) -> str:
    if not found:
        return "-"
    low, high = found["interval"] or (None, None)
    return format_ratio(Estimate(found["ratio"], low, high, found["samples"]))


def table_rows(rows: List[dict], metric: str) -> List[List[str]]:
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
            _ratio_cell(r["vs_reference"])
        out.append([r["style"], r["device"], to_target, seconds(r["time_to_target_s"]),
                    seconds_interval(r["step_time_median_s"], r.get("step_time_interval_s")), versus,
                    _ratio_cell(r["vs_best_peer"]), f"{r['metric_value']:.4g}", share, "; ".join(notes)])
    return out


def _plan(args) -> dict:
    """Every run of the comparison, configured (and so checked) before anything trains."""
    names = list(dict.fromkeys(args.workloads)) or WORKLOADS.names()
    for name in names:
        WORKLOADS.get(name)  # an unknown name: a UsageError that lists the valid ones
    devices = args.device or PLACEMENTS.names()
    plan = {"workloads": [], "skipped": []}
    for name in names:
        wl = WORKLOADS.get(name)
        first = args.seed if args.seed is not None else typical_seed(name)
        seeds = list(range(first, first + args.seeds))
        if seeds[-1] > MAX_SEED:
            raise UsageError(f"--seed + --seeds goes past the largest seed {MAX_SEED}")
        entry = {"workload": wl, "seeds": seeds, "typical_seed": args.seed is None, "configs": []}
        for device in devices:
            placement = PLACEMENTS.get(device)
            available = placement.availability()
            if not available.ok:
                if name == names[0]:
                    plan["skipped"].append({"device": device, "style": "all", "reason": available.reason})
                continue
            for style in STYLES.names():
                try:
                    configs = [configure(name, style, device, s, threads=args.threads, until_target=True)
                               for s in seeds]
                except Unavailable as why:
                    plan["skipped"].append({"workload": name, "device": device, "style": style, "reason": str(why)})
                    continue
                entry["configs"].append(configs)
        plan["workloads"].append(entry)
    return plan


PEER_FITS = 5  # each scikit-learn peer is fitted this many times, spread over the interleaved rounds


def _run_workload(entry: dict, args, split) -> List[List[dict]]:
    """Every style x placement of one workload, interleaved per seed, and the peers fitted
    between rounds; returns the records grouped per style (or peer) over the seeds."""
    wl = entry["workload"]
    style_groups = [[] for _ in entry["configs"]]
    peers = _peers.peers_for(wl.name)
    peer_groups = [[] for _ in peers]
    for k, seed in enumerate(entry["seeds"]):
        configs = [configs[k] for configs in entry["configs"]]
        data = split if k == 0 else wl.make_data(seed)
        fits = [[] for _ in peers]
        every = max(1, _expected_rounds(configs) // PEER_FITS)

        def fit_peers(round_index: int) -> None:
            if round_index % every == every - 1:
                for peer, done in zip(peers, fits):
                    if len(done) < PEER_FITS:
                        done.append(_peers.fit_peer(wl, peer, data, seed, args.threads))

        bar = progress_bar(args.quiet, f"{wl.name} seed {seed}", sum(c.total_steps for c in configs))
        progress = progress_trackers(bar, len(configs))
        try:
            results = run_interleaved(configs, reference=_reference_index(configs), progress=progress,
                                      between_rounds=fit_peers if peers else None)
        finally:
            if bar is not None:
                bar.close()
        for group, result in zip(style_groups, results):
            record = dict(result.to_dict(), kind="style")
            record.pop("step_losses", None)
            group.append(record)
        for peer, done, group in zip(peers, fits, peer_groups):
            while len(done) < min(3, PEER_FITS):  # a short run: the remaining fits after it
                done.append(_peers.fit_peer(wl, peer, data, seed, args.threads))
            group.append(_peer_record(done))
    return style_groups + peer_groups


def _expected_rounds(configs) -> int:
    """Rounds the group will take: to the reference's median steps-to-target when known."""
    reference = load_reference(configs[0].workload.name)
    steps = configs[0].total_steps
    if reference and reference["summary"].get("median"):
        steps = min(steps, int(reference["summary"]["median"]))
    return max(1, steps // BLOCK_STEPS)


def _reference_index(configs) -> int:
    """The ``module`` style on the CPU (else the first configuration) is every ratio's reference."""
    keys = [(c.style.name, c.placement.name) for c in configs]
    for wanted in (("module", "cpu"), ("module", configs[0].placement.name)):
        if wanted in keys:
            return keys.index(wanted)
    return 0


def _add_counts(records: List[dict], sections: List[dict]) -> None:
    """``--count``: instructions per step of every cpu style record (one valgrind process),
    into the records, the table rows and the as-written line."""
    from .counting import count

    wanted = [r for r in records if r.get("kind") == "style" and r["device"] == "cpu"]
    counted = count([(r["workload"], r["style"], r["seed"]) for r in wanted])
    by_key = {(c["workload"], c["style"], c["seed"]): c["instructions_per_step"] for c in counted}
    for record in wanted:
        record["instructions_per_step"] = by_key[(record["workload"], record["style"], record["seed"])]
    for section in sections:
        for row in section["rows"]:
            values = [by_key.get((section["workload"], row["style"], seed)) for seed in row["seeds"]
                      if row["kind"] == "style" and row["device"] == "cpu"]
            row["instructions_per_step"] = _median(values)
        found = section.get("as_written_vs_fastest")
        if found:
            seed = section["seeds"][0]
            found["as_written_instructions"] = by_key.get((section["workload"], "as_written", seed))
            found["fastest_instructions"] = by_key.get((section["workload"], found["fastest"], seed))


def _peer_record(fits: List[dict]) -> dict:
    """One peer's record over repeated fits: the median fit, with every fit time kept."""
    times = [f["fit_time_s"] for f in fits]
    record = dict(sorted(fits, key=lambda f: f["fit_time_s"])[len(fits) // 2])
    record["fit_times_s"] = times
    return record


def compare(args, out=None) -> dict:
    """Run the comparison of ``args`` (the parsed ``compare`` command); returns the results document."""
    out = sys.stdout if out is None else out
    _check_out_dir(args.out)
    if getattr(args, "count", False):
        from .counting import valgrind_problem

        problem = valgrind_problem()
        if problem:
            raise UsageError(f"--count: instructions cannot be counted here: {problem}")
    started = time.perf_counter()
    plan = _plan(args)
    dtypes = sorted({e["workload"].dtype for e in plan["workloads"]}, key=str)
    peaks = throughputs(dtypes, args.threads)
    records, sections = [], []
    for entry in plan["workloads"]:
        wl = entry["workload"]
        split = wl.make_data(entry["seeds"][0])
        flops = step_flops(wl, entry["seeds"][0], wl.batch_size)
        peak = peaks[str(wl.dtype).replace("torch.", "")]
        groups = _run_workload(entry, args, split)
        rows = rows_of(groups, flops, peak)
        for g in groups:
            records.extend(g)
        section = {
            "workload": wl.name, "metric": wl.metric.name, "higher_is_better": wl.metric.higher_is_better,
            "target": wl.target, "seeds": entry["seeds"], "typical_seed": entry["typical_seed"],
            "dtype": str(wl.dtype).replace("torch.", ""), "flops_per_step": flops,
            "peak_flops": peak, "rows": rows, "as_written_vs_fastest": as_written_vs_fastest(groups),
            "fastest_vs_peers": fastest_vs_peers(groups),
        }
        sections.append(section)
    if getattr(args, "count", False):
        _add_counts(records, sections)
    # The machine is shared: measure the peak again after the runs and keep the better of the two.
    for dtype, value in throughputs(dtypes, args.threads).items():
        peaks[dtype] = max(peaks[dtype], value)
    for section in sections:
        section["peak_flops"] = peaks[section["dtype"]]
        for row in section["rows"]:
            if row["peak_share"] is not None:
                row["peak_share"] = section["flops_per_step"] / row["step_time_median_s"] / section["peak_flops"]
        _print_section(section, out)
    wall = time.perf_counter() - started
    for skip in plan["skipped"]:
        what = skip["device"] if skip["style"] == "all" else f"{skip['workload']}/{skip['style']} on {skip['device']}"
        print(f"skipped {what}: {skip['reason']}", file=out)
    document = {
        "options": {"workloads": [e["workload"].name for e in plan["workloads"]], "device": args.device,
                    "seeds": args.seeds, "seed": args.seed, "threads": args.threads, "out": args.out},
        "machine": machine(), "versions": versions(), "threads": args.threads,
        "peak_matmul_flops": peaks, "wall_s": wall, "workloads": sections,
        "skipped": plan["skipped"], "records": records,
    }
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "results.json"), document)
    from .plots import make_plots

    paths = make_plots(document, args.out)
    print(f"wrote {os.path.join(args.out, 'results.json')}, " + ", ".join(paths) + f" ({wall:.1f} s)", file=out)
    return document


COMPARE_FOOTNOTE = (
    "sk: peers: time = the median of the fits, it = n_iter_, step median = fit time / n_iter_.  Styles run "
    "interleaved in blocks of 10 steps; vs module: step-time ratio paired per round; vs best peer: (steps to "
    "target x block step times) over the fastest peer's fit times; [95 % bootstrap CI]; \u2248 same: "
    "interval straddles 1 or within \u00b13 %")


def _print_section(section: dict, out) -> None:
    arrow = ">=" if section["higher_is_better"] else "<="
    seeds = section["seeds"]
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    if section["typical_seed"]:
        which += " (the reference's median seed)"
    print(f"\n{section['workload']}: {section['metric']} {arrow} {section['target']:g}; {which}; "
          f"{section['flops_per_step']:.3g} FLOPs/step (fwd+bwd); measured {section['dtype']} matmul peak "
          f"{section['peak_flops'] / 1e9:.1f} GFLOP/s", file=out)
    print(format_table(COMPARE_HEADERS, table_rows(section["rows"], section["metric"])), file=out, flush=True)
    found = section.get("as_written_vs_fastest")
    if found and found["as_written_over_fastest"]:
        counts = ""
        if found.get("as_written_instructions") and found.get("fastest_instructions"):
            counts = (f"; instructions per step {found['as_written_instructions']:,.0f} and "
                      f"{found['fastest_instructions']:,.0f} "
                      f"({found['as_written_instructions'] / found['fastest_instructions']:.2f}x)")
        print(f"as written vs fastest: as_written {seconds(found['as_written_step_s'])} a step, fastest "
              f"({found['fastest']}) {seconds(found['fastest_step_s'])}: as_written / {found['fastest']} = "
              f"{_ratio_cell(found['as_written_over_fastest'])}{counts}", file=out)
    race = section.get("fastest_vs_peers")
    if race and race["peers"]:
        words = {"faster": "beats", "slower": "loses to", "same": "ties with"}
        parts = [f"{words[p['verdict']]} {p['peer']} ({_ratio_cell(p['ratio'])})" for p in race["peers"]]
        print(f"fastest style to target ({race['fastest']}): " + "; ".join(parts), file=out)
    print(COMPARE_FOOTNOTE, file=out)


def cmd_compare(args) -> int:
    document = compare(args)
    return 1 if any(r.get("diverged") for r in document["records"]) else 0


# --------------------------------------------------------------------------- the parsers


def add_commands(subparsers) -> Dict[str, callable]:
    """Add ``compare`` and ``converge`` to the CLI's sub-parsers; returns their handlers by name."""
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
    return {"compare": cmd_compare, "converge": cmd_converge}

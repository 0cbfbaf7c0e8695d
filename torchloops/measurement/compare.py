"""The measurement of ``torchloops compare`` (:mod:`torchloops.commands.compare`): the main job.

Every style of each workload on every placement available in this process is trained
to its quality target (capped at the documented length), interleaved per seed
(:mod:`torchloops.measurement.interleave`); the scikit-learn estimators a user would pick instead
are fitted on the same split after the styles, in their own phase (:mod:`torchloops.measurement.peers`).  Each
workload's FLOPs per step is set against the machine's measured matmul throughput
(:mod:`torchloops.measurement.flops`).  :func:`compare` returns the results document (each
workload's table rows, every record); the command prints the tables and writes
``results.json`` and the plots (:mod:`torchloops.measurement.plots`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import List, Optional, Sequence

import torch

from torchloops.measurement import peers as _peers
from torchloops.support.console import progress_bar, progress_trackers
from torchloops.measurement.flops import peak_applies, step_flops, throughputs
from torchloops.measurement.interleave import paired_records, run_interleaved
from torchloops.execution.placements import PLACEMENTS
from torchloops.support.references import typical_seed
from torchloops.core.registry import WORKLOADS, UsageError
from torchloops.core.data import MAX_SEED
from torchloops.measurement.runner import Unavailable, configure
from torchloops.support.stats import Estimate, median_interval, two_sample_ratio, verdict
from torchloops.execution.styles import STYLES


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
        # one run: steps to target x the step time's interval (a peer: its fit times' interval);
        # several seeds: the interval of the median over the seeds' times
        "time_to_target_interval_s": (reached[0].get("time_to_target_interval_s") if len(records) == 1 and reached
                                      else median_interval([r["time_to_target_s"] for r in reached]).interval
                                      if reached else None),
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
    row["peak_share"] = (flops_per_step / step_median / peak  # the CPU's peak: CPU rows only
                         if row["kind"] == "style" and step_median and peak and peak_applies(first) else None)
    return row


def _time_to_target_samples(records: List[dict]) -> List[float]:
    """A style's time to target as ``steps_to_target x`` each block's mean step time (the samples
    whose median is the record's ``time_to_target_s``)."""
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




def _plan(workloads: Sequence[str], devices: Optional[Sequence[str]], seeds: int, seed: Optional[int],
          threads: int) -> dict:
    """Every run of the comparison, configured (and so checked) before anything trains."""
    names = list(dict.fromkeys(workloads)) or WORKLOADS.names()
    for name in names:
        WORKLOADS.get(name)  # an unknown name: a UsageError that lists the valid ones
    plan = {"workloads": [], "skipped": []}
    for name in names:
        wl = WORKLOADS.get(name)
        first = seed if seed is not None else typical_seed(name)
        entry = {"workload": wl, "seeds": list(range(first, first + seeds)), "typical_seed": seed is None,
                 "configs": []}
        if entry["seeds"][-1] > MAX_SEED:
            raise UsageError(f"--seed + --seeds goes past the largest seed {MAX_SEED}")
        for device in devices or PLACEMENTS.names():
            available = PLACEMENTS.get(device).availability()
            if not available.ok:
                if name == names[0]:
                    plan["skipped"].append({"device": device, "style": "all", "reason": available.reason})
                continue
            for style in STYLES.names():
                try:
                    configs = [configure(name, style, device, s, threads=threads, until_target=True)
                               for s in entry["seeds"]]
                except Unavailable as why:
                    plan["skipped"].append({"workload": name, "device": device, "style": style, "reason": str(why)})
                    continue
                entry["configs"].append(configs)
        if entry["configs"]:
            plan["workloads"].append(entry)
    if not plan["workloads"]:
        reasons = "; ".join(f"{skip['device']}: {skip['reason']}" for skip in plan["skipped"])
        here = [p.name for p in PLACEMENTS.entries.values() if p.availability().ok]
        raise UsageError(f"nothing to compare: {reasons}; valid here: --device {', '.join(here)}")
    return plan


PEER_FITS = 5  # timed fits of each scikit-learn peer (after one untimed), in their own phase after the styles


def _run_workload(entry: dict, split, threads: int, quiet: bool) -> List[List[dict]]:
    """Every style x placement of one workload, interleaved per seed, then the peers fitted in
    their own phase; returns the records grouped per style (or peer) over the seeds."""
    wl = entry["workload"]
    style_groups = [[] for _ in entry["configs"]]
    peers = _peers.peers_for(wl.name)
    peer_groups = [[] for _ in peers]
    for k, seed in enumerate(entry["seeds"]):
        configs = [configs[k] for configs in entry["configs"]]
        bar = progress_bar(quiet, f"{wl.name} seed {seed}", sum(c.total_steps for c in configs))
        progress = progress_trackers(bar, len(configs))
        try:
            results = run_interleaved(configs, reference=_reference_index(configs), progress=progress)
        finally:
            if bar is not None:
                bar.close()
        for group, result in zip(style_groups, results):
            record = dict(result.to_dict(), kind="style")
            record.pop("step_losses", None)
            group.append(record)
        for group, record in zip(peer_groups, _fit_peers(wl, peers, split if k == 0 else wl.make_data(seed),
                                                         seed, threads)):
            group.append(record)
    return style_groups + peer_groups


def _fit_peers(wl, peers, data, seed: int, threads: int) -> List[dict]:
    """Each peer fitted once untimed (its one-off costs: lazy imports, first LAPACK call), then
    ``PEER_FITS`` times, the peers alternated fit by fit (their own phase: a fit's BLAS and
    memory traffic never lands between two blocks of a style)."""
    for peer in peers:
        _peers.fit_peer(wl, peer, data, seed, threads)
    fits = [[] for _ in peers]
    for _ in range(PEER_FITS):
        for peer, done in zip(peers, fits):
            done.append(_peers.fit_peer(wl, peer, data, seed, threads))
    return [_peer_record(done) for done in fits]


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
    from torchloops.measurement.counting import count

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
    """One peer's record over repeated fits (same seed, same model): the median fit time with its
    bootstrap interval, every fit time kept; its time to target is that fit time when it reached."""
    times = [f["fit_time_s"] for f in fits]
    fit_time = median_interval(times)
    record = dict(fits[0], fit_time_s=fit_time.point, fit_time_interval_s=fit_time.interval, fit_times_s=times)
    if record.get("n_iter"):
        record["step_time_median_s"] = fit_time.point / record["n_iter"]  # mean per iteration
    if record["reached_target"]:
        record["time_to_target_s"], record["time_to_target_interval_s"] = fit_time.point, fit_time.interval
    return record


def _measure_workload(entry: dict, peak: float, threads: int, quiet: bool):
    """One workload's section of the document (its table rows) and its records."""
    wl = entry["workload"]
    split = wl.make_data(entry["seeds"][0])
    flops = step_flops(wl, entry["seeds"][0], wl.batch_size)
    groups = _run_workload(entry, split, threads, quiet)
    section = {
        "workload": wl.name, "metric": wl.metric.name, "higher_is_better": wl.metric.higher_is_better,
        "target": wl.target, "seeds": entry["seeds"], "typical_seed": entry["typical_seed"],
        "dtype": str(wl.dtype).replace("torch.", ""), "flops_per_step": flops,
        "peak_flops": peak, "rows": rows_of(groups, flops, peak), "as_written_vs_fastest": as_written_vs_fastest(groups),
        "fastest_vs_peers": fastest_vs_peers(groups),
    }
    return section, [r for g in groups for r in g]


def compare(workloads: Sequence[str] = (), *, devices: Optional[Sequence[str]] = None, seeds: int = 1,
            seed: Optional[int] = None, threads: int = 1, quiet: bool = True, count: bool = False) -> dict:
    """Every style (and peer) of ``workloads`` (default all) on ``devices`` (default every
    placement; unavailable ones listed as skipped), over ``seeds`` seeds from ``seed`` (default
    each workload's reference median seed); ``count``: instructions per step of the cpu styles
    too (callgrind).  Returns the results document (without its ``options``)."""
    started = time.perf_counter()
    plan = _plan(workloads, devices, seeds, seed, threads)
    dtypes = sorted({e["workload"].dtype for e in plan["workloads"]}, key=str)
    peaks = throughputs(dtypes, threads)
    records, sections = [], []
    for entry in plan["workloads"]:
        peak = peaks[str(entry["workload"].dtype).replace("torch.", "")]
        section, measured = _measure_workload(entry, peak, threads, quiet)
        sections.append(section)
        records.extend(measured)
    if count:
        _add_counts(records, sections)
    # The machine is shared: measure the peak again after the runs and keep the better of the two.
    for dtype, value in throughputs(dtypes, threads).items():
        peaks[dtype] = max(peaks[dtype], value)
    for section in sections:
        section["peak_flops"] = peaks[section["dtype"]]
        for row in section["rows"]:
            if row["peak_share"] is not None:
                row["peak_share"] = section["flops_per_step"] / row["step_time_median_s"] / section["peak_flops"]
    return {
        "machine": machine(), "versions": versions(), "threads": threads,
        "peak_matmul_flops": peaks, "wall_s": time.perf_counter() - started, "workloads": sections,
        "skipped": plan["skipped"], "records": records,
    }

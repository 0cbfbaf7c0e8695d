#!/usr/bin/env python
"""GPU check: every workload x style on ``cuda``, ``cuda_graph`` and ``dataparallel`` (and
``ddp`` with nccl when two or more GPUs are visible) trained to its quality target, in one table.

    python scripts/gpu_check.py                 # about 5-8 minutes on one GPU
    python scripts/gpu_check.py --json gpu.json --budget-s 300
    python scripts/gpu_check.py --placements cpu --ddp-nproc 2 --budget-s 30   # a CPU dry run of the script

For each run the table gives the steps trained, the step at which the target was
reached, the time to target (timed steps only), the median step time and the
peak GPU memory (``torch.cuda.max_memory_allocated`` on the first GPU of the
placement; ddp: rank 0's GPU).

Time is bounded: a short probe measures each run's step time, and the run is
capped at the steps that fit its share of ``--budget-s`` (a capped run that
misses its target says so).  ddp is launched with ``torchloops run ... --device
ddp --nproc N`` (torchrun --standalone) once per workload, capped at the step
where the single-GPU run reached the target (DDP follows the same trajectory).

CUDA graphs: every style the ``cuda_graph`` placement captures is also run for
``GRAPH_STEPS`` steps on ``cuda`` and on ``cuda_graph`` from the same start; the two
loss trajectories must agree (float32 relative 1e-4, float64 1e-9, as the GPU tests),
and a table gives each one's median step time and the speed-up of replaying.

Exit status: 0 when every applicable run reached its target and every graphed
trajectory matched; 1 when some did not (or a workload has no target set); 2 when no
GPU is usable here (nothing was run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import workloads as W  # noqa: E402
from workloads.console import format_table, seconds  # noqa: E402

PROBE_STEPS = 30
GRAPH_STEPS = 60  # steps of the eager-vs-graphed trajectory comparison
GRAPH_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
HEADERS = ("placement", "workload", "style", "steps", "metric", "target", "reached", "time to target",
           "step median", "peak GPU mem", "notes")


def mib(value):
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def row(placement, record, note=""):
    arrow = ">=" if record["higher_is_better"] else "<="
    reached = f"step {record['steps_to_target']}" if record["reached_target"] else "NO"
    notes = [note] if note else []
    if math.isnan(record["target"]):
        notes.append("no target set for this workload")
    if record["diverged"]:
        notes.append("DIVERGED")
    if record.get("graph_replays") is not None:
        notes.append(f"{record['graph_replays']} replays of {record['graph_captures']} graph(s)")
    return [placement, record["workload"], record["style"], str(record["steps"]),
            f"{record['metric_value']:.4g}", f"{arrow} {record['target']:g}", reached,
            seconds(record["time_to_target_s"]), seconds(record["step_time_median_s"]),
            mib(record.get("peak_gpu_memory_bytes")), "; ".join(notes)]


def skipped_row(placement, workload, style, why):
    return [placement, workload, style] + ["-"] * 7 + [f"skipped: {why}"]


def single_process_run(placement, workload, style, per_run_s, seed):
    """Probe the step time, then train until the target within the run's time share."""
    full = W.configure(workload, style, placement, seed, until_target=True)
    probe = W.run(W.configure(workload, style, placement, seed, steps=min(PROBE_STEPS, full.total_steps)))
    fits = max(PROBE_STEPS, int(per_run_s / max(probe.step_time_median_s, 1e-7)))
    cap = min(full.total_steps, fits)
    config = W.configure(workload, style, placement, seed, steps=cap, until_target=True)
    record = W.run(config).to_dict()
    note = ""
    if cap < full.total_steps and not record["reached_target"]:
        note = f"capped at {cap} of {full.total_steps} steps by the time budget"
    return record, note


def ddp_runs(nproc, workload, cap, seed, total_steps):
    """One torchrun launch for every style of a workload; rank 0's records."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "ddp.json")
        cmd = [sys.executable, "-m", "workloads", "run", workload, "--style", "all", "--device", "ddp",
               "--nproc", str(nproc), "--seed", str(seed), "--until-target", "--quiet", "--json", out]
        if cap < total_steps:
            cmd += ["--steps", str(cap)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(HERE))
        if proc.returncode not in (0, 1) or not os.path.exists(out):
            raise RuntimeError(f"ddp launch failed (status {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        with open(out) as handle:
            return json.load(handle)


def graph_comparison(seed):
    """Every captured style, ``GRAPH_STEPS`` steps on cuda and on cuda_graph: (rows, failures)."""
    rows, failures = [], 0
    graph = W.PLACEMENTS.get("cuda_graph")
    for workload in W.workload_names():
        rtol = GRAPH_RTOL[W.get_workload(workload).dtype]
        for style in W.STYLES.names():
            if not graph.applies_to(W.STYLES.get(style)).ok:
                continue
            runs = {}
            for placement in ("cuda", "cuda_graph"):
                config = W.configure(workload, style, placement, seed, steps=GRAPH_STEPS)
                runs[placement] = W.run(config, record_step_losses=True)
            eager, graphed = runs["cuda"], runs["cuda_graph"]
            worst = max(abs(a - b) / max(abs(a), 1e-300) for a, b in zip(eager.step_losses, graphed.step_losses))
            ok = worst <= rtol and len(eager.step_losses) == len(graphed.step_losses)
            failures += not ok
            rows.append([workload, style, seconds(eager.step_time_median_s), seconds(graphed.step_time_median_s),
                         f"{eager.step_time_median_s / graphed.step_time_median_s:.2f}x",
                         f"{graphed.graph_replays}/{graphed.steps}", f"{worst:.1e}", "ok" if ok else f"MISMATCH > {rtol:g}"])
            print(f"  graphs {workload:14s} {style:10s} speed-up {rows[-1][4]}  max rel diff {worst:.1e}", flush=True)
    return rows, failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="training time shared by the cuda and dataparallel runs (default 330 s)")
    parser.add_argument("--ddp-budget-s", type=float, default=100.0,
                        help="training time shared by the ddp runs (default 100 s, plus ~10 s start-up a workload)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--placements", default="cuda,cuda_graph,dataparallel",
                        help="single-process placements to check (default cuda,cuda_graph,dataparallel)")
    parser.add_argument("--no-graph-comparison", action="store_true",
                        help="skip the eager-vs-graphed trajectory and speed table")
    parser.add_argument("--ddp-nproc", type=int,
                        help="ranks of the ddp runs (default: the visible GPUs when 2+; 0: no ddp)")
    parser.add_argument("--json", help="write every record here")
    args = parser.parse_args(argv)

    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    for name in placements:
        W.PLACEMENTS.get(name)  # an unknown name fails here, listing the valid ones
    usable = [p for p in placements if W.PLACEMENTS.get(p).availability().ok]
    if not usable:
        reasons = "; ".join(f"{p}: {W.PLACEMENTS.get(p).availability().reason}" for p in placements)
        print(f"gpu_check: nothing run: {reasons}", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if W.PLACEMENTS.get("cuda").availability().ok else 0
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} GPU(s): "
          f"{', '.join(names) or '-'}; placements {', '.join(placements)}", flush=True)
    nproc = args.ddp_nproc if args.ddp_nproc is not None else (gpus if gpus >= 2 else 0)
    started = time.perf_counter()
    combos = [(p, w, s) for p in placements for w in W.workload_names() for s in W.STYLES.names()]
    applicable = [c for c in combos if W.PLACEMENTS.get(c[0]).availability().ok
                  and W.PLACEMENTS.get(c[0]).applies_to(W.STYLES.get(c[2])).ok]
    per_run_s = args.budget_s / len(applicable)

    rows, records, failures = [], [], 0
    reached_at = {}  # workload -> steps to target of the module style, to cap the ddp runs
    slowest = {}  # workload -> the slowest style's median step time, to cap the ddp runs
    for placement, workload, style in combos:
        p = W.PLACEMENTS.get(placement)
        why = p.availability()
        if why.ok:
            why = p.applies_to(W.STYLES.get(style))
        if not why.ok:
            rows.append(skipped_row(placement, workload, style, why.reason))
            print(f"  {placement:12s} {workload:14s} {style:10s} skipped: {why.reason}", flush=True)
            continue
        record, note = single_process_run(placement, workload, style, per_run_s, args.seed)
        records.append(record)
        rows.append(row(placement, record, note))
        failures += not record["reached_target"]
        if placement == usable[0]:
            slowest[workload] = max(slowest.get(workload, 0.0), record["step_time_median_s"])
            if style == "module":
                reached_at[workload] = record["steps_to_target"] or record["steps"]
        print(f"  {placement:12s} {workload:14s} {style:10s} steps {record['steps']:6d}  "
              f"reached {record['reached_target']}  median {seconds(record['step_time_median_s'])}  "
              f"elapsed {time.perf_counter() - started:.0f} s", flush=True)

    if nproc >= 2:
        for workload in W.workload_names():
            total = W.configure(workload, "module", "cpu", args.seed).total_steps
            # ddp follows the single-process trajectory: the target comes at the same step.
            # Time cap: every style runs these steps, each (with communication) ~2x the slowest style's.
            cap = min(total, 2 * reached_at[workload]) if workload in reached_at else total
            if workload in slowest:
                share = args.ddp_budget_s / len(W.workload_names())
                per_step = 2 * slowest[workload] * len(W.STYLES.names())
                cap = min(cap, max(PROBE_STEPS, int(share / per_step)))
            try:
                ddp_records = ddp_runs(nproc, workload, cap, args.seed, total)
            except RuntimeError as error:
                rows.append(skipped_row("ddp", workload, "all", str(error).splitlines()[0]))
                failures += 1
                continue
            for record in ddp_records:
                records.append(record)
                note = ""
                if cap < total and not record["reached_target"]:
                    note = f"capped at {cap} of {total} steps by the time budget"
                rows.append(row(f"ddp {record['world_size']}x{record['backend']}", record, note))
                failures += not record["reached_target"]
            print(f"  ddp x{nproc} {workload:14s} done, elapsed {time.perf_counter() - started:.0f} s", flush=True)
    else:
        why = f"needs 2+ GPUs ({gpus} visible)" if args.ddp_nproc is None else "--ddp-nproc below 2"
        rows.append(skipped_row("ddp", "all", "all", why))

    graph_rows = []
    if not args.no_graph_comparison and W.PLACEMENTS.get("cuda_graph").availability().ok:
        graph_rows, mismatches = graph_comparison(args.seed)
        failures += mismatches

    elapsed = time.perf_counter() - started
    verdict = f"{failures} did not reach the target or match" if failures else "every run reached its target"
    print()
    print(format_table(HEADERS, rows))
    if graph_rows:
        print(f"\nCUDA graphs: {GRAPH_STEPS} steps on cuda and on cuda_graph from the same start")
        print(format_table(("workload", "style", "cuda step", "cuda_graph step", "speed-up", "replays/steps",
                            "max rel diff", "trajectory"), graph_rows))
    print(f"\ngpu_check: {len(records)} runs in {elapsed:.0f} s; {verdict}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"gpus": names, "elapsed_s": elapsed, "records": records}, handle, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

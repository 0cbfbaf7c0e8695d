#!/usr/bin/env python
"""GPU check: every workload x style on ``cuda``, ``cuda_graph`` and ``dataparallel`` (and
``ddp`` with nccl when two or more GPUs are visible) trained to its quality target, in one table.

    python scripts/gpu_check.py                       # on a GPU machine: about 6-10 minutes
    python scripts/gpu_check.py --json gpu.json --budget-s 300
    python scripts/gpu_check.py --dry-run             # the same plan on the CPU placement (~30 s on 2 cores)

For each run the table gives the steps trained, the step at which the target was
reached, the time to target (timed steps only), the median step time and the
peak GPU memory (``torch.cuda.max_memory_allocated`` on the first GPU of the
placement; ddp: rank 0's GPU).

Isolation.  The single-process runs go to a worker process (one at a time; it is
reused while runs succeed, so CUDA starts once).  A run that raises (an error, a
capture refused, out of memory) is a row saying so, and the worker is replaced
before the next run; a run that outlives its timeout is killed with its worker
(its whole process group) and is a row saying so; the check goes on either way.
ddp is launched with ``torchloops run ... --device ddp --nproc N --backend B``
once per workload, under the same kind of timeout.

Time.  ``--budget-s`` covers all the work: single-process runs (their probes
included), the CUDA-graph comparison and the ddp launches.  Before each job the
time left is shared among the jobs left (by weight: a ddp launch trains every
style); a training run is capped at the steps that fit its share (a short probe
measures the step time), and a job is killed at its share plus ``--grace-s``
(start-up, CUDA initialisation, capture).  A job for which no time is left is a
row "not run".  So the check ends within the budget plus one grace period.

CUDA graphs: every style the ``cuda_graph`` placement captures is also run for
``GRAPH_STEPS`` steps on ``cuda`` and on ``cuda_graph`` from the same start; the two
loss trajectories must agree (float32 relative 1e-4, float64 1e-9, as the GPU tests),
and a table gives each one's median step time and the speed-up of replaying.

Dry run (``--dry-run``): the same plan, the same worker, timeouts, budget, table,
JSON and exit status, on the CPU: every run of the plan trains with the ``cpu``
placement (``cuda_graph``'s with the CPU model of capture and replay,
``workloads.graphs.TracedGraphs``), each capped at ``--steps`` (default 4), so it
tests the script's own logic in seconds; ddp (only with ``--ddp-nproc N``) uses gloo.
Capped at 4 steps no run reaches its target, so a full dry run ends with status 1.

Exit status:
  0  every run reached its target and every graphed trajectory matched;
  1  some run missed its target, diverged, did not match, or was not run (budget spent);
  2  bad arguments (one line on stderr, nothing run);
  3  some run crashed: an exception, a refused capture, out of memory, a timeout, a
     dead worker or a failed ddp launch (takes precedence over 1);
  4  no GPU is usable here (nothing run; one line on stderr naming why).

For the tests only: the environment variable ``TORCHLOOPS_GPU_CHECK_FAULT`` =
``crash:PLACEMENT/WORKLOAD/STYLE`` (or ``hang:...``, ``die:...``; several separated by ``;``)
makes the worker raise in (sleep through, exit during) that run, to show that a failure is one row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import workloads as W  # noqa: E402
from workloads.console import ArgumentParser, format_table, seconds  # noqa: E402
from workloads.outputs import STANDARD_OUTPUT, check_output_path, json_to_standard_output, write_json  # noqa: E402

EXIT_OK, EXIT_MISSED, EXIT_USAGE, EXIT_CRASHED, EXIT_NO_GPU = 0, 1, 2, 3, 4
PROBE_STEPS = 30
GRAPH_STEPS = 60  # steps of the eager-vs-graphed trajectory comparison
DRY_STEPS = 4
GRAPH_RTOL = {"float64": 1e-9, "float32": 1e-4}
FIT = 0.7  # share of a run's time given to its timed steps (the rest: data, build, evaluation)
DDP_STARTUP_S = 30.0  # torchrun, rendezvous and imports, added to a ddp launch's timeout
GRAPH_WEIGHT = 0.5  # a graph comparison job (two short runs) against a training run
FAULT_ENV = "TORCHLOOPS_GPU_CHECK_FAULT"
SINGLE = ("cuda", "cuda_graph", "dataparallel")  # the default single-process placements
HEADERS = ("placement", "workload", "style", "steps", "metric", "target", "reached", "time to target",
           "step median", "peak GPU mem", "notes")


class Usage(Exception):
    """Bad arguments: one line on stderr, exit 2."""


class _Parser(ArgumentParser):
    def error(self, message):
        raise Usage(message)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not positive")
        return value

    return parse


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _names(option, text, valid):
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise Usage(f"{option}: no names given; valid: {', '.join(valid)}")
    wrong = [n for n in names if n not in valid]
    if wrong:
        raise Usage(f"{option}: unknown name(s) {', '.join(map(repr, wrong))}; valid: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def parse_args(argv=None):
    parser = _Parser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=_positive(float),
                        help="wall time for all the work (default 540 s; dry run 60 s)")
    parser.add_argument("--grace-s", type=_positive(float),
                        help="time a job may take beyond its share before it is killed (default 120 s; dry run 60 s)")
    parser.add_argument("--seed", type=_non_negative_int, default=0)
    parser.add_argument("--placements", default=",".join(SINGLE),
                        help=f"single-process placements to check (default {','.join(SINGLE)})")
    parser.add_argument("--workloads", default="all", help="workloads to check (default all)")
    parser.add_argument("--styles", default="all", help="styles to check (default all)")
    parser.add_argument("--steps", type=_positive(int),
                        help=f"cap on every run's steps (default: the documented length; dry run {DRY_STEPS})")
    parser.add_argument("--no-graph-comparison", action="store_true",
                        help="skip the eager-vs-graphed trajectory and speed table")
    parser.add_argument("--ddp-nproc", type=_non_negative_int,
                        help="ranks of the ddp runs (default: the visible GPUs when 2+, else none; dry run: none)")
    parser.add_argument("--ddp-backend", choices=("nccl", "gloo"),
                        help="backend of the ddp runs (default nccl; dry run gloo)")
    parser.add_argument("--json", help="write every record, failure and verdict here (-: standard output)")
    parser.add_argument("--dry-run", action="store_true",
                        help="walk the same plan on the CPU placement, each run capped at --steps: tests the script")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    single = [n for n in W.PLACEMENTS.names() if n != "ddp"]
    args.placements = _names("--placements", args.placements, single)
    args.workloads = W.workload_names() if args.workloads == "all" else _names("--workloads", args.workloads,
                                                                                W.workload_names())
    args.styles = W.STYLES.names() if args.styles == "all" else _names("--styles", args.styles, W.STYLES.names())
    dry = args.dry_run
    args.budget_s = args.budget_s or (60.0 if dry else 540.0)
    args.grace_s = args.grace_s or (60.0 if dry else 120.0)
    args.steps = args.steps or (DRY_STEPS if dry else None)
    args.ddp_backend = args.ddp_backend or ("gloo" if dry else "nccl")
    if args.json is not None:
        try:
            check_output_path(args.json, standard_output=True)
        except W.UsageError as error:
            raise Usage(str(error)) from None
    return args


# --- the worker: one run per request, in its own process ---------------------------------------


def _fault(job):
    here = f"{job['placement']}/{job['workload']}/{job['style']}"
    faults = dict(reversed(item.split(":", 1)) for item in os.environ.get(FAULT_ENV, "").split(";") if ":" in item)
    kind = faults.get(here)
    if kind is None:
        return
    if kind == "crash":
        raise RuntimeError(f"injected failure ({FAULT_ENV})")
    if kind == "hang":
        time.sleep(3600)
    if kind == "die":
        os._exit(9)


def _traced_graph_placement():
    """The dry run's stand-in for cuda_graph: the CPU with the model of capture and replay."""
    from workloads.graphs import TracedGraphs

    return dataclasses.replace(W.PLACEMENTS.get("cpu"), name="cpu_traced_graph", graphs=TracedGraphs)


# torch.optim.Adam(capturable=True) asserts that its parameters are on a device (CUDA, ...):
# the dry run's CPU stand-in for cuda_graph runs these styles eagerly, as tests/test_graphs.py does.
TORCH_ADAM_STYLES = {"module", "sequential", "dataloader"}


def _configure(job, placement, **kwargs):
    """``(config, note)``: ``W.configure`` on the job's placement; a dry run trains on the
    CPU placement (cuda_graph: on the CPU model of capture and replay where it can)."""
    if not job["dry"]:
        return W.configure(job["workload"], job["style"], placement, job["seed"], **kwargs), ""
    config = W.configure(job["workload"], job["style"], "cpu", job["seed"], **kwargs)
    if not W.PLACEMENTS.get(placement).captures_steps:
        return config, ""
    if job["style"] in TORCH_ADAM_STYLES and config.workload.optimizer.kind == "adam":
        return config, "dry run: eager (torch.optim.Adam(capturable=True) needs device tensors)"
    return dataclasses.replace(config, placement=_traced_graph_placement()), ""


def train_job(job):
    """Probe the step time, then train until the target within the job's time share.
    One configuration (one data set) serves the probe and the run."""
    full, dry_note = _configure(job, job["placement"], until_target=True)
    total = full.total_steps if job["steps"] is None else min(full.total_steps, job["steps"])
    cap = total
    if total > PROBE_STEPS:  # a run no longer than the probe needs no probe
        started = time.perf_counter()
        probe = W.run(dataclasses.replace(full, total_steps=PROBE_STEPS, until_target=False))
        left = job["share_s"] - (time.perf_counter() - started)
        cap = min(total, max(PROBE_STEPS, int(FIT * left / max(probe.step_time_median_s, 1e-7))))
    record = W.run(dataclasses.replace(full, total_steps=cap)).to_dict()
    notes = [dry_note] if dry_note else []
    if not record["reached_target"] and cap < full.total_steps:
        why = "the time budget" if cap < total else "--steps"
        notes.append(f"capped at {cap} of {full.total_steps} steps by {why}")
    return {"record": record, "note": "; ".join(notes)}


def graph_job(job):
    """``graph_steps`` steps on cuda and on cuda_graph from the same start (one data set)."""
    steps = job["graph_steps"]
    eager_config, _ = _configure(job, "cuda", steps=steps)
    graphed_config, note = _configure(job, "cuda_graph", steps=steps)
    eager = W.run(eager_config, record_step_losses=True)
    graphed = W.run(dataclasses.replace(graphed_config, split=eager_config.data()), record_step_losses=True)
    pairs = list(zip(eager.step_losses, graphed.step_losses))
    worst = max((abs(a - b) / max(abs(a), 1e-300) for a, b in pairs), default=math.inf)
    return {"eager_median_s": eager.step_time_median_s, "graphed_median_s": graphed.step_time_median_s,
            "replays": graphed.graph_replays or 0, "captures": graphed.graph_captures or 0, "steps": graphed.steps,
            "same_length": len(eager.step_losses) == len(graphed.step_losses), "worst": worst, "note": note,
            "rtol": GRAPH_RTOL[str(eager_config.workload.dtype).replace("torch.", "")]}


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}"


def worker() -> int:
    """Answer one JSON job per stdin line with one JSON result line; anything else written to
    stdout goes to stderr, so the protocol stays clean."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        job = json.loads(line)
        try:
            _fault(job)
            result = {"ok": True, **(train_job(job) if job["kind"] == "train" else graph_job(job))}
        except Exception as error:  # noqa: BLE001 -- every failure is the run's row, not the check's end
            result = {"ok": False, "error": _one_line(error)}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                try:
                    torch.cuda.empty_cache()
                except Exception:  # noqa: BLE001 -- a broken context: the parent replaces this worker
                    pass
        protocol.write(json.dumps(result) + "\n")
        protocol.flush()
    return 0


def _stop_group(proc, grace_s=5.0):
    """End a process started with ``start_new_session=True`` and everything it started."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, dry: bool):
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=ROOT, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def ask(self, job, timeout_s):
        """(result, None) or (None, why the worker gave no answer)."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            _stop_group(self.proc)
            return None, f"TIMED OUT after {timeout_s:.0f} s (killed with its worker process)"
        except OSError:  # the worker is gone: its stdin is closed
            line = None
        if line is None:
            status = self.proc.wait()
            how = f"signal {-status}" if status < 0 else f"status {status}"
            return None, f"the worker process died ({how}){self._last_error()}"
        return json.loads(line), None

    def _last_error(self):
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().splitlines() if line.strip()]
        return f": {lines[-1][:300]}" if lines else ""

    def stop(self):
        try:
            self.proc.stdin.close()  # a healthy worker ends at the end of its input
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _stop_group(self.proc)
        if not self.log.closed:
            self.log.close()


# --- the plan and its execution -----------------------------------------------------------------


def mib(value):
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def record_row(label, record, note=""):
    arrow = ">=" if record["higher_is_better"] else "<="
    reached = f"step {record['steps_to_target']}" if record["reached_target"] else "NO"
    notes = [note] if note else []
    if math.isnan(record["target"]):
        notes.append("no target set for this workload")
    if record["diverged"]:
        notes.append("DIVERGED")
    if record.get("graph_replays") is not None:
        notes.append(f"{record['graph_replays']} replays of {record['graph_captures']} graph(s)")
    return [label, record["workload"], record["style"], str(record["steps"]),
            f"{record['metric_value']:.4g}", f"{arrow} {record['target']:g}", reached,
            seconds(record["time_to_target_s"]), seconds(record["step_time_median_s"]),
            mib(record.get("peak_gpu_memory_bytes")), "; ".join(notes)]


def note_row(label, workload, style, note):
    return [label, workload, style] + ["-"] * 7 + [note]


class Check:
    """The plan, the budget and the verdict of one gpu_check."""

    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.started = time.perf_counter()
        self.deadline = self.started + args.budget_s
        self.rows, self.records, self.failures, self.graph_rows = [], [], [], []
        self.missed = self.crashed = 0
        self.worker = None
        self.reached_at, self.slowest = {}, {}

    def label(self, placement):
        return f"{placement}~cpu" if self.dry else placement

    def elapsed(self):
        return time.perf_counter() - self.started

    def fail(self, kind, label, workload, style, reason):
        """A run that crashed, timed out or was not run: one row, counted, and the check goes on."""
        self.failures.append({"kind": kind, "placement": label, "workload": workload, "style": style,
                              "reason": reason})
        if kind == "not run":
            self.missed += 1
        else:
            self.crashed += 1
        self.rows.append(note_row(label, workload, style, f"{kind.upper()}: {reason}"))
        print(f"  {label:16s} {workload:14s} {style:10s} {kind}: {reason}", flush=True)

    def share(self, weight, weight_left):
        left = self.deadline - time.perf_counter()
        return None if left <= 0 else left * weight / weight_left

    def submit(self, job, timeout_s):
        if self.worker is None:
            self.worker = Worker(self.dry)
        result, why = self.worker.ask(job, timeout_s)
        if result is None or not result["ok"]:
            self.worker.stop()  # after a failure (a CUDA error may be sticky): a fresh worker next
            self.worker = None
        return result, why

    def plan(self):
        """The single-process jobs and the rows of what is skipped (with its reason)."""
        jobs = []
        for placement in self.args.placements:
            p = W.PLACEMENTS.get(placement)
            available = W.PLACEMENTS.get("cpu").availability() if self.dry else p.availability()
            for workload in self.args.workloads:
                for style in self.args.styles:
                    why = available if not available.ok else p.applies_to(W.STYLES.get(style))
                    if not why.ok:
                        self.rows.append(note_row(self.label(placement), workload, style, f"skipped: {why.reason}"))
                        continue
                    jobs.append({"kind": "train", "placement": placement, "workload": workload, "style": style,
                                 "weight": 1.0})
        graph = W.PLACEMENTS.get("cuda_graph")
        if "cuda_graph" in self.args.placements and not self.args.no_graph_comparison \
                and (self.dry or graph.availability().ok):
            for workload in self.args.workloads:
                for style in self.args.styles:
                    if graph.applies_to(W.STYLES.get(style)).ok:
                        jobs.append({"kind": "graph", "placement": "cuda_graph", "workload": workload,
                                     "style": style, "weight": GRAPH_WEIGHT})
        return jobs

    def run(self, jobs, nproc):
        ddp_weight = len(self.args.styles) if nproc >= 2 else 0
        weight_left = sum(j["weight"] for j in jobs) + ddp_weight * len(self.args.workloads)
        graph_steps = max(self.args.steps or GRAPH_STEPS, 6) if self.dry else min(GRAPH_STEPS, self.args.steps
                                                                                     or GRAPH_STEPS)
        for job in jobs:
            share = self.share(job["weight"], weight_left)
            weight_left -= job["weight"]
            label = self.label(job["placement"]) if job["kind"] == "train" else "graphs"
            if share is None:
                self.fail("not run", label, job["workload"], job["style"],
                          f"the time budget ({self.args.budget_s:g} s) was spent")
                continue
            request = dict(job, share_s=share, steps=self.args.steps, seed=self.args.seed, dry=self.dry,
                           graph_steps=graph_steps)
            result, why = self.submit(request, share + self.args.grace_s)
            if result is None:
                self.fail("crashed", label, job["workload"], job["style"], why)
            elif not result["ok"]:
                self.fail("crashed", label, job["workload"], job["style"], result["error"])
            elif job["kind"] == "train":
                self.trained(job, result)
            else:
                self.graphed(job, result)
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if nproc >= 2:
            for workload in self.args.workloads:
                self.ddp(workload, nproc, self.share(ddp_weight, weight_left))
                weight_left -= ddp_weight
        elif self.args.ddp_nproc is None and not self.dry:
            self.rows.append(note_row("ddp", "all", "all", f"skipped: needs 2+ GPUs ({nproc} visible)"))
        else:
            self.rows.append(note_row("ddp", "all", "all", "skipped: --ddp-nproc below 2" if self.args.ddp_nproc
                                      is not None else "skipped: the dry run launches ddp only with --ddp-nproc N"))

    def trained(self, job, result):
        record = result["record"]
        label = self.label(job["placement"])
        self.records.append(record)
        self.rows.append(record_row(label, record, result["note"]))
        self.missed += not record["reached_target"] or record["diverged"]
        if job["placement"] == self.args.placements[0]:
            self.slowest[job["workload"]] = max(self.slowest.get(job["workload"], 0.0), record["step_time_median_s"])
            if job["style"] == "module":
                self.reached_at[job["workload"]] = record["steps_to_target"] or record["steps"]
        print(f"  {label:16s} {job['workload']:14s} {job['style']:10s} steps {record['steps']:6d}  "
              f"reached {record['reached_target']}  median {seconds(record['step_time_median_s'])}  "
              f"elapsed {self.elapsed():.0f} s", flush=True)

    def graphed(self, job, r):
        ok = r["same_length"] and r["worst"] <= r["rtol"]
        self.missed += not ok
        speedup = r["eager_median_s"] / r["graphed_median_s"] if r["graphed_median_s"] else math.inf
        self.graph_rows.append([job["workload"], job["style"], seconds(r["eager_median_s"]),
                                seconds(r["graphed_median_s"]), f"{speedup:.2f}x", f"{r['replays']}/{r['steps']}",
                                f"{r['worst']:.1e}", ("ok" if ok else f"MISMATCH > {r['rtol']:g}")
                                + (f"; {r['note']}" if r.get("note") else "")])
        print(f"  graphs           {job['workload']:14s} {job['style']:10s} speed-up {speedup:.2f}x  "
              f"max rel diff {r['worst']:.1e}", flush=True)

    def ddp(self, workload, nproc, share):
        label = f"ddp {nproc}x{self.args.ddp_backend}"
        if share is None:
            self.fail("not run", label, workload, "all", f"the time budget ({self.args.budget_s:g} s) was spent")
            return
        total = W.configure(workload, "module", "cpu", self.args.seed).total_steps
        # ddp follows the single-process trajectory: the target comes at the same step.
        cap = min(total, 2 * self.reached_at[workload]) if workload in self.reached_at else total
        if workload in self.slowest:  # every style runs these steps, each ~2x the slowest style's
            per_step = 2 * self.slowest[workload] * len(self.args.styles)
            cap = min(cap, max(PROBE_STEPS, int(FIT * share / per_step)))
        if self.args.steps is not None:
            cap = min(cap, self.args.steps)
        timeout_s = share + self.args.grace_s + DDP_STARTUP_S
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "ddp.json")
            cmd = [sys.executable, "-m", "workloads", "run", workload, "--style", ",".join(self.args.styles)
                   if len(self.args.styles) == 1 else "all", "--device", "ddp", "--nproc", str(nproc),
                   "--backend", self.args.ddp_backend, "--seed", str(self.args.seed), "--until-target", "--quiet",
                   "--json", out]
            if cap < total:
                cmd += ["--steps", str(cap)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    start_new_session=True)
            try:
                _out, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                proc.communicate()
                self.fail("crashed", label, workload, "all",
                          f"TIMED OUT after {timeout_s:.0f} s (the launcher and its ranks were stopped)")
                return
            if proc.returncode not in (0, 1) or not os.path.exists(out):
                last = (err.strip().splitlines() or ["no error output"])[-1][:300]
                self.fail("crashed", label, workload, "all", f"ddp launch failed (status {proc.returncode}): {last}")
                return
            with open(out) as handle:
                records = json.load(handle)
        for record in records:
            if self.args.styles != W.STYLES.names() and record["style"] not in self.args.styles:
                continue
            self.records.append(record)
            note = f"capped at {cap} of {total} steps" if cap < total and not record["reached_target"] else ""
            self.rows.append(record_row(f"ddp {record['world_size']}x{record['backend']}", record, note))
            self.missed += not record["reached_target"] or record["diverged"]
        print(f"  {label:16s} {workload:14s} done, elapsed {self.elapsed():.0f} s", flush=True)

    def status(self):
        if self.crashed:
            return EXIT_CRASHED
        return EXIT_MISSED if self.missed else EXIT_OK


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except Usage as error:
        print(f"gpu_check: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USAGE
    if args.worker:
        return worker()
    with json_to_standard_output(args.json == STANDARD_OUTPUT):
        return _check_gpus(args)


def _check_gpus(args) -> int:
    """The whole check: the plan run, the tables printed, --json written."""
    cuda = W.PLACEMENTS.get("cuda").availability()
    gpus = torch.cuda.device_count() if cuda.ok else 0
    nproc = args.ddp_nproc if args.ddp_nproc is not None else (gpus if gpus >= 2 and not args.dry_run else 0)
    if not args.dry_run:
        usable = [p for p in args.placements if W.PLACEMENTS.get(p).availability().ok]
        if not usable and nproc < 2:
            reasons = "; ".join(f"{p}: {W.PLACEMENTS.get(p).availability().reason}" for p in args.placements)
            print(f"gpu_check: nothing run: {reasons}", file=sys.stderr)
            return EXIT_NO_GPU
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    mode = "DRY RUN on the CPU placement, " if args.dry_run else ""
    print(f"gpu_check: {mode}torch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} GPU(s): "
          f"{', '.join(names) or '-'}; placements {', '.join(args.placements)}; budget {args.budget_s:g} s",
          flush=True)
    check = Check(args)
    check.run(check.plan(), nproc)
    status = check.status()
    elapsed = check.elapsed()
    print()
    print(format_table(HEADERS, check.rows))
    if check.graph_rows:
        print(f"\nCUDA graphs: steps on cuda and on cuda_graph from the same start")
        print(format_table(("workload", "style", "cuda step", "cuda_graph step", "speed-up", "replays/steps",
                            "max rel diff", "trajectory"), check.graph_rows))
    verdict = {EXIT_OK: "every run reached its target",
               EXIT_MISSED: f"{check.missed} run(s) missed the target, did not match or were not run",
               EXIT_CRASHED: f"{check.crashed} run(s) crashed or timed out"
                             + (f", {check.missed} missed" if check.missed else "")}[status]
    print(f"\ngpu_check: {len(check.records)} runs in {elapsed:.0f} s; {verdict}; exit status {status}")
    if args.json:
        try:
            write_json(args.json, {"gpus": names, "dry_run": args.dry_run, "elapsed_s": elapsed,
                                   "budget_s": args.budget_s, "exit_status": status, "records": check.records,
                                   "failures": check.failures, "graphs": check.graph_rows})
        except W.UsageError as error:
            print(f"gpu_check: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    return status


if __name__ == "__main__":
    sys.exit(main())

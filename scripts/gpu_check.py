#!/usr/bin/env python
"""GPU check: the first GPU session's evidence, most per GPU second first, within one budget.

    python scripts/gpu_check.py --json gpu.json       # on a GPU machine: at most 540 s plus one grace period
    python scripts/gpu_check.py --stages versions,fork,tests --budget-s 240
    python scripts/gpu_check.py --dry-run             # the same stages and plan on the CPU (~1.5 min on 2 cores)

Stages, always in this order, each a subprocess under min(its cap, the budget left), one row
each (ok; FAILED with its last output line; TIMED OUT; NOT RUN when the budget is spent):

  versions       30 s  torch/CUDA/cuDNN/NCCL versions, the GPUs, the float32 flags before and after
                       the cuda placement's setup (status 1 if TF32 is still on after it);
  fork           30 s  import the suite and every benchmarks module (as asv's forkserver does), then
                       fork a child that computes on the GPU: "Cannot re-initialize CUDA in forked
                       subprocess" here means an import touched CUDA;
  tests         180 s  pytest tests/test_graphs.py and the CUDA trajectory tests of tests/test_placements.py
                       (eager vs CPU at rtol 1e-4/1e-9, graphed vs eager, Adam(capturable=True) under capture);
  deterministic 120 s  torchloops run all --style all --device cuda --deterministic --steps 100;
  ddp1           60 s  torchloops run regression --style all --device ddp --nproc 1 --backend nccl --steps 100;
  plan         the rest  every workload x style on cuda, cuda_graph and dataparallel (and ddp with nccl
                       when two or more GPUs are visible) trained to its quality target, in one table.

``--stages`` picks some (default all).  Each stage's command, status, time and output tail
go to ``--json`` under "stages".

The plan.  For each run the table gives the steps trained, the step at which the target
was reached, the time to target (timed steps only), the median step time and the peak GPU
memory (``torch.cuda.max_memory_allocated`` on the first GPU of the placement; ddp: rank
0's GPU).  Every run uses ``--seed``, by default each workload's typical seed
(``torchloops.support.references.typical_seed``: seed 0 never reaches mlp_sgd's target).
Applicability is workload x style x placement (``configure``): mlp_sgd's as_written loop has
no nn.Module, so dataparallel is a "skipped" row for it.

Isolation.  The single-process runs go to a worker process (one at a time; it is
reused while runs succeed, so CUDA starts once).  A run that raises (an error, a
capture refused, out of memory) is a row saying so, and the worker is replaced
before the next run; a run that outlives its timeout is killed with its worker
(its whole process group) and is a row saying so; the check goes on either way.
ddp is launched with ``torchloops run ... --style SELECTED --device ddp --nproc N --backend B``
once per workload, under the same kind of timeout.

Time.  ``--budget-s`` covers all the work: the stages, then the plan's single-process runs
(their probes included), the CUDA-graph comparison and the ddp launches.  Before each job the
time left is shared among the jobs left (by weight: a ddp launch trains every selected
style); a training run is capped at the steps that fit its share (a short probe measures
the step time), and a job is killed at its share plus ``--grace-s`` (start-up, CUDA
initialisation, capture).  A job for which no time is left is a row "not run".  So the
check ends within the budget plus one grace period.  The default 540 s does not cover the
whole plan (~95 jobs on one GPU): what does not fit is "not run" (status 1), after the
stages have given their evidence.

CUDA graphs: every style the ``cuda_graph`` placement captures is also run for
``GRAPH_STEPS`` steps on ``cuda`` and on ``cuda_graph`` from the same start; the two
loss trajectories must agree (float32 relative 1e-4, float64 1e-9, as the GPU tests),
and a table gives each one's median step time and the speed-up of replaying.

Dry run (``--dry-run``): the same stages, plan, worker, timeouts, budget (default 120 s),
table, JSON and exit status, on the CPU: versions sets the flags without a device, fork's
child computes on the CPU, tests only collects, deterministic runs ``--device cpu`` and
ddp1 gloo, 4 steps each; every run of the plan trains with the ``cpu`` placement
(``cuda_graph``'s with the CPU model of capture and replay,
``torchloops.execution.graphs.TracedGraphs``; ``dataparallel``'s with the model wrapped in
``nn.DataParallel``, a pass-through without CUDA, so a trainer that cannot be wrapped
fails here too), each capped at ``--steps`` (default 4), so it tests the script's own logic;
ddp (only with ``--ddp-nproc N``) uses gloo.  Capped at 4 steps no run reaches its target,
so a full dry run ends with status 1.

Exit status:
  0  every stage passed, every run reached its target and every graphed trajectory matched;
  1  some run missed its target, diverged, did not match, or was not run (budget spent), or
     a stage was not run;
  2  bad arguments (one line on stderr, nothing run);
  3  some stage failed or timed out, or some run crashed: an exception, a refused capture,
     out of memory, a timeout, a dead worker or a failed ddp launch (takes precedence over 1);
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

import torchloops as W  # noqa: E402
from torchloops.support.console import ArgumentParser, format_table, seconds  # noqa: E402
from torchloops.support.outputs import STANDARD_OUTPUT, check_output_path, json_to_standard_output, write_json  # noqa: E402
from torchloops.support.references import typical_seed  # noqa: E402

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
# The stages, in the order of the evidence they give per GPU second, each with the most seconds
# it may take (and never more than the budget left); "plan" (every workload x style x
# placement to its target) takes whatever is left of --budget-s.
STAGES = (
    ("versions", 30.0, "torch, CUDA, cuDNN and NCCL versions, the GPUs, the float32 precision flags "
                       "before and after a CUDA placement's setup (TF32 must be off after)"),
    ("fork", 30.0, "import the suite and every benchmarks module as asv's forkserver does, then a forked "
                   "child computes on the GPU (fails if the import touched CUDA)"),
    ("tests", 180.0, "pytest tests/test_graphs.py and the CUDA trajectory tests of tests/test_placements.py"),
    ("deterministic", 120.0, "torchloops run all --style all --device cuda --deterministic, 100 steps each"),
    ("ddp1", 60.0, "torchloops run regression --style all --device ddp --nproc 1 --backend nccl, 100 steps"),
    ("plan", None, "every workload x style x placement trained to its target (the table below)"),
)
STAGE_NAMES = [name for name, _, _ in STAGES]
STAGE_TESTS = ["tests/test_graphs.py",
               "tests/test_placements.py::test_cuda_matches_cpu_trajectory_and_records_the_gpu",
               "tests/test_placements.py::test_cuda_moves_the_data_once_and_batches_stay_on_the_device",
               "tests/test_placements.py::test_dataparallel_matches_cuda_and_saves_canonical_names"]
STAGE_STEPS = 100
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
    parser.add_argument("--seed", type=_non_negative_int,
                        help="every run's seed (default: each workload's typical seed, "
                             "torchloops.support.references.typical_seed: the reference seed nearest its median)")
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
    parser.add_argument("--stages", default="all",
                        help=f"stages to run, in their fixed order (default all: {','.join(STAGE_NAMES)})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=("versions", "fork"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.probe:
        return args
    args.stages = STAGE_NAMES if args.stages == "all" else [n for n in STAGE_NAMES
                                                            if n in _names("--stages", args.stages, STAGE_NAMES)]
    single = [n for n in W.PLACEMENTS.names() if n != "ddp"]
    args.placements = _names("--placements", args.placements, single)
    args.workloads = W.workload_names() if args.workloads == "all" else _names("--workloads", args.workloads,
                                                                                W.workload_names())
    args.styles = W.STYLES.names() if args.styles == "all" else _names("--styles", args.styles, W.STYLES.names())
    dry = args.dry_run
    args.budget_s = args.budget_s or (120.0 if dry else 540.0)
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
    from torchloops.execution.graphs import TracedGraphs

    return dataclasses.replace(W.PLACEMENTS.get("cpu"), name="cpu_traced_graph", graphs=TracedGraphs)


# torch.optim.Adam(capturable=True) asserts that its parameters are on a device (CUDA, ...):
# the dry run's CPU stand-in for cuda_graph runs these styles eagerly, as tests/test_graphs.py does.
TORCH_ADAM_STYLES = {"module", "sequential", "dataloader"}


def _wrapping_placement():
    """The dry run's stand-in for dataparallel: the CPU with the model wrapped as dataparallel
    wraps it (``nn.DataParallel``; without CUDA devices torch's wrapper keeps no device ids and
    calls the module, torch/nn/parallel/data_parallel.py), so that a trainer that cannot be
    wrapped fails on the CPU as it would on the GPUs."""
    return dataclasses.replace(W.PLACEMENTS.get("cpu"), name="cpu_wrapped", wraps_module=True)


def _configure(job, placement, **kwargs):
    """``(config, note)``: ``W.configure`` on the job's placement; a dry run trains on the
    CPU placement (cuda_graph: on the CPU model of capture and replay where it can;
    dataparallel: with the model wrapped), after asking whether the target placement applies
    to this workload and style, as ``configure`` asks on the GPU."""
    if not job["dry"]:
        return W.configure(job["workload"], job["style"], placement, job["seed"], **kwargs), ""
    target = W.PLACEMENTS.get(placement)
    applies = target.applies_to(W.STYLES.get(job["style"]), W.get_workload(job["workload"]))
    if not applies.ok:
        raise W.Unavailable(applies.reason)
    config = W.configure(job["workload"], job["style"], "cpu", job["seed"], **kwargs)
    if target.wraps_module:
        return dataclasses.replace(config, placement=_wrapping_placement()), ""
    if not target.captures_steps:
        return config, ""
    if job["style"] in TORCH_ADAM_STYLES and config.workload.optimizer.kind == "adam":
        return config, "dry run: eager (torch.optim.Adam(capturable=True) needs device tensors)"
    return dataclasses.replace(config, placement=_traced_graph_placement()), ""


def train_job(job):
    """Probe the step time, then train until the target within the job's time share.
    One configuration (one data set) serves the probe and the run."""
    full, dry_note = _configure(job, job["placement"], until_target=True)
    full.data()  # made once, here: each dataclasses.replace below copies it (a copy's own would be lost)
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
        self.stage_logs = {}

    def seed(self, workload):
        """``--seed``, else the workload's typical seed: one whose steps to target are nearest the
        reference median (seed 0 never reaches mlp_sgd's target, workloads/reference/mlp_sgd.json)."""
        return self.args.seed if self.args.seed is not None else typical_seed(workload)

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
                    # workload x style x placement: mlp_sgd's as_written loop has no module to wrap
                    why = available if not available.ok else p.applies_to(W.STYLES.get(style), W.get_workload(workload))
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
                    if graph.applies_to(W.STYLES.get(style), W.get_workload(workload)).ok:
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
            request = dict(job, share_s=share, steps=self.args.steps, seed=self.seed(job["workload"]),
                           dry=self.dry, graph_steps=graph_steps)
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
        seed = self.seed(workload)
        total = W.configure(workload, "module", "cpu", seed).total_steps
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
            # the selected styles, as the budget assumed (a ddp launch trains each of them)
            cmd = [sys.executable, "-m", "torchloops", "run", workload, "--style", ",".join(self.args.styles),
                   "--device", "ddp", "--nproc", str(nproc), "--backend", self.args.ddp_backend, "--seed", str(seed),
                   "--until-target", "--quiet", "--json", out]
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


# --- the stages before the plan ---------------------------------------------------------------------


def _flags():
    from torchloops.execution.placements import float32_precision

    return (f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32} "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} "
            f"cudnn.conv.fp32_precision={torch.backends.cudnn.conv.fp32_precision} "
            f"float32_matmul_precision={torch.get_float32_matmul_precision()} -> {float32_precision()}")


def probe_versions(dry: bool) -> int:
    """Versions, GPUs and the float32 flags before and after a CUDA placement's setup (dry run:
    :func:`torchloops.execution.placements.strict_float32` alone, no device).  Status 1: TF32 still on."""
    from torchloops.execution.placements import float32_precision, strict_float32

    print(f"torch {torch.__version__}; CUDA {torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}; "
          f"NCCL {torch.cuda.nccl.version() if torch.cuda.is_available() else '-'}; "
          f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}")
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {props.name}, compute capability {props.major}.{props.minor}, "
              f"{props.total_memory / 2**30:.1f} GiB")
    print(f"before setup: {_flags()}")
    if dry:
        strict_float32()
    else:
        W.PLACEMENTS.get("cuda").setup()
    print(f"after setup:  {_flags()}")
    return 0 if "TF32 off" in float32_precision() else 1


def probe_fork(dry: bool) -> int:
    """As asv's forkserver: import the suite and every benchmarks module once, then fork a child
    that computes on the device.  Without the fix of issue 20 item 1 the import reached
    ``torch.cuda.is_available()`` (``cudaGetDeviceCount``) and the child's first CUDA call
    raised "Cannot re-initialize CUDA in forked subprocess"."""
    import importlib
    import pkgutil

    import benchmarks

    for module in pkgutil.iter_modules(benchmarks.__path__):
        importlib.import_module(f"benchmarks.{module.name}")
    print(f"imported workloads and {len(list(pkgutil.iter_modules(benchmarks.__path__)))} benchmarks modules; "
          f"CUDA initialised in this process: {torch.cuda.is_initialized()}", flush=True)
    device = "cpu" if dry else "cuda"
    pid = os.fork()
    if pid == 0:
        try:
            bad = torch.cuda._is_in_bad_fork()
            value = (torch.ones(4, device=device) * 2).sum().item()
            print(f"forked child: bad fork {bad}; computed {value:g} on {device}", flush=True)
            os._exit(0 if value == 8 and not bad else 1)
        except BaseException as error:  # noqa: BLE001 -- the child reports and exits, whatever it was
            print(f"forked child: {_one_line(error)}", flush=True)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def stage_command(name, args, out_dir):
    """The command of one stage before the plan (dry run: its CPU stand-in, same shape)."""
    dry = args.dry_run
    script = [sys.executable, os.path.abspath(__file__)] + (["--dry-run"] if dry else [])
    steps = str(DRY_STEPS if dry else STAGE_STEPS)
    if name in ("versions", "fork"):
        return script + ["--probe", name]
    if name == "tests":  # the dry run collects the same tests (on the CPU they skip)
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + (["--collect-only"] if dry else []) \
            + STAGE_TESTS
    if name == "deterministic":
        return [sys.executable, "-m", "torchloops", "run", "all", "--style", "all", "--device", "cpu" if dry else "cuda",
                "--deterministic", "--steps", steps, "--quiet", "--json", os.path.join(out_dir, "deterministic.json")]
    if name == "ddp1":
        return [sys.executable, "-m", "torchloops", "run", "regression", "--style", "all", "--device", "ddp",
                "--nproc", "1", "--backend", "gloo" if dry else "nccl", "--steps", steps, "--quiet",
                "--json", os.path.join(out_dir, "ddp1.json")]
    raise ValueError(name)


def run_stages(check, args):
    """Every selected stage before the plan, in order, each under min(its cap, the budget left):
    one row each (ok / FAILED with its last line / TIMED OUT / not run)."""
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for name, cap, what in STAGES:
            if name == "plan" or name not in args.stages:
                continue
            left = check.deadline - time.perf_counter()
            if left <= 0:
                check.missed += 1
                rows.append([name, "NOT RUN", "-", f"the time budget ({args.budget_s:g} s) was spent"])
                continue
            limit = min(cap, left)
            cmd = stage_command(name, args, out_dir)
            started = time.perf_counter()
            env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                    start_new_session=True, env=env)
            try:
                output, _ = proc.communicate(timeout=limit)
                took = time.perf_counter() - started
                lines = [line for line in output.splitlines() if line.strip()]
                if proc.returncode == 0:
                    verdict, detail = "ok", (lines[-1][:200] if lines else "")
                else:
                    check.crashed += 1
                    verdict, detail = f"FAILED (status {proc.returncode})", (lines[-1][:300] if lines else "")
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                output, _ = proc.communicate()
                took = time.perf_counter() - started
                check.crashed += 1
                verdict, detail = "TIMED OUT", f"killed at its limit of {limit:.0f} s"
            check.stage_logs[name] = {"command": cmd, "status": proc.returncode, "verdict": verdict,
                                      "seconds": took, "output_tail": output[-4000:]}
            rows.append([name, verdict, f"{took:.0f} s", detail])
            print(f"  stage {name:13s} {verdict} in {took:.0f} s (limit {limit:.0f} s): {what}", flush=True)
            if verdict != "ok" or name in ("versions", "fork"):
                for line in output.strip().splitlines()[-15:]:
                    print(f"    | {line}", flush=True)
    return rows


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except Usage as error:
        print(f"gpu_check: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USAGE
    if args.worker:
        return worker()
    if args.probe:
        return (probe_versions if args.probe == "versions" else probe_fork)(args.dry_run)
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
    stage_rows = run_stages(check, args)
    if "plan" in args.stages:
        check.run(check.plan(), nproc)
    status = check.status()
    elapsed = check.elapsed()
    print()
    if stage_rows:
        print(format_table(("stage", "verdict", "took", "last line"), stage_rows))
        print()
    if "plan" in args.stages:
        print(format_table(HEADERS, check.rows))
    if check.graph_rows:
        print(f"\nCUDA graphs: steps on cuda and on cuda_graph from the same start")
        print(format_table(("workload", "style", "cuda step", "cuda_graph step", "speed-up", "replays/steps",
                            "max rel diff", "trajectory"), check.graph_rows))
    verdict = {EXIT_OK: "every run reached its target",
               EXIT_MISSED: f"{check.missed} run(s) or stage(s) missed the target, did not match or were not run",
               EXIT_CRASHED: f"{check.crashed} run(s) or stage(s) crashed, failed or timed out"
                             + (f", {check.missed} missed" if check.missed else "")}[status]
    print(f"\ngpu_check: {len(check.records)} runs in {elapsed:.0f} s; {verdict}; exit status {status}")
    if args.json:
        try:
            write_json(args.json, {"gpus": names, "dry_run": args.dry_run, "elapsed_s": elapsed,
                                   "budget_s": args.budget_s, "exit_status": status, "records": check.records,
                                   "failures": check.failures, "graphs": check.graph_rows,
                                   "stages": check.stage_logs})
        except W.UsageError as error:
            print(f"gpu_check: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    return status


if __name__ == "__main__":
    sys.exit(main())

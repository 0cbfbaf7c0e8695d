"""Where a training step's time goes: torch.profiler over steady-state steps, by ATen operation.

:func:`profile` builds a run as ``torchloops run`` would (``runner.configure`` /
``runner.build``: same data, parameters, batch plan, style and thread count), runs
``warmup`` steps unprofiled, then ``steps`` steps under ``torch.profiler`` (CPU activity).
A step is what the runner times: asking the batcher for the next batch, ``trainer.step``,
``placement.sync()``.  Then one more real step under ``FlopCounterMode``
(:func:`torchloops.measurement.flops.count_step_flops`, the suite's one source of FLOPs).

What it reports, per step (medians over the profiled steps, see :func:`aten_table`):

* each ATen operation (``aten::*`` events) with its *self* CPU time (time inside the
  operation, not inside the ATen operations it calls), its calls and its share of the
  profiled step's wall time;
* ``aten_share``: the ATen operations' self time over the profiled step's wall time; the rest,
  ``outside_share``, is spent outside ATen kernels: Python, module and optimizer code,
  autograd's engine, the dispatcher above the kernels, and the profiler's own per-operation
  bookkeeping (which is why ``step_s`` unprofiled is reported too);
* FLOPs of one step (matmul / convolution products only, see :mod:`torchloops.measurement.flops`).
"""

from __future__ import annotations

import bisect
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from torchloops.measurement.flops import count_step_flops
from torchloops.support.outputs import output_file
from torchloops.core.registry import UsageError

STEP_LABEL = "torchloops.step"  # record_function around each profiled step (visible in the trace)


@dataclass
class OpTime:
    name: str
    self_s: float  # self CPU time per step
    calls: float  # calls per step
    share: float  # self_s / profiled step wall time


@dataclass
class Profile:
    workload: str
    style: str
    seed: int
    threads: int
    warmup: int
    steps: int
    step_s: float  # median wall time of an unprofiled warm-up step (all but the first)
    profiled_step_s: float  # median wall time of a step under the profiler
    aten_s: float  # median over the steps of the sum of ATen self times
    ops: List[OpTime] = field(default_factory=list)
    flops: int = 0  # FlopCounterMode's total over one real step
    trace: Optional[str] = None

    @property
    def aten_share(self) -> float:
        return self.aten_s / self.profiled_step_s if self.profiled_step_s > 0 else 0.0

    @property
    def outside_share(self) -> float:
        return max(0.0, 1.0 - self.aten_share)

    def top(self) -> Optional[OpTime]:
        return self.ops[0] if self.ops else None


def aten_table(events, steps: int, wall_s: float) -> Tuple[List[OpTime], float, float]:
    """``(ops sorted by self time, ATen self time, step time)`` per step from profiler events
    (``prof.events()``: one entry per call, times in microseconds).

    Each ``aten::*`` call is assigned to the profiled step (the ``STEP_LABEL`` range) it
    started in; an operation's self time per step, the ATen total and the step's wall time are
    **medians over the steps**, so a step that another process preempted (this machine is
    shared) does not inflate whichever operation happened to be running.  An operation absent
    from most steps (an epoch's gather) has a median of 0 there; its calls per step are a mean.
    Without step ranges (none recorded) the totals over ``wall_s`` are used, as means."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events if e.name == STEP_LABEL)
    starts = [start for start, _end in spans]
    per_step = defaultdict(lambda: [0.0] * max(len(spans), 1))
    calls = defaultdict(int)
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        index = max(bisect.bisect_right(starts, event.time_range.start) - 1, 0) if spans else 0
        per_step[event.name][index] += event.self_cpu_time_total * 1e-6
        calls[event.name] += 1
    if spans:
        durations = [(end - start) * 1e-6 for start, end in spans]
        totals = [sum(times[i] for times in per_step.values()) for i in range(len(spans))]
        step_s = statistics.median(durations)
        aten_s = statistics.median(totals)
        self_s = {name: statistics.median(times) for name, times in per_step.items()}
    else:
        step_s = wall_s / steps
        self_s = {name: times[0] / steps for name, times in per_step.items()}
        aten_s = sum(self_s.values())
    ops = [OpTime(name, t, calls[name] / steps, t / step_s if step_s > 0 else 0.0) for name, t in self_s.items()]
    ops.sort(key=lambda op: (op.self_s, op.calls), reverse=True)
    return ops, aten_s, step_s


def _export_trace(prof, path: str) -> None:
    """``prof.export_chrome_trace`` into a scratch folder, then copied to ``path`` by the output writer."""
    # torch gzips a trace whose file name ends in .gz: keep that ending on the scratch file
    name = "trace.json" + (".gz" if path.endswith(".gz") else "")
    with tempfile.TemporaryDirectory(prefix="torchloops-trace-") as scratch:
        exported = os.path.join(scratch, name)
        prof.export_chrome_trace(exported)
        with open(exported, "rb") as source, output_file(path, binary=True, suffix=".trace") as target:
            shutil.copyfileobj(source, target)


def profile(workload: str, style: str = "module", *, steps: int = 50, warmup: int = 10, seed: int = 0,
            threads: int = 1, trace: Optional[str] = None) -> Profile:
    """Profile ``steps`` steady-state CPU steps of ``workload`` in ``style`` (after ``warmup``)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from torchloops.measurement.benchmarking import Prepared
    from torchloops.measurement.runner import configure

    needed = warmup + steps + 1  # + the step FlopCounterMode counts
    config = configure(workload, style, "cpu", seed, steps=needed, threads=threads)
    if config.total_steps < needed:
        raise UsageError(
            f"{workload} has {config.total_steps} steps in all; --warmup {warmup} + --steps {steps} + 1 "
            f"(the FLOP count) needs {needed}: lower --steps or --warmup"
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        prepared = Prepared(config)  # the runner's step: next batch, trainer.step, sync
        times = []
        for _ in range(warmup):
            clock = time.perf_counter()
            prepared.step()
            times.append(time.perf_counter() - clock)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            clock = time.perf_counter()
            for _ in range(steps):
                with record_function(STEP_LABEL):
                    prepared.step()
            wall = time.perf_counter() - clock
        flops = count_step_flops(prepared.trainer, prepared.next_batch())
        if trace is not None:
            _export_trace(prof, trace)
        ops, aten_s, profiled_step_s = aten_table(prof.events(), steps, wall)
    finally:
        torch.set_num_threads(previous)
    steady = times[1:] or times or [profiled_step_s]  # the first step pays one-off costs
    return Profile(
        workload=config.workload.name, style=config.style.name, seed=seed, threads=config.threads,
        warmup=warmup, steps=steps, step_s=statistics.median(steady), profiled_step_s=profiled_step_s,
        aten_s=aten_s, ops=ops, flops=flops, trace=trace,
    )

"""Where a training step's time goes: torch.profiler over steady-state steps, by ATen operation.

:func:`profile` builds a run as ``torchloops run`` would (``runner.configure`` /
``runner.build``: same data, parameters, batch plan, style and thread count), runs
``warmup`` steps unprofiled, then ``steps`` steps under ``torch.profiler`` (CPU activity).
A step is what the runner times: asking the batcher for the next batch, ``trainer.step``,
``placement.sync()``.  Then one more real step under ``FlopCounterMode``
(:func:`workloads.flops.count_step_flops`, the suite's one source of FLOPs).

What it reports, per step (totals over the profiled steps divided by their number):

* each ATen operation (``aten::*`` events) with its *self* CPU time (time inside the
  operation, not inside the ATen operations it calls), its calls and its share of the
  profiled step's wall time;
* ``aten_share``: the sum of those self times over the profiled wall time; the rest,
  ``outside_share``, is spent outside ATen kernels: Python, module and optimizer code,
  autograd's engine, the dispatcher above the kernels, and the profiler's own per-operation
  bookkeeping (which is why ``step_s`` unprofiled is reported too);
* FLOPs of one step (matmul / convolution products only, see :mod:`workloads.flops`).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import torch

from .flops import count_step_flops
from .registry import UsageError

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
    step_s: float  # median wall time of an unprofiled step (the warm-up's second half)
    profiled_step_s: float  # mean wall time of a step under the profiler
    aten_s: float  # sum of ATen self times per step
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


def _batches(batcher, plan) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """The plan's batches in order; an epoch's iterator is created when its first batch is
    asked for, as in the runner (the DataLoader's iterator creation is that step's time)."""
    for index in range(len(plan)):
        yield from batcher.epoch(index)


def aten_table(events, steps: int, wall_s: float) -> Tuple[List[OpTime], float]:
    """``(ops sorted by self time, total ATen self time)`` per step from profiler events
    (``prof.events()``: one entry per call; ``self_cpu_time_total`` in microseconds)."""
    self_us, calls = defaultdict(float), defaultdict(int)
    for event in events:
        if event.name.startswith("aten::"):
            self_us[event.name] += event.self_cpu_time_total
            calls[event.name] += 1
    per_step_wall = wall_s / steps
    ops = [
        OpTime(name, us * 1e-6 / steps, calls[name] / steps, (us * 1e-6 / steps) / per_step_wall if wall_s else 0.0)
        for name, us in self_us.items()
    ]
    ops.sort(key=lambda op: op.self_s, reverse=True)
    return ops, sum(op.self_s for op in ops)


def _export_trace(prof, path: str) -> None:
    """``prof.export_chrome_trace`` to a temporary file beside ``path``, renamed onto it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".torchloops-", suffix=".trace.tmp", dir=folder)
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def profile(workload: str, style: str = "module", *, steps: int = 50, warmup: int = 10, seed: int = 0,
            threads: int = 1, trace: Optional[str] = None) -> Profile:
    """Profile ``steps`` steady-state CPU steps of ``workload`` in ``style`` (after ``warmup``)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from .runner import build, configure

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
        trainer, batcher, plan, _split = build(config)
        placement = config.placement
        batches = _batches(batcher, plan)
        placement.sync()

        def step():
            xb, yb = next(batches)
            loss = trainer.step(xb, yb)
            placement.sync()
            return loss

        times = []
        for _ in range(warmup):
            clock = time.perf_counter()
            step()
            times.append(time.perf_counter() - clock)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            clock = time.perf_counter()
            for _ in range(steps):
                with record_function(STEP_LABEL):
                    step()
            wall = time.perf_counter() - clock
        flops = count_step_flops(trainer, next(batches))
        if trace is not None:
            _export_trace(prof, trace)
        ops, aten_s = aten_table(prof.events(), steps, wall)
    finally:
        torch.set_num_threads(previous)
    steady = times[len(times) // 2:] or [wall / steps]
    return Profile(
        workload=config.workload.name, style=config.style.name, seed=seed, threads=config.threads,
        warmup=warmup, steps=steps, step_s=statistics.median(steady), profiled_step_s=wall / steps,
        aten_s=aten_s, ops=ops, flops=flops, trace=trace,
    )

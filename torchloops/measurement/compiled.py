"""Compiled mode: ``torch.compile`` of the ``module`` style's whole training step (its
trainer's own bound ``step``; the eager side calls the same method, so the step is
written once, in :mod:`torchloops.execution.styles`).

Not a registered style: compiling costs tens of seconds per workload (measured on the
2-core CI machine: over a minute for regression's ``Linear(5, 1)``), which the
per-style test loops (equivalence, convergence, determinism, ddp) would pay for every
workload.  It is a measurement of its own instead, reporting the compile time apart
from the steady-state step time:

* ``compile_s``: the wall time of every call that met a batch shape for the first time
  (the first call traces and compiles; a short last batch recompiles), step included;
* ``step_median_s``: the median of all the other calls, against the eager ``module``
  step's median over the same batches, in the same process (None, and ``speedup`` None, when
  every call met a new batch shape: there is no steady state, e.g. ``--steps 1``);
* ``break_even_steps``: how many steps the compile time takes to pay back (None when
  the compiled step is not faster: it never does).

``torchloops compile`` (:mod:`torchloops.commands.compile`) reports :func:`measure`'s
record, one line per workload.

:class:`CompiledStep` is the same compiled step made ready for the benchmark front-ends
(``benchmarks/compiled.py`` for asv, ``tests/test_bench_training.py`` for pytest-benchmark):
compiled for every batch shape and warmed up before anything is timed, its compile time kept.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from typing import Optional

import torch

from torchloops.measurement.runner import build, configure


def _batches(config):
    _trainer, batcher, plan, _split = build(config)
    return [b for i in range(len(plan)) for b in batcher.epoch(i)]


def _config(workload: str, steps: int, seed: int, scale: dict, device: str = "cpu"):
    if not scale:
        return configure(workload, "module", device, seed, steps=steps)
    from torchloops.measurement.benchmarking import scaled_config  # the scaling benchmarks' sizes (rows, batch_size, hidden)

    config = scaled_config(workload, placement=device, **scale)
    epochs = -(-steps // config.steps_per_epoch)
    return dataclasses.replace(config, epochs=epochs, total_steps=steps, eval_every=steps)


def _time_steps(step, batches, placement, compiling: bool) -> dict:
    """Every batch through ``step``: each call's time and loss.  ``compiling``: a call that meets a
    batch shape for the first time traces and compiles; its time is compile time, not a step's."""
    seen, compile_s, times, losses = set(), 0.0, [], []
    for xb, yb in batches:
        clock = time.perf_counter()
        loss = step(xb, yb)
        placement.sync()  # queued device work belongs to this step's time
        elapsed = time.perf_counter() - clock
        losses.append(float(loss))
        shape = (tuple(xb.shape), tuple(yb.shape))
        if compiling and shape not in seen:
            seen.add(shape)
            compile_s += elapsed
        else:
            times.append(elapsed)
    return {"compile_s": compile_s, "times": times, "losses": losses}


def measure(workload: str, steps: int = 300, seed: int = 0, backend: str = "inductor",
            mode: Optional[str] = None, threads: int = 1, device: str = "cpu", **scale) -> dict:
    """Eager and compiled ``module`` steps over the same batches from the same parameters.

    ``scale`` (``rows=``, ``batch_size=``, ``hidden=``) takes the scaling benchmarks'
    configuration (:func:`torchloops.measurement.benchmarking.scaled_config`) instead of the documented one."""
    scale = {k: v for k, v in scale.items() if v is not None}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        config = _config(workload, steps, seed, scale, device)
        batches = _batches(config)
        records = {}
        for kind in ("eager", "compiled"):
            step = build(config)[0].step  # the module style's own step, eager or compiled
            if kind == "compiled":
                torch._dynamo.reset()
                step = torch.compile(step, backend=backend, mode=mode)
            records[kind] = _time_steps(step, batches, config.placement, compiling=kind == "compiled")
    finally:
        torch.set_num_threads(previous)
    eager = statistics.median(records["eager"]["times"])
    compiled = statistics.median(records["compiled"]["times"]) if records["compiled"]["times"] else None
    gain = eager - compiled if compiled is not None else 0.0
    rel = max(abs(a - b) / abs(b) for a, b in zip(records["compiled"]["losses"], records["eager"]["losses"]) if b)
    return {
        "workload": workload,
        "device": device,
        "scale": scale,
        "backend": backend,
        "mode": mode,
        "steps": len(batches),
        "threads": threads,
        "torch_version": torch.__version__,
        "compile_s": records["compiled"]["compile_s"],
        "step_median_s": compiled,
        "eager_step_median_s": eager,
        "speedup": eager / compiled if compiled is not None else None,
        "break_even_steps": (records["compiled"]["compile_s"] / gain) if gain > 0 else None,
        "max_rel_loss_diff": rel,
    }


BACKEND_VARIABLE = "TORCHLOOPS_COMPILE_BACKEND"  # the benchmarks' backend (default inductor)


def benchmark_backend() -> str:
    return os.environ.get(BACKEND_VARIABLE) or "inductor"


class CompiledStep:
    """``torch.compile`` of the ``module`` step of ``workload`` (documented configuration,
    CPU, the benchmarks' typical seed and threads), ready to be timed.

    Construction compiles: the step is called once on each distinct batch shape of the
    batches it cycles through (``compile_s`` is the time of those calls), then
    ``warmup`` more steps run.  ``step()`` is one compiled step on the next batch,
    ending with the device synchronised; it trains the model, as the eager benchmarks do."""

    def __init__(self, workload: str, backend: Optional[str] = None, steps: int = 120, warmup: int = 5):
        from torchloops.measurement.benchmarking import THREADS, pin_threads
        from torchloops.support.references import typical_seed

        pin_threads()
        self.backend = backend or benchmark_backend()
        self.config = configure(workload, "module", "cpu", typical_seed(workload), steps=steps, threads=THREADS)
        self.batches = _batches(self.config)
        self.trainer = build(self.config)[0]
        torch._dynamo.reset()
        self._step = torch.compile(self.trainer.step, backend=self.backend)
        self._index = 0
        seen = set()
        clock = time.perf_counter()
        for xb, yb in self.batches:
            shape = (tuple(xb.shape), tuple(yb.shape))
            if shape not in seen:
                seen.add(shape)
                self._step(xb, yb)
        self.config.placement.sync()
        self.compile_s = time.perf_counter() - clock
        for _ in range(warmup):
            self.step()

    def step(self) -> torch.Tensor:
        xb, yb = self.batches[self._index]
        self._index = (self._index + 1) % len(self.batches)
        loss = self._step(xb, yb)
        self.config.placement.sync()
        return loss

    def check(self) -> None:
        """After timing: an error if the model's training loss is no longer finite."""
        from torchloops.measurement.benchmarking import Diverged
        from torchloops.measurement.runner import evaluate

        if not math.isfinite(evaluate(self.trainer, self.config.workload, self.config.data())["train_loss"]):
            raise Diverged(f"{self.config.workload.name}/compiled: diverged during the timed steps")

    def info(self) -> dict:
        return {"workload": self.config.workload.name, "style": "module", "mode": "torch.compile",
                "backend": self.backend, "compile_s": self.compile_s, "threads": self.config.threads,
                "seed": self.config.seed, "torch_version": torch.__version__}

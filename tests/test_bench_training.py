"""pytest-benchmark over the registry: every workload x style x placement.

The bodies are thin: :mod:`torchloops.measurement.benchmarking` prepares the run exactly as the
asv suite does (build on the device untimed, warm up, one step / one epoch ending
with the device sync).  Results are grouped by workload; ``extra_info`` carries
what was timed and, for the run to the target, the result record's quality fields.

* ``pytest`` with ``--benchmark-disable`` (the project's addopts) runs each body
  once, untimed: a smoke test that every benchmark still runs.  The run to the
  target is then capped at ``SMOKE_STEPS`` steps and need not reach it.
* ``pytest tests/test_bench_training.py --benchmark-enable ...`` times them
  (README, "Benchmarking", for the autosave / compare-fail gate).

A placement that cannot run here is skipped with its reason, never an error.
"""

from __future__ import annotations

import os

import pytest

import torchloops
from torchloops.measurement import benchmarking as B

GRID = B.grid()
IDS = ["-".join(key) for key in GRID]
SMOKE_STEPS = 20  # length of the run-to-target body when timing is disabled
EPOCH_ROUNDS = 5  # epochs timed per configuration (an epoch can take seconds)


# TORCHLOOPS_COUNT=1: test_bench_step also records instructions_per_step (valgrind's callgrind,
# torchloops.measurement.counting); every cpu configuration is counted once, in one valgrind process
# (4-7 minutes on 2 cores), the first time a step benchmark needs it.
COUNT = os.environ.get("TORCHLOOPS_COUNT") == "1"


def _instructions(workload, style) -> dict:
    from torchloops.measurement import counting

    problem = counting.valgrind_problem()
    if problem is not None:
        return {"instructions_per_step": None, "instructions_unavailable": problem}
    record = counting.grid_counts()[(workload, style)]
    return {"instructions_per_step": record["instructions_per_step"], "counted_steps": record["steps"],
            "valgrind_version": record["valgrind_version"]}


def _or_skip(make, *args, **kwargs):
    try:
        return make(*args, **kwargs)
    except torchloops.Unavailable as why:
        pytest.skip(str(why))


def _describe(benchmark, workload, prepared=None):
    benchmark.group = workload
    if prepared is not None:
        benchmark.extra_info.update(prepared.info())


@pytest.mark.parametrize("workload, style, placement", GRID, ids=IDS)
def test_bench_step(benchmark, workload, style, placement):
    """One optimizer step in steady state (next batch, step, device sync)."""
    prepared = _or_skip(B.prepare, workload, style, placement)
    _describe(benchmark, workload, prepared)
    benchmark(prepared.step)
    prepared.check()  # a diverged model has no time to report
    if COUNT and placement == "cpu":
        benchmark.extra_info.update(_instructions(workload, style))


@pytest.mark.parametrize("workload, style, placement", GRID, ids=IDS)
def test_bench_epoch(benchmark, workload, style, placement):
    """One epoch of the documented batch plan in steady state, ending with the device sync."""
    prepared = _or_skip(B.prepare, workload, style, placement)
    _describe(benchmark, workload, prepared)
    benchmark.pedantic(prepared.epoch, rounds=EPOCH_ROUNDS, iterations=1)
    prepared.check()


@pytest.mark.parametrize("workload, style, placement", GRID, ids=IDS)
def test_bench_run_to_target(benchmark, workload, style, placement):
    """A run of the documented schedule until the quality target (at most QUALITY_STEPS steps).

    Timed, it needs a registered target and must reach it; as a smoke test it is
    capped at SMOKE_STEPS steps.  ``extra_info`` carries the record's quality fields.
    """
    smoke = benchmark.disabled
    if smoke:
        config = _or_skip(B.smoke_target_config, workload, style, placement, SMOKE_STEPS)
    else:
        config = _or_skip(B.target_config, workload, style, placement)
    _describe(benchmark, workload)
    result = benchmark.pedantic(torchloops.run, args=(config,), rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"workload": workload, "style": style, "device": placement, "threads": config.threads}
    )
    benchmark.extra_info.update(B.quality_fields(result))
    assert not result.diverged
    if not smoke:
        assert result.reached_target, B.quality_fields(result)


@pytest.mark.parametrize("workload", torchloops.workload_names())
def test_bench_compiled_step(benchmark, workload):
    """One step of ``torch.compile`` of the module step (CPU), compiled and warmed up untimed;
    ``extra_info["compile_s"]`` is the compile time.  Timed: inductor (or
    ``TORCHLOOPS_COMPILE_BACKEND``); as a smoke test the ``eager`` backend (dynamo's trace
    without code generation: inductor takes minutes per workload on the 2-core CI machine)."""
    from torchloops.measurement.compiled import CompiledStep

    prepared = CompiledStep(workload, backend="eager" if benchmark.disabled else None)
    benchmark.group = workload
    benchmark.extra_info.update(prepared.info())
    benchmark(prepared.step)
    prepared.check()
    assert prepared.compile_s > 0

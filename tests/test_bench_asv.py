"""The asv suite runs: every benchmark body of benchmarks/ once, untimed, and asv's own check.

``asv check`` only checks signatures; this calls ``setup`` and every ``time_`` /
``peakmem_`` / ``track_`` method of every class, for one available parameter
combination per class (the quality runs capped at a few steps), and checks that
every unavailable placement is skipped by ``setup`` raising ``NotImplementedError``
with its reason.  The full grid is timed by ``asv run`` (README, "Benchmarking").
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import torchloops
from torchloops.measurement import benchmarking as B

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common, compiled, scaling, tensor_ops, training  # noqa: E402

PREFIXES = ("time_", "peakmem_", "track_")
TRAINING_CLASSES = [
    training.Training,
    training.TrainingGPUMemory,
    training.TrainingQuality,
    training.TimeToTarget,
]
SCALING_CLASSES = [scaling.ScalingRows, scaling.ScalingBatchSize, scaling.ScalingHidden]
TENSOR_CLASSES = [
    getattr(tensor_ops, name) for name in dir(tensor_ops)
    if isinstance(getattr(tensor_ops, name), type) and getattr(getattr(tensor_ops, name), "params", None)
]


def _methods(cls):
    return [name for name in dir(cls) if name.startswith(PREFIXES)]


def _call(cls, params, cache=None):
    """What asv does for one parameter combination: setup, then each method (setup again before each)."""
    args = (cache, *params) if cache is not None else params
    outcome = {}
    for name in _methods(cls):
        bench = cls()
        try:
            bench.setup(*args)
        except NotImplementedError as why:
            return {"skipped": str(why)}
        outcome[name] = getattr(bench, name)(*args)
    return outcome


@pytest.fixture(scope="module")
def quality_cache():
    cache = B.quality_records(steps=12)  # too short for any target
    for style in common.STYLES:  # regression (typical seed) reaches its target at step 360
        cache[("regression", style, "cpu")] = B.quality_record("regression", style, "cpu", steps=400)
    return cache


# What asv's history is keyed by: each benchmark's parameter values and version.  A rename or a
# reorder of these orphans every recorded result, so they are written out, not derived.  They are
# the recorded history's keys, not a list of what is tested: a plug-in workload
# (TORCHLOOPS_WORKLOADS) comes after them, and the test holds with or without one.
ASV_WORKLOADS = ["classification", "regression", "lenet", "mlp_sgd", "mlp_adam"]
ASV_STYLES = ["raw", "module", "sequential", "dataloader", "as_written", "tuned", "fused"]
ASV_PLACEMENTS = ["cpu", "cuda", "cuda_graph", "dataparallel", "ddp"]
ASV_SCALING_WORKLOADS = ["classification", "mlp_sgd", "mlp_adam"]


def _recorded_first(values: list, recorded: list) -> bool:
    return values[:len(recorded)] == recorded


def test_asv_parameters_and_versions_keep_the_history():
    assert _recorded_first(common.WORKLOADS, ASV_WORKLOADS)
    assert common.STYLES == ASV_STYLES
    assert common.PLACEMENTS == ASV_PLACEMENTS
    for cls in TRAINING_CLASSES + [training.InstructionCounts]:
        assert _recorded_first(cls.params[0], ASV_WORKLOADS), cls.__name__
        assert cls.params[1:3] == [ASV_STYLES, ASV_PLACEMENTS], cls.__name__
        assert cls.version == "1", cls.__name__
    for cls in SCALING_CLASSES:
        assert _recorded_first(cls.params[0], ASV_SCALING_WORKLOADS) and cls.version == "1", cls.__name__
    assert _recorded_first(compiled.Compiled.params[0], ASV_WORKLOADS) and compiled.Compiled.version == "1"
    # a new definition, a new series: steps to target x the step time (was the sum of the timed steps)
    assert training.TimeToTarget.track_time_to_target.version == "2"


def test_timing_policy_is_pinned():
    for cls in TRAINING_CLASSES + SCALING_CLASSES:
        assert cls.number == 1 and cls.warmup_time == 0.0  # state mutates: one call per sample
    B.prepare("regression", "raw", "cpu")
    assert B.THREADS == 1
    import torch

    assert torch.get_num_threads() == B.THREADS


@pytest.mark.parametrize("cls", [training.Training, training.TrainingGPUMemory], ids=lambda c: c.__name__)
def test_training_classes_run_or_skip_with_reason(cls):
    ran = 0
    for placement in common.PLACEMENTS:
        try:
            torchloops.configure("regression", "module", placement)
            available = True
        except torchloops.Unavailable:
            available = False
        outcome = _call(cls, ("regression", "module", placement))
        if "skipped" in outcome:
            assert outcome["skipped"], "a skip carries its reason"
            if cls is training.Training:
                assert not available, f"{placement} is available but was skipped: {outcome}"
        else:
            ran += 1
            for name, value in outcome.items():
                if name.startswith("track_"):
                    assert value > 0
    if cls is training.Training:
        assert ran >= 1  # at least the CPU


def test_quality_classes_run_or_skip_with_reason(quality_cache):
    assert set(quality_cache) == set(B.grid())
    for key, record in quality_cache.items():
        outcome = _call(training.TrainingQuality, key, quality_cache)
        if isinstance(record, str):
            assert outcome == {"skipped": record}
            continue
        assert math.isfinite(outcome["track_test_loss"]) and outcome["track_test_loss"] >= 0
        assert outcome["track_test_error"] == B.error_value(record) >= 0
        if not math.isfinite(record["target"]):
            assert _call(training.TimeToTarget, key, quality_cache)["skipped"]
        elif record["reached_target"]:
            outcome = _call(training.TimeToTarget, key, quality_cache)
            assert outcome["track_steps_to_target"] == record["steps_to_target"]
            assert outcome["track_time_to_target"] == record["time_to_target_s"] > 0
        else:  # not reached: a failure, never a silent skip
            with pytest.raises(RuntimeError, match="not reached"):
                _call(training.TimeToTarget, key, quality_cache)


@pytest.mark.parametrize("cls", SCALING_CLASSES, ids=lambda c: c.__name__)
def test_scaling_classes_run(cls):
    for params in itertools.product(*cls.params):
        if params[1] == max(cls.params[1]) and params[0] != cls.params[0][0]:
            continue  # the largest size once is enough for a smoke test
        outcome = _call(cls, params)
        assert "skipped" not in outcome, outcome


def test_compiled_class_runs_with_params_from_the_registry(monkeypatch):
    """The compiled mode's asv benchmarks: every workload is a parameter; one runs here
    with dynamo's ``eager`` backend (inductor takes minutes per workload on CI)."""
    assert compiled.Compiled.params == [common.WORKLOADS] and compiled.Compiled.version
    monkeypatch.setenv("TORCHLOOPS_COMPILE_BACKEND", "eager")
    monkeypatch.setattr(compiled, "_COMPILED", {})
    outcome = _call(compiled.Compiled, ("regression",))
    assert set(outcome) == {"time_step", "track_compile_time"}
    assert outcome["track_compile_time"] > 0
    assert compiled._COMPILED["regression"].backend == "eager"
    bench = compiled.Compiled()
    bench.setup("regression")
    bench.teardown("regression")  # the finiteness check after timing passes


@pytest.mark.parametrize("cls", TENSOR_CLASSES, ids=lambda c: c.__name__)
def test_tensor_ops_run(cls):
    for params in itertools.product(*cls.params):
        assert "skipped" not in _call(cls, params)


def _asv():
    exe = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    if exe is None:
        pytest.skip("asv is not installed")
    return exe


def test_asv_check_passes():
    done = subprocess.run(
        [_asv(), "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No problems found" in done.stdout + done.stderr

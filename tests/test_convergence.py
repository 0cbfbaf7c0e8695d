"""Every workload in every style reaches its quality target from a fixed seed (CPU), and
the convergence statistics' check of fresh seeds against a reference (:mod:`torchloops.measurement.convergence`).

Each run stops at its target (``until_target``), capped at the documented length.
The seeds are fixed and typical (the seed nearest the median steps-to-target of
the shipped 25-seed reference), so a change that slows convergence down fails here.
"""

from __future__ import annotations

import pytest

import torchloops as W
from conftest import STYLES, WORKLOADS
from torchloops.measurement import convergence
from torchloops.cli import main
from torchloops.support.references import typical_seed

# One typical seed per workload: the shipped reference's median seed.
SEEDS = {w: typical_seed(w) for w in WORKLOADS}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_style_reaches_quality_target(workload, style):
    wl = W.get_workload(workload)
    result = W.run(W.configure(workload, style, "cpu", SEEDS[workload], until_target=True))
    assert not result.diverged
    assert result.reached_target, (
        f"{workload}/{style}: {result.metric}={result.metric_value:.4g} after {result.steps} steps, "
        f"target {wl.target:g}"
    )
    assert wl.metric.reached(result.metric_value, wl.target)
    assert result.steps == result.steps_to_target  # stopped at the target
    assert 0 < result.time_to_target_s == result.train_time_s
    if wl.metric.is_classification:
        assert result.dead_classes == []


DEAD_CLASS_SEED = 23  # the calibration sweep's one classification seed whose class 1 dies


def test_dead_class_is_visible_in_record_and_table(capsys):
    """The documented ReLU on the logits kills class 1 for seed 23: the run says so."""
    result = W.run(W.configure("classification", "module", "cpu", DEAD_CLASS_SEED, steps=3000))
    assert result.dead_classes == [1]
    assert not result.reached_target
    assert all(row[1] == 0 for row in result.confusion_matrix)  # nothing predicted as class 1
    assert main(["run", "classification", "--style", "raw", "--seed", str(DEAD_CLASS_SEED), "--steps", "3000"]) == 0
    assert "dead class 1 (never predicted)" in capsys.readouterr().out


REFERENCE = {
    "eval_every": 40, "max_steps": 16000,
    "summary": {"n": 25, "never_reached": 0, "p10": 360, "median": 360, "p90": 400, "max": 400},
}


def _fresh(*steps):
    return [{"reached": s is not None, "steps_to_target": s, "seed": i} for i, s in enumerate(steps)]


def test_consistency_check_is_one_sided_on_both_ends():
    # band: [360 / 1.25 - 40, 400 * 1.25 + 40] = [248, 540]
    assert convergence.check_consistency(REFERENCE, _fresh(360, 400, 360, 320, 400))["ok"]
    slower = convergence.check_consistency(REFERENCE, _fresh(720, 760, 720, 680, 760))
    assert not slower["ok"] and not slower["speed_ok"] and "slower" in slower["lines"][1]
    faster = convergence.check_consistency(REFERENCE, _fresh(160, 200, 160, 160, 200))
    assert not faster["ok"] and "faster" in faster["lines"][1]


def test_consistency_check_counts_runs_that_never_reach_the_target():
    # reference never misses: one miss in five is still plausible (rate 1/27), three are not
    assert convergence.check_consistency(REFERENCE, _fresh(360, None, 400, 360, 400))["ok"]
    verdict = convergence.check_consistency(REFERENCE, _fresh(360, None, None, None, 400))
    assert verdict["speed_ok"] and not verdict["reliability_ok"] and not verdict["ok"]
    assert not convergence.check_consistency(REFERENCE, _fresh(None, None))["ok"]

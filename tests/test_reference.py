"""Fresh seeds converge as the shipped reference distributions say (MLPerf-style).

A workload's reference (``Workload.reference``; the notes' programs ship
``workloads/reference/<workload>.json``) holds steps-to-target of seeds 0-24 (raw style, CPU,
one thread, at most the documented length), written by ``torchloops converge WORKLOAD --seeds
25 --json ...``; a workload that ships none is skipped here, with the reason.  A few *fresh*
seeds (1000 and up, never part of a reference) of every workload whose cost fits the budget are
trained in the reference's style and must pass :func:`torchloops.measurement.convergence.check_consistency`: their median
steps-to-target inside the reference's [p10 / 1.25 - q, p90 * 1.25 + q] band (q: the
evaluation interval), and no improbable number of seeds that never reach the target.
A change that silently alters the optimisation (a halved learning rate, a different
init, a broken momentum) moves the median out of the band even when every seed still
reaches the target.  A workload over the budget (LeNet: ~3-8 ms a step) is skipped with the
command to run instead (``torchloops converge lenet --seeds 5 --seed 1000 --check``).
"""

from __future__ import annotations

import pytest

import torchloops as W
from torchloops.measurement import convergence
from torchloops.support import references

FRESH_SEED = 1000
FRESH_SEEDS = (5, 3)  # fresh seeds per workload: the first count whose estimated cost fits the budget
FRESH_BUDGET_S = 15.0  # per workload, in the test command; above it, the slow tier checks it


def shipped(workload: str) -> dict:
    """The workload's reference, or a skip naming what is missing (a plug-in may ship none)."""
    declared = references.reference_path(workload)
    if declared is None:
        pytest.skip(f"{workload} ships no convergence reference (Workload.reference is None)")
    reference = references.load_reference(workload)
    assert reference is not None, f"{workload} declares {declared}, which does not exist"
    return reference


@pytest.mark.parametrize("workload", W.workload_names())
def test_every_shipped_reference_is_well_formed(workload):
    reference = shipped(workload)
    wl = W.get_workload(workload)
    assert reference["seeds"] == list(range(25))
    assert reference["style"] in W.STYLES.names() and reference["device"] == "cpu" and reference["threads"] == 1
    assert reference["lr"] == wl.optimizer.lr and reference["target"] == wl.target
    assert reference["versions"]["torch"] and "converge" in reference["generated_by"]
    assert reference["summary"] == convergence.summarise(reference["runs"])
    assert reference["eval_every"] == convergence.eval_interval(workload)


def test_classification_reference_records_its_dead_classes():
    """Under the documented ReLU on the logits some seeds lose a class for good."""
    summary = references.load_reference("classification")["summary"]
    assert summary["dead_class_seeds"], summary
    assert set(summary["dead_class_seeds"]) <= set(summary["never_reached_seeds"])


def fresh_seeds(workload: str, reference: dict, budget: float) -> int:
    """How many fresh seeds fit ``budget`` seconds: the reference's p90 steps x a measured step,
    twice over for the evaluations; 0 when not even the fewest fit."""
    probe = W.run(W.configure(workload, reference["style"], "cpu", FRESH_SEED, steps=30))
    per_seed = 2 * (reference["summary"].get("p90") or probe.steps) * probe.step_time_median_s
    return next((count for count in FRESH_SEEDS if count * per_seed <= budget), 0)


@pytest.mark.parametrize("workload", W.workload_names())
def test_fresh_seeds_are_consistent_with_the_reference(workload):
    """Within the test command's budget; the slow tier's twin checks every workload."""
    reference = shipped(workload)
    count = fresh_seeds(workload, reference, FRESH_BUDGET_S)
    if not count:
        pytest.skip(f"{workload}: fresh seeds over the {FRESH_BUDGET_S:g} s budget; checked in the slow tier")
    check_fresh_seeds(workload, reference, count)


@pytest.mark.slow
@pytest.mark.parametrize("workload", W.workload_names())
def test_fresh_seeds_of_every_workload_are_consistent_with_the_reference(workload):
    """The slow tier checks every workload, whatever the budget decided in the test command
    (a loaded machine moves a workload over it)."""
    reference = shipped(workload)
    check_fresh_seeds(workload, reference, min(FRESH_SEEDS))


def check_fresh_seeds(workload: str, reference: dict, count: int) -> None:
    seeds = range(FRESH_SEED, FRESH_SEED + count)
    runs = convergence.converge_runs(workload, seeds, style=reference["style"],
                                     steps=convergence.check_cap(reference))
    verdict = convergence.check_consistency(reference, runs)
    assert verdict["ok"], "\n".join(verdict["lines"] + [str(r) for r in runs])


def paired_rerun(workload: str, lr=None) -> tuple:
    """Re-run the reference's median seed (raw, CPU, one thread) and return
    (fresh steps-to-target or None, the reference's, the evaluation interval)."""
    reference = shipped(workload)
    seed = references.typical_seed(workload)
    (ref_run,) = [r for r in reference["runs"] if r["seed"] == seed]
    q = convergence.eval_interval(workload)
    cap = 2 * ref_run["steps_to_target"] + q  # a 2x slower optimiser still stops here
    (fresh,) = convergence.converge_runs(workload, [seed], style=reference["style"], lr=lr, steps=cap)
    return fresh["steps_to_target"] if fresh["reached"] else None, ref_run["steps_to_target"], q


@pytest.mark.parametrize("workload", W.workload_names())
def test_reference_median_seed_reproduces_its_steps_to_target(workload):
    """The paired check: the same seed, the same code path, so the same steps-to-target.

    CPU runs are bitwise deterministic, so any change to the optimisation (a halved
    learning rate, another init, a reordered update) moves the step at which the
    target is met; one evaluation interval of slack absorbs float rounding on another
    CPU.  The distribution check above is blind to a 2x slowdown on the workloads
    whose steps-to-target spread widely over seeds (classification, mlp_adam): this
    one is not.
    """
    fresh, reference, q = paired_rerun(workload)
    assert fresh is not None and abs(fresh - reference) <= q, (workload, fresh, reference, q)

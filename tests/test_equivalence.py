"""Every style computes the same mathematics: same start, same batches, same losses.

The tolerances are the suite's contract (float64: relative 1e-9; float32: 1e-5)
over the first 60 steps, which crosses an epoch boundary (and a reshuffle) for
every minibatched workload.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchloops as W
from torchloops.measurement.runner import build
from conftest import RTOL, STYLES, WORKLOADS, ShortRuns, applicable_styles

STEPS = 60
# --weight-decay: large enough that over STEPS steps its effect on the losses is far beyond the
# tolerance (so a style that ignored it would fail), small enough to train as usual.  The notes'
# own value (Adam's weight_decay=0.0001) is checked against torch.optim.Adam in test_weight_decay.py.
WEIGHT_DECAY = 1e-2


@pytest.fixture(scope="module")
def trajectories():
    return ShortRuns(STEPS)


@pytest.mark.parametrize("style", [s for s in STYLES if s != "module"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_style_matches_module_loss_trajectory(trajectories, workload, style):
    reference = np.array(trajectories[(workload, "module")].step_losses)
    other = np.array(trajectories[(workload, style)].step_losses)
    assert len(reference) == len(other) == STEPS
    rtol = RTOL[W.get_workload(workload).dtype]
    np.testing.assert_allclose(other, reference, rtol=rtol, atol=0)
    # the losses must actually move, or equality would prove nothing
    assert reference[-1] < reference[0]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_styles_agree_on_evaluated_losses(trajectories, workload):
    rtol = RTOL[W.get_workload(workload).dtype]
    ref = trajectories[(workload, "module")]
    for style in applicable_styles(workload):
        got = trajectories[(workload, style)]
        assert got.final_train_loss == pytest.approx(ref.final_train_loss, rel=rtol)
        assert got.test_loss == pytest.approx(ref.test_loss, rel=rtol)


def test_every_style_starts_from_the_same_parameters(workload):
    """Every style's trainer, as built for a run, holds the canonical initial parameters of the
    seed, by name and value; those are a function of the seed alone."""
    wl = W.get_workload(workload)
    a, b, c = (W.initial_parameters(wl, seed) for seed in (3, 3, 4))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert all(p.dtype == wl.dtype for p in a.values())
    for style in applicable_styles(workload):
        trainer = build(W.configure(workload, style, "cpu", 3, steps=1))[0]
        state = trainer.state_dict()
        assert list(state) == list(a), style
        assert all(torch.equal(state[k], a[k]) for k in a), style


@pytest.fixture(scope="module")
def decayed():
    return ShortRuns(STEPS, weight_decay=WEIGHT_DECAY)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_weight_decay_matches_module_in_every_style(trajectories, decayed, workload, style):
    """torch.optim's L2 penalty (``grad + weight_decay * param`` before momentum / Adam's moments)
    in every style: the same trajectory as ``module`` with ``torch.optim``'s ``weight_decay``."""
    rtol = RTOL[W.get_workload(workload).dtype]
    reference = np.array(decayed[(workload, "module")].step_losses)
    got = decayed[(workload, style)]
    assert got.weight_decay == WEIGHT_DECAY and f"weight_decay={WEIGHT_DECAY:g}" in got.optimizer
    np.testing.assert_allclose(np.array(got.step_losses), reference, rtol=rtol, atol=0)
    assert got.test_loss == pytest.approx(decayed[(workload, "module")].test_loss, rel=rtol)
    # the penalty is visible: without it the trajectory leaves the tolerance by far
    plain = np.array(trajectories[(workload, style)].step_losses)
    assert np.max(np.abs(plain / reference - 1)) > 20 * rtol
    assert trajectories[(workload, style)].weight_decay == 0.0

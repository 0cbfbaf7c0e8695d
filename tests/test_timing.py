"""What a record's times mean (docs/measurement.md, "What is timed"): one step time, the median
over blocks of each block's mean timed step; every time on the clock is steps x that step time;
the warm-up steps that start each block are trained but are not samples; the peers are fitted in
their own phase."""

from __future__ import annotations

import statistics

import pytest

import torchloops as W
from torchloops.measurement import compare as compare_module
from torchloops.measurement import runner
from torchloops.measurement.interleave import run_interleaved



def _check_definition(record: dict) -> None:
    step = record["step_time_median_s"]
    assert step == statistics.median(record["step_time_blocks_s"])
    low, high = record["step_time_interval_s"]
    assert low <= step <= high
    assert record["train_time_s"] == pytest.approx(record["steps"] * step, rel=1e-12)
    for entry in record["history"]:
        assert entry["time_s"] == pytest.approx(entry["step"] * step, rel=1e-12)
    if record["reached_target"]:
        n = record["steps_to_target"]
        assert record["time_to_target_s"] == pytest.approx(n * step, rel=1e-12)
        assert record["time_to_target_interval_s"] == pytest.approx([n * low, n * high], rel=1e-12)
    else:
        assert record["time_to_target_s"] is None and record["time_to_target_interval_s"] is None


@pytest.mark.parametrize("style", ["module", "fused"])
def test_time_to_target_is_steps_times_the_step_time(style):
    config = W.configure("regression", style, seed=2, until_target=True)
    record = W.run(config).to_dict()
    assert record["reached_target"]
    _check_definition(record)
    # the raw sum is kept apart, under its own name, and counts every step (warm-ups included)
    assert record["time_to_target_sum_s"] == record["train_time_sum_s"] > 0


def test_interleaved_records_follow_the_same_definition():
    configs = [W.configure("mlp_adam", s, seed=3, steps=60) for s in ("module", "fused")]
    for result in run_interleaved(configs, reference=0):
        _check_definition(result.to_dict())


# The machine as measured (docs/measurement.md): after a switch the first 2 steps run on cold
# caches, after an evaluation the next one.  Written out, not read from the runner, so that a
# runner that times fewer steps apart than this fails.
COLD_AFTER_SWITCH, COLD_AFTER_EVALUATION = 2, 1


class _Clock:
    """Slow steps where a switch or an evaluation leaves the caches cold."""

    def __init__(self, monkeypatch, cold: float, warm: float):
        self.cold, self.warm, self.cold_left, self.cold_steps = cold, warm, 0, 0
        advance, timed_step, evaluate = runner.Session.advance, runner.Session._timed_step, runner.evaluate

        def block(session, *args, **kwargs):
            self.cold_left = COLD_AFTER_SWITCH
            return advance(session, *args, **kwargs)

        def step(session):
            real = timed_step(session)
            if real is None:
                return None
            cold, self.cold_left = self.cold_left > 0, max(0, self.cold_left - 1)
            self.cold_steps += cold
            return (self.cold if cold else self.warm), real[1]

        def evaluation(*args):
            self.cold_left = max(self.cold_left, COLD_AFTER_EVALUATION)
            return evaluate(*args)

        monkeypatch.setattr(runner.Session, "advance", block)
        monkeypatch.setattr(runner.Session, "_timed_step", step)
        monkeypatch.setattr(runner, "evaluate", evaluation)


@pytest.mark.parametrize("workload", ["regression", "mlp_adam"])  # an evaluation every 40 / 7 steps
def test_cold_steps_after_a_switch_or_an_evaluation_are_not_samples(monkeypatch, workload):
    clock = _Clock(monkeypatch, cold=5e-3, warm=1e-3)
    steps = 100
    record = W.run(W.configure(workload, "module", steps=steps)).to_dict()
    assert record["step_time_blocks_s"] == [1e-3] * len(record["step_time_blocks_s"])
    assert record["step_time_median_s"] == 1e-3 and record["train_time_s"] == pytest.approx(steps * 1e-3)
    assert record["warmup_step_time_median_s"] == 5e-3
    assert clock.cold_steps > 8 * COLD_AFTER_SWITCH  # every block, and the evaluations
    assert record["train_time_sum_s"] == pytest.approx(clock.cold_steps * 5e-3 + (steps - clock.cold_steps) * 1e-3)


def test_a_run_shorter_than_the_warm_up_still_has_a_step_time():
    record = W.run(W.configure("regression", "module", steps=1)).to_dict()
    assert record["step_time_blocks_s"] == [] and record["step_time_median_s"] > 0
    assert record["train_time_s"] == record["step_time_median_s"]


def test_the_peers_are_fitted_after_the_styles(monkeypatch):
    events = []
    advance, fit = runner.Session.advance, compare_module._peers.fit_peer

    def logged_advance(self, *args, **kwargs):
        events.append("step")
        return advance(self, *args, **kwargs)

    def logged_fit(*args, **kwargs):
        events.append("fit")
        return fit(*args, **kwargs)

    monkeypatch.setattr(runner.Session, "advance", logged_advance)
    monkeypatch.setattr(compare_module._peers, "fit_peer", logged_fit)
    document = compare_module.compare(["regression"], devices=["cpu"])
    assert "fit" in events and "step" in events
    assert events.index("fit") > max(i for i, e in enumerate(events) if e == "step")
    peers = [r for r in document["records"] if r.get("kind") == "peer"]
    assert peers and all(len(r["fit_times_s"]) == compare_module.PEER_FITS for r in peers)
    for r in peers:
        low, high = r["fit_time_interval_s"]
        assert low <= r["fit_time_s"] == statistics.median(r["fit_times_s"]) <= high
        if r["reached_target"]:
            assert r["time_to_target_s"] == r["fit_time_s"]

"""What a record's times mean (docs/measurement.md, "What is timed"): one step time, the median
over blocks of each block's mean timed step; every time on the clock is steps x that step time;
the warm-up steps that start each block are trained but are not samples; the peers are fitted in
their own phase."""

from __future__ import annotations

import statistics

import pytest

import workloads as W
from workloads import compare as compare_module
from workloads import runner
from workloads.interleave import run_interleaved

BLOCK = runner.BLOCK_WARMUP_STEPS + runner.BLOCK_STEPS


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


class _Clock:
    """A step whose time depends on its place in the block: the warm-up steps are slow."""

    def __init__(self, warm: float, steady: float):
        self.warm, self.steady, self.index = warm, steady, 0

    def __call__(self, session):
        real = original_timed_step(session)
        if real is None:
            return None
        took = self.warm if self.index % BLOCK < runner.BLOCK_WARMUP_STEPS else self.steady
        self.index += 1
        return took, real[1]


original_timed_step = runner.Session._timed_step


def test_the_cold_steps_that_start_a_block_are_not_samples(monkeypatch):
    clock = _Clock(warm=5e-3, steady=1e-3)
    monkeypatch.setattr(runner.Session, "_timed_step", lambda self: clock(self))
    steps = 4 * BLOCK
    record = W.run(W.configure("regression", "module", steps=steps)).to_dict()
    assert record["step_time_blocks_s"] == [1e-3] * 4
    assert record["step_time_median_s"] == 1e-3 and record["train_time_s"] == pytest.approx(steps * 1e-3)
    assert record["warmup_step_time_median_s"] == 5e-3
    warm = 4 * runner.BLOCK_WARMUP_STEPS
    assert record["train_time_sum_s"] == pytest.approx(warm * 5e-3 + (steps - warm) * 1e-3)


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

"""A record's peak GPU memory is its configuration's own: what its build allocated plus the most its
steps allocated on top, neither the evaluations nor another configuration on the same device.
CUDA's allocator statistics are modelled on the CPU (the bookkeeping is what is tested here; on a
GPU, tests/test_placements.py checks the real figure is positive)."""

from __future__ import annotations

import torchloops as W
from torchloops.measurement import runner
from torchloops.execution.placements import Placement


class FakeAllocator:
    """``memory_allocated`` / ``max_memory_allocated`` / ``reset_peak_memory_stats`` of one device."""

    def __init__(self):
        self.allocated = self.peak = 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def reset(self) -> None:
        self.peak = self.allocated


def test_peak_memory_counts_the_build_and_the_steps_only(monkeypatch):
    fake = FakeAllocator()
    monkeypatch.setattr(Placement, "memory_allocated_bytes", lambda self: fake.allocated)
    monkeypatch.setattr(Placement, "peak_memory_bytes", lambda self: fake.peak)
    monkeypatch.setattr(Placement, "reset_peak_memory", lambda self: fake.reset())
    build, step, evaluate = runner.build, runner.Session._timed_step, runner.evaluate

    def fake_build(config):
        fake.alloc(1000)  # data and model
        return build(config)

    def fake_step(session):
        if session.step == 0:
            fake.alloc(50)  # optimizer state, kept
        fake.alloc(300)  # activations and gradients, freed after the step
        fake.free(300)
        return step(session)

    def fake_evaluate(*args):
        fake.alloc(10_000)  # the whole test set's activations
        fake.free(10_000)
        return evaluate(*args)

    monkeypatch.setattr(runner, "build", fake_build)
    monkeypatch.setattr(runner.Session, "_timed_step", fake_step)
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    fake.alloc(5000)  # another configuration's model and data on the same device
    record = W.run(W.configure("mlp_adam", "module", steps=40))  # evaluates every 7 steps
    assert record.peak_gpu_memory_bytes == 1000 + 50 + 300

"""The snippet micro-benchmark (the three-channel LeNet's step): the pytest-benchmark body and
the asv benchmark of ``benchmarks/snippets.py``, each run once (timed with --benchmark-enable)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from workloads import lenet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import snippets  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("batch_size", [1, 32])
def test_bench_lenet3_step(benchmark, batch_size):
    """One step of the notes' recommended loop on the three-channel LeNet, synthetic 3x32x32 batch."""
    step = lenet.lenet3_trainer(seed=0)
    (images, labels), = lenet.lenet3_batches(batch_size=batch_size, batches=1, seed=0)
    step(images, labels)  # warm-up
    benchmark.group = "snippets"
    benchmark.extra_info.update(batch_size=batch_size, input="3x32x32 synthetic")
    loss = benchmark(step, images, labels)
    assert torch.isfinite(loss)


def test_asv_snippets_run_once():
    for batch_size in snippets.LeNet3.params[0]:
        bench = snippets.LeNet3()
        bench.setup(batch_size)
        before = [p.detach().clone() for p in bench.step.net.parameters()]
        bench.time_lenet3_step(batch_size)
        assert any(not torch.equal(a, b) for a, b in zip(before, bench.step.net.parameters()))
    assert torch.get_num_threads() == 1

"""CUDA graphs (the ``cuda_graph`` placement): which steps can be captured once and replayed.

Without a GPU the real capture cannot run, so the property it relies on is checked
on the CPU with :class:`torchloops.execution.graphs.TracedGraphs`, the same :class:`GraphedTrainer`
driving a model of capture (record the step's ATen operations, change no value) and
replay (run again, fail at the first operation that differs).  The negative controls
show that the model catches what would break a real graph: a step count kept in
Python, a host sync, a step reading a tensor other than its static input.
The GPU tests at the end run the real ``torch.cuda.CUDAGraph`` path.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import torchloops as W
from conftest import GPU_RTOL, RTOL, STYLES, WORKLOADS, needs_placement, short_run
from torchloops.cli import main
from torchloops.execution.graphs import CaptureUnsafe, GraphedTrainer, TracedGraphs, WARMUP_STEPS
from torchloops.measurement import runner
from torchloops.measurement.runner import build

STEPS = 12

GRAPH = W.PLACEMENTS.get("cuda_graph")
CUDA_GRAPH = GRAPH.availability()
needs_cuda = needs_placement("cuda_graph")
CAPTURED_STYLES = [s for s in STYLES if not W.STYLES.get(s).capture_problem]
# The CPU model runs on CPU tensors; torch.optim.Adam(capturable=True) accepts device tensors only.
TORCH_ADAM_STYLES = {"module", "sequential", "dataloader"}


def traced(config: W.RunConfig) -> W.RunConfig:
    """The run on the CPU, each step captured and replayed by the CPU model of CUDA graphs."""
    placement = dataclasses.replace(config.placement, name="cpu_traced_graph", graphs=TracedGraphs)
    return dataclasses.replace(config, placement=placement)


def traced_run(workload: str, style: str, steps: int = STEPS, **kwargs) -> W.RunResult:
    config = traced(W.configure(workload, style, "cpu", steps=steps, **kwargs))
    return W.run(config, record_step_losses=True)


def expected_replays(config: W.RunConfig) -> int:
    """Steps after each batch shape's warm-up steps, from the run's own batch plan."""
    _trainer, batcher, plan, _split = build(config)
    shapes = [tuple(xb.shape) for i in range(len(plan)) for xb, _yb in batcher.epoch(i)][: config.total_steps]
    return sum(max(0, shapes.count(s) - WARMUP_STEPS) for s in set(shapes))


@pytest.mark.parametrize("style", CAPTURED_STYLES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_captured_style_replays_the_module_trajectory(workload, style):
    wl = W.get_workload(workload)
    if style in TORCH_ADAM_STYLES and wl.optimizer.kind == "adam":
        pytest.skip("torch.optim.Adam(capturable=True) runs on CUDA tensors only: checked by the GPU test")
    got = traced_run(workload, style)
    reference = short_run(workload, "module", STEPS)
    config = W.configure(workload, style, "cpu", steps=STEPS)
    assert got.graph_replays == expected_replays(config) > 0
    assert got.graph_captures >= 1
    np.testing.assert_allclose(got.step_losses, reference.step_losses, rtol=RTOL[wl.dtype], atol=0)
    assert got.step_losses[-1] < got.step_losses[0]


def test_a_second_batch_shape_gets_its_own_graph():
    """mlp_sgd with batch 300 over 800 rows: 300, 300, 200 each epoch; the short batch
    warms up over three epochs, is captured in the fourth and replayed in the fifth."""
    got = traced_run("mlp_sgd", "module", steps=15, batch_size=300)
    assert got.graph_captures == 2
    assert got.graph_replays == (10 - WARMUP_STEPS) + (5 - WARMUP_STEPS)
    reference = short_run("mlp_sgd", "module", 15, batch_size=300)
    np.testing.assert_allclose(got.step_losses, reference.step_losses, rtol=1e-9, atol=0)


def test_capture_changes_no_value():
    """A capture records work without running it: the traced capture undoes every write."""
    config = W.configure("mlp_adam", "fused", "cpu", steps=STEPS)
    config = traced(config)
    trainer, batcher, _plan, _split = build(config)
    xb, yb = next(iter(batcher.epoch(0)))
    trainer.step(xb, yb)  # one eager step: the optimizer state is not all zeros
    before = [t.clone() for t in (trainer.flat, *trainer.update.m, *trainer.update.v, trainer.update.t)]
    _graph, loss = trainer.backend.capture(lambda: trainer.trainer.step(xb, yb))
    after = (trainer.flat, *trainer.update.m, *trainer.update.v, trainer.update.t)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert torch.isfinite(loss)


def _graphed_uncapturable(workload: str, style: str):
    """The style's trainer as the cpu placement builds it (optimizers not capturable), graphed."""
    trainer, batcher, _plan, _split = build(W.configure(workload, style, "cpu", steps=STEPS))
    return GraphedTrainer(trainer, TracedGraphs()), batcher


@pytest.mark.parametrize("style", ["raw", "fused"])
def test_a_step_count_kept_in_python_is_caught(style):
    """Adam's bias correction from a Python step count is baked into a capture: replay 1
    would repeat the captured step's correction; the model sees the scalar change."""
    graphed, batcher = _graphed_uncapturable("mlp_adam", style)
    with pytest.raises(CaptureUnsafe, match="differs from the captured one"):
        for xb, yb in batcher.epoch(0):
            graphed.step(xb, yb)


def test_a_host_sync_is_caught():
    """torch.optim.Adam(capturable=False) reads its step count back with .item()."""
    graphed, batcher = _graphed_uncapturable("mlp_adam", "module")
    with pytest.raises(CaptureUnsafe, match="_local_scalar_dense makes the host wait"):
        for xb, yb in batcher.epoch(0):
            graphed.step(xb, yb)


def test_a_step_that_reads_another_tensor_than_its_static_input_is_caught():
    """A graph reads the captured addresses: a step that ignores its static input and cuts
    its batch from the training rows itself would train on the capture's rows forever."""
    trainer, batcher, _plan, split = build(traced(W.configure("regression", "raw", "cpu", steps=STEPS, batch_size=50)))
    inner, calls = trainer.trainer, iter(range(10**6))

    def step_on_copies(xb, yb):  # new tensors made from the static input: temporaries, capturable
        return type(inner).step(inner, xb.clone(), yb.clone())

    def step_on_its_own_rows(xb, yb):  # rows chosen by a Python counter: a different tensor each step
        k = next(calls) % 4
        return type(inner).step(inner, split.X_train[k : k + xb.shape[0]], yb)

    batches = [b for b in batcher.epoch(0)][: WARMUP_STEPS + 3]
    inner.step = step_on_copies
    graphed = GraphedTrainer(inner, TracedGraphs())
    for xb, yb in batches:
        graphed.step(xb, yb)
    assert graphed.replayed_steps == 3
    inner.step = step_on_its_own_rows
    graphed = GraphedTrainer(inner, TracedGraphs())
    with pytest.raises(CaptureUnsafe, match="differs from the captured one"):
        for xb, yb in batches:
            graphed.step(xb, yb)


def test_cuda_graph_does_not_apply_to_the_as_written_style():
    why = GRAPH.applies_to(W.STYLES.get("as_written"))
    assert not why.ok and "retain_graph=True" in why.reason
    assert all(GRAPH.applies_to(W.STYLES.get(s)).ok for s in CAPTURED_STYLES)
    assert set(CAPTURED_STYLES) == set(STYLES) - {"as_written"}


def test_without_cuda_the_placement_is_skipped_with_its_reason(capsys):
    if CUDA_GRAPH.ok:
        pytest.skip("CUDA is available here")
    assert "CUDA graphs capture CUDA kernels" in CUDA_GRAPH.reason
    with pytest.raises(W.Unavailable, match="CUDA graphs capture CUDA kernels"):
        W.configure("regression", "fused", "cuda_graph")
    assert main(["run", "regression", "--device", "cuda_graph", "--steps", "3"]) == 0
    assert "skipped: CUDA graphs capture CUDA kernels" in capsys.readouterr().out


def test_records_off_the_graph_placement_say_nothing_about_graphs():
    record = short_run("regression", "module", 3)
    assert record.graph_replays is None and record.graph_captures is None


# --- on a GPU: the real capture and replay ---------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("style", CAPTURED_STYLES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_cuda_graph_replays_the_cuda_trajectory(workload, style):
    steps = 40
    graphed = W.run(W.configure(workload, style, "cuda_graph", steps=steps), record_step_losses=True)
    eager = W.run(W.configure(workload, "module", "cuda", steps=steps), record_step_losses=True)
    rtol = GPU_RTOL[W.get_workload(workload).dtype]
    np.testing.assert_allclose(graphed.step_losses, eager.step_losses, rtol=rtol, atol=0)
    assert graphed.graph_replays == expected_replays(W.configure(workload, style, "cuda_graph", steps=steps)) > 0
    assert graphed.device == "cuda_graph" and graphed.peak_gpu_memory_bytes > 0


@needs_cuda
def test_cuda_graph_run_reaches_the_target_and_records_its_replays(tmp_path):
    out = tmp_path / "run.json"
    assert main(["run", "regression", "--style", "fused", "--device", "cuda_graph", "--until-target",
                 "--seed", "2", "--json", str(out), "--quiet"]) == 0
    (record,) = json.loads(out.read_text())
    assert record["reached_target"] and record["graph_captures"] == 1
    assert record["graph_replays"] == record["steps"] - WARMUP_STEPS


def test_benchmark_warm_up_captures_every_batch_shape_before_timing():
    """A steady-state benchmark on cuda_graph must not time a capture: the warm-up runs on
    until the short last batch (met once an epoch) has its graph too."""
    from torchloops.measurement.benchmarking import Prepared

    config = traced(W.configure("mlp_sgd", "module", "cpu", epochs=2, batch_size=300))
    prepared = Prepared(config).warm_up(5)
    assert prepared.trainer.captures == 2
    assert sum(prepared.trainer.eager_steps.values()) == 2 * WARMUP_STEPS
    for _ in range(7):
        prepared.step()
    prepared.epoch()
    assert prepared.trainer.captures == 2 and sum(prepared.trainer.eager_steps.values()) == 2 * WARMUP_STEPS
    prepared.check()


def test_warm_up_and_capture_steps_are_trained_but_not_timing_samples(monkeypatch):
    """A capture (and the eager steps before it) pays one-off costs: never a timing sample.
    LeNet's short last batch (step 45, 90, ...) is a second shape, warmed up and captured late."""
    timed_step = runner.Session._timed_step

    def slow_set_up(session):
        took, loss = timed_step(session)
        return (1.0 if session.trainer.setup_step else 1e-3), loss

    monkeypatch.setattr(runner.Session, "_timed_step", slow_set_up)
    record = W.run(traced(W.configure("lenet", "module", "cpu", steps=100))).to_dict()
    assert record["graph_replays"] < 100 and record["step_time_blocks_s"] == [1e-3] * len(record["step_time_blocks_s"])
    assert record["step_time_median_s"] == 1e-3

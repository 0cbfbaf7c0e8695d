"""The fast paths (``fused``, ``tuned``) and the loop as written (``as_written``).

Their loss trajectories are checked against ``module`` by tests/test_equivalence.py
(every registered style); here: the hand-derived gradients against autograd's, the
levers each style claims to pull, and that none of them leaves an autograd graph
where it says it does not.
"""

from __future__ import annotations

import json

import pytest
import torch

import torchloops as W
from conftest import GRAD_TOL
from torchloops.core.data import batch_plan
from torchloops.cli import main
from torchloops.measurement.runner import build



def _first_batch(workload: str, seed: int = 0):
    wl = W.get_workload(workload)
    split = wl.make_data(seed)
    config = W.configure(workload, "module", "cpu", seed, steps=1)
    plan = batch_plan(split.n_train, config.batch_size, wl.shuffle, 1, 1, 1, seed)
    entry = plan[0][0]
    return wl, split.X_train[entry], split.y_train[entry]


def test_every_workload_has_hand_derived_gradients(workload):
    assert W.get_workload(workload).fused_grads is not None


def test_fused_gradients_equal_autograd(workload):
    """At the initial parameters, on the first batch: the hand-derived loss and gradients
    are autograd's (raw forward + the torch.nn criterion)."""
    wl, xb, yb = _first_batch(workload)
    params = list(W.initial_parameters(wl, 0).values())
    leaves = [p.clone().requires_grad_() for p in params]
    loss = wl.criterion()(wl.raw_forward(leaves, xb), yb)
    expected = torch.autograd.grad(loss, leaves)
    with torch.no_grad():
        fused_loss, grads = wl.fused_grads([p.clone() for p in params], xb, yb)
    assert not fused_loss.requires_grad
    tol = GRAD_TOL[wl.dtype]
    torch.testing.assert_close(fused_loss, loss.detach(), **tol)
    assert len(grads) == len(expected)
    for name, got, want in zip(W.initial_parameters(wl, 0), grads, expected):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{workload} {name}: {m}")


def test_fused_trainer_keeps_no_graph_and_updates_in_place(workload):
    config = W.configure(workload, "fused", "cpu", 0, steps=3)
    trainer, batcher, _plan, _split = build(config)
    before = [p.data_ptr() for p in trainer.params]
    xb, yb = next(iter(batcher.epoch(0)))
    loss = trainer.step(xb, yb)
    assert loss.grad_fn is None and not loss.requires_grad
    assert all(not p.requires_grad and p.grad is None for p in trainer.params)
    assert [p.data_ptr() for p in trainer.params] == before  # updated in place
    assert list(trainer.state_dict()) == list(W.initial_parameters(W.get_workload(workload), 0))


def test_fused_trainer_writes_the_gradients_of_fused_grads_into_its_flat_buffer(workload):
    """The trainer's own layout (fc1's weight stored transposed, ``[W^T; b]`` blocks written by
    one product, gradients as views of one flat buffer) computes the loss and gradients that
    ``fused_grads`` returns as separate tensors (the form checked against autograd above), and
    its state dict is in nn.Linear's layout, contiguous."""
    config = W.configure(workload, "fused", "cpu", 0, steps=1)
    trainer, batcher, _plan, _split = build(config)
    xb, yb = next(iter(batcher.epoch(0)))
    params = [p.clone(memory_format=torch.contiguous_format) for p in trainer.params]
    want_loss, want = trainer.grads_fn(params, xb, yb)
    loss = trainer._grads(xb, yb)
    tol = GRAD_TOL[W.get_workload(workload).dtype]
    torch.testing.assert_close(loss, want_loss, **tol)
    for name, got, expected in zip(trainer.names, trainer.grads, want):
        torch.testing.assert_close(got, expected, **tol, msg=lambda m: f"{workload} {name}: {m}")
    initial = W.initial_parameters(W.get_workload(workload), 0)
    for (name, value), (_, start) in zip(trainer.state_dict().items(), initial.items()):
        assert value.is_contiguous() and value.shape == start.shape and torch.equal(value, start), name


def test_tuned_uses_fastest_optimizer_set_to_none_and_inference_mode(workload):
    config = W.configure(workload, "tuned", "cpu", 0, steps=2)
    trainer, batcher, _plan, split = build(config)
    group = trainer.optimizer.param_groups[0]
    assert group.get("fused") or group.get("foreach")
    calls = []
    zero_grad = trainer.optimizer.zero_grad
    trainer.optimizer.zero_grad = lambda set_to_none=True: (calls.append(set_to_none), zero_grad(set_to_none))
    xb, yb = next(iter(batcher.epoch(0)))
    trainer.step(xb, yb)
    assert calls == [True]
    assert trainer.predict(split.X_test).is_inference()


def test_pre_indexed_batches_are_the_planned_rows(workload):
    """The fused/tuned batcher (one gather per shuffled epoch) yields the rows of manual slicing."""
    config = W.configure(workload, "module", "cpu", 0, steps=60)
    _t, slicing, plan, split = build(config)
    pre = W.STYLES.get("fused").make_batcher(split, plan)
    written = W.STYLES.get("as_written").make_batcher(split, plan)
    for index in range(len(plan)):
        for (xa, ya), (xb, yb), (xc, yc) in zip(slicing.epoch(index), pre.epoch(index), written.epoch(index)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
            assert torch.equal(xa, xc) and torch.equal(ya, yc)
            assert xc.dtype == xa.dtype and yc.dtype == ya.dtype


def test_as_written_retains_the_graph():
    config = W.configure("mlp_adam", "as_written", "cpu", 0, steps=1)
    trainer, batcher, _plan, _split = build(config)
    seen = {}
    original = torch.Tensor.backward

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    torch.Tensor.backward = spy
    try:
        trainer.step(*next(iter(batcher.epoch(0))))
    finally:
        torch.Tensor.backward = original
    assert seen.get("retain_graph") is True


@pytest.mark.parametrize("style", ["fused", "tuned", "as_written"])
def test_new_styles_apply_or_say_why_on_every_placement(style):
    st = W.STYLES.get(style)
    for placement in W.PLACEMENTS.names():
        why = W.PLACEMENTS.get(placement).applies_to(st)
        assert why.ok or why.reason
    assert W.PLACEMENTS.get("ddp").applies_to(st).ok  # each has a rank-aware trainer
    assert W.PLACEMENTS.get("dataparallel").applies_to(st).ok == st.uses_module


def test_compiled_mode_reports_compile_time_apart_from_steady_state():
    """``torch.compile`` of the module step (dynamo with the ``eager`` backend here: the
    inductor compile takes over a minute on the CI machine): the compile time is the
    calls that met a new batch shape, kept out of the steady-state median, and the
    compiled step computes the eager step's losses."""
    from torchloops.commands.compile import describe
    from torchloops.measurement.compiled import measure

    record = measure("regression", steps=45, backend="eager")  # one 40-batch epoch and 5 steps more
    assert record["steps"] == 45
    assert record["compile_s"] > 0 and record["step_median_s"] > 0 and record["eager_step_median_s"] > 0
    assert record["compile_s"] > 5 * record["step_median_s"]
    assert record["max_rel_loss_diff"] <= 1e-5
    line = describe(record)
    assert "compile" in line and ("pays back" in line or "never pays off" in line)


def test_compile_with_no_steady_state_says_why_instead_of_nan(tmp_path, capsys):
    """``--steps 1``: the one compiled call compiled; no step median, no speed-up, valid JSON."""
    out = tmp_path / "compiled.json"
    assert main(["compile", "regression", "--backend", "eager", "--steps", "1", "--json", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "no steady-state step median: its one step compiled (raise --steps)" in line
    assert "nan" not in line.lower() and line.count("\n") == 0
    (record,) = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert record["step_median_s"] is None and record["speedup"] is None and record["break_even_steps"] is None


def test_compile_command_writes_records_and_skips_an_unavailable_device(tmp_path, capsys):
    """``torchloops compile`` (dynamo's eager backend: seconds, not inductor's minutes)."""
    out = tmp_path / "compiled.json"
    assert main(["compile", "regression", "--backend", "eager", "--steps", "40", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["workload"] == "regression" and record["backend"] == "eager" and record["steps"] == 40
    assert record["compile_s"] > 0 and record["max_rel_loss_diff"] < 1e-5
    assert "regression: compile" in capsys.readouterr().out
    if not W.PLACEMENTS.get("cuda").availability().ok:
        assert main(["compile", "regression", "--device", "cuda", "--backend", "eager"]) == 0
        assert "regression: skipped: " in capsys.readouterr().out

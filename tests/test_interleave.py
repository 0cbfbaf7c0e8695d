"""Interleaved timing (torchloops.measurement.interleave): trajectories unchanged, blocks paired by round,
ratios and intervals recorded; --deterministic's cuBLAS workspace checked early."""

from __future__ import annotations

import json
import math

import pytest
import torch

import torchloops as W
from torchloops import cli
from torchloops.measurement import runner
from torchloops.commands import run as run_command
from torchloops.measurement.interleave import paired_records, run_interleaved

TIMING_FIELDS = {"time_to_target_s", "step_time_median_s", "train_time_s", "step_time_interval_s",
                 "step_time_blocks_s", "comparison", "block_rounds", "time_to_target_interval_s",
                 "warmup_step_time_median_s", "train_time_sum_s", "time_to_target_sum_s"}


def _untimed(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in TIMING_FIELDS}
    out["history"] = [{k: v for k, v in h.items() if k != "time_s"} for h in record["history"]]
    return out


@pytest.mark.parametrize("workload", ["regression", "mlp_adam"])
def test_interleaved_records_equal_separate_runs_except_times(workload):
    styles = ["raw", "module", "dataloader", "fused"]
    configs = [W.configure(workload, s, steps=57, seed=3) for s in styles]  # 57: a short last block
    together = run_interleaved(configs, reference=1, record_step_losses=True)
    alone = [W.run(W.configure(workload, s, steps=57, seed=3), record_step_losses=True) for s in styles]
    for mixed, single in zip(together, alone):
        assert _untimed(mixed.to_dict()) == _untimed(single.to_dict())
        assert mixed.step_losses == single.step_losses  # bitwise: nothing leaks between sessions


def test_blocks_rounds_and_comparison_are_recorded():
    configs = [W.configure("regression", s, steps=45) for s in ("module", "sequential", "raw")]
    results = [r.to_dict() for r in run_interleaved(configs, reference=0)]
    for record in results:
        assert record["block_steps"] == runner.BLOCK_STEPS
        assert record["block_warmup_steps"] == runner.BLOCK_WARMUP_STEPS
        block = runner.BLOCK_WARMUP_STEPS + runner.BLOCK_STEPS
        rounds = math.ceil(45 / block)  # the last block's leftover steps still reach past its warm-up
        assert 45 % block > runner.BLOCK_WARMUP_STEPS
        assert len(record["step_time_blocks_s"]) == rounds == len(record["block_rounds"])
        assert record["block_rounds"] == list(range(rounds))  # every configuration had a block in every round
        low, high = record["step_time_interval_s"]
        assert 0 < low <= high
    assert results[0]["comparison"] is None  # the reference
    for record in results[1:]:
        found = record["comparison"]
        assert found["reference"] == {"workload": "regression", "style": "module", "device": "cpu", "seed": 0}
        assert found["rounds"] == math.ceil(45 / (runner.BLOCK_WARMUP_STEPS + runner.BLOCK_STEPS))
        assert found["verdict"] in ("same", "faster", "slower")
        assert found["interval"][0] <= found["ratio"] <= found["interval"][1]
    json.dumps(results)  # the records stay JSON


def test_round_order_rotates(monkeypatch):
    order = []
    original = runner.Session.advance

    def advance(self, steps=runner.BLOCK_STEPS, round_index=None, **kwargs):
        order.append((round_index, self.config.style.name))
        return original(self, steps, round_index, **kwargs)

    monkeypatch.setattr(runner.Session, "advance", advance)
    configs = [W.configure("regression", s, steps=30) for s in ("raw", "module", "fused")]
    run_interleaved(configs)
    firsts = [name for (r, name), (r_prev, _) in zip(order, [(None, None)] + order) if r != r_prev]
    assert firsts == ["raw", "module", "fused"]  # each round starts one configuration later


def _record(blocks, rounds=None):
    return {"step_time_blocks_s": blocks, "block_rounds": rounds or list(range(len(blocks)))}


def test_paired_ratio_cancels_what_the_machine_did_in_each_round():
    # Phases of 650 us and 1000 us, both configurations in the same phase each round; the
    # second is 10 % slower in every round: the paired ratio sees exactly that.
    phases = [650e-6 if (r // 10) % 2 else 1000e-6 for r in range(60)]
    base = _record(phases)
    slower = _record([1.1 * p for p in phases])
    estimate = paired_records([slower], [base])
    assert estimate.point == pytest.approx(1.1) and estimate.low == pytest.approx(1.1)
    same = _record([p * (1 + 0.01 * (-1) ** r) for r, p in enumerate(phases)])
    from torchloops.support.stats import verdict

    assert verdict(paired_records([same], [base])) == "same"
    assert verdict(estimate) == "slower"


def test_blocks_pair_only_within_common_rounds():
    base = _record([1.0, 1.0, 1.0, 1.0], [0, 1, 2, 3])
    other = _record([2.0, 3.0, 3.0], [1, 3, 7])  # round 7: the reference had finished
    estimate = paired_records([other], [base])
    assert estimate.samples == 2 and estimate.point == pytest.approx(2.5)


def test_interleaved_configurations_must_share_threads():
    configs = [W.configure("regression", "raw", steps=5), W.configure("regression", "module", steps=5, threads=2)]
    with pytest.raises(ValueError, match="threads"):
        run_interleaved(configs)


def test_run_table_shows_interval_and_paired_ratio(capsys):
    assert cli.main(["run", "regression", "--style", "all", "--steps", "40", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "step time [95 % CI]" in out and "time to target [95 % CI]" in out and "vs reference" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("regression")}
    assert "reference" in rows["module"]
    assert all(" us " in row or " ms " in row for row in rows.values())


# --------------------------------------------------------------------------- --deterministic's workspace


def test_deterministic_sets_the_cublas_workspace_in_configure(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    W.configure("regression", "raw", steps=2, deterministic=True)
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_refuses_a_workspace_cublas_rejects(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    with pytest.raises(W.UsageError, match="valid: :4096:8 or :16:8"):
        W.configure("regression", "raw", steps=2, deterministic=True)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    W.configure("regression", "raw", steps=2, deterministic=True)


def test_deterministic_refuses_when_cuda_started_without_the_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(W.UsageError, match="set CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting"):
        W.configure("regression", "raw", "cuda", steps=2, deterministic=True)  # a CPU run is not refused


def test_a_nondeterministic_operation_is_one_line(monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, "
                           "but you set 'torch.use_deterministic_algorithms(True)'.\nYou can turn off ...")

    monkeypatch.setattr(run_command, "run_interleaved", refuse)
    status = cli.main(["run", "regression", "--style", "raw", "--steps", "2", "--quiet", "--deterministic"])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1 and "deterministic implementation" in err

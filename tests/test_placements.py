"""Placements: availability with reasons, what a wrapped model saves, and the CUDA paths.

The CUDA and DataParallel tests need a GPU (DataParallel: two, since on one it is a
pass-through and unavailable); elsewhere they skip with the placement's own reason.
Nothing here assumes that a GPU is absent.  ``scripts/gpu_check.py`` is the
full run of every workload x style on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchloops as W
from torchloops.measurement import runner as runner_module
from conftest import GPU_RTOL, STYLES, WORKLOADS, needs_placement, short_run
from torchloops.cli import main
from torchloops.execution.placements import Placement, unwrap_state_dict

CUDA = W.PLACEMENTS.get("cuda").availability()
DATAPARALLEL = W.PLACEMENTS.get("dataparallel").availability()
needs_cuda = needs_placement("cuda")
needs_dataparallel = needs_placement("dataparallel")
needs_two_gpus = pytest.mark.skipif(
    not CUDA.ok or torch.cuda.device_count() < 2,
    reason="DataParallel only scatters a batch over two or more GPUs "
    f"({torch.cuda.device_count() if CUDA.ok else 0} visible)",
)


def test_every_placement_says_why_it_is_unavailable():
    for placement in W.PLACEMENTS.entries.values():
        avail = placement.availability()
        assert avail.ok or avail.reason, placement.name


def test_dataparallel_below_two_gpus_is_unavailable_not_a_silent_pass_through():
    if DATAPARALLEL.ok:
        pytest.skip(f"{torch.cuda.device_count()} GPUs visible: DataParallel scatters here")
    assert "DataParallel" in DATAPARALLEL.reason
    assert ("needs CUDA" in DATAPARALLEL.reason) == (not CUDA.ok)  # no GPU, or a pass-through on one
    with pytest.raises(W.Unavailable, match=re.escape(DATAPARALLEL.reason)):
        W.configure("regression", "module", "dataparallel")


def test_dataparallel_does_not_apply_to_the_raw_style():
    dp = W.PLACEMENTS.get("dataparallel")
    why = dp.applies_to(W.STYLES.get("raw"))
    assert not why.ok and "raw style has none" in why.reason
    for style in ("module", "sequential", "dataloader"):
        assert dp.applies_to(W.STYLES.get(style)).ok
    # ddp applies to every style: raw averages its gradients itself
    assert all(W.PLACEMENTS.get("ddp").applies_to(W.STYLES.get(s)).ok for s in STYLES)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_dataparallel_state_dict_loads_into_the_plain_model_after_stripping(workload):
    wl = W.get_workload(workload)
    torch.manual_seed(0)
    wrapped = nn.DataParallel(wl.build_module().to(wl.dtype))  # on CPU: constructed, not a scatter
    state = wrapped.state_dict()
    assert all(k.startswith("module.") for k in state)
    plain = wl.build_module().to(wl.dtype)
    with pytest.raises(RuntimeError, match="Missing key"):
        plain.load_state_dict(state)
    plain.load_state_dict(unwrap_state_dict(state))
    for name, value in plain.state_dict().items():
        assert torch.equal(value, state["module." + name])
    assert list(unwrap_state_dict(unwrap_state_dict(state))) == list(plain.state_dict())  # idempotent


class CountingPlacement(Placement):
    """CPU, counting the synchronisations around timed regions."""

    calls = 0

    def sync(self) -> None:
        type(self).calls += 1


def test_every_timed_step_is_synchronised():
    config = W.configure("regression", "module", steps=45)
    counting = CountingPlacement("counting", "cpu, counting syncs", "cpu", lambda: W.PLACEMENTS.get("cpu").check())
    CountingPlacement.calls = 0
    result = W.run(dataclasses.replace(config, placement=counting))
    assert result.steps == 45
    assert CountingPlacement.calls == 45 + 1  # each step, and once before the first clock read


def test_cpu_record_has_no_gpu_memory_and_one_process():
    result = short_run("regression", "module", 3)
    assert (result.world_size, result.backend, result.peak_gpu_memory_bytes) == (1, None, None)


def test_unavailable_placements_are_skipped_by_the_cli(capsys):
    if DATAPARALLEL.ok:
        pytest.skip(f"{torch.cuda.device_count()} GPUs visible: DataParallel runs here")
    assert main(["run", "regression", "--device", "dataparallel", "--steps", "3"]) == 0
    assert capsys.readouterr().out.count(f"skipped: {DATAPARALLEL.reason[:30]}") == len(STYLES)


def test_gpu_check_script_says_why_it_ran_nothing_without_a_gpu():
    """Without a visible GPU (hidden with CUDA_VISIBLE_DEVICES here, so this runs on any
    machine): one line naming each placement's reason, exit status 4, nothing run."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: nothing run: cuda: "), proc.stderr
    assert "; cuda_graph: CUDA graphs capture CUDA kernels: " in lines[0]
    assert "; dataparallel: nn.DataParallel needs CUDA devices: " in lines[0]
    assert proc.stdout == ""


# --- the CUDA paths (skip here with the reason) ------------------------------------------------


def gpu_run(workload, style, device, steps=40, **kwargs):
    return W.run(W.configure(workload, style, device, steps=steps), record_step_losses=True, **kwargs)


@needs_cuda
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_cuda_matches_cpu_trajectory_and_records_the_gpu(workload, style):
    gpu = gpu_run(workload, style, "cuda")
    cpu = short_run(workload, style, 40)
    rtol = GPU_RTOL[W.get_workload(workload).dtype]
    np.testing.assert_allclose(gpu.step_losses, cpu.step_losses, rtol=rtol, atol=0)
    assert gpu.device == "cuda" and gpu.device_name == f"{torch.cuda.get_device_name(0)}, float32 IEEE (TF32 off)"
    assert gpu.peak_gpu_memory_bytes and gpu.peak_gpu_memory_bytes > 0


@needs_cuda
@pytest.mark.parametrize("style", STYLES)
def test_cuda_moves_the_data_once_and_batches_stay_on_the_device(style):
    config = W.configure("lenet", style, "cuda", steps=5)
    trainer, batcher, plan, split = runner_module.build(config)
    for tensor in (split.X_train, split.y_train, split.X_test, split.y_test):
        assert tensor.device.type == "cuda"
    for xb, yb in batcher.epoch(0):
        assert xb.device.type == yb.device.type == "cuda"
    if style == "module":  # in-order slicing would be a view; shuffled rows are a gather on the GPU
        assert all(p.device.type == "cuda" for p in trainer.module.parameters())


@needs_dataparallel
@pytest.mark.parametrize("workload,style", [  # where dataparallel applies: a module to wrap
    (w, s) for w in WORKLOADS for s in STYLES
    if W.PLACEMENTS.get("dataparallel").applies_to(W.STYLES.get(s), W.get_workload(w)).ok])
def test_dataparallel_matches_cuda_and_saves_canonical_names(workload, style):
    seen = {}
    dp = gpu_run(workload, style, "dataparallel", trainer_hook=lambda t: seen.update(state=t.state_dict()))
    single = gpu_run(workload, style, "cuda")
    rtol = GPU_RTOL[W.get_workload(workload).dtype]
    np.testing.assert_allclose(dp.step_losses, single.step_losses, rtol=rtol, atol=0)
    assert dp.peak_gpu_memory_bytes > 0 and torch.cuda.get_device_name(0) in dp.device_name
    plain = W.get_workload(workload).build_module().to(W.get_workload(workload).dtype)
    plain.load_state_dict(seen["state"])  # no "module." prefix reaches a checkpoint


@needs_two_gpus
def test_dataparallel_really_scatters_over_the_gpus():
    config = W.configure("lenet", "module", "dataparallel", steps=3)
    trainer, batcher, _plan, _split = runner_module.build(config)
    assert isinstance(trainer.model, nn.DataParallel)
    assert len(trainer.model.device_ids) == torch.cuda.device_count()


@needs_dataparallel
def test_raw_style_on_dataparallel_is_reported_not_applicable(capsys):
    assert main(["run", "regression", "--style", "raw", "--device", "dataparallel", "--steps", "3"]) == 0
    assert "skipped: dataparallel wraps an nn.Module; the raw style has none" in capsys.readouterr().out

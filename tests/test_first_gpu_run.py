"""Issue 20: defects a read of the GPU paths against torch 2.13's sources found, held on the CPU.

Each test fails without its fix.  CUDA is faked only where the contract is the suite's own
decision (availability, flags, what a placement asks); nothing assumes that a GPU is absent.
Items 5 and 8 (peak memory, warm-up of one-off costs) live in the timing loop and are not here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchloops as W
from torchloops.execution import distributed as distributed_module
from torchloops.measurement import runner as runner_module
from torchloops.execution import placements
from torchloops.measurement.compare import aggregate
from torchloops.support.references import typical_seed
from torchloops.measurement.runner import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check_issue20", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cuda_visible(monkeypatch):
    """The CUDA placements made to look available (a CUDA build with two GPUs); nothing may
    actually reach a device."""
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# --- item 1: importing the suite asks nothing of CUDA ------------------------------------------

IMPORT_WITH_CUDA_QUERIES_RAISING = """
import runpy, sys
import torch, torch._dynamo  # torch.optim imports dynamo lazily, and it fails against a half-faked CUDA build

def asked(*args, **kwargs):
    raise AssertionError("the import asked CUDA (this poisons every fork: asv's forkserver)")

torch.version.cuda = "12.8"  # a CUDA build: the CPU build's `torch.version.cuda is None` hides the query
torch.cuda.is_available = asked
torch.cuda.device_count = asked
torch._C._cuda_getDeviceCount = asked
# gpu_check's fork probe, as its fork stage runs it: imports workloads and every benchmarks
# module (as asv's forkserver does), then forks a child that computes (on the CPU here)
sys.argv = [sys.argv[1], "--dry-run", "--probe", "fork"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_importing_the_suite_and_every_benchmark_asks_nothing_of_cuda_and_a_fork_computes():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_NVML_BASED_CUDA_CHECK",)
           and k not in distributed_module.ENV_VARS}
    proc = subprocess.run([sys.executable, "-c", IMPORT_WITH_CUDA_QUERIES_RAISING, str(SCRIPT)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"imported workloads and [1-9]\d* benchmarks modules; CUDA initialised in this process: False",
                     proc.stdout)
    assert "forked child: bad fork False; computed 8 on cpu" in proc.stdout


def test_ddp_decides_its_device_when_asked_not_at_import():
    ddp = W.PLACEMENTS.get("ddp")
    assert ddp.device_type == "backend"
    assert ddp.device().type == ("cuda" if distributed_module.use_cuda() else "cpu")


# --- item 2: applicability is workload x style x placement -------------------------------------


def test_mlp_sgd_as_written_on_dataparallel_is_unavailable_with_one_line(cuda_visible):
    with pytest.raises(W.Unavailable) as why:
        W.configure("mlp_sgd", "as_written", "dataparallel")
    assert str(why.value) == "dataparallel wraps an nn.Module; mlp_sgd's as_written loop has none"
    # the other workloads' notes keep an nn.Module, and mlp_sgd's other module styles wrap as before
    for workload in ("classification", "regression", "lenet", "mlp_adam"):
        assert W.configure(workload, "as_written", "dataparallel").placement.name == "dataparallel"
    assert W.configure("mlp_sgd", "module", "dataparallel").placement.wraps_module


def test_gpu_check_dry_run_wraps_as_dataparallel_would_and_skips_what_it_cannot_wrap():
    script = _script()
    job = dict(placement="dataparallel", workload="mlp_sgd", dry=True, seed=2, steps=3, share_s=30)
    with pytest.raises(W.Unavailable, match="mlp_sgd's as_written loop has none"):
        script.train_job(dict(job, style="as_written"))
    config, _ = script._configure(dict(job, style="module"), "dataparallel")
    trainer, *_ = runner_module.build(config)
    assert isinstance(trainer.model, torch.nn.DataParallel)  # wrapped on the CPU, as on the GPUs
    # the trainer that cannot be wrapped says so when a placement wraps it anyway
    wrapped = dataclasses_replace(W.configure("mlp_sgd", "as_written", "cpu", steps=3),
                                  placement=script._wrapping_placement())
    with pytest.raises(ValueError, match="wraps an nn.Module"):
        runner_module.build(wrapped)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


# --- item 3: gpu_check's default seed reaches the targets --------------------------------------


def test_gpu_check_defaults_to_each_workloads_typical_seed():
    script = _script()
    check = script.Check(script.parse_args(["--dry-run"]))
    assert [check.seed(w) for w in W.workload_names()] == [typical_seed(w) for w in W.workload_names()]
    assert check.seed("mlp_sgd") == typical_seed("mlp_sgd") != 0
    assert script.Check(script.parse_args(["--dry-run", "--seed", "0"])).seed("mlp_sgd") == 0


def test_mlp_sgd_reaches_its_target_with_the_default_seed_and_not_with_seed_0():
    script = _script()
    job = dict(placement="cuda", workload="mlp_sgd", style="fused", dry=True, steps=2000, share_s=60)
    seed = script.Check(script.parse_args(["--dry-run"])).seed("mlp_sgd")
    assert script.train_job(dict(job, seed=seed))["record"]["reached_target"]
    assert not script.train_job(dict(job, seed=0))["record"]["reached_target"]  # seed 0 plateaus


# --- item 4: --deterministic refused only for runs on CUDA -------------------------------------


def test_deterministic_cpu_run_is_configured_once_cuda_is_initialised(monkeypatch, cuda_visible):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # an earlier test touched CUDA
    assert W.configure("regression", "module", "cpu", steps=3, deterministic=True).deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # too late to mean anything: left unset
    for device in ("cuda", "cuda_graph", "dataparallel"):
        with pytest.raises(W.UsageError, match="CUDA is already initialised"):
            W.configure("regression", "module", device, steps=3, deterministic=True)


# --- item 6: float32 without TF32 on CUDA, and the record says so ------------------------------


@pytest.fixture
def tf32_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("name", ["cuda", "cuda_graph", "dataparallel"])
def test_cuda_setup_turns_tf32_off_and_the_device_name_records_it(monkeypatch, cuda_visible, tf32_flags, name):
    warmed = []
    monkeypatch.setattr(placements, "warm_up", warmed.append)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    placement = W.PLACEMENTS.get(name)
    assert placements.float32_precision() == "float32 with TF32 in cuBLAS and cuDNN"
    placement.setup()
    assert warmed and not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert placement.device_name().endswith("Fake GPU, float32 IEEE (TF32 off)")


def test_cpu_setup_leaves_the_flags_alone(tf32_flags):
    W.PLACEMENTS.get("cpu").setup()
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


# --- item 7: % of peak only where the CPU's peak applies ---------------------------------------


def _record(device, backend=None):
    return {"style": "module", "device": device, "backend": backend, "seed": 0, "reached_target": True,
            "steps_to_target": 10, "time_to_target_s": 1.0, "step_time_median_s": 0.01, "metric_value": 0.9,
            "step_time_interval_s": None, "step_time_blocks_s": [0.01]}


@pytest.mark.parametrize("device,backend,share", [
    ("cpu", None, 0.5), ("ddp", "gloo", 0.5), ("ddp", "nccl", None), ("cuda", None, None),
    ("cuda_graph", None, None), ("dataparallel", None, None),
])
def test_peak_share_only_for_rows_computed_on_the_cpu(device, backend, share):
    row = aggregate([_record(device, backend)], flops_per_step=1e6, peak=2e8)
    assert row["peak_share"] == (pytest.approx(share) if share is not None else None)


# --- item 9: gpu_check's ddp launch and the data of a training job ------------------------------


def test_gpu_check_launches_ddp_with_the_selected_styles(monkeypatch):
    script = _script()
    check = script.Check(script.parse_args(["--dry-run", "--styles", "module,fused", "--workloads", "regression",
                                            "--steps", "5"]))
    launched = []

    class FakeLaunch:
        returncode = 0

        def __init__(self, cmd, **_kwargs):
            launched.append(cmd)
            Path(cmd[cmd.index("--json") + 1]).write_text("[]")

        def communicate(self, timeout=None):
            return "", ""

    monkeypatch.setattr(script.subprocess, "Popen", FakeLaunch)
    check.ddp("regression", 2, 60.0)
    (cmd,) = launched
    assert cmd[cmd.index("--style") + 1] == "module,fused"
    assert cmd[cmd.index("--seed") + 1] == str(typical_seed("regression"))


def test_gpu_check_training_job_makes_its_data_once(monkeypatch):
    script = _script()
    made = []
    original = RunConfig.data

    def counting(self):
        if self.split is None:
            made.append(self.workload.name)
        return original(self)

    monkeypatch.setattr(RunConfig, "data", counting)
    job = dict(placement="cuda", workload="regression", style="fused", dry=True, seed=2,
               steps=script.PROBE_STEPS + 10, share_s=30)
    result = script.train_job(job)  # a probe of PROBE_STEPS, then the run
    assert result["record"]["steps"] == script.PROBE_STEPS + 10
    assert made == ["regression"]


# --- gpu_check's stages ------------------------------------------------------------------------


def test_gpu_check_stages_come_in_the_order_of_their_evidence_with_their_commands():
    script = _script()
    assert script.STAGE_NAMES == ["versions", "fork", "tests", "deterministic", "ddp1", "plan"]
    assert sum(cap for _, cap, _ in script.STAGES if cap) < 540  # the plan keeps a share of the default budget
    gpu = script.parse_args([])
    deterministic = script.stage_command("deterministic", gpu, "/tmp")
    assert deterministic[3:] [:8] == ["run", "all", "--style", "all", "--device", "cuda", "--deterministic", "--steps"]
    ddp1 = " ".join(script.stage_command("ddp1", gpu, "/tmp"))
    assert "--device ddp --nproc 1 --backend nccl" in ddp1
    assert "tests/test_graphs.py" in script.stage_command("tests", gpu, "/tmp")
    dry = script.parse_args(["--dry-run", "--stages", "plan,versions"])
    assert dry.stages == ["versions", "plan"]  # always in the fixed order
    assert "--collect-only" in script.stage_command("tests", dry, "/tmp")
    assert "gloo" in script.stage_command("ddp1", dry, "/tmp")


def test_gpu_check_versions_probe_says_tf32_is_off_after_setup(capsys, tf32_flags):
    assert _script().probe_versions(dry=True) == 0
    before, after = [line for line in capsys.readouterr().out.splitlines() if "setup:" in line]
    assert before.endswith("float32 with TF32 in cuBLAS and cuDNN") and after.endswith("float32 IEEE (TF32 off)")

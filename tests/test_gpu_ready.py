"""Issue 15: the CUDA paths made ready for the first GPU, checked where a CPU can reach them.

Each test reaches the logic of one item without a GPU (fakes of torch's CUDA entry points
where needed) and none assumes that a GPU is absent: on a GPU machine they run the same.
``scripts/gpu_check.py`` is exercised through its ``--dry-run`` (the same plan on the CPU
placement) and its test-only fault injection (``TORCHLOOPS_GPU_CHECK_FAULT``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchloops as W
from torchloops.execution import distributed, placements
from torchloops.support import launcher
from torchloops.cli import main
from torchloops.core.data import Split, batch_plan, plan_on_device
from torchloops.execution.placements import Placement
from torchloops.execution.styles import SliceBatcher, pre_indexed_batcher

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


# --- item 1: the peak-memory reset -----------------------------------------------------------


class FakeAllocator:
    """torch's CUDA entry points as a fresh process sees them: the caching allocator refuses
    a device until CUDA is initialised (c10's "Invalid device argument 0: did you call init?")."""

    def __init__(self):
        self.initialised = False
        self.resets = []

    def init(self):
        self.initialised = True

    def reset(self, index):
        if not self.initialised:
            raise RuntimeError(f"Invalid device argument {index}: did you call init?")
        self.resets.append(index)


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: fake.initialised)
    monkeypatch.setattr(torch.cuda, "init", fake.init)
    monkeypatch.setattr(torch.cuda, "_lazy_init", fake.init)
    monkeypatch.setattr(torch._C, "_cuda_resetPeakMemoryStats", fake.reset, raising=False)
    return fake


def test_reset_peak_memory_is_safe_before_cuda_is_initialised(fake_cuda):
    cuda = W.PLACEMENTS.get("cuda")
    cuda.reset_peak_memory()  # a fresh process: nothing has initialised CUDA yet
    assert fake_cuda.initialised and fake_cuda.resets == [0]
    cuda.reset_peak_memory()  # and later, as usual
    assert fake_cuda.resets == [0, 0]


EVENTS: list = []


@dataclasses.dataclass(frozen=True)
class RecordingPlacement(Placement):
    """The CPU, recording when the run is built (setup) and when the peak count is reset."""

    def setup(self) -> None:
        EVENTS.append("setup")

    def reset_peak_memory(self) -> None:
        EVENTS.append("reset")

    def sync(self) -> None:
        EVENTS.append("sync")


def test_the_peak_memory_count_starts_after_the_run_is_built():
    config = W.configure("regression", "module", steps=3)
    placement = RecordingPlacement("recording", "cpu, recording", "cpu", lambda: W.PLACEMENTS.get("cpu").check())
    EVENTS.clear()
    W.run(dataclasses.replace(config, placement=placement))
    assert "setup" in EVENTS and "reset" in EVENTS
    assert EVENTS.index("setup") < EVENTS.index("reset")  # build (setup, data, model) first, then the count


# --- item 3: the untimed device warm-up --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CudaTypedCpu(Placement):
    """A placement of device type cuda that computes on the CPU: the CUDA placements' setup
    without a GPU (the warm-up itself is recorded, not run)."""

    def device(self) -> torch.device:
        return torch.device("cpu")

    def sync(self) -> None:
        EVENTS.append("sync")

    def device_name(self) -> str:
        return "fake"


def test_cuda_placements_warm_the_device_up_before_anything_is_timed(monkeypatch):
    monkeypatch.setattr(placements, "warm_up", lambda device: EVENTS.append(f"warm {device}"))
    config = W.configure("regression", "module", steps=3)
    placement = CudaTypedCpu("cudalike", "cuda-typed cpu", "cuda", lambda: W.PLACEMENTS.get("cpu").check())
    EVENTS.clear()
    W.run(dataclasses.replace(config, placement=placement))
    assert EVENTS[0] == "warm cpu"  # in setup, before the first sync that opens the timed region
    assert EVENTS.count("warm cpu") == 1


def test_dataparallel_warms_every_gpu_it_scatters_over(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    warmed = []
    monkeypatch.setattr(placements, "warm_up", warmed.append)
    W.PLACEMENTS.get("dataparallel").setup()
    assert warmed == [torch.device("cuda", i) for i in range(3)]
    warmed.clear()
    W.PLACEMENTS.get("cpu").setup()  # the CPU has nothing to warm
    assert warmed == []


def test_warm_up_runs_once_per_device(monkeypatch):
    monkeypatch.setattr(placements, "_WARMED", set())
    calls = []
    real_conv = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda *a, **k: calls.append(1) or real_conv(*a, **k))
    placements.warm_up(torch.device("cpu"))
    placements.warm_up(torch.device("cpu"))
    assert calls == [1] and "cpu" in placements._WARMED


# --- item 5: DataParallel with fewer than two GPUs -------------------------------------------


@pytest.mark.parametrize("gpus,ok", [(0, False), (1, False), (2, True), (4, True)])
def test_dataparallel_needs_two_gpus(monkeypatch, gpus, ok):
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    avail = W.PLACEMENTS.get("dataparallel").availability()
    assert avail.ok == ok
    if gpus == 1:
        assert "pass-through on one GPU" in avail.reason and "1 visible" in avail.reason
    if gpus == 0:
        assert "needs CUDA" in avail.reason
    assert W.PLACEMENTS.get("cuda").availability().ok == (gpus > 0)


# --- item 2: the ddp backend ---------------------------------------------------------------------


@pytest.fixture
def backend_reset():
    yield
    distributed.select_backend(None)


@pytest.mark.parametrize("visible", [False, True])
def test_default_backend_is_nccl_with_cuda_else_gloo_and_gloo_ranks_use_the_cpu(monkeypatch, backend_reset, visible):
    monkeypatch.setattr(distributed, "cuda_visible", lambda: visible)
    distributed.select_backend(None)
    assert distributed.backend_name() == ("nccl" if visible else "gloo")
    assert distributed.use_cuda() == visible
    distributed.select_backend("gloo")  # asked for: CPU ranks even where GPUs are visible
    assert distributed.backend_name() == "gloo" and not distributed.use_cuda()
    assert distributed.device() == torch.device("cpu")


def test_nccl_without_a_gpu_is_a_usage_error(monkeypatch, capsys, backend_reset):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: pytest.fail("launched despite bad input"))
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert main(["run", "regression", "--device", "ddp", "--nproc", "2", "--backend", "nccl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend nccl needs one GPU per rank" in err and "valid here: gloo" in err


@pytest.mark.parametrize("backend", [None, "gloo"])
def test_the_ranks_get_the_backend_asked_for(monkeypatch, backend_reset, backend):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    seen = {}

    def launch(nproc, python_args, threads=1):
        seen["argv"] = list(python_args)
        return 1, "stopped here"

    monkeypatch.setattr(launcher, "launch", launch)
    extra = [] if backend is None else ["--backend", backend]
    assert main(["run", "regression", "--style", "raw", "--device", "ddp", "--nproc", "2", "--steps", "3",
                 *extra]) == 1
    argv = seen["argv"]
    if backend is None:
        assert "--backend" not in argv  # each rank takes the default, as the launcher did
    else:
        assert argv[argv.index("--backend") + 1] == "gloo"


def test_the_backend_reported_is_the_process_group_s(monkeypatch, backend_reset):
    import torch.distributed as dist

    monkeypatch.setattr(distributed, "cuda_visible", lambda: True)  # the default would say nccl
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = W.PLACEMENTS.get("ddp")
        assert ddp.backend() == "gloo" and dist.get_backend() == "gloo"
        assert not distributed.use_cuda() and ddp.device() == torch.device("cpu")
        monkeypatch.setattr(dist, "get_backend", lambda *a: "fake-backend")
        assert ddp.backend() == "fake-backend"  # read from the group, not from the expectation
    finally:
        dist.destroy_process_group()


# --- item 7: shuffled batches' indices on the data's device -------------------------------------


class DevicesSeen(TorchDispatchMode):
    """The devices of every tensor argument of every ATen operation."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in list(args) + list(kwargs.values()):
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, torch.Tensor):
                    self.devices.add(item.device.type)
        return func(*args, **kwargs)


@pytest.mark.parametrize("make", [SliceBatcher, pre_indexed_batcher], ids=["slice", "pre_indexed"])
def test_shuffled_batches_index_with_indices_already_on_the_data_device(make):
    # "meta" stands for the GPU: a CPU index tensor reaching an operation would be a copy per step
    X, y = torch.zeros(40, 3, device="meta"), torch.zeros(40, device="meta")
    split = Split(X, y, X[:5], y[:5])
    plan = batch_plan(40, 8, True, 2, 5, 10, seed=0)
    batcher = make(split, plan)  # built untimed; the indices move here, once
    seen = DevicesSeen()
    with seen:
        for epoch in range(2):
            batches = list(batcher.epoch(epoch))
            assert len(batches) == 5 and all(xb.shape == (8, 3) for xb, _ in batches)
    assert seen.devices == {"meta"}


def test_on_the_cpu_the_plan_is_left_as_it_is():
    plan = batch_plan(40, 8, True, 2, 5, 10, seed=0)
    assert plan_on_device(plan, torch.device("cpu")) is plan
    moved = plan_on_device(plan, torch.device("meta"))
    assert [[t.device.type for t in epoch] for epoch in moved] == [["meta"] * 5] * 2
    in_order = batch_plan(40, 8, False, 1, 5, 5, seed=0)
    assert plan_on_device(in_order, torch.device("meta")) == in_order  # slices stay slices


# --- item 4: scripts/gpu_check.py ---------------------------------------------------------------


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_check(*argv, fault=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    env.pop("TORCHLOOPS_GPU_CHECK_FAULT", None)
    if fault:
        env["TORCHLOOPS_GPU_CHECK_FAULT"] = fault
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def test_gpu_check_bad_placement_is_one_line_and_exit_2():
    proc = gpu_check("--placements", "nosuch")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gpu_check: error: --placements: ")
    assert "'nosuch'" in proc.stderr and "valid: cpu, cuda, cuda_graph, dataparallel" in proc.stderr


@pytest.mark.parametrize("argv,expected", [
    (["--workloads", "nosuch"], "--workloads: unknown name(s) 'nosuch'"),
    (["--styles", "raw,nope"], "--styles: unknown name(s) 'nope'"),
    (["--placements", ","], "--placements: no names given"),
    (["--placements", "ddp"], "'ddp'"),  # ddp is --ddp-nproc
    (["--budget-s", "-1"], "--budget-s"),
    (["--budget-s", "nan"], "--budget-s"),
    (["--steps", "0"], "--steps"),
    (["--ddp-nproc", "x"], "--ddp-nproc"),
    (["--ddp-backend", "mpi"], "--ddp-backend"),
    (["--json", "/nonexistent-folder/gpu.json"], "does not exist"),
    (["--bogus"], "unrecognized arguments"),
])
def test_gpu_check_bad_arguments_are_one_line_and_exit_2(capsys, argv, expected):
    assert _load_script().main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("gpu_check: error: ")
    assert expected in out.err


@pytest.mark.slow
def test_gpu_check_dry_run_walks_the_whole_plan(tmp_path):
    out = tmp_path / "gpu.json"
    proc = gpu_check("--dry-run", "--stages", "plan", "--json", str(out))  # the stages: test_first_gpu_run.py
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # capped at 4 steps: targets missed
    document = json.loads(out.read_text())
    assert document["dry_run"] and document["exit_status"] == 1 and document["failures"] == []
    styles, names = W.STYLES.names(), W.workload_names()
    applicable = {p: [s for s in styles if W.PLACEMENTS.get(p).applies_to(W.STYLES.get(s)).ok]
                  for p in ("cuda", "cuda_graph", "dataparallel")}
    assert len(applicable["cuda"]) == 7 and "as_written" not in applicable["cuda_graph"]
    assert "raw" not in applicable["dataparallel"] and "fused" not in applicable["dataparallel"]
    # less mlp_sgd's as_written loop on dataparallel: no nn.Module to wrap (issue 20, item 2)
    assert len(document["records"]) == len(names) * sum(len(v) for v in applicable.values()) - 1
    assert all(r["steps"] == 4 and r["device"] in ("cpu", "cpu_traced_graph", "cpu_wrapped")
               for r in document["records"])
    assert {r["device"] for r in document["records"] if r["style"] == "raw"} == {"cpu", "cpu_traced_graph"}
    assert len(document["graphs"]) == len(names) * len(applicable["cuda_graph"])
    assert all(row[-1].startswith("ok") for row in document["graphs"])  # CPU stand-in: trajectories agree
    for placement, skipped in (("cuda_graph", "as_written"), ("dataparallel", "raw"), ("dataparallel", "fused")):
        assert f"{placement}~cpu" in proc.stdout
        assert sum(f"{placement}~cpu" in line and f" {skipped} " in line and "skipped:" in line
                   for line in proc.stdout.splitlines()) == len(names)
    assert proc.stdout.rstrip().endswith("exit status 1")


@pytest.mark.slow
def test_gpu_check_dry_run_that_reaches_every_target_exits_0_and_launches_ddp_with_its_backend(tmp_path):
    out = tmp_path / "gpu.json"
    proc = gpu_check("--dry-run", "--stages", "plan", "--placements", "cuda", "--workloads", "regression", "--styles", "fused",
                     "--steps", "800", "--no-graph-comparison", "--ddp-nproc", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every run reached its target; exit status 0" in proc.stdout
    single, ddp = json.loads(out.read_text())["records"]
    assert (single["device"], single["world_size"]) == ("cpu", 1)
    assert (ddp["device"], ddp["world_size"], ddp["backend"]) == ("ddp", 2, "gloo")  # the group's own backend
    assert ddp["reached_target"] and ddp["steps"] == single["steps"]  # the same trajectory over 2 ranks
    assert "ddp 2xgloo  regression  fused" in proc.stdout


@pytest.mark.slow
def test_gpu_check_a_crashed_run_and_a_dead_worker_are_rows_and_the_check_goes_on(tmp_path):
    out = tmp_path / "gpu.json"
    proc = gpu_check("--dry-run", "--stages", "plan", "--placements", "cuda,cuda_graph", "--workloads", "regression", "--styles",
                     "module,fused", "--no-graph-comparison", "--json", str(out),
                     fault="crash:cuda/regression/module;die:cuda_graph/regression/module")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    document = json.loads(out.read_text())
    crashed, died = document["failures"]
    assert crashed["kind"] == "crashed" and crashed["placement"] == "cuda~cpu" and crashed["style"] == "module"
    assert "RuntimeError: injected failure" in crashed["reason"]
    assert died["placement"] == "cuda_graph~cpu" and died["style"] == "module"
    assert "CRASHED: RuntimeError: injected failure" in proc.stdout
    assert "CRASHED: the worker process died (status 9)" in proc.stdout
    # every other run of the plan ran, the one after the dead worker on a new worker
    assert [(r["style"]) for r in document["records"]] == ["fused", "fused"]
    fused = [line for line in proc.stdout.splitlines() if line.startswith("cuda_graph~cpu") and " fused " in line]
    assert fused and "CRASHED" not in fused[-1] and "capped at 4" in fused[-1]


@pytest.mark.slow
def test_gpu_check_a_hung_run_is_killed_at_its_timeout_and_the_budget_covers_the_rest(tmp_path):
    started = time.monotonic()
    proc = gpu_check("--dry-run", "--stages", "plan", "--placements", "cuda", "--workloads", "regression", "--styles", "module,fused",
                     "--no-graph-comparison", "--budget-s", "2", "--grace-s", "3", fault="hang:cuda/regression/module")
    wall = time.monotonic() - started
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CRASHED: TIMED OUT after 4 s" in proc.stdout  # its share (1 s of 2) plus the grace
    assert "NOT RUN: the time budget (2 s) was spent" in proc.stdout  # fused: nothing left for it
    assert wall < 60  # not the hour the run would have slept


def test_gpu_check_exit_codes_are_distinct_and_documented():
    script = _load_script()
    codes = (script.EXIT_OK, script.EXIT_MISSED, script.EXIT_USAGE, script.EXIT_CRASHED, script.EXIT_NO_GPU)
    assert len(set(codes)) == 5
    for code in codes:
        assert f"\n  {code}  " in script.__doc__

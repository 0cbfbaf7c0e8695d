"""DistributedDataParallel (gloo, CPU) gives the single-process loss trajectory.

Every launch here asks for gloo (``--backend gloo``): on a GPU machine the default is
nccl, and these tests are about the CPU ranks matching the CPU single-process run.

The equivalence runs go through the real user path, ``torchloops run ... --device
ddp --nproc N``: one torchrun launch for every workload x style (2 ranks, 60
steps: every minibatched workload crosses an epoch boundary and a reshuffle, and
lenet's short last batch of 29 rows splits 15/14), and one with 3 ranks and a
batch of 13 rows (unequal shards on every step).  The recorded per-step loss is
the global-batch loss, so it compares with the single-process ``step_losses``
at the suite's float tolerances.  About 30-40 s on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import torchloops as W
from torchloops.core import data as data_module
from conftest import RTOL, STYLES, WORKLOADS, ShortRuns, short_run
from torchloops.execution import distributed
from torchloops.support import launcher
from torchloops.cli import main

# Past an epoch's end for every workload: lenet's 45th step is its short last batch (1437 % 32 = 29
# rows, shards 15/14) and its 46th the next epoch's reshuffle; regression reshuffles at step 41.
STEPS = 46
TIMEOUT_S = 300


def torchloops(*argv, timeout=TIMEOUT_S):
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    return subprocess.run(
        [sys.executable, "-m", "torchloops", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def ddp_records(tmp_path, *argv):
    out = tmp_path / "ddp.json"
    proc = torchloops("run", *argv, "--device", "ddp", "--backend", "gloo", "--step-losses", "--quiet",
                      "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return {(r["workload"], r["style"]): r for r in json.loads(out.read_text())}, proc


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return ddp_records(tmp_path_factory.mktemp("ddp2"), "all", "--style", "all", "--nproc", "2",
                       "--steps", str(STEPS))


@pytest.fixture(scope="module")
def single():
    return ShortRuns(STEPS)


def assert_same_trajectory(ddp: dict, reference, dtype):
    rtol = RTOL[dtype]
    got, want = np.array(ddp["step_losses"]), np.array(reference.step_losses)
    assert len(got) == len(want) == reference.steps
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)
    assert want[-1] < want[0]  # the losses move, or equality would prove nothing
    assert ddp["final_train_loss"] == pytest.approx(reference.final_train_loss, rel=rtol)
    assert ddp["test_loss"] == pytest.approx(reference.test_loss, rel=rtol)
    assert [h["step"] for h in ddp["history"]] == [h["step"] for h in reference.history]


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_two_rank_ddp_matches_single_process(two_ranks, single, workload, style):
    reference = single[(workload, style)]  # a style the workload declares nothing for: a skip here
    records, _ = two_ranks
    record = records[(workload, style)]
    assert record["device"] == "ddp" and record["world_size"] == 2 and record["backend"] == "gloo"
    assert_same_trajectory(record, reference, W.get_workload(workload).dtype)


@pytest.mark.slow
def test_rank_zero_alone_reports(two_ranks):
    records, proc = two_ranks
    assert len(records) == len(WORKLOADS) * len(STYLES)
    assert proc.stdout.count("workload  ") == 1  # one table, from rank 0
    assert "torchloops" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_three_ranks_with_unequal_shards_on_every_step(tmp_path):
    # 800 rows in batches of 13: shards 5/4/4, and 3/2/2 for the last batch of 7 rows; with the
    # notes' L2 penalty (--weight-decay 0.0001), which every rank applies to the summed gradient
    records, _ = ddp_records(tmp_path, "regression", "--style", "all", "--nproc", "3", "--batch-size", "13",
                             "--steps", "70", "--weight-decay", "0.0001")
    for style in STYLES:
        reference = W.run(W.configure("regression", style, steps=70, batch_size=13, weight_decay=1e-4),
                          record_step_losses=True)
        assert records[("regression", style)]["world_size"] == 3
        assert records[("regression", style)]["weight_decay"] == 1e-4
        assert_same_trajectory(records[("regression", style)], reference, torch.float32)


@pytest.mark.slow
def test_every_failed_rank_is_reported():
    script = "import os, sys; sys.exit({'0': 0, '1': 3, '2': 4}[os.environ['RANK']])"
    code = f"from torchloops.support import launcher; print(launcher.launch(3, ['-c', {script!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    status, message = eval(proc.stdout.strip().splitlines()[-1])
    assert status == 1
    assert "rank 1 exited with status 3" in message and "rank 2 exited with status 4" in message
    assert "rank 0" not in message


def test_a_failed_launch_is_one_line_and_a_nonzero_status(monkeypatch, capsys):
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: (1, "rank 1 exited with status 3"))
    assert main(["run", "regression", "--style", "raw", "--device", "ddp", "--nproc", "2", "--backend", "gloo",
                 "--steps", "3"]) == 1
    err = capsys.readouterr().err
    assert err == "torchloops: error: ddp run with 2 ranks failed: rank 1 exited with status 3\n"


DDP_USAGE = [
    (["--device", "ddp"], "add --nproc N"),
    (["--nproc", "2"], "does not apply to --device cpu"),
    (["--device", "ddp", "--nproc", "0"], "positive integer"),
    (["--device", "ddp", "--nproc", "3", "--backend", "gloo", "--batch-size", "7"], "fewer than the 3 ranks"),
    (["--device", "ddp", "--nproc", "801", "--backend", "gloo"], "fewer than the 801 ranks"),
    (["--backend", "gloo"], "does not apply to --device cpu"),
    (["--device", "ddp", "--nproc", "2", "--backend", "mpi"], "invalid choice"),
]


@pytest.mark.parametrize("extra,expected", DDP_USAGE, ids=[" ".join(a) for a, _ in DDP_USAGE])
def test_ddp_usage_errors_are_one_line_exit_2(monkeypatch, capsys, extra, expected):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: pytest.fail("launched despite bad input"))
    assert main(["run", "regression", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torchloops: error: ") and expected in err


def test_a_rank_says_which_rank_it_is(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["run", "regression", "--device", "ddp", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "torchloops (rank 1 of 2): error: this process is already rank 1 of 2 started by torchrun; " \
                  "leave --nproc out\n"


def test_in_one_process_ddp_is_unavailable_and_says_how_to_start_it(monkeypatch, capsys):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    ddp = W.PLACEMENTS.get("ddp")
    avail = ddp.availability()
    assert not avail.ok and "torchrun" in avail.reason and "--nproc" in avail.reason
    with pytest.raises(W.Unavailable, match="torchrun"):
        W.configure("regression", "module", "ddp")
    assert ddp.launch_availability(2).ok
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "via torchrun" in out and avail.reason in out


@pytest.fixture
def one_rank_group():
    """A one-rank gloo group in this process: the ddp code path without torchrun."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("style", STYLES)
def test_one_rank_ddp_in_process_equals_cpu(one_rank_group, style):
    config = W.configure("mlp_adam", style, "ddp", steps=12)
    states = {}
    ddp = W.run(config, record_step_losses=True, trainer_hook=lambda t: states.update(ddp=t.state_dict()))
    cpu = W.run(W.configure("mlp_adam", style, steps=12), record_step_losses=True,
                trainer_hook=lambda t: states.update(cpu=t.state_dict()))
    assert (ddp.world_size, ddp.backend, cpu.world_size, cpu.backend) == (1, "gloo", 1, None)
    np.testing.assert_allclose(ddp.step_losses, cpu.step_losses, rtol=1e-6, atol=0)
    # canonical names: no "module." from the DistributedDataParallel wrapper
    assert list(states["ddp"]) == list(states["cpu"]) == [n for n, _ in W.get_workload("mlp_adam").build_module().named_parameters()]


def test_ddp_wrapped_state_dict_loads_into_the_plain_model(one_rank_group):
    from torch.nn.parallel import DistributedDataParallel

    from torchloops.execution.placements import unwrap_state_dict

    wl = W.get_workload("regression")
    wrapped = DistributedDataParallel(wl.build_module())
    state = wrapped.state_dict()
    assert all(k.startswith("module.") for k in state)
    plain = wl.build_module()
    plain.load_state_dict(unwrap_state_dict(state))
    x = torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(plain(x), wrapped.module(x))


def test_sharding_splits_every_global_batch_exactly():
    perm = torch.randperm(29)
    for world in (1, 2, 3, 4):
        for entry in (slice(40, 69), perm):
            parts = [distributed.shard_entry(entry, r, world) for r in range(world)]
            rows = []
            for part, _share in parts:
                rows += list(range(part.start, part.stop)) if isinstance(part, slice) else part.tolist()
            expected = list(range(40, 69)) if isinstance(entry, slice) else perm.tolist()
            assert rows == expected  # contiguous shards, in order, nothing repeated or dropped
            assert sum(share for _, share in parts) == pytest.approx(1.0, abs=1e-15)
            assert [data_module.entry_size(p) for p, _ in parts] == [len(t) for t in torch.arange(29).tensor_split(world)]

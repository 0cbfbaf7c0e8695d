"""DDP launches as processes: two started at the same moment do not collide on rendezvous
ports (issue 7, item 6), and a signal to the launcher stops every rank.  Both ask for gloo
(CPU ranks), so that they run the same on a machine with GPUs (where the default is nccl).

Each ``torchloops run --device ddp --nproc 2`` starts its own torchrun with an
OS-chosen port; a fixed port would make one of the two fail to bind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import default_sigint

pytestmark = pytest.mark.slow  # torchrun launches: .ci/run's second step


def test_two_ddp_runs_at_once_both_finish(tmp_path):
    procs = []
    for name in ("a", "b"):
        cmd = [sys.executable, "-m", "torchloops", "run", "regression", "--style", "module",
               "--device", "ddp", "--nproc", "2", "--backend", "gloo", "--steps", "20", "--json", str(tmp_path / f"{name}.json")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    outcomes = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    for out, err, code in outcomes:
        assert code == 0, err[-2000:]
    for name in ("a", "b"):
        (record,) = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["world_size"] == 2 and record["backend"] == "gloo" and record["steps"] == 20


def _processes_holding(marker: str) -> set:
    """PIDs whose command line contains ``marker`` (read from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.add(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank processes through /proc (Linux)")
@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_signal_to_the_launcher_stops_every_rank(tmp_path, sig, status):
    """``torchloops run --device ddp --nproc 2`` stopped while its ranks train: the signal's
    exit status, no JSON, and no rank left running.  SIGTERM/SIGINT: torchrun's agent stops
    the ranks and the launcher says so in one line.  SIGKILL gives the agent no chance: each
    rank asked Linux to kill it on its parent's death (``launcher.stop_with_launcher``)."""
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torchloops", "run", "lenet", "--style", "module", "--device", "ddp",
           "--nproc", "2", "--backend", "gloo", "--quiet", "--json", str(out)]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 120
        while len(_processes_holding(str(out)) - {launcher.pid}) < 2:  # the ranks carry --json PATH too
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "the two ranks never started"
            time.sleep(0.2)
        time.sleep(3.0)  # past rendezvous and the model build: training
        launcher.send_signal(sig)
        _stdout, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == status, err
    if sig != signal.SIGKILL:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("torchloops: ") and "Traceback" not in err, err
    deadline = time.monotonic() + 30
    while _processes_holding(str(out)):
        assert time.monotonic() < deadline, f"ranks still running: {_processes_holding(str(out))}"
        time.sleep(0.2)
    assert not out.exists()

"""Two DDP runs started at the same moment do not collide on rendezvous ports (issue 7, item 6).

Each ``torchloops run --device ddp --nproc 2`` starts its own torchrun with an
OS-chosen port; a fixed port would make one of the two fail to bind.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_two_ddp_runs_at_once_both_finish(tmp_path):
    procs = []
    for name in ("a", "b"):
        cmd = [sys.executable, "-m", "workloads", "run", "regression", "--style", "module",
               "--device", "ddp", "--nproc", "2", "--steps", "20", "--json", str(tmp_path / f"{name}.json")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    outcomes = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    for out, err, code in outcomes:
        assert code == 0, err[-2000:]
    for name in ("a", "b"):
        (record,) = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["world_size"] == 2 and record["backend"] == "gloo" and record["steps"] == 20

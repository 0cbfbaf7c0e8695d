"""The convergence references a workload ships (``Workload.reference``: a JSON file beside its
module, e.g. ``workloads/reference/lenet.json``) and the typical seed they define: one source for
``compare``, the benchmarks and the tests.

Each reference holds steps-to-target of seeds 0-24 (raw style, CPU, one thread; a workload without
``raw`` names its own), written by ``torchloops converge WORKLOAD --seeds 25 --json FILE``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from torchloops.core.registry import get_workload


def reference_path(workload: str) -> Optional[Path]:
    """The file the workload declares (None: it ships no reference)."""
    return get_workload(workload).reference


def load_reference(workload: str) -> Optional[dict]:
    path = reference_path(workload)
    if path is None or not path.exists():
        return None
    with open(path) as handle:
        return json.load(handle)


def typical_seed(workload: str) -> int:
    """The reference seed whose steps-to-target is nearest the reference median (0 without one)."""
    reference = load_reference(workload)
    if reference is None or "median" not in reference["summary"]:
        return 0
    median = reference["summary"]["median"]
    reached = [r for r in reference["runs"] if r["reached"]]
    return min(reached, key=lambda r: (abs(r["steps_to_target"] - median), r["seed"]))["seed"]

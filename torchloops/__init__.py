"""torchloops: a benchmark suite for small PyTorch training loops.

The engine: every workload (the programs of the notes in :mod:`workloads`, and any
plug-in: :mod:`torchloops.core.discovery`) trained in several equivalent styles, on
several placements, timed, counted and checked for convergence.

The public face: the registries, ``configure``/``run`` and the result record.  The
workloads are discovered on the registry's first use (entry points of the group
``torchloops.workloads``, then the files named by ``TORCHLOOPS_WORKLOADS``).  Importing
this package installs no signal handler (the ranks that ``torchloops run --nproc`` starts
install theirs before importing it: :mod:`torchloops.support.launcher`).
"""

from torchloops.core import discovery  # noqa: F401 (installs the workload registry's loader)
from torchloops.core.registry import WORKLOADS, UsageError, get_workload, workload_names
from torchloops.execution.placements import PLACEMENTS
from torchloops.execution.styles import STYLES
from torchloops.measurement.runner import RunConfig, RunResult, Unavailable, configure, initial_parameters, run

__all__ = [
    "PLACEMENTS",
    "STYLES",
    "WORKLOADS",
    "RunConfig",
    "RunResult",
    "Unavailable",
    "UsageError",
    "configure",
    "get_workload",
    "initial_parameters",
    "run",
    "workload_names",
]

"""torchloops: the documented PyTorch workloads, each in several equivalent styles
(the four of the notes, plus ``fused``, ``tuned`` and ``as_written``).

The public face: the registries, ``configure``/``run`` and the result record.
Importing this package registers every workload module below; it installs no signal
handler (the ranks that ``torchloops run --nproc`` starts install theirs before
importing it: :mod:`workloads.launcher`).
"""

# Registration order is the notes' order, and the order of every table.
from . import classification, regression, lenet, mlp_sgd, mlp_adam  # noqa: F401,I001
from .placements import PLACEMENTS
from .registry import WORKLOADS, UsageError, get_workload, workload_names
from .runner import RunConfig, RunResult, Unavailable, configure, initial_parameters, run
from .styles import STYLES

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

"""torchloops: the documented PyTorch workloads, each in several equivalent styles
(the four of the notes, plus ``fused``, ``tuned`` and ``as_written``).

The public face: the registries, ``configure``/``run`` and the result record.
Importing this package registers every workload module below.
"""

import os as _os

if _os.environ.get("TORCHLOOPS_LAUNCHED") == "1":
    # A ddp rank that `torchloops run --nproc` started (workloads.distributed.launch): a stop
    # signal from torchrun's agent while this process is still importing torch ends it
    # quietly with the signal's status, not with a KeyboardInterrupt traceback.  The rank's
    # command restores the usual handling once it runs (distributed.stop_with_launcher).
    import signal as _signal

    def _stopped_while_starting(signum, _frame):
        raise SystemExit(128 + signum)

    _signal.signal(_signal.SIGINT, _stopped_while_starting)
    _signal.signal(_signal.SIGTERM, _stopped_while_starting)

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

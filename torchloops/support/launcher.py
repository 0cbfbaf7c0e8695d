"""The torchrun launcher of ``torchloops run --device ddp --nproc N``, and its signal handling.

:func:`launch` is ``torchrun --standalone --nproc-per-node N`` run in this process
(``torch.distributed.run``, so the rendezvous port is chosen by the OS and concurrent
runs never collide), with every failed rank reported in one line.

Each rank is this same command (``run --device ddp``, no ``--nproc``) started by
:func:`rank_python_args`: a few lines of Python that install the start-up signal
handler *before* ``import torchloops`` (which imports torch, seconds), so that a rank
that torchrun's agent stops while it is still starting ends quietly with the
signal's status instead of a ``KeyboardInterrupt`` traceback.  Importing
``torchloops`` itself installs no handler.  Once the rank's command runs,
:func:`stop_with_launcher` restores the usual SIGINT handling and ties the rank's
life to the launcher's (the rank is killed when the launcher dies).

Nothing here imports torch at module level.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import List, Optional, Sequence, Tuple

# Set for the ranks of `torchloops run ... --nproc N`: the launching process reports for them.
LAUNCHED_ENV = "TORCHLOOPS_LAUNCHED"
LAUNCHER_PID_ENV = "TORCHLOOPS_LAUNCHER_PID"  # the process whose death stops the ranks

# A rank's program (``python -c``): the start-up handler first, then the command line.
RANK_MAIN = """\
import os, signal, sys
def _stopped_while_starting(signum, _frame):
    os._exit(128 + signum)
signal.signal(signal.SIGINT, _stopped_while_starting)
signal.signal(signal.SIGTERM, _stopped_while_starting)
from torchloops.cli import main
sys.exit(main(sys.argv[1:]))
"""


def rank_python_args(argv: Sequence[str]) -> List[str]:
    """The python arguments of a rank running ``torchloops <argv>`` (unbuffered, as torchrun's ``-m``)."""
    return ["-u", "-c", RANK_MAIN, *argv]


def launched_by_torchloops() -> bool:
    """True in a rank that ``torchloops run --nproc`` started (its launcher reports for it)."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def stop_with_launcher() -> None:
    """In a rank that ``torchloops run --nproc`` started: end the start-up handler of SIGINT
    (:data:`RANK_MAIN`), and ask Linux to kill this process when its parent (the launcher,
    which runs torchrun's agent and its rendezvous store) dies, even by SIGKILL, which leaves
    the agent no chance to stop its ranks.  SIGKILL, not SIGTERM: an orphan rank is often
    blocked inside a collective or a store call to the dead parent (gloo's and the store's
    timeouts are minutes), where no Python handler runs; and it has no one left to report to.
    Files it was writing keep their previous content (written atomically)."""
    if not launched_by_torchloops():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != int(launcher):  # the launcher died before the request: act on it now
        os.kill(os.getpid(), signal.SIGKILL)


def torchrun_argv(nproc: int, python_args: Sequence[str]) -> List[str]:
    """The torchrun arguments of a standalone single-node run of ``python <python_args>``."""
    if python_args and python_args[0] == "-m":
        target = ["-m", *python_args[1:]]
    else:
        target = ["--no-python", sys.executable, *python_args]
    return ["--standalone", f"--nproc-per-node={nproc}", *target]


def describe_failures(failures: dict) -> str:
    """One line naming every failed rank and how it ended (first failure first)."""
    order = sorted(failures, key=lambda r: (failures[r].timestamp, r))
    parts = []
    for r in order:
        code = failures[r].exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        parts.append(f"rank {r} {how}")
    return "; ".join(parts)


def launch(nproc: int, python_args: Sequence[str], threads: int = 1) -> Tuple[int, Optional[str]]:
    """Run ``python <python_args>`` as ``nproc`` ranks with ``torchrun --standalone``.

    Returns ``(status, message)``: ``(0, None)`` when every rank succeeded, else a
    non-zero status and one line naming every failed rank (each rank writes its own
    error to stderr itself).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun sets OMP_NUM_THREADS=1 with a banner when unset; the runner sets threads itself.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ[LAUNCHED_ENV] = "1"
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    # The agent logs each failure as it sees it; the one-line summary below says it once.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun.run(torchrun.parse_args(torchrun_argv(nproc, python_args)))
    except ChildFailedError as error:
        codes = [f.exitcode for f in error.failures.values()]
        status = 2 if codes and all(c == 2 for c in codes) else 1
        return status, describe_failures(error.failures)
    except SignalException as error:
        return 128 + int(error.sigval), f"torchrun stopped by {signal.Signals(error.sigval).name}"
    finally:
        os.environ.pop(LAUNCHED_ENV, None)
        os.environ.pop(LAUNCHER_PID_ENV, None)
    return 0, None

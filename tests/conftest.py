"""Shared helpers for the tests: short runs of the real runner, always single-threaded."""

from __future__ import annotations

import signal

import pytest
import torch

import workloads as W

WORKLOADS = W.workload_names()
STYLES = W.STYLES.names()


def short_run(workload: str, style: str, steps: int, seed: int = 0, **kwargs):
    config = W.configure(workload, style, "cpu", seed, steps=steps, **kwargs)
    return W.run(config, record_step_losses=True)


@pytest.fixture(params=WORKLOADS)
def workload(request):
    return request.param


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test interrupts: SIGINT back to its default disposition.

    A shell starts a background job (``bash .ci/run &``) with SIGINT ignored, every child
    inherits that, and Python then installs no KeyboardInterrupt handler: the child would
    never see the signal.  The test sets its child's disposition itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def one_thread():
    """torch.set_num_threads(1) for the test, restored after (a module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared helpers for the tests: short runs of the real runner, always single-threaded."""

from __future__ import annotations

import signal

import pytest
import torch

import torchloops as W

WORKLOADS = W.workload_names()
STYLES = W.STYLES.names()

# Relative tolerance of a trajectory against the module style's (or the single process's) on the
# CPU: the styles' contract (docs/styles.md).  On a GPU, kernels sum in another order: looser.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}
GPU_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
# One hand-derived gradient or fused update against autograd / torch.optim (rtol and atol).
GRAD_TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def needs_placement(name: str):
    """Skip unless the placement can run here, with its own reason."""
    available = W.PLACEMENTS.get(name).availability()
    return pytest.mark.skipif(not available.ok, reason=f"{name} placement unavailable: {available.reason}")


def short_run(workload: str, style: str, steps: int, seed: int = 0, **kwargs):
    config = W.configure(workload, style, "cpu", seed, steps=steps, **kwargs)
    return W.run(config, record_step_losses=True)


@pytest.fixture(params=WORKLOADS)
def workload(request):
    return request.param


def applicable_styles(workload: str) -> list:
    """The styles the workload declares enough for (the others are skips everywhere)."""
    wl = W.get_workload(workload)
    return [s for s in STYLES if W.STYLES.get(s).applies_to(wl).ok]


class ShortRuns(dict):
    """``{(workload, style): short_run(...)}``, each run made on first use: a module's tests share
    them, and a configuration that does not apply raises where it is used (a skip), not for all."""

    def __init__(self, steps: int, **kwargs):
        super().__init__()
        self.steps, self.kwargs = steps, kwargs

    def __missing__(self, key):
        self[key] = run = short_run(*key, self.steps, **self.kwargs)
        return run


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A configuration that does not apply (a style the workload declares nothing for, a placement
    it cannot use) is a skip with its reason, in every parametrised test: a new workload is tested
    by the same parametrisations without a list of exceptions."""
    try:
        return (yield)
    except W.Unavailable as why:
        pytest.skip(f"not applicable: {why}")

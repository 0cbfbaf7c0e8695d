"""Shared helpers for the tests: short runs of the real runner, always single-threaded."""

from __future__ import annotations

import pytest

import workloads as W

WORKLOADS = W.workload_names()
STYLES = W.STYLES.names()


def short_run(workload: str, style: str, steps: int, seed: int = 0, **kwargs):
    config = W.configure(workload, style, "cpu", seed, steps=steps, **kwargs)
    return W.run(config, record_step_losses=True)


@pytest.fixture(params=WORKLOADS)
def workload(request):
    return request.param

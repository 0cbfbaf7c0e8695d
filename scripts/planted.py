"""A test-only style for the noise study: ``module`` plus a fixed amount of extra work per step.

Importing this module registers the style ``planted``: the ``module`` trainer, and after each
step ``TORCHLOOPS_PLANTED_OPS`` (an environment variable, read when a trainer is built, so a
counting child sees the same value: a number, or ``workload=number,...`` per workload) iterations
of a small floating-point loop in Python (tens of nanoseconds each, fine enough to plant 3 % of
the cheapest step); it costs instructions and wall time the way a slightly heavier step would,
deterministically.  Nothing in the package imports this file: the
slowdown can never reach a shipped path.
"""

from __future__ import annotations

import dataclasses
import os

from torchloops.execution.styles import STYLES

NAME = "planted"
ENV = "TORCHLOOPS_PLANTED_OPS"


class PlantedTrainer:
    def __init__(self, inner, ops: int):
        self.inner, self.ops, self.acc = inner, ops, 1.0

    def step(self, xb, yb):
        loss = self.inner.step(xb, yb)
        acc = self.acc
        for _ in range(self.ops):
            acc = acc * 1.0000001 + 1e-9
        self.acc = acc
        return loss

    def __getattr__(self, name):  # predict, state_dict, module, ...: the module trainer's
        return getattr(self.inner, name)


def set_planted_ops(ops) -> None:
    """``ops``: a number for every workload, or a dict workload -> number."""
    os.environ[ENV] = ",".join(f"{k}={int(v)}" for k, v in ops.items()) if isinstance(ops, dict) else str(int(ops))


def planted_ops(workload: str) -> int:
    value = os.environ.get(ENV, "0")
    if "=" not in value:
        return int(value)
    return dict((k, int(v)) for k, v in (item.split("=") for item in value.split(","))).get(workload, 0)


def _make(workload, params, placement, spec):
    inner = STYLES.get("module").make_trainer(workload, params, placement, spec)
    return PlantedTrainer(inner, planted_ops(workload.name))


if NAME not in STYLES.entries:
    STYLES.register(dataclasses.replace(
        STYLES.get("module"), name=NAME, make_trainer=_make,
        description=f"module + ${ENV} iterations of a Python loop per step (noise study only)"))

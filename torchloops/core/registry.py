"""Registries of workloads, styles and placements, and lookup with clear errors.

A workload module describes one documented program (data recipe, model, loss,
optimizer, loop lengths, quality target) as a :class:`Workload` and registers it
here.  Styles (:mod:`torchloops.execution.styles`) and placements (:mod:`torchloops.execution.placements`)
register themselves the same way.  Adding one is adding an entry: nothing else
branches on a name.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch
from torch import nn


class UsageError(ValueError):
    """Bad input from a user: the CLI prints it as one line and exits with status 2."""


@dataclass(frozen=True)
class OptimizerSpec:
    """The documented optimizer: ``kind`` names an entry of both the torch and the raw optimizer tables."""

    kind: str  # "sgd" or "adam"
    lr: float
    momentum: float = 0.0
    # torch.optim's L2 penalty: ``grad = grad.add(param, alpha=weight_decay)`` before momentum or
    # Adam's moments (the notes: ``optim.Adam(net.parameters(), weight_decay=0.0001)``); 0: none
    weight_decay: float = 0.0

    def describe(self) -> str:
        extra = f", momentum={self.momentum:g}" if self.momentum else ""
        extra += f", weight_decay={self.weight_decay:g}" if self.weight_decay else ""
        return f"{self.kind.upper() if self.kind == 'sgd' else 'Adam'}(lr={self.lr:g}{extra})"


@dataclass(frozen=True)
class AsWritten:
    """A workload's loop as the notes write it (the ``as_written`` style; :mod:`torchloops.execution.styles`).

    ``trainer`` builds the trainer whose ``step`` is the notes' loop body statement for
    statement (its batcher, the notes' way of getting each batch, is the trainer's
    ``batcher`` attribute); ``section`` names the note's section it comes from; ``habits``
    says what it does beyond the mathematics."""

    section: str
    trainer: Callable  # (workload, params, placement, OptimizerSpec) -> trainer
    habits: str
    # Whether the notes keep this loop's model in an nn.Module: False (mlp_sgd's method 1, plain
    # leaf tensors) and a placement that wraps a module (DataParallel) does not apply to it.
    uses_module: bool = True


@dataclass(frozen=True)
class Peer:
    """A scikit-learn estimator a user would pick instead of the workload's PyTorch loop
    (fitted and scored by :mod:`torchloops.measurement.peers`)."""

    name: str  # what the table shows, e.g. "sk:LogisticRegression"
    make: Callable[[int], object]  # seed -> unfitted estimator


@dataclass(frozen=True)
class Metric:
    """The quality metric a workload is judged by, evaluated on the test split."""

    name: str  # e.g. "test_accuracy", "test_mse"
    higher_is_better: bool
    fn: Callable[[torch.Tensor, torch.Tensor], float]  # (model outputs, targets) -> value
    is_classification: bool = False

    def reached(self, value: float, target: float) -> bool:
        if not math.isfinite(value):
            return False
        return value >= target if self.higher_is_better else value <= target


@dataclass(frozen=True)
class Workload:
    """One model and training loop, written once, trained in every style it declares enough for.

    Required: the data, the ``nn.Module`` model, the ``torch.nn`` criterion (every evaluation
    uses it), the optimizer, the schedule and the quality target; with them the ``module``,
    ``dataloader`` and ``tuned`` styles apply.  Each optional field is a capability: leave it
    None and the styles written from it are skipped with the reason
    (:meth:`torchloops.execution.styles.Style.applies_to`):

    * ``build_sequential`` (``sequential``): the same parameters as ``build_module``, in the same
      order (shapes are checked);
    * ``raw_forward`` and ``raw_loss`` (``raw``; ``fused`` too): the forward pass with plain tensor
      operations over those parameters as a list, in that order, and the hand-written loss;
    * ``fused_grads`` (``fused``): the hand-derived forward and backward;
    * ``as_written`` (``as_written``): the loop as its notes write it, which also says whether it
      keeps its model in an ``nn.Module`` (DataParallel wraps one);
    * ``peers`` (``compare``'s scikit-learn race) and ``reference`` (the shipped convergence
      reference: the typical seed, ``converge --check``; without one, seed 0 and no check).
    """

    name: str
    summary: str
    make_data: Callable[[int], "Split"]  # noqa: F821 (torchloops.core.data.Split)
    build_module: Callable[[], nn.Module]
    criterion: Callable[[], nn.Module]
    optimizer: OptimizerSpec
    epochs: int
    batch_size: Optional[int]  # None: the whole training set every step
    n_train: int  # rows in the training split make_data returns (checked when the data is made)
    shuffle: bool
    metric: Metric
    target: float
    steps_per_epoch: Optional[int] = None  # None: one pass over the data per epoch
    dtype: torch.dtype = torch.float32
    eval_every: Optional[int] = None  # steps between evaluations; None: every epoch
    init: Optional[Callable[[nn.Module], None]] = None  # documented non-default init
    build_sequential: Optional[Callable[[], nn.Sequential]] = None
    raw_forward: Optional[Callable[[list, torch.Tensor], torch.Tensor]] = None
    raw_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
    # The hand-derived forward + backward (no autograd graph) of the ``fused`` style:
    # ``(params, xb, yb) -> (loss, grads)``, params and grads in ``build_module`` order.
    fused_grads: Optional[Callable[[list, torch.Tensor, torch.Tensor], tuple]] = None
    # The notes' own loop (the ``as_written`` style): see :class:`AsWritten`.
    as_written: Optional[AsWritten] = None
    # The scikit-learn estimators compare races against, and the features they see (rows of
    # the run's split -> a 2-D array; None: the input flattened).
    peers: Tuple[Peer, ...] = ()
    peer_features: Optional[Callable[[torch.Tensor], object]] = None
    # The convergence reference shipped with the workload (``torchloops converge NAME --seeds 25
    # --json FILE`` writes one); None: none shipped.
    reference: Optional[Path] = None
    # A two-layer MLP: the scaling benchmarks vary its rows, batch size and hidden width.
    scales: bool = False
    # (counted, warm-up) steps under callgrind when the caller names none; None: the counting
    # defaults.  A step far heavier under valgrind (LeNet's oneDNN convolutions: ~2 s of CPU
    # there against ~0.05 s for the others) declares fewer.
    count_steps: Optional[Tuple[int, int]] = None


@dataclass
class Availability:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class Table:
    """A named registry (workloads, styles, placements) with lookup errors that list what is valid.

    ``loader``, when given, fills the table on its first use (the workloads: discovered plug-ins,
    :mod:`torchloops.core.discovery`); registering never triggers it."""

    def __init__(self, what: str, loader: Optional[Callable[[], None]] = None):
        self.what, self._loader, self._entries = what, loader, {}

    @property
    def entries(self) -> dict:
        if self._loader is not None:
            load, self._loader = self._loader, None  # once, and not again from inside the load
            load()
        return self._entries

    def set_loader(self, loader: Callable[[], None]) -> None:
        """Fill the table with ``loader`` on its next use (before that use)."""
        self._loader = loader

    def register(self, entry):
        if entry.name in self._entries:
            raise ValueError(f"{self.what} {entry.name!r} registered twice")
        self._entries[entry.name] = entry
        return entry

    def names(self) -> list:
        return list(self.entries)

    def get(self, name: str):
        try:
            return self.entries[name]
        except KeyError:
            raise UsageError(
                f"unknown {self.what} {name!r}; valid: {', '.join(self.entries)}"
            ) from None


# Filled on first use by the plug-ins found (torchloops.core.discovery installs the loader).
WORKLOADS = Table("workload")
register_workload = WORKLOADS.register
get_workload = WORKLOADS.get
workload_names = WORKLOADS.names

"""The ways of writing the same training step.

A style is a trainer (how the forward, the loss and the update are written) and a
batcher (how a step gets its rows).  ``module``, ``sequential`` and ``dataloader``
share one trainer; ``dataloader`` is the ``nn.Module`` model fed by a
``TensorDataset`` + ``DataLoader`` instead of manual slicing, as the notes do it.

Three more measure the distance between a program as written and the fastest correct
one: ``as_written`` (each workload's loop as the notes write it, statement for statement,
habits included: ``Workload.as_written``, written in the workload's module with the blocks
of :mod:`torchloops.core.notes_loop`), ``tuned`` (the ``nn.Module`` model with the levers a user would adopt:
pre-indexed batches, torch.optim's fused/foreach kernels, gradients set to None,
evaluation under ``inference_mode``) and ``fused`` (no autograd: the workload's
hand-derived gradients, :mod:`torchloops.execution.fused`).
Every trainer starts from the same initial parameters (the runner hands them over
by name, in ``build_module`` order) and every batcher follows the same batch plan.

A trainer is the same class on every placement: its one ``step(x, y, weight=None)`` leaves
what differs across processes to the placement (``placement.wrap`` for the model,
``placement.reduction`` for the gradients; under ddp a batch carries its weight, its share
of the global batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from torchloops.core.data import BatchEntry, Split, index_lists, plan_on_device
from torchloops.execution.fused import FusedTrainer, PreIndexedBatcher
from torchloops.core.nn_trainer import ModuleTrainer, module_trainer
from torchloops.core.notes_loop import NumpyEveryStep
from torchloops.core.optimizers import make_optimizer
from torchloops.core.parameters import canonical_state
from torchloops.core.registry import Availability, OptimizerSpec, Table, Workload


STYLES = Table("style")

Params = "OrderedDict[str, torch.Tensor]"


class RawTrainer:
    """Plain leaf tensors with ``requires_grad=True``, the workload's hand-written forward
    and loss, and a hand-written update.  No module for a placement to wrap: the placement's
    reduction sums a shard's gradients over the ranks itself (ddp: one ``all_reduce``)."""

    def __init__(self, workload: Workload, params: Params, placement, spec: OptimizerSpec):
        device = placement.device()
        self.workload = workload
        self.names = list(params)
        self.params = [p.detach().clone().to(device).requires_grad_() for p in params.values()]
        self.update = make_optimizer("raw", self.params, spec, capturable=placement.captures_steps)
        self.reduction = placement.reduction(wrapped=False)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, weight: Optional[float] = None) -> torch.Tensor:
        loss = self.workload.raw_loss(self.workload.raw_forward(self.params, xb), yb)
        self.reduction.backward(loss, weight)
        self.reduction.sum_grads(self.params)
        self.update()
        return self.reduction.loss(loss, weight)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.workload.raw_forward(self.params, x)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return canonical_state(self.names, self.params)


class TunedTrainer(ModuleTrainer):
    """The ``nn.Module`` model as a user tuning it would write it: torch.optim's fused (or
    foreach) kernels, gradients set to None (``zero_grad``'s default, as in ``module``),
    evaluation under ``torch.inference_mode``.  The step is :class:`ModuleTrainer`'s."""

    optimizer_implementation = "tuned"

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


def pre_indexed_batcher(split: Split, plan: List[List[BatchEntry]]) -> PreIndexedBatcher:
    """:class:`~torchloops.execution.fused.PreIndexedBatcher` over the plan with its indices already on
    the data's device, so an epoch's gather is one ``index_select`` with no index copy."""
    return PreIndexedBatcher(split, plan_on_device(plan, split.X_train.device))


class SliceBatcher:
    """Manual indexing, as the notes slice ``x_tensor[start:end]``: a view for in-order
    batches, a gather for shuffled ones (its index already on the data's device)."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.X, self.y = split.X_train, split.y_train
        self.plan = plan_on_device(plan, self.X.device)

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        X, y = self.X, self.y
        return ((X[e], y[e]) for e in self.plan[index])


class DataLoaderBatcher:
    """``TensorDataset`` + ``DataLoader``: per-row ``__getitem__`` and a collate per batch.

    The plan's batches are given as the ``batch_sampler`` (index lists prepared once,
    outside the timed region), so the rows and their order are those of every style.
    In-order batches repeat (classification's full batch 50,000 times): each distinct
    slice becomes one shared list, not one list per step.
    """

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.dataset = TensorDataset(split.X_train, split.y_train)
        self.plan = index_lists(plan)

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return iter(DataLoader(self.dataset, batch_sampler=self.plan[index]))


def _as_written_trainer(workload: Workload, params: Params, placement, spec: OptimizerSpec):
    if workload.as_written is None:
        raise ValueError(f"workload {workload.name} has no as-written loop (Workload.as_written)")
    return workload.as_written.trainer(workload, params, placement, spec)


def _as_written_batcher(split: Split, plan: List[List[BatchEntry]]):
    """The as_written style's batcher made without its trainer (a test comparing batches):
    classification's numpy re-creation.  A run's batcher is its trainer's own
    (``trainer.make_batcher``: the notes' way of getting batches, sharing the loop's counters)."""
    return NumpyEveryStep(split, plan)


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    make_trainer: Callable  # (workload, params, placement, spec) -> trainer
    make_batcher: Callable  # (split, plan) -> batcher
    uses_module: bool
    capture_problem: Optional[str] = None  # why a CUDA graph cannot replay this style's step; None: it can
    trainer_batches: bool = False  # True: the trainer gets its own batches (``trainer.make_batcher``)
    # What a workload must declare for this style to apply: (Workload field, what it is).  A
    # workload that leaves one of them None is served by the other styles; this one is a skip
    # with the reason (configure raises Unavailable; list, run, compare, count, asv skip it).
    requires: Tuple[Tuple[str, str], ...] = ()

    def applies_to(self, workload: Workload) -> Availability:
        """Whether ``workload`` declares what this style is written from."""
        missing = [what for name, what in self.requires if getattr(workload, name) is None]
        if missing:
            return Availability(False, f"{workload.name} declares no {' and no '.join(missing)}, "
                                       f"which the {self.name} style is written from")
        return Availability(True)

    def uses_module_for(self, workload: Optional[Workload] = None) -> bool:
        """Whether this style's trainer for ``workload`` keeps its model in an ``nn.Module`` (a
        placement that wraps one needs it).  as_written: the workload's own loop decides
        (``AsWritten.uses_module``); without a workload, the style's general answer."""
        if workload is not None and self.make_trainer is _as_written_trainer and workload.as_written is not None:
            return workload.as_written.uses_module
        return self.uses_module

    def batcher(self, split: Split, plan: List[List[BatchEntry]], trainer):
        """A run's batcher over ``plan``: the style's, or its trainer's own (as_written: the notes'
        way of getting batches, sharing the loop's counters with the trainer's step)."""
        if self.trainer_batches:
            return trainer.make_batcher(split, plan)
        return self.make_batcher(split, plan)


RAW_PARTS = (("raw_forward", "hand-written forward (raw_forward)"), ("raw_loss", "hand-written loss (raw_loss)"))

STYLES.register(
    Style(
        "raw",
        "plain tensors, hand-written forward, loss and update; manual slicing",
        RawTrainer,
        SliceBatcher,
        uses_module=False,
        requires=RAW_PARTS,
    )
)
STYLES.register(
    Style(
        "module",
        "nn.Module subclass, torch.nn loss, torch.optim; manual slicing",
        module_trainer(ModuleTrainer, lambda w: w.build_module()),
        SliceBatcher,
        uses_module=True,
    )
)
STYLES.register(
    Style(
        "sequential",
        "the same layers as nn.Sequential, torch.nn loss, torch.optim; manual slicing",
        module_trainer(ModuleTrainer, lambda w: w.build_sequential()),
        SliceBatcher,
        uses_module=True,
        requires=(("build_sequential", "nn.Sequential model (build_sequential)"),),
    )
)
STYLES.register(
    Style(
        "dataloader",
        "the nn.Module model fed by TensorDataset + DataLoader",
        module_trainer(ModuleTrainer, lambda w: w.build_module()),
        DataLoaderBatcher,
        uses_module=True,
    )
)
STYLES.register(
    Style(
        "as_written",
        "each workload's loop as the notes write it, statement for statement (Workload.as_written): "
        "their per-step tensor re-creation, requires_grad batches, retain_graph, .data updates, "
        "loss.data.numpy() appends and interval reports (printed output captured)",
        _as_written_trainer,
        _as_written_batcher,
        uses_module=True,
        trainer_batches=True,
        requires=(("as_written", "loop as its notes write it (as_written)"),),
        capture_problem=(
            "no loop of the notes replays as one captured step: classification and regression "
            "evaluate and print every 2 / 50 epochs (a Python branch on the epoch and .item() host "
            "syncs); mlp_sgd copies every step's loss to the host (loss.data.numpy(), a sync that a "
            "capture refuses) and prints it every 1000 steps; mlp_adam does the same per batch, "
            "prints each epoch, keeps each step's graph (backward(retain_graph=True)) and makes "
            "new requires_grad input tensors each step; lenet's (the notes' recommended optimizer "
            "loop) would capture, but a placement applies to a style as a whole"
        ),
    )
)
STYLES.register(
    Style(
        "tuned",
        "the nn.Module model, pre-indexed batches, torch.optim fused/foreach, grads set to None, "
        "inference_mode evaluation",
        module_trainer(TunedTrainer, lambda w: w.build_module()),
        pre_indexed_batcher,
        uses_module=True,
    )
)
STYLES.register(
    Style(
        "fused",
        "no autograd: hand-derived gradients, _foreach in-place updates, pre-indexed batches",
        FusedTrainer,
        pre_indexed_batcher,
        uses_module=False,
        requires=(("fused_grads", "hand-derived backward (fused_grads)"),) + RAW_PARTS,
    )
)

"""The ``fused`` style's machinery: no autograd graph, in-place updates, batches pre-indexed.

Each workload module writes its own forward + backward by hand next to its model
(``Workload.fused_grads``: ``(params, xb, yb) -> (loss, grads)``) with the building
blocks of :mod:`torchloops.core.gradients`; this module holds what runs them:

* :class:`PreIndexedBatcher` gathers a whole shuffled epoch with one ``index_select``
  per tensor (inside the timed region, at the epoch's first step) and hands out
  contiguous views; in-order batches are views of the training tensors as they are.
* the optimizer table's ``fused`` implementations (:class:`torchloops.core.optimizers.FusedSGD` /
  :class:`~torchloops.core.optimizers.FusedAdam`) update the parameters (one flat buffer in the
  trainer) in exactly the order of ``torch.optim.SGD`` / ``torch.optim.Adam``, so the
  trajectories match the ``module`` style's within the suite's tolerances.
* :class:`FusedTrainer` ties them together under ``torch.no_grad()``; nothing is retained
  between steps but the parameters and the optimizer state.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from torchloops.core.data import BatchEntry, Split, entry_size
from torchloops.core.optimizers import make_optimizer
from torchloops.core.registry import OptimizerSpec, Workload


# --- batches ----------------------------------------------------------------------------------


class PreIndexedBatcher:
    """The plan's batches, pre-indexed: in-order batches are views (as manual slicing);
    a shuffled epoch is gathered once, with one ``index_select`` for X and one for y,
    and split into contiguous views, instead of one gather per batch per tensor.

    The gather runs when the epoch's first batch is asked for, so the runner times it
    (in the first step of the epoch); holding every epoch in memory up front would
    cost LeNet 30 copies of its training set."""

    def __init__(self, split: Split, plan: List[List[BatchEntry]]):
        self.X, self.y, self.plan = split.X_train, split.y_train, plan

    def epoch(self, index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        entries = self.plan[index]
        if all(isinstance(e, slice) for e in entries):
            X, y = self.X, self.y
            return ((X[e], y[e]) for e in entries)
        return self._gathered(entries)

    def _gathered(self, entries):
        rows = torch.cat([e if not isinstance(e, slice) else torch.arange(e.start, e.stop) for e in entries])
        rows = rows.to(self.X.device)
        sizes = [entry_size(e) for e in entries]
        X = self.X.index_select(0, rows).split(sizes)
        y = self.y.index_select(0, rows).split(sizes)
        return zip(X, y)


class FusedTrainer:
    """Plain tensors (no ``requires_grad``), the workload's hand-derived gradients and an
    in-place update.

    The parameters are views into one flat buffer, and so are the gradients (a second flat
    buffer, kept across steps): a workload whose ``fused_grads`` is a :class:`FusedGrads`
    writes each gradient in place (its ``transposed`` weights stored as ``W^T``), and the
    optimizer updates the whole model with one operation per arithmetic step (elementwise,
    so the arithmetic is torch.optim's, value for value).  Nothing in the step requires
    grad, so no autograd graph is recorded without a ``no_grad`` context (whose enter and exit
    cost about as much as two ATen calls per step).  Other gradient functions return their
    gradients, concatenated into the buffer, under ``no_grad``."""

    def __init__(self, workload: Workload, params, placement, spec: OptimizerSpec):
        if workload.fused_grads is None:
            raise ValueError(f"workload {workload.name} has no hand-derived gradients (fused_grads)")
        device = placement.device()
        self.workload = workload
        self.grads_fn = workload.fused_grads
        self.names = list(params)
        transposed = getattr(self.grads_fn, "transposed", frozenset())
        values = [p.detach() for p in params.values()]
        stored = [v.t() if i in transposed else v for i, v in enumerate(values)]
        self.flat = torch.cat([s.reshape(-1) for s in stored]).to(device)
        self.numels = [p.numel() for p in values]
        self.params = self._views(self.flat, stored, transposed)
        self.grad_flat = torch.zeros_like(self.flat)
        self.grads = self._views(self.grad_flat, stored, transposed)
        self.transposed = transposed
        bind = getattr(self.grads_fn, "bind", None)
        self._grads = bind(self.params, self.grads) if bind is not None else self._returned_grads
        self.update = make_optimizer("fused", [self.flat], spec, capturable=placement.captures_steps)
        self.reduction = placement.reduction(wrapped=False)
        self._apply = getattr(self.update, "apply", None) if getattr(self.update, "_flat", None) is not None \
            else (lambda grad: self.update([grad]))

    def _views(self, flat, stored, transposed):
        blocks = flat.split(self.numels)
        return [b.view(s.shape).t() if i in transposed else b.view(s.shape)
                for i, (b, s) in enumerate(zip(blocks, stored))]

    def _returned_grads(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            loss, grads = self.grads_fn(self.params, xb, yb)
            torch.cat([g.t().reshape(-1) if i in self.transposed else g.reshape(-1) for i, g in enumerate(grads)],
                      out=self.grad_flat)
        return loss

    def flat_grad(self, grads: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.t().reshape(-1) if i in self.transposed else g.reshape(-1) for i, g in enumerate(grads)])

    def step(self, xb: torch.Tensor, yb: torch.Tensor, weight: Optional[float] = None) -> torch.Tensor:
        loss = self._grads(xb, yb)
        if weight is not None:  # a shard of the global batch (ddp): the placement sums the weighted shards
            loss = self.reduction.sum_flat(self.grad_flat, loss, weight)
        self._apply(self.grad_flat)
        return loss

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.workload.raw_forward(self.params, x)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return OrderedDict((n, p.detach().clone(memory_format=torch.contiguous_format))
                           for n, p in zip(self.names, self.params))

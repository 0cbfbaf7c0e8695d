"""The ``fused`` style's machinery: no autograd graph, in-place updates, batches pre-indexed.

Each workload module writes its own forward + backward by hand next to its model
(``Workload.fused_grads``: ``(params, xb, yb) -> (loss, grads)``) with the building
blocks of :mod:`workloads.gradients`; this module holds what runs them:

* :class:`PreIndexedBatcher` gathers a whole shuffled epoch with one ``index_select``
  per tensor (inside the timed region, at the epoch's first step) and hands out
  contiguous views; in-order batches are views of the training tensors as they are.
* :class:`FusedSGD` / :class:`FusedAdam` update the parameters (one flat buffer in the
  trainer) with one ``torch._foreach_*`` call per arithmetic operation, in exactly the order of
  ``torch.optim.SGD`` / ``torch.optim.Adam`` (single-tensor implementation), so the
  trajectories match the ``module`` style's within the suite's tolerances.
* :class:`FusedTrainer` ties them together under ``torch.no_grad()``; nothing is retained
  between steps but the parameters and the optimizer state.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .data import BatchEntry, Split, entry_size
from .optimizers import step_counter
from .registry import OptimizerSpec, Workload


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


# --- optimizers, torch.optim's arithmetic on all parameters at once -----------------------------


class FusedSGD:
    """``torch.optim.SGD``: with weight decay ``g += weight_decay * p`` first; ``p -= lr * g``;
    with momentum ``b = g`` on the first step, then ``b = momentum * b + g``, and ``p -= lr * b``.

    The trainer holds one flat parameter buffer: :meth:`apply` updates it with one in-place
    op per arithmetic step (torch.optim's single-tensor order; a ``_foreach`` op over a list of
    one tensor is the same op behind a second dispatch).  ``__call__(grads)`` takes a list
    (several tensors: ``_foreach`` ops)."""

    def __init__(self, params: List[torch.Tensor], spec: OptimizerSpec, capturable: bool = False):
        self.params, self.lr, self.momentum = params, spec.lr, spec.momentum
        self.weight_decay = spec.weight_decay
        self.buffers = None
        self._flat = params[0] if len(params) == 1 else None
        self._neg_lr = -spec.lr
        self._buffer = None

    def __call__(self, grads: List[torch.Tensor]) -> None:
        if self._flat is not None:
            return self.apply(grads[0])
        if self.weight_decay:  # the gradients are this step's own buffers: decayed in place
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.buffers is None:
                self.buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_add_(self.params, grads, alpha=-self.lr)

    def apply(self, grad: torch.Tensor) -> None:
        """The update of the single flat parameter tensor from its flat gradient ``grad``
        (decayed in place: it is the step's own buffer).  With momentum: ATen's fused SGD
        kernel (``torch.optim.SGD(fused=True)``'s), one call for decay, buffer and update: without
        weight decay the same values bit for bit (measured over 60 steps, float32 and float64);
        its decay term rounds differently (8e-7 relative after 30 steps at weight_decay 1e-2)."""
        if self.momentum:
            first = self._buffer is None
            if first:
                self._buffer = torch.empty_like(grad)
                self.buffers = [self._buffer]
                self._lists = ([self._flat], [grad], self.buffers)
            params, grads, buffers = self._lists
            if grads[0] is not grad:
                grads = [grad]
            torch._fused_sgd_(params, grads, buffers, weight_decay=self.weight_decay, momentum=self.momentum,
                              lr=self.lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=first)
            return
        if self.weight_decay:
            grad.add_(self._flat, alpha=self.weight_decay)
        self._flat.add_(grad, alpha=self._neg_lr)

    def state(self) -> dict:
        return {"momentum_buffer": self.buffers}


class FusedAdam:
    """``torch.optim.Adam`` with its defaults (betas (0.9, 0.999), eps 1e-8), the
    single-tensor implementation's order: with weight decay ``g += weight_decay * p`` first
    (the L2 penalty, before the moments), ``m.lerp_(g, 1-b1)``, ``v = b2 v + (1-b2) g g``,
    ``denom = sqrt(v) / sqrt(1-b2^t) + eps``, ``p -= lr / (1-b1^t) * m / denom``.

    On the trainer's single flat buffer (:meth:`apply`): one in-place op per arithmetic step,
    ``sqrt`` into a buffer kept across steps, the constant factors as 0-dim tensors.

    ``capturable=True`` (CUDA graphs): the step count is a 0-dim tensor on the device and
    the update is torch.optim's capturable order, ``denom = sqrt(v) / (sqrt(1-b2^t) * -s)
    + eps / -s`` with ``s = lr / (1-b1^t)``, then ``p += m / denom``."""

    def __init__(self, params: List[torch.Tensor], spec: OptimizerSpec, betas=(0.9, 0.999), eps: float = 1e-8,
                 capturable: bool = False):
        self.params, self.lr, self.eps = params, spec.lr, eps
        self.weight_decay = spec.weight_decay
        self.beta1, self.beta2 = betas
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.capturable = capturable
        self.t = step_counter(params[0].device) if capturable else 0
        self._flat = params[0] if len(params) == 1 and not capturable else None
        self._lists = None
        if self._flat is not None:
            self._step = torch.zeros((), dtype=torch.float32, device=self._flat.device)  # torch.optim's step dtype

    def __call__(self, grads: List[torch.Tensor]) -> None:
        if self._flat is not None:
            return self.apply(grads[0])
        b1, b2 = self.beta1, self.beta2
        if self.weight_decay:
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        torch._foreach_lerp_(self.m, grads, 1 - b1)
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, 1 - b2)
        if self.capturable:
            t = self.t.add_(1)
            step_size_neg = (self.lr / (1 - b1**t)).neg()
            correction2_sqrt = (1 - b2**t).sqrt()
            for p, m, v in zip(self.params, self.m, self.v):
                p.addcdiv_(m, (v.sqrt() / (correction2_sqrt * step_size_neg)).add_(self.eps / step_size_neg))
            return
        self.t += 1
        step = float(self.t)
        step_size = self.lr / (1 - b1**step)
        correction2_sqrt = (1 - b2**step) ** 0.5
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, -step_size)

    def apply(self, grad: torch.Tensor) -> None:
        """The update of the single flat parameter tensor from its flat gradient ``grad``: ATen's
        fused Adam kernel (``torch.optim.Adam(fused=True)``'s, the ``tuned`` style's), one call
        instead of seven; its vectorised arithmetic rounds differently from the single-tensor
        order by about one ulp (1.2e-7 relative over 60 steps, float32).  The step count stays
        a Python number, written into the kernel's step tensor each step (``fill_``), so a
        captured graph would still see it change (as the foreach form, it is not capturable)."""
        if self._lists is None or self._lists[1][0] is not grad:
            self._lists = ([self._flat], [grad], self.m, self.v, [], [self._step])
        self.t += 1
        self._step.fill_(self.t)
        torch._fused_adam_(*self._lists, lr=self.lr, beta1=self.beta1, beta2=self.beta2,
                           weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)

    def state(self) -> dict:
        return {"step": self.t, "exp_avg": self.m, "exp_avg_sq": self.v}


FUSED_OPTIMIZERS = {"sgd": FusedSGD, "adam": FusedAdam}


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
        self.update = FUSED_OPTIMIZERS[spec.kind]([self.flat], spec, capturable=placement.captures_steps)
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

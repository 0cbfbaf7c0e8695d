"""The ``fused`` style's machinery: no autograd graph, in-place updates, batches pre-indexed.

Each workload module writes its own forward + backward by hand next to its model
(``Workload.fused_grads``: ``(params, xb, yb) -> (loss, grads)``) with the building
blocks below; this module holds what is the same for all of them:

* :class:`PreIndexedBatcher` gathers a whole shuffled epoch with one ``index_select``
  per tensor (inside the timed region, at the epoch's first step) and hands out
  contiguous views; in-order batches are views of the training tensors as they are.
* :class:`FusedSGD` / :class:`FusedAdam` update the parameters (one flat buffer in the
  trainer) with one ``torch._foreach_*`` call per arithmetic operation, in exactly the order of
  ``torch.optim.SGD`` / ``torch.optim.Adam`` (single-tensor implementation), so the
  trajectories match the ``module`` style's within the suite's tolerances.
* :class:`FusedTrainer` ties them together under ``torch.no_grad()``.

The backward helpers call the same ATen kernels autograd would
(``threshold_backward``, ``sigmoid_backward``, ``convolution_backward``,
``max_pool2d_with_indices_backward``), directly: no graph is recorded, nothing is
retained between steps but the parameters and the optimizer state.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F

from .data import BatchEntry, Split, entry_size
from .optimizers import step_counter
from .registry import OptimizerSpec, Workload

aten = torch.ops.aten


# --- backward building blocks -----------------------------------------------------------------


def relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """d relu: ``grad`` where the ReLU's output is > 0, else 0 (autograd's own kernel)."""
    return aten.threshold_backward(grad, output, 0)


def sigmoid_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """d sigmoid: ``grad * s * (1 - s)`` from the sigmoid's output ``s``."""
    return aten.sigmoid_backward(grad, output)


def linear_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_input: bool = True):
    """``y = x @ W.T + b``: returns ``(dx or None, dW, db)``."""
    dw = grad_out.t().mm(x)
    db = grad_out.sum(0)
    dx = grad_out.mm(weight) if need_input else None
    return dx, dw, db


def cross_entropy_with_grad_t(logits_t: torch.Tensor, target: torch.Tensor):
    """``CrossEntropyLoss()`` (mean) and its gradient ``(softmax - one_hot) / N``, on
    class-major logits ``(C, N)`` (the gradient is class-major too).

    Class-major because a (log-)softmax over a short contiguous last dimension (3 or 10
    classes) is ATen's slow path: on (800, 3) it measured ~100 us against ~6 us over dim 0
    of the (3, 800) transpose, more than every other operation of classification's step."""
    n = logits_t.shape[1]
    log_p = torch.log_softmax(logits_t, 0)
    loss = F.nll_loss(log_p.t(), target)
    grad = log_p.exp_().scatter_add_(0, target.unsqueeze(0), log_p.new_full((1, n), -1.0))
    return loss, grad.div_(n)


def mse_with_grad(prediction: torch.Tensor, target: torch.Tensor):
    """``MSELoss()`` (mean) and its gradient ``2 (y_hat - y) / numel``."""
    diff = prediction - target
    loss = diff.pow(2).mean()
    return loss, diff.mul_(2.0 / diff.numel())


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
    with momentum ``b = g`` on the first step, then ``b = momentum * b + g``, and ``p -= lr * b``."""

    def __init__(self, params: List[torch.Tensor], spec: OptimizerSpec, capturable: bool = False):
        self.params, self.lr, self.momentum = params, spec.lr, spec.momentum
        self.weight_decay = spec.weight_decay
        self.buffers = None

    def __call__(self, grads: List[torch.Tensor]) -> None:
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

    def state(self) -> dict:
        return {"momentum_buffer": self.buffers}


class FusedAdam:
    """``torch.optim.Adam`` with its defaults (betas (0.9, 0.999), eps 1e-8), the
    single-tensor implementation's order: with weight decay ``g += weight_decay * p`` first
    (the L2 penalty, before the moments), ``m.lerp_(g, 1-b1)``, ``v = b2 v + (1-b2) g g``,
    ``denom = sqrt(v) / sqrt(1-b2^t) + eps``, ``p -= lr / (1-b1^t) * m / denom``.

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

    def __call__(self, grads: List[torch.Tensor]) -> None:
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

    def state(self) -> dict:
        return {"step": self.t, "exp_avg": self.m, "exp_avg_sq": self.v}


FUSED_OPTIMIZERS = {"sgd": FusedSGD, "adam": FusedAdam}


class FusedTrainer:
    """Plain tensors (no ``requires_grad``), the workload's hand-derived gradients and an
    in-place update, all under ``torch.no_grad()``.

    The parameters are views into one flat buffer: a step concatenates the gradients
    once and updates the whole model with one operation per arithmetic step of the
    optimizer (elementwise, so the arithmetic is torch.optim's, value for value)."""

    def __init__(self, workload: Workload, params, placement, spec: OptimizerSpec):
        if workload.fused_grads is None:
            raise ValueError(f"workload {workload.name} has no hand-derived gradients (fused_grads)")
        device = placement.device()
        self.workload = workload
        self.grads_fn = workload.fused_grads
        self.names = list(params)
        self.flat = torch.cat([p.detach().reshape(-1) for p in params.values()]).to(device)
        self.numels = [p.numel() for p in params.values()]
        self.params = [v.view(p.shape) for v, p in zip(self.flat.split(self.numels), params.values())]
        self.update = FUSED_OPTIMIZERS[spec.kind]([self.flat], spec, capturable=placement.captures_steps)

    def flat_grad(self, grads: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in grads])

    @torch.no_grad()
    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss, grads = self.grads_fn(self.params, xb, yb)
        self.update([self.flat_grad(grads)])
        return loss

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.workload.raw_forward(self.params, x)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return OrderedDict((n, p.detach().clone()) for n, p in zip(self.names, self.params))


class ShardedFusedTrainer(FusedTrainer):
    """``fused`` under DDP: each rank's shard-mean gradients, weighted by the shard's share
    of the global batch, summed over ranks with one ``all_reduce`` of a flat buffer."""

    @torch.no_grad()
    def step(self, xb: torch.Tensor, yb: torch.Tensor, share: float) -> torch.Tensor:
        loss, grads = self.grads_fn(self.params, xb, yb)
        flat = self.flat_grad(grads).mul_(share)
        torch.distributed.all_reduce(flat)  # sum of share-weighted shard gradients
        self.update([flat])
        return loss * share

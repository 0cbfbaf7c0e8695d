"""Hand-derived gradients: the building blocks each workload module writes its ``fused_grads`` with.

Neutral ground below the styles: the workload modules write their forward + backward by hand
with these (``Workload.fused_grads``), and the ``fused`` style (:mod:`torchloops.execution.fused`) runs
whatever they wrote.  The backward helpers call the same ATen kernels autograd would
(``threshold_backward``, ``sigmoid_backward``, ``convolution_backward``,
``max_pool2d_with_indices_backward``), directly: no graph is recorded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

aten = torch.ops.aten
# ATen entry points below their Python wrappers (no argument checks in Python, no overload
# resolution): each step calls them a few times, and per-call overhead is most of these steps.
_mse_loss = torch._C._nn.mse_loss
_nll_loss = torch._C._nn.nll_loss
_log_softmax = torch._log_softmax
threshold_backward = aten.threshold_backward.default._op  # (grad, output, threshold)
sigmoid_backward_op = aten.sigmoid_backward.default._op  # (grad, output)


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


class FusedGrads:
    """A workload's hand-derived gradients in the form the trainer runs every step.

    ``bind(params, grads)`` is called once per trainer with the parameters and with
    gradient tensors of the same shapes (views into the trainer's flat gradient buffer)
    and returns ``step(x, y) -> loss``: the forward and the backward of one batch, writing
    each gradient into its tensor (``out=`` variants) and returning the loss as a 0-dim
    tensor.  Whatever does not change between steps (transposed weight views, column
    views of biases, scale factors per batch size) is made once in ``bind``: a view or a
    wrapped Python scalar costs a dispatcher call on every step otherwise.

    ``transposed``: the indices of 2-D parameters the trainer stores as ``W^T``
    (contiguous ``(in, out)``): their gradient ``x^T g`` is then written in place by one
    ``mm`` (MKL is 2-3x slower on ``g^T x`` with the long (N x 128) operand transposed), and
    the forward reads ``W^T`` without a view.  The optimizers are elementwise: the layout
    changes no value.

    Called as ``fused_grads(params, x, y) -> (loss, grads)`` (the tests, ``Workload.fused_grads``'
    contract) it binds fresh gradient tensors and runs one step: the same code."""

    def __init__(self, bind, transposed=()):
        self.bind = bind
        self.transposed = frozenset(transposed)

    def empty_grads(self, params):
        return [torch.empty(tuple(reversed(p.shape)), dtype=p.dtype, device=p.device).t() if i in self.transposed
                else torch.empty(p.shape, dtype=p.dtype, device=p.device) for i, p in enumerate(params)]

    def __call__(self, params, x, y):
        grads = self.empty_grads(params)
        loss = self.bind(list(params), grads)(x, y)
        return loss, grads


class MseGrad:
    """``MSELoss()`` and its gradient in place: ``y_hat`` becomes the residual ``r = y_hat - y``,
    the loss is ``r . r / N`` (one ``dot``: ``mse_loss`` is four ATen operations inside, and
    the loss does not feed the gradient; its sum runs in another order, ~1e-7 relative in
    float32), then ``r`` is scaled in place to the gradient ``r * (2 / N)`` (autograd's
    ``mse_loss_backward``: ``norm * (a - b)``, the same values).  The factors are 0-dim tensors
    made once per batch size (a Python float is wrapped into a tensor on every call)."""

    def __init__(self):
        self.per_n = {}

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor):
        n = prediction.numel()
        consts = self.per_n.get(n)
        if consts is None:
            consts = self.per_n[n] = (torch.tensor(2.0 / n, dtype=prediction.dtype, device=prediction.device),
                                      torch.tensor(n, dtype=prediction.dtype, device=prediction.device))
        residual = prediction.sub_(target)
        flat = residual.view(-1)
        loss = torch.dot(flat, flat).div_(consts[1])
        return loss, residual.mul_(consts[0])


class CrossEntropyGradT:
    """:func:`cross_entropy_with_grad_t` with what depends only on the batch size made once
    per size (the ``-1`` row scattered at the targets, ``N`` as a 0-dim tensor), ATen's
    functions called below their Python wrappers (``_log_softmax``, ``_nn.nll_loss``), and
    the softmax computed in place of the log-probabilities.  The same operations, values
    and order as :func:`cross_entropy_with_grad_t`."""

    def __init__(self):
        self.per_n = {}

    def __call__(self, logits_t: torch.Tensor, target: torch.Tensor):
        n = logits_t.shape[1]
        consts = self.per_n.get(n)
        if consts is None:
            consts = self.per_n[n] = (logits_t.new_full((1, n), -1.0),
                                      torch.tensor(n, dtype=logits_t.dtype, device=logits_t.device),
                                      torch.tensor(-n, dtype=logits_t.dtype, device=logits_t.device))
        log_p = _log_softmax(logits_t, 0, False)
        index = target.unsqueeze(0)
        loss = log_p.gather(0, index).sum().div_(consts[2])  # -mean log p(target)
        grad = log_p.exp_().scatter_add_(0, index, consts[0])
        return loss, grad.div_(consts[1])

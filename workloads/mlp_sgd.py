"""Method 1 of "building a network from raw": a 5-128-1 ReLU MLP in float64, plain SGD.

As documented: ``make_regression(1000 x 5, all 5 informative, bias=0,
noise=0.001)``, ``StandardScaler`` on X and y, float64 tensors; weights and
biases drawn with ``randn`` (standard deviation 1), not torch's default init;
``mean((y_hat - y) ** 2)`` and ``p -= 0.01 * grad`` for 10,000 full-batch steps.
The notes train on all 1000 rows; the suite holds out 20 % (scalers fitted on the
training rows) so that the metric is a test MSE: the split is the suite's choice.
The ``as_written`` loop (:class:`AsWritten`) is the notes' method 1, habits included.
"""

from __future__ import annotations

from pathlib import Path

from collections import OrderedDict

import torch
from sklearn import datasets
from sklearn.neural_network import MLPRegressor
from torch import nn

from torchloops.core.data import split, standardise, to_split
from torchloops.core.gradients import FusedGrads, MseGrad
from torchloops.core.losses import mse, raw_mse
from torchloops.core.notes_loop import NotesLoop, SlicedAsWritten
from torchloops.core.registry import AsWritten as Notes, Metric, OptimizerSpec, Peer, Workload, register_workload


HIDDEN = 128


def make_data_as(seed: int, dtype: torch.dtype):
    """The data of both "from raw" methods (method 2 uses it in float32).  ``coef=True`` as the
    notes call it (``X, y, coef = ...``); the true coefficients are not used, and asking for them
    draws nothing more: X and y are those of ``coef=False`` (``tests/test_notes_hyperparameters.py``)."""
    X, y, _coef = datasets.make_regression(
        n_samples=1000, n_features=5, n_informative=5, n_targets=1, bias=0, coef=True, noise=0.001,
        random_state=seed,
    )
    X_train, X_test, y_train, y_test = split(X, y.reshape(-1, 1), seed)
    X_train, X_test = standardise(X_train, X_test)
    y_train, y_test = standardise(y_train, y_test)
    return to_split(X_train, X_test, y_train, y_test, dtype, dtype)


def make_data(seed: int):
    return make_data_as(seed, torch.float64)


class OneHiddenLayer(nn.Module):
    """5 -> 128 -> activation -> 1: the network of both "from raw" methods."""

    def __init__(self, activation=torch.relu):
        super().__init__()
        self.fc1 = nn.Linear(5, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, 1)
        self.activation = activation

    def forward(self, x):
        return self.fc2(self.activation(self.fc1(x)))


def one_hidden_layer_sequential(activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, HIDDEN), activation, nn.Linear(HIDDEN, 1))


def one_hidden_layer_raw(activation):
    """The notes' method-1 forward, ``act(x.mm(weights1) + biases1).mm(weights2) + biases2``
    (weights kept in nn.Linear's (out, in) layout, hence the ``.t()``)."""

    def raw_forward(params, x):
        weights1, biases1, weights2, biases2 = params
        hidden = activation(x.mm(weights1.t()) + biases1)
        return hidden.mm(weights2.t()) + biases2

    return raw_forward


def stacked_weight_and_bias(g_w1_t: torch.Tensor, g_b1: torch.Tensor):
    """``[dW1^T; db1]`` as one ``(in + 1, out)`` tensor when the trainer's flat buffer holds
    ``fc1``'s weight transposed and its bias right after it (``FusedGrads(transposed=(0,))``),
    else None (separate gradient tensors, as ``FusedGrads.__call__`` makes them)."""
    rows, cols = g_w1_t.shape
    if not g_w1_t.is_contiguous() or g_b1.data_ptr() != g_w1_t.data_ptr() + g_w1_t.numel() * g_w1_t.element_size():
        return None
    return torch.as_strided(g_w1_t, (rows + 1, cols), (cols, 1))


class AugmentedInputs:
    """Per batch size, an ``(N, in + 1)`` buffer whose last column is ones, its first ``in``
    columns (where each batch is copied) and its transpose (views made once): ``[x, 1]^T g``
    is then one product for ``fc1``'s weight and bias gradients (``[dW1^T; db1]``) instead of a
    product and a column sum."""

    def __init__(self):
        self.per_n = {}

    def get(self, n: int, like: torch.Tensor):
        """``([x, 1]``'s first ``in`` columns, ``[x, 1]^T)`` for batches of ``n`` rows."""
        views = self.per_n.get(n)
        if views is None:
            buffer = like.new_ones((n, like.shape[1] + 1))
            views = self.per_n[n] = (buffer, buffer[:, :-1], buffer.t())
        return views[1:]

    def __call__(self, x: torch.Tensor):
        """The ``(N, in + 1)`` buffer holding ``[x, 1]``, its first columns and its transpose."""
        self.get(x.shape[0], x)
        views = self.per_n[x.shape[0]]
        views[1].copy_(x)
        return views


def weight_row_and_bias(g_w2: torch.Tensor, g_b2: torch.Tensor):
    """``[dW2 | db2]`` as one ``(1, in + 1)`` tensor for a one-output layer whose bias follows its
    weight in the trainer's flat buffer, else None."""
    if g_w2.shape[0] != 1 or not g_w2.is_contiguous() or \
            g_b2.data_ptr() != g_w2.data_ptr() + g_w2.numel() * g_w2.element_size():
        return None
    return torch.as_strided(g_w2, (1, g_w2.shape[1] + 1), (g_w2.shape[1] + 1, 1))


class AugmentedHidden:
    """Per batch size, an ``(N, hidden + 1)`` buffer whose last column is ones: its transpose
    and its first ``hidden`` columns, where the activation writes (``out=``); ``[h, 1]^T d`` is
    then one product for the output layer's weight and bias gradients (``[dW2 | db2]``)."""

    def __init__(self):
        self.per_n = {}

    def get(self, n: int, like: torch.Tensor, width: int):
        views = self.per_n.get(n)
        if views is None:
            buffer = like.new_ones((n, width + 1))
            views = self.per_n[n] = (buffer.t(), buffer[:, :-1])
        return views


def one_hidden_layer_fused(activation, activation_backward):
    """The hand-derived forward + backward of both "from raw" methods with an MSE loss
    (``activation_``: the in-place activation, ``activation_backward(grad, output)``):
    ``d = 2 (y_hat - y) / N`` through ``fc2``, the activation's derivative (from its
    output), then ``fc1``.

    ``fc1``'s weight is stored transposed by the trainer (``FusedGrads(transposed=(0,))``):
    its gradient is ``x^T g`` written in place, not ``g^T x``: the same sum, but MKL's kernel
    for a transposed (N, 128) left operand measured 2.2x (float64) to 3.4x (float32)
    slower than for the transposed (N, 5) one."""

    def bind(params, grads):
        weights1, biases1, weights2, biases2 = params
        g_w1, g_b1, g_w2, g_b2 = grads
        w1_t, w2_t, g_w1_t = weights1.t(), weights2.t(), g_w1.t()
        block = stacked_weight_and_bias(g_w1_t, g_b1)  # [dW1^T; db1] in the trainer's layout
        row = weight_row_and_bias(g_w2, g_b2)  # [dW2 | db2]
        if row is not None:
            row = row.view(-1, 1)  # the same memory as a column
        width = weights1.shape[0]
        addmm, mm, total = torch.addmm, torch.mm, torch.sum
        mse, augmented, hidden_buffers = MseGrad(), AugmentedInputs(), AugmentedHidden()
        per_n = {}  # batch size -> ([h, 1]^T, h, [x, 1]'s first columns, [x, 1]^T): views made once

        def step(x, y):
            n = x.shape[0]
            views = per_n.get(n)
            if views is None:
                views = per_n[n] = hidden_buffers.get(n, x, width) + augmented.get(n, x)
            with_ones_t, hidden, x_ones, x_ones_t = views
            activation(addmm(biases1, x, w1_t), out=hidden)  # [h, 1]
            loss, d_out = mse(addmm(biases2, hidden, w2_t), y)
            if row is not None:
                mm(with_ones_t, d_out, out=row)  # [h, 1]^T d: [dW2 | db2] as a column
            else:
                mm(d_out.t(), hidden, out=g_w2)
                total(d_out, 0, out=g_b2)
            g_hidden = activation_backward(mm(d_out, weights2), hidden)
            if block is not None:
                x_ones.copy_(x)
                mm(x_ones_t, g_hidden, out=block)  # [x, 1]^T g: [dW1^T; db1]
            else:
                mm(x.t(), g_hidden, out=g_w1_t)
                total(g_hidden, 0, out=g_b1)
            return loss

        return step

    return FusedGrads(bind, transposed=(0,))


def bind_relu_fused(params, grads):
    """mlp_sgd's step (ReLU), with fewer passes over the (N, 128) float64 activations.

    With ``m = (hidden > 0)`` (the ReLU's derivative), ``d`` the (N, 1) output gradient and
    ``w2`` the (1, 128) output weights, the first layer's gradients are
    ``dW1[j, k] = w2[j] sum_i m[i, j] d[i] x[i, k]`` and ``db1[j] = w2[j] sum_i m[i, j] d[i]``:
    one (6, N) x (N, 128) product of ``[d x, d]`` with the mask, scaled by ``w2``, instead of
    materialising ``d w2`` (N x 128), masking it (``threshold_backward``), and reducing it
    twice.  ``fc1``'s weight is stored transposed (``W1^T``, (5, 128)) and is followed by its
    bias in the flat buffer, so that product is written in place into the (6, 128) block of
    ``[dW1^T; db1]``; likewise the forward is one product ``[x, 1] [W1^T; b1]`` (``addmm``
    copies the bias into its (N, 128) float64 output first: one pass over 800 KB less).  The
    ReLU runs in place on the product.  Same sums in another order: the gradients agree with
    autograd's to ~1e-15 relative (float64)."""
    weights1, biases1, weights2, biases2 = params
    g_w1, g_b1, g_w2, g_b2 = grads
    w1_t, w2_t = weights1.t(), weights2.t()
    g_w1_t = g_w1.t()
    block = stacked_weight_and_bias(g_w1_t, g_b1)  # [dW1^T; db1] in the trainer's layout
    weights_and_bias = stacked_weight_and_bias(w1_t, biases1)  # [W1^T; b1], the same layout
    addmm, mm, total, mul = torch.addmm, torch.mm, torch.sum, torch.mul
    mse, augmented = MseGrad(), AugmentedInputs()
    scaled = {}  # batch size -> (N, in + 1) buffer for [d x, d] and its transpose

    def step(x, y):
        x1 = augmented(x)[0]  # [x, 1]
        if weights_and_bias is not None:  # [x, 1] [W1^T; b1]: no (N, 128) pass copying the bias
            hidden = mm(x1, weights_and_bias).clamp_min_(0)
        else:
            hidden = addmm(biases1, x, w1_t).clamp_min_(0)
        loss, d = mse(addmm(biases2, hidden, w2_t), y)
        mm(d.t(), hidden, out=g_w2)
        total(d, 0, out=g_b2)
        mask = hidden.sign()  # 1 where the ReLU passed its input, else 0 (hidden >= 0)
        views = scaled.get(x1.shape[0])
        if views is None:
            buffer = torch.empty_like(x1)
            views = scaled[x1.shape[0]] = (buffer, buffer.t())
        mul(x1, d, out=views[0])  # [d x, d]
        if block is not None:
            mm(views[1], mask, out=block).mul_(weights2)
        else:
            g = mm(views[1], mask).mul_(weights2)
            g_w1_t.copy_(g[:-1])
            g_b1.copy_(g[-1])
        return loss

    return step


relu_fused_grads = FusedGrads(bind_relu_fused, transposed=(0,))


def randn_init(model: nn.Module) -> None:
    """The documented init: every weight and bias drawn from N(0, 1)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))


class AsWritten:
    """The notes' method 1 ("方法1:从raw建立") loop body, statement for statement: leaf tensors in
    the notes' layout (``weights1`` is (5, 128): ``x_tensor.mm(weights1)``), ``.data`` updates
    and ``.grad.data.zero_()``::

        hidden = x_tensor.mm(weights1) + biases1
        hidden = torch.relu(hidden)
        y_hat = hidden.mm(weights2) + biases2
        loss = torch.mean((y_hat - y_tensor) ** 2)
        losses.append(loss.data.numpy())
        if i % 1000 == 0:
            print('loss:', loss)
        loss.backward()
        weights1.data.add_(-learning_rate * weights1.grad.data)
        ...  # biases1, weights2, biases2
        weights1.grad.data.zero_()
        ...

    ``--weight-decay`` adds torch.optim's L2 term to each gradient first (the notes have none).
    Under ddp the placement's reduction weights each rank's loss by its share of the global
    batch and sums the gradients with one ``all_reduce`` before the update, as for ``raw``.  The notes' tensors
    have no ``nn.Module``: DataParallel cannot wrap them."""

    batcher = SlicedAsWritten

    def __init__(self, workload, params, placement, spec):
        if placement.wraps_module:
            raise ValueError(f"{placement.name} wraps an nn.Module; the notes' method 1 has none")
        device = placement.device()
        w1, b1, w2, b2 = (p.detach() for p in params.values())
        self.weights1 = w1.t().contiguous().to(device).requires_grad_()  # (input_size, hidden_size)
        self.biases1 = b1.clone().to(device).requires_grad_()
        self.weights2 = w2.t().contiguous().to(device).requires_grad_()  # (hidden_size, output_size)
        self.biases2 = b2.clone().to(device).requires_grad_()
        self.learning_rate, self.weight_decay = spec.lr, spec.weight_decay
        self.names, self.workload = list(params), workload
        self.losses, self.i = [], 0
        self.on_host = device.type == "cpu"
        self.loop = NotesLoop()
        self.reduction = placement.reduction(wrapped=False)

    def step(self, x_tensor, y_tensor, weight=None):
        weights1, biases1, weights2, biases2 = self.weights1, self.biases1, self.weights2, self.biases2
        learning_rate, i = self.learning_rate, self.i
        hidden = x_tensor.mm(weights1) + biases1
        hidden = torch.relu(hidden)
        y_hat = hidden.mm(weights2) + biases2
        loss = torch.mean((y_hat - y_tensor) ** 2)
        self.losses.append(loss.data.numpy() if self.on_host else loss.data.cpu().numpy())
        if i % 1000 == 0:
            print('loss:', loss, file=self.loop.out)
        self.reduction.backward(loss, weight)
        self.reduction.sum_grads((weights1, biases1, weights2, biases2))  # ddp: one all_reduce
        if self.weight_decay:  # torch.optim's L2 penalty, before the update
            for p in (weights1, biases1, weights2, biases2):
                p.grad.data.add_(p.data, alpha=self.weight_decay)
        weights1.data.add_(-learning_rate * weights1.grad.data)
        biases1.data.add_(-learning_rate * biases1.grad.data)
        weights2.data.add_(-learning_rate * weights2.grad.data)
        biases2.data.add_(-learning_rate * biases2.grad.data)
        weights1.grad.data.zero_()
        biases1.grad.data.zero_()
        weights2.grad.data.zero_()
        biases2.grad.data.zero_()
        self.i = i + 1
        return self.reduction.loss(loss, weight)

    def make_batcher(self, split, plan):
        """The notes' slicing, sharing this loop's counters."""
        return type(self).batcher(split, plan, self.loop)

    def predict(self, x):
        return torch.relu(x.mm(self.weights1) + self.biases1).mm(self.weights2) + self.biases2

    def state_dict(self):
        """Canonical (``build_module``) names and nn.Linear's (out, in) layout."""
        tensors = (self.weights1.t(), self.biases1, self.weights2.t(), self.biases2)
        return OrderedDict((n, t.detach().clone().contiguous()) for n, t in zip(self.names, tensors))


WORKLOAD = register_workload(
    Workload(
        name="mlp_sgd",
        reference=Path(__file__).parent / "reference" / "mlp_sgd.json",
        summary="5-128-1 ReLU MLP, randn init, float64; MSE; SGD(lr=0.01); full batch",
        # data: make_regression(1000 x 5, 5 informative, noise=0.001), split 0.2, standardised, float64
        make_data=make_data,
        build_module=OneHiddenLayer,
        build_sequential=lambda: one_hidden_layer_sequential(nn.ReLU()),
        raw_forward=one_hidden_layer_raw(torch.relu),
        raw_loss=raw_mse,
        fused_grads=relu_fused_grads,
        criterion=nn.MSELoss,
        optimizer=OptimizerSpec("sgd", lr=0.01),
        epochs=10_000,
        batch_size=None,
        n_train=800,
        shuffle=False,
        eval_every=50,
        dtype=torch.float64,
        init=randn_init,
        as_written=Notes(
            section="从raw建立神经网络, 方法1",
            trainer=AsWritten,
            habits="raw leaf tensors, loss.data.numpy() appended every step, print('loss:', loss) every "
                   "1000 steps, .data.add_ updates and .grad.data.zero_()",
            uses_module=False,  # raw leaf tensors: DataParallel has nothing to wrap
        ),
        metric=Metric("test_mse", higher_is_better=False, fn=mse),
        peers=(
            Peer("sk:MLPRegressor(128,)",
                 lambda seed: MLPRegressor(hidden_layer_sizes=(128,), max_iter=1000, random_state=seed)),
        ),
        scales=True,
        # How the target was chosen: 25 seeds (0-24), raw style, torch 2.13.0 CPU. Shipped
        # (workloads/reference/mlp_sgd.json; a run stops at the target, or at 10,000 steps): 22 of
        # 25 reach test MSE 0.2 (median step 1,100, slowest 2,550); the other 3 (seeds 0, 4, 8)
        # end the full 10,000 steps at 0.24-0.40 under the documented randn init. Not shipped: the
        # full-length sweep of the 22; in it final MSEs spread from 0.006 to 0.4, so a tighter
        # target would be a lottery over seeds; 0.2 (R^2 = 0.8) separates the two groups cleanly.
        target=0.2,
    )
)

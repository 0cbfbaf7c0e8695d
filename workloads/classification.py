"""Classification (the notes' first case): MyNet on ``make_classification``.

As documented: 1000 samples, 10 features (5 informative, 2 redundant), 3 classes,
one cluster per class, 5 % flipped labels, 80/20 split; ``Linear(10,10) -> ReLU ->
Linear(10,3) -> ReLU`` (the notes put a ReLU on the logits, kept as the default:
a class whose logit dies at 0 can never win the arg-max, so some seeds never pass
~0.65 test accuracy, as seed 23 in the shipped reference, and the run reports it as a
dead class); ``CrossEntropyLoss`` and ``SGD(lr=0.001, momentum=0.9)``; 50 epochs of
1000 full-batch steps; the notes print the test loss every 2 epochs (the
``as_written`` loop, :class:`AsWritten`, does).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from torch import nn

from torchloops.core.data import split, to_split
from torchloops.core.gradients import CrossEntropyGradT, FusedGrads, threshold_backward
from torchloops.core.losses import accuracy, raw_cross_entropy
from torchloops.core.notes_loop import AsWrittenModuleTrainer, NumpyEveryStep, as_written_module
from torchloops.core.registry import AsWritten as Notes, Metric, OptimizerSpec, Peer, Workload, register_workload


def make_data(seed: int):
    X, y = datasets.make_classification(
        n_samples=1000,
        n_features=10,
        n_informative=5,
        n_redundant=2,
        n_classes=3,
        n_clusters_per_class=1,
        flip_y=0.05,
        random_state=seed,
    )
    X_train, X_test, y_train, y_test = split(X, y, seed)
    return to_split(X_train, X_test, y_train, y_test, torch.float32, torch.int64)


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return x


def build_sequential() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3), nn.ReLU())


def raw_forward(params, x):
    w1, b1, w2, b2 = params
    hidden = torch.relu(x.mm(w1.t()) + b1)
    return torch.relu(hidden.mm(w2.t()) + b2)


def bind_fused(params, grads):
    """MyNet's forward and its hand-derived backward, written into ``grads``, feature-major
    (activations are ``(features, N)``, so the softmax runs over a long contiguous dimension):
    ``dz = (softmax(z) - one_hot) / N``, masked where a ReLU's output is 0 (the logits'
    ReLU too), ``dW2 = dz h^T``, ``dh = W2^T dz`` masked, ``dW1 = dh x``; biases: row sums.
    Per-operation overhead dominates (10 x 800 tensors): the ReLUs run in place on the
    ``addmm`` outputs, the weight and bias views are made once here, the gradients are
    written by ``out=``.  (Sample-major hidden activations would save the ``x^T`` view, but
    ``threshold_backward`` of a (10, N) gradient against a transposed mask is not vectorised:
    ~100k instructions a step more.)"""
    w1, b1, w2, b2 = params
    g_w1, g_b1, g_w2, g_b2 = grads
    w2_t, b1_col, b2_col = w2.t(), b1.unsqueeze(1), b2.unsqueeze(1)
    addmm, mm, total = torch.addmm, torch.mm, torch.sum
    cross_entropy = CrossEntropyGradT()

    def step(x, y):
        hidden = addmm(b1_col, w1, x.t()).clamp_min_(0)  # (10, N), ReLU in place
        logits = addmm(b2_col, w2, hidden).clamp_min_(0)  # (3, N)
        loss, d_logits = cross_entropy(logits, y)
        d_out = threshold_backward(d_logits, logits, 0)
        mm(d_out, hidden.t(), out=g_w2)
        total(d_out, 1, out=g_b2)
        d_hidden = threshold_backward(mm(w2_t, d_out), hidden, 0)  # (10, N)
        mm(d_hidden, x, out=g_w1)
        total(d_hidden, 1, out=g_b1)
        return loss

    return step


fused_grads = FusedGrads(bind_fused)


class AsWritten(AsWrittenModuleTrainer):
    """The notes' "step4: 训练" loop body, statement for statement (``my_net`` is the model,
    the batcher re-creates ``X_train_tensor`` / ``y_train_tensor`` from numpy for every step)::

        X_train_tensor = torch.tensor(X_train, dtype=torch.float)
        y_train_tensor = torch.tensor(y_train, dtype=torch.long)
        optimizer.zero_grad()
        y_hat = my_net(X_train_tensor)
        loss = criterion(y_hat, y_train_tensor)
        loss.backward()
        optimizer.step()
        # after the epoch's 1000 steps:
        if epoch % 2 == 0:
            print("epoch = {}, loss on train {:.5f}, loss on test {:.5f}".format(
                epoch, loss.item(), criterion(my_net(X_test_tensor), y_test_tensor).item()))

    The report runs in the step that ends an even epoch (with gradients on, as written);
    ``X_test_tensor`` is made once, before the loop, as in the notes; the print is captured."""

    batcher = NumpyEveryStep

    def step(self, X_train_tensor, y_train_tensor, weight=None):
        optimizer, my_net, criterion, loop = self.optimizer, self.model, self.criterion, self.loop
        optimizer.zero_grad()
        y_hat = my_net(X_train_tensor)
        loss = self.loss = criterion(y_hat, y_train_tensor)  # the notes' `loss` outlives the step
        self.reduction.backward(loss, weight)
        optimizer.step()
        if loop.last and loop.epoch % 2 == 0:
            X_test_tensor, y_test_tensor = loop.data.X_test, loop.data.y_test
            print("epoch = {}, loss on train {:.5f}, loss on test {:.5f}"
                  .format(loop.epoch, loss.item(), criterion(self.module(X_test_tensor), y_test_tensor).item()),
                  file=loop.out)
        return self.reduction.loss(loss, weight)


WORKLOAD = register_workload(
    Workload(
        name="classification",
        reference=Path(__file__).parent / "reference" / "classification.json",
        summary="MyNet 10-10-3 with ReLU on the logits; CrossEntropy; SGD(lr=0.001, momentum=0.9)",
        # data: make_classification(1000 x 10, 3 classes, flip_y=0.05), split 0.2
        make_data=make_data,
        build_module=MyNet,
        build_sequential=build_sequential,
        raw_forward=raw_forward,
        raw_loss=raw_cross_entropy,
        fused_grads=fused_grads,
        criterion=nn.CrossEntropyLoss,
        optimizer=OptimizerSpec("sgd", lr=0.001, momentum=0.9),
        epochs=50,
        steps_per_epoch=1000,
        batch_size=None,
        n_train=800,
        shuffle=False,
        eval_every=100,
        as_written=Notes(
            section="案例：分类模型, step4：训练",
            trainer=as_written_module(AsWritten, lambda w: w.build_module()),
            habits="X_train_tensor / y_train_tensor re-created from numpy every step; loss.item() and "
                   "the test loss (with gradients on) printed every 2 epochs",
        ),
        metric=Metric("test_accuracy", higher_is_better=True, fn=accuracy, is_classification=True),
        peers=(
            Peer("sk:LogisticRegression", lambda seed: LogisticRegression(max_iter=1000, random_state=seed)),
            Peer("sk:MLPClassifier(10,)",
                 lambda seed: MLPClassifier(hidden_layer_sizes=(10,), max_iter=1000, random_state=seed)),
        ),
        scales=True,
        # How the target was chosen: 25 seeds (0-24), raw style, torch 2.13.0 CPU. Shipped
        # (workloads/reference/classification.json; a run stops at the target, or at 50,000
        # steps): 24 of 25 reach 0.85 test accuracy (median step 1,350, slowest 30,100); the 25th
        # (seed 23) loses class 1 to the ReLU on the logits and ends the 50,000 steps at 0.65. Not
        # shipped: the full-length sweep of the 24, in which the lowest final accuracy was 0.86;
        # the target sits below it.
        target=0.85,
    )
)

"""A workload of one's own: a small MLP on scikit-learn's wine data (not from the notes).

One file is the whole workload.  Nothing is installed and nothing in the suite is edited: name
the file in ``TORCHLOOPS_WORKLOADS`` (several files: separated by ``os.pathsep``) and every
command, benchmark and test sees it::

    TORCHLOOPS_WORKLOADS=examples/wine_mlp.py torchloops list
    TORCHLOOPS_WORKLOADS=examples/wine_mlp.py torchloops run wine_mlp --style all
    TORCHLOOPS_WORKLOADS=examples/wine_mlp.py torchloops compare wine_mlp

It declares the data, the ``nn.Module`` model and its ``nn.Sequential`` twin, the criterion, the
optimizer, the schedule, the target and one scikit-learn peer: enough for the ``module``,
``sequential``, ``dataloader`` and ``tuned`` styles.  It declares no hand-written forward and
loss (``raw``), no hand-derived backward (``fused``) and no notes' loop (``as_written``): those
styles are skipped everywhere with that reason.  It ships no convergence reference: seed 0 is its
typical seed, and ``torchloops converge wine_mlp --seeds 25 --json FILE`` makes one (declare it
with ``reference=Path(FILE)``).  The engine's core is all a workload imports.
"""

from __future__ import annotations

import torch
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from torch import nn

from torchloops.core.data import split, standardise, to_split
from torchloops.core.losses import accuracy
from torchloops.core.registry import Metric, OptimizerSpec, Peer, Workload, register_workload


def make_data(seed: int):
    """178 wines, 13 features, 3 cultivars; split 80/20 (seeded), features standardised."""
    X, y = datasets.load_wine(return_X_y=True)
    X_train, X_test, y_train, y_test = split(X, y, seed)
    X_train, X_test = standardise(X_train, X_test)
    return to_split(X_train, X_test, y_train, y_test, torch.float32, torch.int64)


class WineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(13, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def build_sequential() -> nn.Sequential:
    return nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))


register_workload(
    Workload(
        name="wine_mlp",
        summary="MLP 13-16-3 on sklearn's wine (example plug-in); CrossEntropy; SGD(lr=0.05); batch 16",
        make_data=make_data,
        build_module=WineNet,
        build_sequential=build_sequential,
        criterion=nn.CrossEntropyLoss,
        optimizer=OptimizerSpec("sgd", lr=0.05),
        epochs=20,
        batch_size=16,
        n_train=142,
        shuffle=True,
        metric=Metric("test_accuracy", higher_is_better=True, fn=accuracy, is_classification=True),
        target=0.9,
        peers=(Peer("sk:LogisticRegression", lambda seed: LogisticRegression(max_iter=1000, random_state=seed)),),
    )
)

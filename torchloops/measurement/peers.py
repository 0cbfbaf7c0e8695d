"""The scikit-learn estimators a user would pick instead of each workload's PyTorch loop.

Each peer is fitted on exactly the rows of the run's split (the same seed, the
same 80/20 split, the same scaling) and scored with the workload's own metric
function on the test rows, so its number sits in the same column as the styles'.

What a peer's "time to target" means: sklearn fits to its own stopping rule, so
the time is the whole ``fit`` (an upper bound of the time it needed), counted as
time-to-target when the fitted model meets the workload's target; its "steps" are
``n_iter_`` (lbfgs iterations for LogisticRegression, epochs for the SGD and MLP
estimators).  BLAS threads are limited to the runs' ``--threads`` while fitting.

Each workload module declares its peers (``Workload.peers``, ``Workload.peer_features``).
Estimators keep sklearn's defaults except ``random_state`` (the run's seed) and
``max_iter=1000`` for the iterative ones, so that a default 100/200-iteration cap
does not hand the peer an unconverged fit (a ``ConvergenceWarning`` is still
recorded and shown).  LeNet's peers see the 64 original 8x8 pixels of the same
rows: the workload's 32x32 input is a 4x4 nearest-neighbour upsampling (then one
global affine normalisation) of them, so no information is lost, and what a user
would fit on ``load_digits`` is those 64 pixels.
"""

from __future__ import annotations

import time
import warnings
from typing import List

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from torchloops.core.data import Split
from torchloops.core.registry import Peer, Workload, get_workload


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).cpu().numpy()


def peers_for(workload: str) -> List[Peer]:
    """The peers the workload module declares (``Workload.peers``)."""
    return list(get_workload(workload).peers)


def fit_peer(workload: Workload, peer: Peer, split: Split, seed: int, threads: int = 1) -> dict:
    """Fit one peer on the split's training rows; score it on the test rows with the workload's metric."""
    features = workload.peer_features or _flat
    X_train, X_test = features(split.X_train), features(split.X_test)
    y_train = split.y_train.cpu().numpy().ravel()
    estimator = peer.make(seed)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=threads):
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        estimator.fit(X_train, y_train)
        fit_time = time.perf_counter() - start
    if workload.metric.is_classification:
        # Scores per class in label order (classes_ are 0..k-1): the metric's arg-max is predict's.
        outputs = torch.as_tensor(estimator.predict_proba(X_test))
    else:
        outputs = torch.as_tensor(estimator.predict(X_test)).reshape(split.y_test.shape)
    value = float(workload.metric.fn(outputs, split.y_test.cpu()))
    reached = workload.metric.reached(value, workload.target)
    n_iter = getattr(estimator, "n_iter_", None)
    if n_iter is not None:
        n_iter = int(np.max(n_iter))
    return {
        "kind": "peer",
        "workload": workload.name,
        "style": peer.name,
        "device": "cpu",
        "seed": seed,
        "threads": threads,
        "estimator": repr(estimator),
        "features": X_train.shape[1],
        "metric": workload.metric.name,
        "metric_value": value,
        "target": workload.target,
        "higher_is_better": workload.metric.higher_is_better,
        "reached_target": reached,
        "n_iter": n_iter,
        "steps_to_target": n_iter if reached else None,
        "fit_time_s": fit_time,
        "time_to_target_s": fit_time if reached else None,
        "step_time_median_s": fit_time / n_iter if n_iter else None,  # mean per iteration
        "convergence_warning": any(issubclass(w.category, ConvergenceWarning) for w in caught),
    }

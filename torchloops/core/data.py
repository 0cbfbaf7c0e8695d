"""Seeded datasets and the one batch-order plan that every style shares.

One integer seed decides everything random in a run: the sklearn data
(``random_state``), the train/test split, the initial parameters and the batch
order.  :func:`seeds` derives the separate streams from it in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch
from sklearn import model_selection, preprocessing

MAX_SEED = 2**32 - 1  # sklearn's random_state range: the largest --seed
TEST_SIZE = 0.2  # every workload's held-out share, as documented

BatchEntry = Union[slice, torch.Tensor]


@dataclass
class Split:
    """Train and test tensors of one workload instance (CPU; placements move them)."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    def to(self, device) -> "Split":
        return Split(*(t.to(device) for t in (self.X_train, self.y_train, self.X_test, self.y_test)))


@dataclass(frozen=True)
class Seeds:
    """The independent random streams of one run, all derived from one seed."""

    data: int  # sklearn random_state for the generator and the split
    init: int  # torch seed for the initial parameters
    order: int  # torch seed for the batch order


def seeds(seed: int) -> Seeds:
    # Distinct, fixed offsets keep the streams independent while staying readable.
    return Seeds(data=seed, init=seed + 1_000_003, order=seed + 2_000_003)


def split(X: np.ndarray, y: np.ndarray, seed: int):
    """The documented ``train_test_split(test_size=0.2)``, seeded."""
    return model_selection.train_test_split(X, y, test_size=TEST_SIZE, random_state=seeds(seed).data)


def standardise(train: np.ndarray, test: np.ndarray):
    """``StandardScaler`` fitted on the training rows only, applied to both."""
    scaler = preprocessing.StandardScaler().fit(train)
    return scaler.transform(train), scaler.transform(test)


def to_split(X_train, X_test, y_train, y_test, x_dtype: torch.dtype, y_dtype: torch.dtype) -> Split:
    return Split(
        X_train=torch.as_tensor(np.ascontiguousarray(X_train)).to(x_dtype),
        y_train=torch.as_tensor(np.ascontiguousarray(y_train)).to(y_dtype),
        X_test=torch.as_tensor(np.ascontiguousarray(X_test)).to(x_dtype),
        y_test=torch.as_tensor(np.ascontiguousarray(y_test)).to(y_dtype),
    )


def steps_per_epoch(n_train: int, batch_size: Optional[int], fixed: Optional[int]) -> int:
    if fixed is not None:
        return fixed
    if batch_size is None:
        return 1
    return math.ceil(n_train / batch_size)


def batch_plan(
    n_train: int,
    batch_size: Optional[int],
    shuffle: bool,
    epochs: int,
    per_epoch: int,
    total_steps: int,
    seed: int,
) -> List[List[BatchEntry]]:
    """Which rows each optimizer step sees, epoch by epoch: the same for every style.

    Batches are cut from passes over the data: a pass is ``randperm`` when
    shuffling (as ``DataLoader(shuffle=True)``), else the rows in order (slices, so
    manual slicing stays a view as in the notes); the last batch of a pass may be
    short (``drop_last=False``).  An epoch takes ``per_epoch`` consecutive batches,
    which is one pass unless the workload documents otherwise (classification:
    1000 full-batch steps per epoch).  Stops after ``total_steps`` steps.
    """
    generator = torch.Generator().manual_seed(seeds(seed).order)
    size = n_train if batch_size is None else min(batch_size, n_train)

    def one_pass():
        if shuffle:
            perm = torch.randperm(n_train, generator=generator)
            return list(perm.split(size))
        return [slice(start, min(start + size, n_train)) for start in range(0, n_train, size)]

    plan: List[List[BatchEntry]] = []
    pending: List[BatchEntry] = []
    remaining = total_steps
    for _ in range(epochs):
        if remaining <= 0:
            break
        epoch: List[BatchEntry] = []
        while len(epoch) < min(per_epoch, remaining):
            if not pending:
                pending = one_pass()
            epoch.append(pending.pop(0))
        remaining -= len(epoch)
        plan.append(epoch)
    return plan


def as_index_list(entry: BatchEntry) -> List[int]:
    """A plan entry as the list of row indices a ``batch_sampler`` yields."""
    if isinstance(entry, slice):
        return list(range(entry.start, entry.stop))
    return entry.tolist()


def entry_size(entry: BatchEntry) -> int:
    """The number of rows of one batch of the plan."""
    return entry.stop - entry.start if isinstance(entry, slice) else int(entry.numel())


def plan_on_device(plan: List[List[BatchEntry]], device: torch.device) -> List[List[BatchEntry]]:
    """The plan with its index tensors (shuffled batches) on ``device``, moved once, untimed:
    indexing GPU data with a CPU index tensor copies the index to the GPU inside every
    timed step.  Slices (in-order batches) stay slices; on the CPU nothing is copied."""
    if device.type == "cpu":
        return plan
    moved_plan = []
    for epoch in plan:
        tensors = [e for e in epoch if not isinstance(e, slice)]
        if not tensors:
            moved_plan.append(epoch)
            continue
        # one host-to-device copy per epoch; each batch's index is a view of it
        moved = iter(torch.cat(tensors).to(device).split([t.numel() for t in tensors]))
        moved_plan.append([e if isinstance(e, slice) else next(moved) for e in epoch])
    return moved_plan


def index_lists(plan: List[List[BatchEntry]]) -> List[List[List[int]]]:
    """The plan as a ``batch_sampler``'s index lists, made once, outside the timed region.
    In-order batches repeat (classification's full batch 50,000 times): each distinct slice
    becomes one shared list, not one list per step."""
    shared: dict = {}

    def index_list(entry: BatchEntry) -> List[int]:
        if not isinstance(entry, slice):
            return as_index_list(entry)
        key = (entry.start, entry.stop)
        if key not in shared:
            shared[key] = as_index_list(entry)
        return shared[key]

    return [[index_list(e) for e in epoch] for epoch in plan]


class WeightedBatches:
    """A batcher whose batches carry their weight, ``(x, y, weight)``: a shard's share of its
    global batch (ddp), which the step passes to the placement's reduction."""

    def __init__(self, batcher, weights: List[List[float]]):
        self.inner, self.weights = batcher, weights

    def epoch(self, index: int):
        for (xb, yb), weight in zip(self.inner.epoch(index), self.weights[index]):
            yield xb, yb, weight

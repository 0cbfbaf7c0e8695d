"""The notes' own steps beyond training: the confusion matrix, the dead class, LeNet's one-sample check."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import workloads as W
from workloads import lenet


def test_confusion_matrix_rows_are_true_labels():
    config = W.configure("classification", "module", steps=300, seed=0)
    record = W.run(config)
    matrix = np.array(record.confusion_matrix)
    y_test = config.split.y_test.numpy()
    # rows sum to the count of each true label (the notes pass the arguments swapped)
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(y_test, minlength=3))
    assert matrix.trace() / matrix.sum() == record.metric_value


def test_lenet_one_sample_step_as_documented():
    net, before, after, bias_grad = lenet.one_sample_step(seed=0)
    assert bias_grad.shape == (6,) and bias_grad.abs().sum() > 0
    assert after < before


def test_lenet_manual_update_equals_optimizer_step():
    """The notes' manual ``f.data.sub_(f.grad.data * lr)`` is what ``optim.SGD(lr).step()`` does."""
    manual, _, _, _ = lenet.one_sample_step(seed=3)
    torch.manual_seed(3)
    net = lenet.Net()
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(1, 1, 32, 32, generator=generator)
    target = torch.randn(1, 10, generator=generator)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    optimizer.zero_grad()
    nn.MSELoss()(net(image), target).backward()
    optimizer.step()
    torch.manual_seed(3)
    untouched = lenet.Net()
    for a, b, start in zip(manual.parameters(), net.parameters(), untouched.parameters()):
        # p - (g * lr) against SGD's fused p.add_(g, alpha=-lr): equal up to the last bit
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
        assert not torch.equal(a, start)

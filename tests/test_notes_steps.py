"""The notes' own steps beyond training: the confusion matrix, the dead class, LeNet's one-sample check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import workloads as W
from workloads import lenet


def test_confusion_matrix_rows_are_true_labels():
    config = W.configure("classification", "module", steps=300, seed=0)
    record = W.run(config)
    matrix = np.array(record.confusion_matrix)
    y_test = config.data().y_test.numpy()
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


@pytest.mark.parametrize("batch", [1, 5])  # the notes' one image; a batch of the suite's
def test_the_suites_lenet_computes_the_notes_net(one_thread, batch):
    """The suite's ``LeNet`` (``torch.flatten(x, 1)``) and the notes' ``Net``
    (``x.view(-1, self.num_flat_features(x))``), the same parameters: the same outputs, the same
    parameter and input gradients, bit for bit."""
    torch.manual_seed(batch)
    notes = lenet.Net()
    suite = lenet.LeNet()
    suite.load_state_dict(notes.state_dict())
    image = torch.randn(batch, 1, 32, 32)
    labels = torch.randint(0, 10, (batch,))
    results = []
    for net in (notes, suite):
        x = image.clone().requires_grad_()
        out = net(x)
        nn.CrossEntropyLoss()(out, labels).backward()
        results.append((out.detach(), x.grad, [p.grad for p in net.parameters()]))
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = results
    assert out_a.shape == (batch, 10) and torch.equal(out_a, out_b) and torch.equal(dx_a, dx_b)
    assert len(grads_a) == 10 and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert type(notes).forward is not type(suite).forward  # two forwards, not one run twice


def test_network_vector_jacobian_product_out_backward_v(one_thread):
    """The notes' ``net.zero_grad(); out.backward(torch.randn(1, 10))`` on LeNet: the parameter
    (and input) gradients are the vector-Jacobian product vᵀ J of the network's output, as
    ``torch.autograd.functional.vjp`` computes it; against the full Jacobian for the input."""
    torch.manual_seed(0)
    net = lenet.Net()
    input = torch.randn(1, 1, 32, 32, requires_grad=True)
    v = torch.randn(1, 10)
    net.zero_grad()
    out = net(input)
    out.backward(v)
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for p in net.parameters())

    def of_params(*values):
        return torch.func.functional_call(net, dict(zip(names, values)), (input.detach(),))

    _, by_params = torch.autograd.functional.vjp(of_params, params, v)
    for name, p, want in zip(names, net.parameters(), by_params):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7, msg=name)
    assert net.conv1.bias.grad.abs().sum() > 0
    _, by_input = torch.autograd.functional.vjp(lambda x: net(x), input.detach(), v)
    torch.testing.assert_close(input.grad, by_input, rtol=1e-5, atol=1e-7)
    jacobian = torch.autograd.functional.jacobian(lambda x: net(x), input.detach())  # (1, 10, 1, 1, 32, 32)
    torch.testing.assert_close(input.grad, torch.einsum("bo,boxyzw->xyzw", v, jacobian), rtol=1e-4, atol=1e-6)
    # not the plain sum of the outputs' gradients: v weights them
    net.zero_grad()
    net(input.detach()).sum().backward()
    assert not torch.allclose(net.conv1.bias.grad, by_params[1])


def test_three_channel_lenet_shapes(one_thread):
    """The notes' "常用网络节点": ``nn.Conv2d(3, 6, 5)``, ``nn.MaxPool2d(2, 2)``, ``Linear(16 * 5 * 5, 120)``."""
    net = lenet.Net3()
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size) == (3, 6, (5, 5))
    assert (net.pool.kernel_size, net.pool.stride) == (2, 2)
    assert (net.fc1.in_features, net.fc1.out_features) == (16 * 5 * 5, 120)
    x = torch.randn(4, 3, 32, 32)
    shapes = []
    for layer in (net.conv1, net.pool, net.conv2, net.pool):
        x = layer(x) if layer is net.pool else torch.relu(layer(x))
        shapes.append(tuple(x.shape))
    assert shapes == [(4, 6, 28, 28), (4, 6, 14, 14), (4, 16, 10, 10), (4, 16, 5, 5)]
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    with pytest.raises(RuntimeError):
        net(torch.randn(4, 1, 32, 32))  # one channel: the workload's Net, not this one
    step = lenet.lenet3_trainer(seed=0)
    (images, labels), = lenet.lenet3_batches(batch_size=8, batches=1)
    first = step(images, labels)
    for _ in range(5):
        last = step(images, labels)
    assert last < first  # the recommended loop trains it

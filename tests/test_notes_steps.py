"""The notes' own steps beyond training: the confusion matrix, the dead class, LeNet's one-sample
check, ``print(net)`` and ``net.parameters()``, the regression's ``.data.numpy()`` predictions and
the GPU recipe's ``torch.device`` / ``.to(device)`` idiom (on the CPU here, on cuda:0 where there is one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import torchloops as W
from workloads import classification, lenet
from torchloops.measurement.runner import build


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


NET_PRINTED = """Net(
  (conv1): Conv2d(1, 6, kernel_size=(3, 3), stride=(1, 1))
  (conv2): Conv2d(6, 16, kernel_size=(3, 3), stride=(1, 1))
  (fc1): Linear(in_features=576, out_features=120, bias=True)
  (fc2): Linear(in_features=120, out_features=84, bias=True)
  (fc3): Linear(in_features=84, out_features=10, bias=True)
)
"""


def test_print_net_shows_the_layers_of_init(capsys):
    """"神经网络": ``print(net) # 会打印出 __init__ 中定义的 nn 函数``: the modules ``__init__`` defines,
    in order; the functional ``F.relu`` / ``F.max_pool2d`` of ``forward`` do not show."""
    net = lenet.Net()
    print(net)
    assert capsys.readouterr().out == NET_PRINTED


def test_net_parameters_is_a_generator_of_parameters():
    """"神经网络": ``net.parameters() # 这是一个 generator，每个元素是一个 Parameter 类型，这个类型和 tensor 很像``
    and ``[params.size() for params in net.parameters()]``."""
    import types

    net = lenet.Net()
    params = net.parameters()
    assert isinstance(params, types.GeneratorType)
    first = next(params)
    assert type(first) is nn.Parameter and isinstance(first, torch.Tensor) and first.requires_grad
    assert len(list(params)) == 9 and list(params) == []  # consumed once, then empty
    assert [params.size() for params in net.parameters()] == [
        torch.Size([6, 1, 3, 3]), torch.Size([6]), torch.Size([16, 6, 3, 3]), torch.Size([16]),
        torch.Size([120, 576]), torch.Size([120]), torch.Size([84, 120]), torch.Size([84]),
        torch.Size([10, 84]), torch.Size([10])]


def test_regression_predictions_by_data_numpy(one_thread):
    """"案例：回归模型", the last line: ``y_hat = my_model(X_test).data.numpy()``: a float32 array of
    the predictions, without the graph (``.numpy()`` alone refuses a tensor that requires grad),
    sharing the output's memory; its test MSE is the suite's metric of the same run."""
    trainer, batcher, plan, split = build(W.configure("regression", "as_written", "cpu", 0, steps=80))
    for index in range(len(plan)):
        for batch in batcher.epoch(index):
            trainer.step(*batch)
    my_model, X_test = trainer.module, split.X_test
    out = my_model(X_test)
    with pytest.raises(RuntimeError, match="requires grad"):
        out.numpy()
    y_hat = out.data.numpy()
    assert isinstance(y_hat, np.ndarray) and y_hat.dtype == np.float32 and y_hat.shape == (200, 1)
    with torch.no_grad():
        np.testing.assert_array_equal(y_hat, my_model(X_test).numpy())
    y_hat[0, 0] += 1.0
    assert out[0, 0].item() == y_hat[0, 0]  # .data.numpy() is a view of the output, not a copy
    y_hat[0, 0] -= 1.0
    record = W.run(W.configure("regression", "module", "cpu", 0, steps=80))
    mse = float(np.mean((y_hat - split.y_test.numpy()) ** 2))
    assert mse == pytest.approx(record.metric_value, rel=1e-5)


def test_the_notes_device_idiom(one_thread):
    """"案例：分类模型", 注解: ``device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")``,
    ``model.to(device)``, ``mytensor = my_tensor.to(device)``, ``model = nn.DataParallel(model)``.
    Here on the CPU: ``.to(device)`` returns the tensor itself (no copy), and DataParallel without a
    GPU calls the module; on a GPU machine the same lines run on cuda:0."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = classification.MyNet()
    assert model.to(device) is model  # in place: the notes do not reassign the model
    assert all(p.device == device for p in model.parameters())
    my_tensor = torch.randn(8, 10)
    mytensor = my_tensor.to(device)
    assert mytensor.device == device and torch.equal(mytensor.cpu(), my_tensor)
    assert (mytensor is my_tensor) == (device.type == "cpu")  # a copy only when it moves
    expected = model(mytensor)
    model = nn.DataParallel(model)
    assert isinstance(model.module, classification.MyNet)
    torch.testing.assert_close(model(mytensor), expected)

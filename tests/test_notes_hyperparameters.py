"""Each workload's documented hyper-parameters pinned to the values the notes print.

Every value below is followed by the notes' line it comes from (in each workload's section:
"案例：分类模型", "案例：回归模型", "神经网络", "从raw建立神经网络"), or marked as the suite's
choice where the notes give none.  A drift (a changed learning rate, a data argument, a layer
width, an epoch count) fails here, loudly, instead of surfacing (or not) as a convergence test
that happens to pass.  ``docs/workloads.md`` has the same table in prose.
"""

from __future__ import annotations

import pytest
import torch
from sklearn import datasets
from torch import nn

import torchloops as W
from torchloops.core import data


@pytest.fixture
def generator_calls(monkeypatch):
    """The keyword arguments of every sklearn generator a workload's ``make_data`` calls."""
    calls = []
    for name in ("make_classification", "make_regression"):
        original = getattr(datasets, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, args, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(datasets, name, spy)
    return calls


def data_arguments(workload, calls):
    split = W.get_workload(workload).make_data(7)
    assert len(calls) == 1
    name, args, kwargs = calls[0]
    assert args == () and kwargs.pop("random_state") == 7  # seeded by the suite
    return name, kwargs, split


def shapes(model: nn.Module):
    return [tuple(p.shape) for p in model.parameters()]


def test_the_split_is_the_notes_test_size():
    assert data.TEST_SIZE == 0.2  # train_test_split(X, y, test_size=0.2)


def test_classification(generator_calls):
    wl = W.get_workload("classification")
    name, kwargs, split = data_arguments("classification", generator_calls)
    assert name == "make_classification"
    assert kwargs == dict(
        n_samples=1000,  # make_classification(n_samples=1000,
        n_features=10,  # n_features=10,
        n_informative=5,  # n_informative=5,
        n_redundant=2,  # n_redundant=2,  # 用 n_informative 线性组合出这么多个特征
        n_classes=3,  # n_classes=3,
        n_clusters_per_class=1,  # n_clusters_per_class=1,
        flip_y=0.05,  # flip_y=0.05  # 随机交换这么多比例的y，以制造噪声
    )
    assert (split.X_train.shape, split.X_test.shape) == ((800, 10), (200, 10))  # test_size=0.2
    assert split.X_train.dtype == torch.float32  # torch.tensor(X_train, dtype=torch.float)
    assert split.y_train.dtype == torch.int64  # torch.tensor(y_train, dtype=torch.long)
    net = wl.build_module()
    # self.fc1 = nn.Linear(10, 10); self.fc2 = nn.Linear(10, 3)
    assert shapes(net) == [(10, 10), (10,), (3, 10), (3,)]
    # x = F.relu(self.fc2(x)): the ReLU on the logits, as written
    assert torch.all(net(torch.randn(50, 10)) >= 0)
    assert isinstance(wl.criterion(), nn.CrossEntropyLoss)  # criterion = nn.CrossEntropyLoss()
    assert wl.optimizer.kind == "sgd"  # torch.optim.SGD(my_net.parameters(), lr=0.001, momentum=0.9)
    assert wl.optimizer.lr == 0.001  # lr=0.001
    assert wl.optimizer.momentum == 0.9  # momentum=0.9
    assert wl.optimizer.weight_decay == 0.0  # no weight_decay
    assert wl.epochs == 50  # epochs = 50
    assert wl.steps_per_epoch == 1000  # for i in range(1000):
    assert wl.batch_size is None and not wl.shuffle  # my_net(X_train_tensor): the whole training set


def test_regression(generator_calls):
    wl = W.get_workload("regression")
    name, kwargs, split = data_arguments("regression", generator_calls)
    assert name == "make_regression"
    assert kwargs == dict(
        n_samples=1000,  # datasets.make_regression(n_samples=1000,
        n_features=5,  # n_features=5,
        n_informative=3,  # n_informative=3,  # 其中，3个feature是有信息的
        n_targets=1,  # n_targets=1,  # 多少个 target
        bias=1,  # bias=1,  # 就是 intercept
        coef=True,  # coef=True,  # 为True时，会返回真实的coef值
        noise=0.001,  # noise=0.001,  # 噪声的标准差
    )
    # X.astype(np.float32): float32, as the notes; cast after the scalers, not before (the suite's order)
    assert split.X_train.dtype == split.y_train.dtype == torch.float32
    assert split.y_train.shape == (800, 1)  # y.reshape(-1, 1)
    # X_Scaler.fit_transform(X_train) / y_Scaler.fit_transform(y_train): standardised on the training rows
    assert torch.allclose(split.X_train.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(split.y_train.std(0, unbiased=False), torch.ones(1), atol=1e-5)
    # self.linear = nn.Linear(input_dim, output_dim, bias=True); MyModel(input_dim=5, output_dim=1)
    assert shapes(wl.build_module()) == [(1, 5), (1,)]
    assert isinstance(wl.criterion(), nn.MSELoss)  # criterion = nn.MSELoss()
    assert wl.optimizer.kind == "sgd" and wl.optimizer.momentum == 0.0  # torch.optim.SGD(my_model.parameters(), lr=learning_rate)
    assert wl.optimizer.lr == 0.01  # learning_rate = 0.01
    assert wl.epochs == 400  # epochs = 400
    assert wl.batch_size == 20  # batch_size = 20
    assert wl.shuffle  # DataLoader(dataset_train, batch_size=batch_size, shuffle=True)


def test_lenet():
    wl = W.get_workload("lenet")
    net = wl.build_module()
    assert shapes(net) == [
        (6, 1, 3, 3), (6,),  # self.conv1 = nn.Conv2d(1, 6, 3)
        (16, 6, 3, 3), (16,),  # self.conv2 = nn.Conv2d(6, 16, 3)
        (120, 16 * 6 * 6), (120,),  # self.fc1 = nn.Linear(16 * 6 * 6, 120)
        (84, 120), (84,),  # self.fc2 = nn.Linear(120, 84)
        (10, 84), (10,),  # self.fc3 = nn.Linear(84, 10)
    ]
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)  # input = torch.randn(1, 1, 32, 32)
    assert wl.optimizer.kind == "sgd" and wl.optimizer.momentum == 0.0  # optimizer = optim.SGD(net.parameters(), lr=0.01)
    assert wl.optimizer.lr == 0.01  # lr=0.01
    # The suite's choices (the notes train nothing here; docs/workloads.md):
    assert isinstance(wl.criterion(), nn.CrossEntropyLoss)  # suite's (the notes' one-sample check: nn.MSELoss())
    assert wl.epochs == 30  # suite's
    assert wl.batch_size == 32 and wl.shuffle  # suite's
    split = wl.make_data(0)
    assert split.X_train.shape[1:] == (1, 32, 32)  # suite's: load_digits upsampled to 1x32x32
    assert abs(float(split.X_train.mean())) < 1e-4  # suite's: normalised on the training pixels


def _mlp_data(generator_calls, workload):
    name, kwargs, split = data_arguments(workload, generator_calls)
    assert name == "make_regression"
    assert kwargs == dict(
        n_samples=1000,  # datasets.make_regression(n_samples=1000,
        n_features=5,  # n_features=5,
        n_informative=5,  # n_informative=5,
        n_targets=1,  # n_targets=1,
        bias=0,  # bias=0,  # 就是 intercept
        coef=True,  # coef=True,  # 为True时，会返回真实的coef值
        noise=0.001,  # noise=0.001,  # 噪声的标准差
    )
    # The notes train on all 1000 rows; the held-out 20 % is the suite's choice (docs/workloads.md)
    assert split.X_train.shape == (800, 5)
    return split


def test_mlp_sgd(generator_calls):
    wl = W.get_workload("mlp_sgd")
    split = _mlp_data(generator_calls, "mlp_sgd")
    assert split.X_train.dtype == torch.float64  # x_tensor = torch.tensor(X_transform,dtype=float)
    assert wl.dtype == torch.float64
    # input_size, hidden_size, output_size = x_tensor.shape[1], 128, 1
    assert shapes(wl.build_module()) == [(128, 5), (128,), (1, 128), (1,)]
    params = W.initial_parameters(wl, 0)
    # weights1 = torch.randn((input_size, hidden_size), dtype=float, requires_grad=True): std 1
    assert 0.8 < float(params["fc1.weight"].std()) < 1.2 and 0.8 < float(params["fc1.bias"].std()) < 1.2
    # hidden = torch.relu(hidden)
    assert wl.build_sequential()[1].__class__ is nn.ReLU
    y_hat, y = torch.randn(7, 1, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64)
    # loss = torch.mean((y_hat - y_tensor) ** 2)
    assert torch.equal(wl.raw_loss(y_hat, y), torch.mean((y_hat - y) ** 2))
    assert wl.optimizer.kind == "sgd" and wl.optimizer.momentum == 0.0  # weights1.data.add_(-learning_rate * ...)
    assert wl.optimizer.lr == 0.01  # learning_rate = 0.01
    assert wl.epochs == 10_000 and wl.batch_size is None  # for i in range(10000): full batch


def test_mlp_adam(generator_calls):
    wl = W.get_workload("mlp_adam")
    split = _mlp_data(generator_calls, "mlp_adam")
    # xx = torch.tensor(x_tensor[start:end], dtype=torch.float, requires_grad=True)
    assert split.X_train.dtype == torch.float32
    seq = wl.build_sequential()
    # torch.nn.Sequential(torch.nn.Linear(input_size, hidden_size), torch.nn.Sigmoid(), torch.nn.Linear(hidden_size, output_size))
    assert [type(m) for m in seq] == [nn.Linear, nn.Sigmoid, nn.Linear]
    assert shapes(seq) == [(128, 5), (128,), (1, 128), (1,)]
    criterion = wl.criterion()
    assert isinstance(criterion, nn.MSELoss) and criterion.reduction == "mean"  # torch.nn.MSELoss(reduction='mean')
    assert wl.optimizer.kind == "adam"  # torch.optim.Adam(my_nn.parameters(), lr=0.001)
    assert wl.optimizer.lr == 0.001  # lr=0.001
    assert wl.epochs == 1000  # for i in range(1000):
    assert wl.batch_size == 116  # input_size, hidden_size, output_size, batch_size = ..., 128, 1, 116
    assert not wl.shuffle  # for start in range(0, len(x_tensor), batch_size): in order


@pytest.mark.parametrize("informative, bias", [(3, 1), (5, 0)])  # regression; the "from raw" MLPs
def test_coef_true_draws_the_same_X_and_y(informative, bias):
    """The notes' ``X, y, coef = make_regression(..., coef=True)``: asking for the true coefficients
    draws nothing more, so X and y are those of ``coef=False`` (the workloads discard ``coef``)."""
    kwargs = dict(n_samples=1000, n_features=5, n_informative=informative, n_targets=1, bias=bias, noise=0.001,
                  random_state=7)
    X, y, coef = datasets.make_regression(coef=True, **kwargs)
    X_plain, y_plain = datasets.make_regression(**kwargs)
    assert (X == X_plain).all() and (y == y_plain).all()
    assert (coef != 0).sum() == informative  # the coefficients are really there, and unused

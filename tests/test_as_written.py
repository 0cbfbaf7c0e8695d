"""``as_written``: each workload's loop as the notes write it, habits included.

The equivalence tests (``test_equivalence.py``, ``test_ddp.py``, ``test_checkpoint.py``) show
that the habits change the cost, never the trajectory.  Here: that each habit is really there
(so that what ``as_written`` costs is what the notes' program costs), that the notes' reports
run at the notes' intervals with their output captured, and that each loop names its note.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch

import torchloops as W
from conftest import WORKLOADS, needs_placement
from workloads import lenet
from torchloops.core import notes_loop
from torchloops.measurement.runner import build

SECTIONS = {  # the note's section each as-written loop comes from
    "classification": "案例：分类模型",
    "regression": "案例：回归模型",
    "lenet": "神经网络",
    "mlp_sgd": "方法1",
    "mlp_adam": "方法2",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def built(workload, steps, **kwargs):
    return build(W.configure(workload, "as_written", "cpu", 0, steps=steps, **kwargs))


def train(trainer, batcher, plan):
    for index in range(len(plan)):
        for batch in batcher.epoch(index):
            trainer.step(*batch)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_workload_has_its_notes_loop(workload):
    notes = W.get_workload(workload).as_written
    assert notes is not None and SECTIONS[workload] in notes.section and notes.habits
    trainer, batcher, _plan, _split = built(workload, 1)
    assert trainer.loop is batcher.loop  # the trainer and its batcher share the notes' loop state
    assert isinstance(batcher, trainer.batcher)
    assert type(trainer).__module__ == f"workloads.{workload}"  # written next to the model


# The notes' statements each loop's step must contain, verbatim (up to the suite's `self.`).
STATEMENTS = {
    "classification": ["optimizer.zero_grad()", "y_hat = my_net(X_train_tensor)",
                       "criterion(y_hat, y_train_tensor)", "optimizer.step()", "if loop.last and loop.epoch % 2 == 0:",
                       "loss.item()"],
    "regression": ["optimizer.zero_grad()", "outputs = my_model(X_train_batch)", "criterion(outputs, y_train_batch)",
                   "optimizer.step()", "loop.epoch % 50 == 0", "with torch.no_grad():"],
    "lenet": ["optimizer.zero_grad()", "output = net(input)", "loss = criterion(output, target)", "optimizer.step()"],
    "mlp_sgd": ["hidden = x_tensor.mm(weights1) + biases1", "hidden = torch.relu(hidden)",
                "y_hat = hidden.mm(weights2) + biases2", "loss = torch.mean((y_hat - y_tensor) ** 2)",
                "loss.data.numpy()", "if i % 1000 == 0:", "print('loss:', loss",
                "weights1.data.add_(-learning_rate * weights1.grad.data)", "biases2.grad.data.zero_()"],
    "mlp_adam": ["y_hat = my_nn(xx)", "cost(y_hat, yy)", "optimizer.zero_grad()", "retain_graph=True",
                 "optimizer.step()", "batch_loss.append(", "loss.data", "if i % 100 == 0:",
                 "print(i, np.mean(self.batch_loss)"],
}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_step_reads_as_the_notes_loop(workload):
    trainer, _b, _p, _s = built(workload, 1)
    source = inspect.getsource(type(trainer).step)
    for statement in STATEMENTS[workload]:
        assert statement in source, statement
    order = [source.index(s) for s in STATEMENTS[workload] if source.count(s) == 1]
    if workload != "mlp_adam":
        assert order == sorted(order)  # in the notes' order


def test_classification_recreates_its_tensors_from_numpy_every_step_and_reports_every_2_epochs():
    trainer, batcher, plan, split = built("classification", 1001)
    seen = []
    step = trainer.step

    def spy(x, y, *rest):
        seen.append((x.data_ptr(), x.dtype, y.dtype))
        return step(x, y, *rest)

    trainer.step = spy
    train(trainer, batcher, plan)
    assert len(seen) == 1001 and (seen[0][1], seen[0][2]) == (torch.float32, torch.int64)
    # a new tensor per step: never the training tensor itself, never one kept from a step before
    assert split.X_train.data_ptr() not in {p for p, _, _ in seen}
    assert isinstance(batcher.X, np.ndarray) and batcher.X.dtype == np.float64  # sklearn's float64
    # after epoch 0 (step 1000): one report, the test loss of the model at that step
    lines = trainer.loop.out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch = 0, loss on train ")
    reference = W.run(W.configure("classification", "module", steps=1000))
    test_loss = float(lines[0].rsplit(" ", 1)[1])
    assert test_loss == pytest.approx(reference.test_loss, abs=1e-5)


def test_regression_is_fed_by_one_dataloader_and_reports_every_50_epochs():
    trainer, batcher, plan, _split = built("regression", 45)
    assert isinstance(batcher.dataloader_train, torch.utils.data.DataLoader)
    assert batcher.dataloader_test.batch_size == 40  # built as in the notes, never used
    loaders = {id(batcher.dataloader_train)}
    train(trainer, batcher, plan)
    loaders.add(id(batcher.dataloader_train))
    assert len(loaders) == 1
    lines = trainer.loop.out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 0, loss_train = ")  # after epoch 0 only (40 steps)
    record = W.run(W.configure("regression", "module", steps=40))
    assert float(lines[0].rsplit(" ", 1)[1]) == pytest.approx(record.test_loss, abs=1e-5)


def test_mlp_sgd_appends_numpy_losses_prints_every_1000_steps_and_updates_through_data():
    trainer, batcher, plan, split = built("mlp_sgd", 1001)
    before = [t.data_ptr() for t in (trainer.weights1, trainer.biases1, trainer.weights2, trainer.biases2)]
    assert trainer.weights1.shape == (5, 128) and trainer.weights2.shape == (128, 1)  # the notes' layout
    train(trainer, batcher, plan)
    assert len(trainer.losses) == 1001 and all(isinstance(v, np.ndarray) for v in trainer.losses)
    lines = trainer.loop.out.getvalue().splitlines()
    assert [line.split("(")[0] for line in lines] == ["loss: tensor", "loss: tensor"]  # i = 0 and i = 1000
    assert "grad_fn=<MeanBackward0>" in lines[0]
    after = [t.data_ptr() for t in (trainer.weights1, trainer.biases1, trainer.weights2, trainer.biases2)]
    assert after == before and all(t.grad.abs().sum() == 0 for t in (trainer.weights1, trainer.biases2))
    # the full batch is the training tensors themselves, as the notes use x_tensor
    xb, _yb = next(iter(batcher.epoch(0)))
    assert xb is split.X_train


def test_mlp_adam_rewraps_each_batch_with_grad_zeroes_after_forward_and_retains_the_graph():
    trainer, batcher, plan, split = built("mlp_adam", 16)
    calls = []
    model_forward = trainer.model.forward
    trainer.model.forward = lambda x: (calls.append("forward"), model_forward(x))[1]
    zero_grad = trainer.optimizer.zero_grad
    trainer.optimizer.zero_grad = lambda *a, **k: (calls.append("zero_grad"), zero_grad(*a, **k))[1]
    original = torch.Tensor.backward
    retained, batches = [], []

    def spy(self, *args, **kwargs):
        calls.append("backward")
        retained.append(kwargs.get("retain_graph"))
        return original(self, *args, **kwargs)

    torch.Tensor.backward = spy
    try:
        for index in range(len(plan)):
            for xx, yy in batcher.epoch(index):
                batches.append((xx, yy))
                trainer.step(xx, yy)
    finally:
        torch.Tensor.backward = original
    assert calls[:3] == ["forward", "zero_grad", "backward"] and retained == [True] * 16
    xx, yy = batches[0]
    assert xx.requires_grad and yy.requires_grad and xx.is_leaf and xx.grad is not None and yy.grad is not None
    assert xx.dtype == yy.dtype == torch.float32 and batcher.x_tensor.dtype == torch.float64
    assert isinstance(trainer.model, torch.nn.Sequential)  # my_nn = torch.nn.Sequential(...)
    # 16 steps = 2 epochs of 7 batches and 2 steps: one print per finished epoch, losses at i = 0
    lines = trainer.loop.out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1"]
    assert len(trainer.losses) == 1 and len(trainer.batch_loss) == 2
    assert all(isinstance(v, np.ndarray) for v in trainer.batch_loss)


def test_lenet_says_it_is_the_recommended_loop():
    notes = W.get_workload("lenet").as_written
    assert "recommended" in notes.section and "the notes train no LeNet" in notes.section


# The notes' ``Net.forward`` and ``num_flat_features`` ("神经网络"), line for line, in order.
NOTES_NET = [
    "x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))",
    "x = F.max_pool2d(F.relu(self.conv2(x)), 2)",
    "x = x.view(-1, self.num_flat_features(x))",
    "x = F.relu(self.fc1(x))",
    "x = F.relu(self.fc2(x))",
    "x = self.fc3(x)",
    "return x",
    "def num_flat_features(self, x):",
    "size = x.size()[1:]  # all dimensions except the batch dimension",
    "num_features = 1",
    "for s in size:",
    "num_features *= s",
    "return num_features",
]


def in_order(lines, wanted):
    """Whether ``wanted`` are lines of ``lines``, in that order."""
    rest = iter(lines)
    return all(any(line == w for line in rest) for w in wanted)


def test_lenet_as_written_runs_the_notes_own_net(monkeypatch):
    """The as-written LeNet is the notes' ``Net``: its class, its source line for line, and its
    ``num_flat_features`` called by every forward; the other styles keep the suite's ``LeNet``."""
    trainer, batcher, plan, _split = built("lenet", 2)
    assert type(trainer.module) is lenet.Net  # exactly: not the suite's LeNet, a subclass of it
    source = [line.strip() for line in inspect.getsource(lenet.Net).splitlines()]
    assert in_order(source, NOTES_NET)
    assert not in_order(source, ["x = torch.flatten(x, 1)"])
    calls = []
    count = lenet.Net.num_flat_features
    monkeypatch.setattr(lenet.Net, "num_flat_features", lambda self, x: calls.append(tuple(x.shape)) or count(self, x))
    train(trainer, batcher, plan)
    assert calls == [(32, 16, 6, 6)] * 2  # one call per forward, on the pooled (batch, 16, 6, 6)
    module, *_ = build(W.configure("lenet", "module", "cpu", 0, steps=1))
    assert type(module.module) is lenet.LeNet


def test_a_batcher_pairs_with_the_trainer_built_with_it():
    """Runs built one after the other (as interleaving does) each get their own loop state."""
    a = built("mlp_adam", 8)
    b = built("regression", 8)
    assert a[0].loop is a[1].loop and b[0].loop is b[1].loop and a[0].loop is not b[0].loop
    # a batcher made alone (no trainer just built): classification's numpy re-creation
    alone = W.STYLES.get("as_written").make_batcher(a[3], a[2])
    assert isinstance(alone, notes_loop.NumpyEveryStep)


def test_cuda_graph_says_per_workload_why_as_written_is_not_captured():
    why = W.PLACEMENTS.get("cuda_graph").applies_to(W.STYLES.get("as_written"))
    assert not why.ok
    for workload in WORKLOADS:
        assert re.search(rf"\b{workload}\b", why.reason), workload
    assert "retain_graph=True" in why.reason and "loss.data.numpy()" in why.reason


def test_as_written_output_is_never_printed(capsys):
    W.run(W.configure("mlp_sgd", "as_written", steps=3))
    W.run(W.configure("mlp_adam", "as_written", steps=8))
    captured = capsys.readouterr()
    assert captured.out == "" and "copy construct" not in captured.err


def rows_and_sizes(batches):
    """The rows of an epoch's ``(X, y)`` batches as a sorted list (a multiset), and the batch sizes."""
    batches = list(batches)
    rows = torch.cat([torch.cat([xb, yb], 1) for xb, yb in batches]).tolist()
    return sorted(map(tuple, rows)), [len(xb) for xb, _ in batches]


def test_the_notes_shuffled_dataloader_yields_the_rows_of_the_suites_epoch():
    """"案例：回归模型": ``DataLoader(dataset_train, batch_size=batch_size, shuffle=True)`` as written,
    against the suite's seeded batch sampler (``NotesDataLoader``): every epoch the same multiset of
    rows (each training row once), in batches of the same sizes; only the order differs."""
    _trainer, batcher, plan, split = built("regression", 80)  # two epochs of 40 batches
    torch.manual_seed(0)
    dataloader_train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.X_train, split.y_train),
                                                   batch_size=20, shuffle=True)
    for index in range(2):
        suite, notes = list(batcher.epoch(index)), list(dataloader_train)
        (suite_rows, suite_sizes), (notes_rows, notes_sizes) = rows_and_sizes(suite), rows_and_sizes(notes)
        assert suite_sizes == notes_sizes == [20] * 40
        assert suite_rows == notes_rows and len(set(suite_rows)) == 800
        assert not torch.equal(suite[0][0], notes[0][0])  # another draw of the order


@pytest.mark.parametrize("workload, method", [("classification", "to"), ("mlp_sgd", "cpu"), ("mlp_adam", "cpu")])
def test_the_gpu_paths_of_the_as_written_loops_on_the_cpu_device(workload, method, monkeypatch):
    """The as-written loops' paths for a GPU, forced on the CPU device: classification's
    ``.to(device)`` after each re-creation from numpy, and the ``.cpu()`` before method 1's and
    method 2's ``loss.data.numpy()``.  Each runs once a step and gives the host path's losses."""

    def losses(trainer, batcher, plan):
        return [float(trainer.step(*b)) for index in range(len(plan)) for b in batcher.epoch(index)]

    expected = losses(*built(workload, 12)[:3])
    trainer, batcher, plan, _split = built(workload, 12)
    trainer.on_host = False  # method 1 and 2: loss.data.cpu().numpy()
    if isinstance(batcher, notes_loop.NumpyEveryStep):
        batcher.on_host = False  # classification: X_train_tensor.to(device), y_train_tensor.to(device)
    calls, original = [], getattr(torch.Tensor, method)
    monkeypatch.setattr(torch.Tensor, method, lambda self, *a, **k: (calls.append(method), original(self, *a, **k))[1])
    assert losses(trainer, batcher, plan) == expected
    assert len(calls) >= (24 if method == "to" else 12)
    if workload != "classification":
        kept = trainer.losses if workload == "mlp_sgd" else trainer.batch_loss  # 12 steps, 5 after mlp_adam's epoch
        assert len(kept) in (12, 5) and all(isinstance(v, np.ndarray) for v in kept)


@needs_placement("cuda")
@pytest.mark.parametrize("workload", ["classification", "mlp_sgd", "mlp_adam"])
def test_the_as_written_loops_on_the_notes_cuda_device(workload):
    """On a GPU: the notes' ``device`` is cuda:0, the batches (classification's re-created every
    step) and the parameters live there, the losses kept as numpy come back through ``.cpu()``."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    trainer, batcher, plan, _split = build(W.configure(workload, "as_written", "cuda", 0, steps=8))
    xb, yb = next(iter(batcher.epoch(0)))
    assert xb.device == yb.device == device and not trainer.on_host
    trainer.step(xb, yb)
    params = [trainer.weights1] if workload == "mlp_sgd" else list(trainer.module.parameters())
    assert all(p.device == device for p in params)
    if workload != "classification":
        kept = trainer.losses if workload == "mlp_sgd" else trainer.batch_loss
        assert len(kept) == 1 and isinstance(kept[0], np.ndarray)

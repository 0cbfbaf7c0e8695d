"""LeNet (the notes' "neural network" section, the official PyTorch tutorial's ``Net``).

The notes feed one random 1x1x32x32 image and an ``MSELoss`` against a random
target: :func:`one_sample_step` keeps that as a documented check.  To train it on
a real task the suite uses sklearn's bundled ``load_digits`` (8x8 images of 10
digits, no download), pixels scaled to [0, 1], each pixel repeated 4x4 to
32x32 (nearest-neighbour upsampling), 80/20 split, then normalised with the mean and
standard deviation of the training pixels; ``CrossEntropyLoss`` and the
notes' ``SGD(lr=0.01)``.  The notes give no loop length: the suite chooses
batches of 32, shuffled, for 30 epochs (45 steps each).  The data, its
normalisation, the loss, the epochs and the batch size are the suite's choices; the
notes train nothing here, so the ``as_written`` loop (:class:`AsWritten`) is the notes'
recommended optimizer loop, on the notes' own :class:`Net`; the other styles' model is
:class:`LeNet` (the same layers and values, the suite's flatten).
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
from torchloops.core.gradients import cross_entropy_with_grad_t, linear_backward, relu_backward
from torchloops.core.losses import accuracy, raw_cross_entropy
from torchloops.core.notes_loop import AsWrittenModuleTrainer, SlicedAsWritten, as_written_module
from torchloops.core.registry import AsWritten as Notes, Metric, OptimizerSpec, Peer, Workload, register_workload


def make_data(seed: int):
    digits = datasets.load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, scale_factor=4, mode="nearest")  # 8x8 -> 32x32
    X_train, X_test, y_train, y_test = split(images.numpy(), digits.target, seed)
    # One mean and one standard deviation over the training pixels (as torchvision's
    # MNIST Normalize): plain SGD at lr=0.01 leaves the initial plateau far sooner.
    mean, std = X_train.mean(), X_train.std()
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    return to_split(X_train, X_test, y_train, y_test, torch.float32, torch.int64)


class Net(nn.Module):
    """The notes' ``Net`` (the official tutorial's), as printed, ``num_flat_features`` included:
    the model of the ``as_written`` style and of the notes' one-sample check."""

    def __init__(self):
        super(Net, self).__init__()
        # 1 input image channel, 6 output channels, 3x3 square convolution
        # kernel
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        # an affine operation: y = Wx + b
        self.fc1 = nn.Linear(16 * 6 * 6, 120)  # 6*6 from image dimension
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        # Max pooling over a (2, 2) window
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        # If the size is a square you can only specify a single number
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x

    def num_flat_features(self, x):
        size = x.size()[1:]  # all dimensions except the batch dimension
        num_features = 1
        for s in size:
            num_features *= s
        return num_features


class LeNet(Net):
    """The suite's ``Net`` (``build_module``: the ``module``, ``dataloader`` and ``tuned`` styles'
    model): the notes' layers, flattened with ``torch.flatten(x, 1)`` instead of the notes'
    ``x.view(-1, self.num_flat_features(x))`` (a Python loop over the sizes every call).  The
    same outputs and gradients, bit for bit (``tests/test_notes_steps.py``)."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_sequential() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 6 * 6, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def raw_forward(params, x):
    c1w, c1b, c2w, c2b, w1, b1, w2, b2, w3, b3 = params
    x = F.max_pool2d(torch.relu(F.conv2d(x, c1w, c1b)), 2)
    x = F.max_pool2d(torch.relu(F.conv2d(x, c2w, c2b)), 2)
    x = x.reshape(x.shape[0], -1)
    x = torch.relu(x.mm(w1.t()) + b1)
    x = torch.relu(x.mm(w2.t()) + b2)
    return x.mm(w3.t()) + b3


_aten = torch.ops.aten


def _conv_forward(x, weight, bias):
    """``conv2d(x, weight, bias)`` (3x3, stride 1, no padding) by ATen's im2col + matmul kernel
    (``_slow_conv2d_forward``): for conv1's single input channel it measured ~2x faster than
    oneDNN's (mkldnn) kernel at 1 thread, with bitwise the same output.  Elsewhere (CUDA):
    ``conv2d`` (cuDNN)."""
    if x.device.type != "cpu":
        return F.conv2d(x, weight, bias)
    return _aten._slow_conv2d_forward(x, weight, [3, 3], bias, [1, 1], [0, 0])


def _conv_backward(grad, x, weight, need_input: bool):
    """The backward of a 3x3 / stride 1 / unpadded ``conv2d``: ``(dx or None, dweight, dbias)``,
    by ATen's im2col kernel (``_slow_conv2d_backward``, which autograd itself calls when oneDNN
    is off): faster than oneDNN's ``convolution_backward`` for these few channels.  The first
    layer asks for no input gradient (``need_input=False``): the batch needs none.  Elsewhere
    (CUDA): ``convolution_backward``, the kernel autograd calls there."""
    mask = [need_input, True, True]
    if x.device.type != "cpu":
        return _aten.convolution_backward(grad, x, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                          mask)
    return _aten._slow_conv2d_backward.output_mask(grad, x, weight, [3, 3], [1, 1], [0, 0], mask)


def _pool_backward(grad, x, indices):
    """``max_pool2d(x, 2)``: the gradient goes back to the arg-max of each window (the first
    one where a window ties, as autograd does; a mask ``x == max`` would send it to every tied
    element, and the upsampled digits tie often: ~half of conv1's positive windows at seed 0)."""
    return _aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)


def fused_grads(params, x, y):
    """LeNet forward keeping what the backward needs (pooled outputs, pooling arg-max
    indices), then the chain rule layer by layer, top to bottom.

    Max-pool and ReLU commute (both monotone, and the arg-max of a window with a positive
    maximum is the same before and after the ReLU; a window whose maximum is <= 0 passes no
    gradient either way), so each ReLU runs on the 4x smaller pooled tensor, and so does its
    backward: the same gradients as ``pool(relu(conv))``, bit for bit."""
    c1w, c1b, c2w, c2b, w1, b1, w2, b2, w3, b3 = params
    o1 = _conv_forward(x, c1w, c1b)
    q1, i1 = F.max_pool2d(o1, 2, return_indices=True)
    p1 = torch.relu(q1)
    o2 = F.conv2d(p1, c2w, c2b)  # oneDNN: faster than im2col for 6 input channels
    q2, i2 = F.max_pool2d(o2, 2, return_indices=True)
    p2 = torch.relu(q2)
    flat = p2.reshape(p2.shape[0], -1)
    h1 = torch.relu(torch.addmm(b1, flat, w1.t()))
    h2 = torch.relu(torch.addmm(b2, h1, w2.t()))
    loss, d_logits_t = cross_entropy_with_grad_t(torch.addmm(b3.unsqueeze(1), w3, h2.t()), y)  # class-major
    d_h2, g_w3, g_b3 = d_logits_t.t().mm(w3), d_logits_t.mm(h2), d_logits_t.sum(1)
    d_h1, g_w2, g_b2 = linear_backward(relu_backward(d_h2, h2), h1, w2)
    d_flat, g_w1, g_b1 = linear_backward(relu_backward(d_h1, h1), flat, w1)
    d_o2 = _pool_backward(relu_backward(d_flat.view_as(p2), p2), o2, i2)
    d_p1, g_c2w, g_c2b = _conv_backward(d_o2, p1, c2w, need_input=True)
    d_o1 = _pool_backward(relu_backward(d_p1, p1), o1, i1)
    _, g_c1w, g_c1b = _conv_backward(d_o1, x, c1w, need_input=False)
    return loss, [g_c1w, g_c1b, g_c2w, g_c2b, g_w1, g_b1, g_w2, g_b2, g_w3, g_b3]


def one_sample_step(seed: int = 0, lr: float = 0.01):
    """The notes' check, step by step: one random image, ``MSELoss`` against a random
    target, ``backward``, then the manual update ``f.data.sub_(f.grad.data * lr)``.

    Returns ``(net, loss_before, loss_after, conv1_bias_grad)``.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net()
    image = torch.randn(1, 1, 32, 32, generator=generator)
    target = torch.randn(1, 10, generator=generator)
    criterion = nn.MSELoss()
    net.zero_grad()
    loss = criterion(net(image), target)
    loss.backward()
    bias_grad = net.conv1.bias.grad.clone()
    for f in net.parameters():
        f.data.sub_(f.grad.data * lr)
    with torch.no_grad():
        after = criterion(net(image), target)
    return net, loss.item(), after.item(), bias_grad


class AsWritten(AsWrittenModuleTrainer):
    """The notes give no training loop for LeNet: this is the one they recommend ("但是推荐这么做"),
    statement for statement, fed the suite's batches by manual slicing::

        optimizer.zero_grad()   # zero the gradient buffers
        output = net(input)
        loss = criterion(output, target)
        loss.backward()
        optimizer.step()    # Does the update

    Its model is the notes' :class:`Net`, whose forward flattens with
    ``x.view(-1, self.num_flat_features(x))`` (a Python loop over the sizes every call): that is
    its only difference from the ``module`` style's step (:class:`LeNet`, ``torch.flatten``)."""

    batcher = SlicedAsWritten

    def step(self, input, target, weight=None):
        optimizer, net, criterion = self.optimizer, self.model, self.criterion
        optimizer.zero_grad()  # zero the gradient buffers
        output = net(input)
        loss = criterion(output, target)
        self.reduction.backward(loss, weight)
        optimizer.step()  # Does the update
        return self.reduction.loss(loss, weight)


class Net3(nn.Module):
    """The notes' "常用网络节点" line as a network: ``nn.Conv2d(3, 6, 5)``, ``nn.MaxPool2d(2, 2)``,
    ``Linear(16 * 5 * 5, 120)``: the three-channel 32x32 LeNet of the PyTorch CIFAR-10 tutorial
    (3x32x32 -> conv 5x5 -> 6x28x28 -> pool -> 6x14x14 -> conv 5x5 -> 16x10x10 -> pool -> 16x5x5)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet3_batches(batch_size: int = 32, batches: int = 4, seed: int = 0):
    """Synthetic 3x32x32 batches and labels (no download): ``[(images, labels), ...]``."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, 32, 32, generator=generator),
             torch.randint(0, 10, (batch_size,), generator=generator)) for _ in range(batches)]


def lenet3_trainer(seed: int = 0, lr: float = 0.01):
    """``Net3`` trained by the notes' recommended optimizer loop (``optim.SGD(lr=0.01)``;
    ``zero_grad``, forward, loss, ``backward``, ``step``) with the suite's ``CrossEntropyLoss``
    (the notes' criterion there is ``MSELoss`` against a random target): returns
    ``step(images, labels) -> loss``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net3()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)

    def step(input, target):
        optimizer.zero_grad()
        loss = criterion(net(input), target)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step.net = net
    return step


def digits_pixels(x: torch.Tensor):
    """The 8x8 pixels behind LeNet's 32x32 input (every 4th pixel of the upsampled image): what a
    user would fit a scikit-learn estimator on (``load_digits``' 64 pixels, no information lost)."""
    return x[:, 0, ::4, ::4].reshape(x.shape[0], -1).cpu().numpy()


WORKLOAD = register_workload(
    Workload(
        name="lenet",
        reference=Path(__file__).parent / "reference" / "lenet.json",
        count_steps=(4, 2),  # a step takes ~2 s of CPU under callgrind (oneDNN convolutions)
        summary="LeNet-5 (conv 6, conv 16, 120-84-10); CrossEntropy; SGD(lr=0.01); batch 32",
        # data: sklearn load_digits (1797 8x8 images) upsampled to 32x32, split 0.2
        make_data=make_data,
        build_module=LeNet,
        build_sequential=build_sequential,
        raw_forward=raw_forward,
        raw_loss=raw_cross_entropy,
        fused_grads=fused_grads,
        criterion=nn.CrossEntropyLoss,
        optimizer=OptimizerSpec("sgd", lr=0.01),
        epochs=30,
        batch_size=32,
        n_train=1437,
        shuffle=True,
        as_written=Notes(
            section="神经网络, Backprop (the recommended torch.optim loop; the notes train no LeNet)",
            trainer=as_written_module(AsWritten, lambda w: Net()),
            habits="the notes' own Net (its forward flattens with x.view(-1, self.num_flat_features(x))); "
                   "otherwise none: the recommended loop is the module style's step",
        ),
        metric=Metric("test_accuracy", higher_is_better=True, fn=accuracy, is_classification=True),
        peers=(
            Peer("sk:LogisticRegression", lambda seed: LogisticRegression(max_iter=1000, random_state=seed)),
            Peer("sk:MLPClassifier", lambda seed: MLPClassifier(max_iter=1000, random_state=seed)),
        ),
        peer_features=digits_pixels,
        # How the target was chosen: 25 seeds (0-24), raw style, torch 2.13.0 CPU. Shipped
        # (workloads/reference/lenet.json, each run stopped at the target): all 25 reach 0.90 test
        # accuracy (median step 585, slowest 1,080). Not shipped: the full-length sweep (30 epochs,
        # 1,350 steps) the target was chosen from; its runs ended at 0.92-0.97 but for one late
        # spike of plain SGD (seed 11 fell from 0.94 to 0.76 in its last epoch), and 0.90 is 0.02
        # below the lowest end of the other 24. Not shipped either: without normalising the
        # pixels, 3 of 25 seeds were still on the initial plateau after 30 epochs.
        target=0.9,
    )
)

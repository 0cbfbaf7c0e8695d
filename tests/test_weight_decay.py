"""``--weight-decay X``: torch.optim's L2 penalty on every workload and style, validated and recorded.

The notes: ``optimizer=optim.Adam(net.parameters(),weight_decay =0.0001) # weight_decay 是 L2 penalty``.
Every style's trajectory with a non-zero value is checked against ``module`` in
``test_equivalence.py``; here: the notes' own line against the hand-written optimizers, the
command line, and the run record.
"""

from __future__ import annotations

import json

import pytest
import torch

import torchloops as W
from workloads import lenet
from torchloops.cli import build_parser, main
from torchloops.commands.run import _rank_argv
from torchloops.core.optimizers import FusedAdam, FusedSGD, RawAdam, RawSGD
from torchloops.core.registry import OptimizerSpec

NOTES_WEIGHT_DECAY = 0.0001  # optim.Adam(net.parameters(),weight_decay =0.0001)


pytestmark = pytest.mark.usefixtures("one_thread")


def _lenet_steps(make, steps=6, seed=0):
    """``steps`` updates of LeNet's parameters by ``make(params)`` on fixed random gradients."""
    torch.manual_seed(seed)
    params = [p.detach().clone() for p in lenet.Net().parameters()]
    grads = [[torch.randn_like(p) for p in params] for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_the_notes_weight_decay_by_hand_equals_torch_optim(kind):
    """Raw (hand-written) and fused (_foreach) optimizers apply ``grad + weight_decay * param``
    before the moments, as ``torch.optim`` does: the notes' Adam(weight_decay=0.0001) value."""
    spec = OptimizerSpec(kind, lr=0.001 if kind == "adam" else 0.01, momentum=0.0 if kind == "adam" else 0.9,
                         weight_decay=NOTES_WEIGHT_DECAY)
    start, grads = _lenet_steps(None)

    def run_torch(weight_decay):
        params = [p.clone().requires_grad_() for p in start]
        cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
        extra = {} if kind == "adam" else {"momentum": spec.momentum}
        opt = cls(params, lr=spec.lr, weight_decay=weight_decay, **extra)
        for g in grads:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        return [p.detach() for p in params]

    raw_params = [p.clone().requires_grad_() for p in start]
    raw = (RawAdam(raw_params, lr=spec.lr, weight_decay=spec.weight_decay) if kind == "adam"
           else RawSGD(raw_params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay))
    flat = torch.cat([p.reshape(-1) for p in start])
    fused = (FusedAdam if kind == "adam" else FusedSGD)([flat], spec)
    for g in grads:
        for p, gi in zip(raw_params, g):
            p.grad = gi.clone()
        raw()
        fused([torch.cat([gi.reshape(-1) for gi in g])])
    want, plain = run_torch(NOTES_WEIGHT_DECAY), run_torch(0.0)
    got_fused = list(flat.split([p.numel() for p in start]))
    for w, r, f, p in zip(want, raw_params, got_fused, plain):
        torch.testing.assert_close(r.detach(), w, rtol=1e-5, atol=1e-7)  # raw: p.add_(-lr * g)
        torch.testing.assert_close(f.view_as(w), w, rtol=1e-5, atol=1e-7)
    # and the penalty did something the comparison can see
    assert max((w - p).abs().max().item() for w, p in zip(want, plain)) > 1e-6


def test_weight_decay_is_recorded(tmp_path, capsys):
    out = tmp_path / "runs.json"
    assert main(["run", "mlp_adam", "--style", "raw", "--steps", "3", "--weight-decay", "1e-4", "--quiet",
                 "--json", str(out)]) == 0
    record = json.loads(out.read_text())[0]
    assert record["weight_decay"] == 1e-4 and record["optimizer"] == "Adam(lr=0.001, weight_decay=0.0001)"
    assert main(["run", "regression", "--style", "fused", "--steps", "3", "--quiet", "--json", str(out)]) == 0
    record = json.loads(out.read_text())[0]
    assert record["weight_decay"] == 0.0 and record["optimizer"] == "SGD(lr=0.01)"


BAD = ["-1", "-1e-9", "nan", "inf", "-inf", "1e400", "abc", ""]


@pytest.mark.parametrize("value", BAD)
def test_a_bad_weight_decay_is_one_line_and_exit_2(tmp_path, capsys, value):
    out = tmp_path / "runs.json"
    assert main(["run", "regression", "--steps", "2", "--weight-decay", value, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torchloops: error: ") and "weight" in err.replace("_", "-")
    if value not in ("-1e-9", "-inf"):  # argparse reads those two as options: "expected one argument"
        assert "finite number >= 0" in err  # names what is valid, whatever the text
    assert not out.exists()


@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf"), True, "0.1", 10**400])
def test_configure_refuses_a_bad_weight_decay(value):
    with pytest.raises(W.UsageError, match="--weight-decay must be a finite number >= 0"):
        W.configure("regression", "module", steps=2, weight_decay=value)


def test_ddp_ranks_get_the_weight_decay():
    args = build_parser().parse_args(["run", "regression", "--device", "ddp", "--nproc", "2",
                                      "--weight-decay", "0.0001"])
    argv = _rank_argv(args, "/tmp/x.json")
    assert argv[argv.index("--weight-decay") + 1] == "0.0001"
    assert "--weight-decay" not in _rank_argv(build_parser().parse_args(["run", "regression"]), "/tmp/x.json")

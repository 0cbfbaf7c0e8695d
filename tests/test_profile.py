"""``torchloops profile``: the ATen table, the share outside ATen, FLOPs from FlopCounterMode,
the Chrome trace, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

import torchloops as W
from torchloops.measurement import flops
from torchloops.cli import main
from torchloops.measurement.profiling import profile


@pytest.mark.parametrize("style", W.STYLES.names())
def test_profile_every_style_on_cpu(style, capsys):
    assert main(["profile", "regression", "--style", style, "--steps", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"regression / {style} on cpu: 3 profiled steps after 1 warm-up")
    assert "aten::" in out and "outside ATen kernels: " in out
    flops_line = next(line for line in out.splitlines() if line.startswith("FLOPs/step (FlopCounterMode, one real step): "))
    value = float(flops_line.rsplit(": ", 1)[1])
    if style == "as_written":  # the notes' loop may print its whole-set losses inside the counted step
        assert value >= 400
    else:
        assert value == 400


@pytest.mark.parametrize("workload", W.workload_names())
def test_profile_every_workload_fused(workload):
    result = profile(workload, "fused", steps=2, warmup=1)
    assert result.ops and all(op.name.startswith("aten::") for op in result.ops)
    assert [op.self_s for op in result.ops] == sorted((op.self_s for op in result.ops), reverse=True)
    assert 0 < result.aten_s <= result.profiled_step_s * 1.05
    assert 0 <= result.outside_share <= 1 and result.outside_share == pytest.approx(1 - result.aten_share, abs=1e-9)
    assert result.flops > 0


def test_trace_is_chrome_trace_json(tmp_path, capsys):
    path = tmp_path / "trace.json"
    assert main(["profile", "classification", "--style", "fused", "--steps", "2", "--warmup", "1",
                 "--trace", str(path)]) == 0
    assert f"Chrome trace: {path}" in capsys.readouterr().out
    document = json.loads(path.read_text())
    events = document["traceEvents"]
    assert isinstance(events, list) and events
    names = {e.get("name") for e in events}
    assert "torchloops.step" in names and any(str(n).startswith("aten::") for n in names)
    assert all("ph" in e for e in events)
    assert not [p for p in tmp_path.iterdir() if p.name != "trace.json"]  # no temporary file left


def test_gz_trace_is_gzipped_chrome_trace(tmp_path):
    import gzip

    path = tmp_path / "trace.json.gz"
    assert main(["profile", "regression", "--steps", "2", "--warmup", "1", "--trace", str(path)]) == 0
    with gzip.open(path, "rt") as handle:
        assert json.load(handle)["traceEvents"]


def test_flops_are_flop_counter_mode_for_regression():
    """Linear(5, 1), batches of 20, module style: forward ``addmm`` 2*20*5*1 = 200; autograd's
    backward computes the weight gradient (``mm`` 2*1*20*5 = 200) but no input gradient
    (the batch needs none); MSE, the bias gradient and SGD are elementwise: not counted."""
    wl = W.get_workload("regression")
    assert flops.step_flops(wl, 0) == 400
    # classification, full batch of 800: fc1 forward + weight gradient, fc2 forward + both gradients
    expected = 2 * (2 * 800 * 10 * 10) + 3 * (2 * 800 * 10 * 3)
    assert flops.step_flops(W.get_workload("classification"), 0) == expected


def test_flop_counter_respects_convolution_output_mask():
    x, w = torch.randn(2, 1, 8, 8), torch.randn(3, 1, 3, 3)
    grad = torch.ones(2, 3, 6, 6)
    one = 2 * 2 * 3 * 9 * 6 * 6  # multiply-adds of one product, as two FLOPs

    def backward(mask):
        return torch.ops.aten.convolution_backward(grad, x, w, [3], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)

    assert flops.count_flops(torch.nn.functional.conv2d, x, w) == one
    assert flops.count_flops(backward, [True, True, True]) == 2 * one
    assert flops.count_flops(backward, [False, True, True]) == one
    assert flops.count_flops(torch.relu, x) == 0  # elementwise: not counted


def test_im2col_convolution_kernels_count_as_convolution():
    """The fused LeNet step calls ATen's im2col kernels (``_slow_conv2d_*``) directly: they
    count what ``convolution`` / ``convolution_backward`` count for the same shapes and mask."""
    aten = torch.ops.aten
    x, w, grad = torch.randn(2, 6, 15, 15), torch.randn(16, 6, 3, 3), torch.randn(2, 16, 13, 13)
    assert flops.count_flops(aten._slow_conv2d_forward, x, w, [3, 3], None, [1, 1], [0, 0]) == flops.count_flops(
        torch.nn.functional.conv2d, x, w)
    for mask in ([True, True, True], [False, True, True], [True, False, False]):
        slow = flops.count_flops(aten._slow_conv2d_backward.output_mask, grad, x, w, [3, 3], [1, 1], [0, 0], mask)
        onednn = flops.count_flops(aten.convolution_backward, grad, x, w, [16], [1, 1], [0, 0], [1, 1], False,
                                   [0, 0], 1, mask)
        assert slow == onednn


def test_fused_step_counts_the_module_steps_flops():
    """Same products in every style: the fused LeNet step (im2col kernels, no input gradient for
    conv1) counts what autograd's module step counts on the same batch."""
    from torchloops.measurement.runner import build, configure

    counts = []
    for style in ("module", "fused"):
        trainer, batcher, _plan, _split = build(configure("lenet", style, "cpu", 0, steps=1))
        counts.append(flops.count_step_flops(trainer, next(iter(batcher.epoch(0)))))
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["profile", "nope"], "invalid choice"),
        (["profile", "regression", "--style", "nope"], "invalid choice"),
        (["profile", "regression", "--steps", "0"], "positive integer"),
        (["profile", "regression", "--warmup", "-1"], "non-negative integer"),
        (["profile", "regression", "--steps", "99999999"], "lower --steps or --warmup"),
        (["profile", "regression", "--trace", "/nonexistent-folder/t.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err


def test_other_placement_is_one_skipped_line(capsys):
    assert main(["profile", "regression", "--device", "cuda"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "skipped: " in out

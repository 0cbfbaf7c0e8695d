"""Checkpoints (:mod:`torchloops.measurement.checkpoint`): the notes' step 5, ``state_dict`` save -> load gives
the same model, loaded with ``weights_only=True``, for every style (``as_written`` included, trained
with the notes' ``weight_decay=0.0001``); optimizer state; ``--save``; and every checkpoint that
is not this workload's, or could run code, refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchloops as W
from conftest import STYLES
from torchloops.measurement import checkpoint as C
from torchloops.cli import main


@pytest.mark.parametrize("style", STYLES)
def test_state_dict_round_trip_gives_identical_predictions(tmp_path, workload, style):
    wl = W.get_workload(workload)
    path = tmp_path / "model.pt"
    seen = {}

    def save(trainer):
        seen["module"] = getattr(trainer, "module", None) is not None  # an nn.Module trainer
        seen["state"] = trainer.state_dict()
        torch.save(seen["state"], path)
        with torch.no_grad():
            seen["predictions"] = trainer.predict(seen["X"])

    config = W.configure(workload, style, steps=30, seed=5, weight_decay=1e-4)
    seen["X"] = config.data().X_test
    W.run(config, trainer_hook=save)

    restored = wl.build_module().to(wl.dtype)
    state = torch.load(path, weights_only=True)
    assert list(state) == [n for n, _ in restored.named_parameters()]
    restored.load_state_dict(state)
    with torch.no_grad():
        predictions = restored(seen["X"])
    assert all(torch.equal(state[k], seen["state"][k]) for k in state)
    if seen["module"]:
        assert torch.equal(predictions, seen["predictions"])
    else:  # raw tensors' forward is written differently (x.mm(w.t()) + b): equal up to rounding
        torch.testing.assert_close(predictions, seen["predictions"], rtol=1e-5, atol=1e-6)
    # trained, not the initial parameters
    initial = W.initial_parameters(wl, 5)
    assert not all(torch.equal(state[k], initial[k]) for k in state)


class _WouldRunCode:
    """Unpickling this calls exec(): it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_checkpoint_with_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    params = W.initial_parameters(W.get_workload("regression"), 0)
    torch.save({"format": C.FORMAT, "workload": "regression", "dtype": "float32",
                "parameters": params, "payload": _WouldRunCode(marker)}, path)
    with pytest.raises(C.CheckpointError, match="refused checkpoint .*could run code.*GLOBAL exec"):
        C.load(str(path), "regression")
    assert not marker.exists()
    # the CLI-facing error is one line
    with pytest.raises(W.UsageError) as info:
        C.load_module(str(path), "regression")
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # control: the file really runs code when unpickled without weights_only
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("style", ["raw", "module"])
def test_checkpoint_round_trip_with_optimizer_state(tmp_path, style):
    path = tmp_path / "m.pt"
    kept = {}
    config = W.configure("classification", style, steps=30, seed=3)
    W.run(config, trainer_hook=lambda t: (C.save_trainer(str(path), "classification", t), kept.update(t=t)))
    payload = C.load(str(path), "classification")
    model = C.load_module(str(path), "classification")
    with torch.no_grad():
        torch.testing.assert_close(model(config.data().X_test), kept["t"].predict(config.data().X_test))
    if style == "module":
        assert payload["optimizer"]["state"]  # momentum buffers
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        C.load_optimizer(str(path), "classification", optimizer)
        assert torch.equal(optimizer.state_dict()["state"][0]["momentum_buffer"],
                           kept["t"].optimizer.state_dict()["state"][0]["momentum_buffer"])
    else:
        assert payload["optimizer"] is None


def test_checkpoint_of_another_workload_shape_or_dtype_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    C.save(str(path), "regression", W.initial_parameters(W.get_workload("regression"), 0))
    with pytest.raises(C.CheckpointError, match="is for workload 'regression', not 'lenet'"):
        C.load(str(path), "lenet")
    # mlp_sgd (float64) and mlp_adam (float32) share names and shapes: dtype decides
    C.save(str(path), "mlp_sgd", W.initial_parameters(W.get_workload("mlp_sgd"), 0))
    payload = torch.load(path, weights_only=True)
    payload["workload"] = "mlp_adam"
    torch.save(payload, path)
    with pytest.raises(C.CheckpointError, match="dtype float64; mlp_adam trains in float32"):
        C.load(str(path), "mlp_adam")
    payload["dtype"] = "float32"
    torch.save(payload, path)
    with pytest.raises(C.CheckpointError, match="parameter .* has dtype float64; mlp_adam trains in float32"):
        C.load(str(path), "mlp_adam")
    # a shape that is not the model's
    C.save(str(path), "regression", W.initial_parameters(W.get_workload("regression"), 0))
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["parameters"]))
    payload["parameters"][name] = torch.zeros(3, 7)
    torch.save(payload, path)
    with pytest.raises(C.CheckpointError, match=r"has shape \(3, 7\); regression's model has \(1, 5\)"):
        C.load(str(path), "regression")
    with pytest.raises(C.CheckpointError, match="not a torchloops checkpoint"):
        torch.save({"weight": torch.zeros(1)}, path)
        C.load(str(path), "regression")
    path.write_bytes(b"garbage, not a zip")
    with pytest.raises(C.CheckpointError, match="cannot read checkpoint .*not a file written by torch.save"):
        C.load(str(path), "regression")
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(C.CheckpointError, match="cannot read checkpoint"):
        C.load(str(path), "regression")


def test_cli_save(tmp_path, capsys):
    path = tmp_path / "m.pt"
    assert main(["run", "regression", "--style", "sequential", "--steps", "20", "--quiet", "--save", str(path)]) == 0
    assert C.load(str(path), "regression")["info"] == {"style": "sequential", "seed": 0, "steps": 20}
    saved = path.read_bytes()
    # a diverged run does not replace a good checkpoint
    assert main(["run", "regression", "--style", "raw", "--lr", "1e6", "--quiet", "--save", str(path)]) == 1
    assert path.read_bytes() == saved
    capsys.readouterr()
    assert main(["run", "regression", "--save", str(path)]) == 2
    assert capsys.readouterr().err.strip() == ("torchloops: error: --save keeps one model: "
                                               "name one workload and one --style")

"""The notes' step 5: ``state_dict`` save -> load gives the same model, loaded with ``weights_only=True``.

Every style, ``as_written`` (each workload's notes' loop) included, trained with the notes'
``weight_decay=0.0001`` (``--weight-decay``)."""

from __future__ import annotations

import pytest
import torch

import workloads as W
from conftest import STYLES


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

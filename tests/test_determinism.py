"""The same seed twice gives bitwise-equal losses; another seed does not."""

from __future__ import annotations

import pytest

from conftest import STYLES, short_run


@pytest.mark.parametrize("style", STYLES)
def test_same_seed_is_bitwise_equal(workload, style):
    first = short_run(workload, style, 40, seed=7)
    second = short_run(workload, style, 40, seed=7)
    assert first.step_losses == second.step_losses
    assert first.test_loss == second.test_loss
    untimed = lambda r: [{k: v for k, v in h.items() if k != "time_s"} for h in r.history]  # noqa: E731
    assert untimed(first) == untimed(second)


def test_another_seed_differs(workload):
    assert short_run(workload, "module", 5, seed=1).step_losses != short_run(workload, "module", 5, seed=2).step_losses

"""configure validates and resolves; it builds nothing: the data is made when first needed."""

from __future__ import annotations

import dataclasses

import pytest

import torchloops as W
from conftest import WORKLOADS
from torchloops.core.data import MAX_SEED


def test_configure_makes_no_data():
    config = W.configure("lenet", "module", "cpu", 3, steps=5)
    assert config.split is None
    split = config.data()
    assert config.split is split and config.data() is split  # made once, then kept


@pytest.mark.parametrize("name", WORKLOADS)
def test_each_workload_declares_its_training_rows(name):
    config = W.configure(name, "module", "cpu", 0, steps=1)
    assert config.data().n_train == config.workload.n_train


def test_a_wrong_declaration_is_caught_when_the_data_is_made():
    config = W.configure("regression", "module", "cpu", 0, steps=1)
    declared = config.workload.n_train - 1
    wrong = dataclasses.replace(config, workload=dataclasses.replace(config.workload, n_train=declared))
    with pytest.raises(ValueError, match=f"n_train={declared}"):
        wrong.data()


def test_batch_size_is_checked_against_the_declared_rows():
    rows = W.get_workload("regression").n_train
    with pytest.raises(W.UsageError, match=f"valid: 1 to {rows}"):
        W.configure("regression", "module", "cpu", 0, batch_size=rows + 1)
    assert W.configure("regression", "module", "cpu", 0, batch_size=rows).batch_size == rows


@pytest.mark.parametrize("option,keyword,value,rule", [
    ("--steps", "steps", 0, "must be a positive integer"),
    ("--lr", "lr", -1.0, "must be a positive finite number"),
    ("--seed", "seed", -1, f"must be an integer from 0 to {MAX_SEED}"),
    ("--threads", "threads", 0, "must be a positive integer"),
])
def test_the_command_line_and_configure_apply_one_rule(capsys, option, keyword, value, rule):
    """One validation layer: the CLI's argument type and configure refuse the same value with the
    same rule (torchloops.core.validation), each naming the option."""
    from torchloops.cli import main

    with pytest.raises(W.UsageError, match=f"--{keyword} {rule}"):
        W.configure("regression", "module", "cpu", **{keyword: value})
    assert main(["run", "regression", option, str(value), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert option in err and rule in err and err.count("\n") == 1

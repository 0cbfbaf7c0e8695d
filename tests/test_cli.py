"""The command line: tables, JSON records, and bad input as one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import torchloops as W
from torchloops.cli import main

BAD_INPUTS = [
    (["run", "nosuch"], "invalid choice"),
    (["run", "regression", "--style", "fancy"], "invalid choice"),
    (["run", "regression", "--device", "tpu"], "invalid choice"),
    (["run", "regression", "--epochs", "0"], "positive integer"),
    (["run", "regression", "--epochs", "-3"], "positive integer"),
    (["run", "regression", "--epochs", "ten"], "positive integer"),
    (["run", "regression", "--epochs", "1.5"], "positive integer"),
    (["run", "regression", "--steps", "0"], "positive integer"),
    (["run", "regression", "--steps", "x"], "positive integer"),
    (["run", "regression", "--lr", "0"], "positive finite number"),
    (["run", "regression", "--lr", "-0.1"], "positive finite number"),
    (["run", "regression", "--lr", "nan"], "positive finite number"),
    (["run", "regression", "--lr", "inf"], "positive finite number"),
    (["run", "regression", "--lr", "fast"], "positive finite number"),
    # negative numbers argparse's own pattern misses (it took them for options: "expected one argument")
    (["run", "regression", "--lr", "-inf"], "must be a positive finite number, got '-inf'"),
    (["run", "regression", "--lr", "-1e-3"], "must be a positive finite number, got '-1e-3'"),
    (["run", "regression", "--weight-decay", "-1e-9"], "must be a finite number >= 0, got '-1e-9'"),
    (["run", "regression", "--weight-decay", "-.5e1"], "must be a finite number >= 0, got '-.5e1'"),
    (["compile", "regression", "--steps", "-1e3"], "positive integer, got '-1e3'"),
    (["run", "regression", "--batch-size", "0"], "positive integer"),
    (["run", "regression", "--batch-size", "801"], "valid: 1 to 800"),
    (["run", "all", "--batch-size", "1000"], "valid: 1 to 800"),
    (["run", "regression", "--threads", "0"], "positive integer"),
    (["run", "regression", "--seed", "-1"], "integer from 0"),
    (["compile", "nosuch"], "unknown workload 'nosuch'; valid: classification"),
    (["compile", "regression", "--backend", "nosuch"], "not a torch.compile backend; valid:"),
    (["compile", "regression", "--steps", "0"], "positive integer"),
    (["compile", "lenet", "--hidden", "8"], "--hidden applies to classification, mlp_sgd, mlp_adam, not lenet"),
    (["compile", "mlp_sgd", "--rows", "10", "--hidden", "8"], "not allowed with argument --rows"),
    (["compile", "regression", "--device", "ddp"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[" ".join(a) or "nothing" for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_json(tmp_path, capsys, argv, expected):
    out = tmp_path / "out.json"
    argv = argv + (["--json", str(out)] if argv[:1] in (["run"], ["compile"]) else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torchloops: error: ")
    assert expected in err
    assert "Traceback" not in err
    assert not out.exists()


def test_invalid_choice_names_what_is_valid(capsys):
    assert main(["run", "regression", "--style", "fancy"]) == 2
    err = capsys.readouterr().err
    for style in W.STYLES.names():
        assert style in err


def test_json_path_problems_are_caught_before_running(tmp_path, capsys):
    assert main(["run", "regression", "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "regression", "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_run_writes_records_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "records.json"
    assert main(["run", "regression", "--steps", "80", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    records = json.loads(out.read_text())
    assert [r["style"] for r in records] == W.STYLES.names()
    for record in records:
        assert record["steps"] == 80 and record["epochs"] == 2.0
        assert record["threads"] == 1 and record["device"] == "cpu"
        for key in ("final_train_loss", "test_loss", "metric_value", "step_time_median_s", "train_time_s"):
            assert record[key] > 0
        assert record["history"][-1]["step"] == 80
        assert f"regression  {record['style']}" in table
    assert not list(tmp_path.glob(".torchloops-*"))  # no temporary file left behind


def test_unavailable_placement_is_skipped_with_reason(capsys):
    if W.PLACEMENTS.get("cuda").availability().ok:
        pytest.skip("CUDA is available here")
    assert main(["run", "regression", "--device", "cuda", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped:") == len(W.STYLES.names())
    assert "CUDA" in out


def test_list_names_everything_and_says_why_unavailable(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in W.workload_names() + W.STYLES.names() + W.PLACEMENTS.names():
        assert name in out
    for placement in W.PLACEMENTS.entries.values():
        avail = placement.availability()
        assert (avail.reason in out) if not avail.ok else ("available" in out)


def test_console_module_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torchloops", "run", "regression", "--lr", "abc"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "torchloops: error: argument --lr: must be a positive finite number, got 'abc'"
    ]


def test_a_closed_stdout_ends_quietly():
    """``torchloops list | head -1``: the reader goes away; no BrokenPipeError traceback, status 141."""
    proc = subprocess.Popen([sys.executable, "-m", "torchloops", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child writes: every write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err

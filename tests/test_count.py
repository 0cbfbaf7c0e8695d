"""``torchloops count``: bad input, counting unavailable, a failing child, the callgrind parser,
the counting child's own path (run natively: valgrind's requests are no-ops on the bare CPU),
and one real count under valgrind (~30 s; TORCHLOOPS_REAL_COUNT=0 skips it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from torchloops import UsageError
from torchloops.measurement import counting
from torchloops.cli import main

PYTHON_BIN = os.path.dirname(sys.executable)


def _no_child(*_args, **_kwargs):
    raise AssertionError("the valgrind child must not start")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["count", "nosuch"], "invalid choice"),
        (["count", "mlp_adam", "--style", "fancy"], "invalid choice"),
        (["count", "mlp_adam", "--steps", "0"], "positive integer"),
        (["count", "mlp_adam", "--steps", "many"], "positive integer"),
        (["count", "mlp_adam", "--warmup", "-1"], "non-negative integer"),
        (["count", "mlp_adam", "--seed", "-1"], "integer from 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(counting, "_run_child", _no_child)
    out = tmp_path / "counts.json"
    assert main([*argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing/counts.json", "."])
def test_unwritable_json_is_exit_2_before_anything_runs(where, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(counting, "_run_child", _no_child)
    assert main(["count", "mlp_adam", "--style", "module", "--json", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json" in err, err
    assert list(tmp_path.iterdir()) == []


def test_api_rejects_bad_input():
    with pytest.raises(UsageError, match="unknown style 'fancy'"):
        counting.count([("mlp_adam", "fancy")], steps=2)
    with pytest.raises(UsageError, match="--steps must be a positive integer"):
        counting.count([("mlp_adam", "module")], steps=0)


def test_valgrind_unavailable_exits_3_one_line_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(counting, "valgrind_problem", lambda: "valgrind is not installed (simulated)")
    monkeypatch.setattr(counting, "_run_child", _no_child)
    out = tmp_path / "counts.json"
    assert main(["count", "mlp_adam", "--style", "module", "--json", str(out)]) == counting.EXIT_UNAVAILABLE == 3
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "valgrind is not installed (simulated)" in captured.err
    assert captured.out == "" and not out.exists()


def test_no_valgrind_on_path_exits_3(tmp_path):
    """The whole command in a fresh process whose PATH holds no valgrind: no traceback."""
    out = tmp_path / "counts.json"
    env = dict(os.environ, PATH=PYTHON_BIN)
    done = subprocess.run([sys.executable, "-m", "torchloops", "count", "mlp_adam", "--style", "module",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and "valgrind is not installed" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == "" and not out.exists()


def test_valgrind_problem_names_the_reason(monkeypatch):
    monkeypatch.setattr(counting.shutil, "which", lambda _name: None)
    assert "valgrind is not installed" in counting.valgrind_problem()
    monkeypatch.setattr(counting.shutil, "which", lambda _name: "/usr/bin/valgrind")
    monkeypatch.setattr(torch._C, "_valgrind_supported_platform", lambda: False)
    assert "_valgrind_supported_platform() is False" in counting.valgrind_problem()


def _fake_valgrind(folder, body: str) -> str:
    """A ``valgrind`` on PATH that answers --version and otherwise runs ``body`` (sh)."""
    script = folder / "valgrind"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo valgrind-0.0-fake; exit 0; fi\n{body}\n')
    script.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def test_failing_child_is_one_line_exit_1_nothing_written(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", _fake_valgrind(bin_dir, 'echo "noise" >&2; echo "valgrind: fatal: out of memory" >&2; exit 7'))
    counting._VERSION.clear()
    out = tmp_path / "counts.json"
    try:
        assert main(["count", "mlp_adam", "--style", "module", "--quiet", "--json", str(out)]) == 1
    finally:
        counting._VERSION.clear()
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert "status 7" in captured.err and "valgrind: fatal: out of memory" in captured.err
    assert captured.out == "" and not out.exists()


SAMPLE = textwrap.dedent("""\
    # callgrind format
    version: 1
    creator: callgrind-3.19.0
    pid: 4242
    cmd:  python -c ...
    part: 2

    desc: I1 cache:
    desc: Timerange: Basic block 1000 - 2000
    desc: Trigger: Client Request: dump

    positions: line
    events: Ir
    summary: 163320347

    ob=(1) /usr/lib/libc.so.6
    fl=(1) ???
    fn=(1) memcpy
    0 1200

    totals: 163320347
    """)


def test_parse_callgrind_sample():
    assert counting.parse_callgrind(SAMPLE) == 163_320_347
    assert counting.dump_part(SAMPLE) == 2
    # totals only (valgrind >= 3.x), and several events: the Ir column is taken
    assert counting.parse_callgrind("events: Ir\nfn=(1) f\n0 5\ntotals: 5\n") == 5
    assert counting.parse_callgrind("events: Dr Ir\nsummary: 7 11\n") == 11
    with pytest.raises(ValueError, match="no totals"):
        counting.parse_callgrind("events: Ir\nfn=(1) f\n0 5\n")
    with pytest.raises(ValueError, match="no Ir event"):
        counting.parse_callgrind("events: Dr\ntotals: 5\n")


def test_child_runs_natively_without_sklearn(tmp_path):
    """The counting child's own path, on the bare CPU (the valgrind requests are no-ops there):
    it builds from the spec file, steps every configuration and never imports scikit-learn."""
    planned = counting.configs("mlp_adam", "all", 0, steps=3, warmup=2) + counting.configs(
        "regression", "dataloader", 1, steps=3, warmup=2)
    spec = tmp_path / "spec.pt"
    torch.save(counting._spec([(c, 3, 2) for c in planned], ()), spec)
    probe = counting._CHILD_BOOTSTRAP.replace(
        "sys.exit(counting._child_main(sys.argv[1]))",
        "status = counting._child_main(sys.argv[1])\n"
        "print('real sklearn:', any(getattr(m, '__file__', None) for n, m in sys.modules.items() "
        "if n.split('.')[0] == 'sklearn'))\n"
        "sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", probe, str(spec)], capture_output=True, text=True,
                          env=counting._child_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[:-1] == [f"counted {c.workload.name}/{c.style.name}" for c in planned]
    assert lines[-1] == "real sklearn: False"


SKIP_REAL = os.environ.get("TORCHLOOPS_REAL_COUNT") == "0"


@pytest.mark.slow
@pytest.mark.skipif(SKIP_REAL, reason="TORCHLOOPS_REAL_COUNT=0: no real count")
def test_real_count(tmp_path, capsys):
    """One real valgrind count (~30 s of one core on the 2-core machine); skipped where valgrind
    is unavailable, or with TORCHLOOPS_REAL_COUNT=0."""
    problem = counting.valgrind_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path / "counts.json"
    assert main(["count", "mlp_adam", "--style", "module", "--steps", "10", "--warmup", "5",
                 "--quiet", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "mlp_adam" in table and "instructions/step" in table
    (record,) = json.loads(out.read_text())
    for key in ("kind", "workload", "style", "device", "seed", "threads", "steps", "warmup_steps",
                "instructions_per_step", "instructions", "torch_version", "python_version", "machine",
                "valgrind_version"):
        assert key in record, key
    assert record["kind"] == "count" and record["device"] == "cpu" and record["steps"] == 10
    assert record["instructions"] == round(record["instructions_per_step"] * 10)
    # torch 2.13.0 CPU, x86-64: ~1.63 M instructions per mlp_adam x module step (docs/counting.md)
    assert 0.5e6 < record["instructions_per_step"] < 5e6, record


def _asv_training():
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import training

    return training.InstructionCounts


def test_asv_instruction_counts_skip_with_reason_where_valgrind_is_missing(monkeypatch):
    cls = _asv_training()
    monkeypatch.setattr(counting, "valgrind_problem", lambda: "valgrind is not installed (simulated)")
    monkeypatch.setattr(counting, "_run_child", _no_child)
    cache = cls().setup_cache()
    with pytest.raises(NotImplementedError, match="valgrind is not installed"):
        cls().setup(cache, "mlp_adam", "module", "cpu")


def test_asv_instruction_counts_one_valgrind_process_for_the_grid(monkeypatch):
    cls = _asv_training()
    calls = []

    def fake_child(planned, extra_imports, progress, timeout):
        calls.append([(c.workload.name, c.style.name, c.seed) for c, _steps, _warm in planned])
        return [1000 * (i + 1) * steps for i, (_c, steps, _w) in enumerate(planned)]

    monkeypatch.setattr(counting, "valgrind_problem", lambda: None)
    monkeypatch.setattr(counting, "_run_child", fake_child)
    monkeypatch.setattr(counting, "_GRID_COUNTS", {})
    cache = cls().setup_cache()
    assert len(calls) == 1 and len(calls[0]) == len(counting.configs(steps=1, warmup=0))
    bench = cls()
    bench.setup(cache, "classification", "module", "cpu")
    assert bench.track_instructions_per_step(cache, "classification", "module", "cpu") == 2000.0
    with pytest.raises(NotImplementedError, match="cpu placement only"):
        bench.setup(cache, "classification", "module", "cuda")

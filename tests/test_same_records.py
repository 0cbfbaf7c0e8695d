"""scripts/same_records.py: two runs' records equal in every field but times (issue 12's check)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from torchloops.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "same_records.py"


def _script():
    spec = importlib.util.spec_from_file_location("same_records", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(path: Path) -> list:
    argv = ["run", "regression", "--style", "raw,module", "--steps", "20", "--step-losses", "--quiet"]
    assert main([*argv, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_two_runs_differ_only_in_their_times_and_a_changed_loss_is_named(tmp_path, capsys):
    script = _script()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _records(a)
    second = _records(b)
    assert script.main([str(a), str(b)]) == 0
    second[1]["step_losses"][7] *= 1 + 1e-12
    b.write_text(json.dumps(second))
    assert script.main([str(a), str(b)]) == 1
    assert "differs: regression module cpu: step_losses" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    script = _script()
    (tmp_path / "x.json").write_text('{"not": "a list"}')
    assert script.main([str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert script.main([str(tmp_path / "missing.json"), str(tmp_path / "x.json")]) == 2
    assert script.main(["one"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err

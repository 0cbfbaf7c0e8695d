"""The helper scripts' bad input: one line naming what is valid, exit 2, before any work.

scripts/noise_study.py registers a test-only style when imported, so it runs in its own
interpreter here (one for all cases)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

NOISE_CASES = [
    (["--workloads", "nosuch"], "unknown 'nosuch'; valid: classification"),
    (["--count-processes", "0"], "must be a positive integer"),
    (["--json", "/tmp"], "is a directory"),
    (["--runs", "1", "--steps", "20"], "an interval needs at least 36"),
    (["--parts", "x"], "valid: aa, planted, separate, counts"),
    (["--json", "/proc/x/y.json"], "--json '/proc/x/y.json'"),
]


def test_noise_study_bad_input(tmp_path):
    code = ("import contextlib, io, json, sys\n"
            f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
            "import noise_study\n"
            "out = []\n"
            f"for argv in {[argv for argv, _ in NOISE_CASES]!r}:\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        try:\n"
            "            status = noise_study.main(argv)\n"
            "        except SystemExit as stop:\n"
            "            status = stop.code\n"
            "    out.append([status, err.getvalue()])\n"
            "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (argv, expected), (status, err) in zip(NOISE_CASES, results):
        assert status == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("noise_study: error: ") and expected in err, (argv, err)
    assert not (tmp_path / "results").exists()  # bad input writes nothing


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_tables():
    return _script("readme_tables")


ALONE_CASES = [
    (["--parts", "x"], "valid parts: alone, harness"),
    (["--workloads", "nosuch"], "workloads: classification"),
    (["--rounds", "0"], "must be a positive integer"),
    (["--json", "/tmp"], "is a directory"),
    (["--report", "/nonexistent/alone.json"], "is not an alone_check JSON"),
]


def test_alone_check_bad_input(capsys):
    script = _script("alone_check")
    for argv, expected in ALONE_CASES:
        assert script.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("alone_check: error: ") and expected in err, (argv, err)


def test_readme_tables_bad_input(tmp_path, capsys, monkeypatch):
    script = _readme_tables()
    monkeypatch.setattr(script, "front_table", lambda document: "table")  # the tables build ...
    monkeypatch.setattr(script, "styles_table", lambda document: "table")
    (tmp_path / "no-machine.json").write_text(json.dumps({"versions": {}}))  # ... the provenance cannot
    (tmp_path / "list.json").write_text("[]")
    for argv in ([str(tmp_path / "no-machine.json")], [str(tmp_path / "list.json")], [str(tmp_path)], []):
        assert script.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err

"""A workload is one file: examples/wine_mlp.py, copied to a folder outside the repository and
named in TORCHLOOPS_WORKLOADS, reaches every command and the tests' parametrisations without an
edit; the styles it declares nothing for are skipped everywhere with their reasons; a bad plug-in
is one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchloops.core import discovery
from torchloops.measurement.counting import valgrind_problem

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "wine_mlp.py"
NAME = "wine_mlp"
DECLARED = ("module", "sequential", "dataloader", "tuned")
SKIPPED = {"raw": "raw_forward", "as_written": "as_written", "fused": "fused_grads"}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> dict:
    """The environment of a user whose workload file lives in a folder of their own."""
    folder = tmp_path_factory.mktemp("my_workloads")
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    return dict(os.environ, **{discovery.ENVIRONMENT: str(folder / EXAMPLE.name)})


def torchloops(env: dict, *argv: str, timeout: int = 300, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchloops", *argv], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def test_list_shows_it_and_why_three_styles_do_not_apply(plugin):
    done = torchloops(plugin, "list")
    assert done.returncode == 0, done.stderr
    assert NAME in done.stdout and "classification" in done.stdout  # added to the notes' programs
    for style, field in SKIPPED.items():
        line = next(x for x in done.stdout.splitlines() if x.startswith(NAME) and f" {style} " in x)
        assert f"({field})" in line


def test_run_style_all_trains_what_it_declares_and_skips_the_rest(plugin, tmp_path):
    out = tmp_path / "records.json"
    done = torchloops(plugin, "run", NAME, "--style", "all", "--steps", "60", "--quiet", "--json", str(out))
    assert done.returncode == 0, done.stderr
    records = json.loads(out.read_text())
    assert [r["style"] for r in records] == list(DECLARED)
    assert len({r["final_train_loss"] for r in records}) == 1  # the same mathematics in every style
    for style, field in SKIPPED.items():
        assert any(style in line and "skipped" in line and field in line for line in done.stdout.splitlines())


def test_compare_and_converge_take_it(plugin, tmp_path):
    done = torchloops(plugin, "compare", NAME, "--device", "cpu", "--quiet", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "results.json").read_text())
    styles = [r["style"] for r in document["records"] if r["kind"] == "style"]
    assert styles == list(DECLARED) and all(r["reached_target"] for r in document["records"] if r["kind"] == "style")
    assert {s["style"] for s in document["skipped"]} == set(SKIPPED)
    assert document["workloads"][0]["typical_seed"] and document["workloads"][0]["seeds"] == [0]  # no reference
    done = torchloops(plugin, "converge", NAME, "--seeds", "3", "--style", "module")
    assert done.returncode == 0, done.stderr
    assert "3 of 3 seeds reach the target" in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.skipif(valgrind_problem() is not None, reason=f"no instruction counts here: {valgrind_problem()}")
def test_count_takes_it(plugin, tmp_path):
    out = tmp_path / "counts.json"
    done = torchloops(plugin, "count", NAME, "--style", "module", "--steps", "3", "--warmup", "2", "--quiet",
                      "--json", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(out.read_text())
    assert record["workload"] == NAME and record["instructions_per_step"] > 0


@pytest.mark.slow
def test_the_parametrised_tests_take_it(plugin):
    """The suite's own tests, with the plug-in loaded: the equivalence of its styles, and the
    reference tests skipping it with the reason."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", NAME,
                           "tests/test_equivalence.py", "tests/test_reference.py"],
                          capture_output=True, text=True, env=plugin, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "ships no convergence reference" in done.stdout
    assert "declares no" in done.stdout  # the styles it cannot serve: skipped, with the reason


@pytest.mark.parametrize("value, expected", [
    ("nosuch.py", "is not a Python file"),
    ("{folder}", "is not a Python file"),
    ("{broken}", "failed to load: ZeroDivisionError"),
])
def test_a_bad_plugin_is_one_line_and_exit_2(tmp_path, value, expected):
    broken = tmp_path / "broken.py"
    broken.write_text("1 / 0\n")
    env = dict(os.environ, **{discovery.ENVIRONMENT: value.format(folder=tmp_path, broken=broken)})
    done = torchloops(env, "list")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and expected in done.stderr and "Traceback" not in done.stderr


def test_a_plugin_that_misdeclares_its_rows_is_one_line_and_exit_2(tmp_path):
    """A declaration the data contradicts (``n_train``) is the user's input: one line naming the
    valid value, found when the run is built, not a traceback."""
    wrong = tmp_path / "wine_wrong.py"
    wrong.write_text(EXAMPLE.read_text().replace("n_train=142", "n_train=100").replace('"wine_mlp"', '"wine_wrong"'))
    done = torchloops(dict(os.environ, **{discovery.ENVIRONMENT: str(wrong)}), "run", "wine_wrong", "--steps", "5")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "valid: n_train=142" in done.stderr

"""The README's benchmarking recipes, exercised on this clone.

* record the current commit with asv in the current environment
  (``asv run --python=same --set-commit-hash``), compare it (``asv compare`` exits
  0 even on regressions) and publish the history as HTML (``asv publish``);
* the pytest-benchmark gate (``--benchmark-autosave`` then
  ``--benchmark-compare-fail=median:N%``) fails on a planted slowdown;
* ``asv continuous`` in a virtualenv environment with torch pinned: slow (it builds
  an environment and the project per commit), so it runs only with
  ``TORCHLOOPS_ASV_CONTINUOUS=1``.

Results go to a temporary folder, never to the repository's ``.asv/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL_BENCH = r"^tensor_ops\.AddVariants\.time_torch_add\b"
GATE_TEST = "tests/test_bench_training.py::test_bench_step[regression-raw-cpu]"


def _asv() -> str:
    exe = shutil.which("asv", path=str(BIN)) or shutil.which("asv")
    if exe is None:
        pytest.skip("asv is not installed (pip install asv)")
    return exe


def _head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")


def _env(**extra) -> dict:
    # Not an xdist worker's variables: the pytest started here is a plain run (pytest-benchmark
    # turns itself off inside xdist workers, and would neither time nor save).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _asv_config(tmp_path: Path) -> Path:
    """asv.conf.json with every output folder moved under ``tmp_path``."""
    text = (ROOT / "asv.conf.json").read_text()
    conf = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
    conf.update(
        repo=str(ROOT),
        benchmark_dir=str(ROOT / "benchmarks"),
        results_dir=str(tmp_path / "results"),
        html_dir=str(tmp_path / "html"),
        env_dir=str(tmp_path / "env"),
    )
    path = tmp_path / "asv.conf.json"
    path.write_text(json.dumps(conf, indent=1))
    return path


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("cwd", ROOT)
    kwargs.setdefault("env", _env())
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


def _machine(tmp_path: Path) -> list:
    """A machine file of our own: asv asks interactively without one."""
    machine_file = tmp_path / "asv-machine.json"
    done = _run([_asv(), "machine", "--yes", "--machine", "ci", "--config", str(_asv_config(tmp_path))],
                env=_env(HOME=str(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / ".asv-machine.json").exists()
    return ["--machine", "ci"], machine_file


@pytest.mark.slow
def test_asv_record_compare_publish(tmp_path):
    asv, head = _asv(), _head()
    config = _asv_config(tmp_path)
    env = _env(HOME=str(tmp_path))
    machine, _ = _machine(tmp_path)
    # 1. record the current commit in the current environment (needs --set-commit-hash), with
    #    its samples (--record-samples: what asv compare's Mann-Whitney test needs)
    done = _run([asv, "run", "--config", str(config), "--python=same", "--quick", "--record-samples", *machine,
                 "--set-commit-hash", head, "--bench", SMALL_BENCH], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = [p for p in (tmp_path / "results" / "ci").glob("*.json") if p.name != "machine.json"]
    assert saved and any(head[:8] in p.name for p in saved), done.stdout
    result = json.loads(saved[0].read_text())
    columns = result["result_columns"]
    (entry,) = [v for k, v in result["results"].items() if "time_torch_add" in k]
    samples = entry[columns.index("samples")]
    assert samples and any(s for s in samples if s), entry  # recorded, per parameter combination
    # 2. compare: exits 0 whatever it finds (here: the commit against itself)
    done = _run([asv, "compare", "--config", str(config), *machine, head, head], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "time_torch_add" in done.stdout or "not significantly changed" in done.stdout + done.stderr
    # 3. publish the history as static HTML
    done = _run([asv, "publish", "--config", str(config)], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "html" / "index.html").exists()
    assert list((tmp_path / "html" / "graphs").rglob("*.json"))


PLANT = textwrap.dedent(
    '''
    """Planted slowdown: the raw style's step takes FACTOR times as long (busy wait)."""
    import os
    import time

    from torchloops.execution import styles

    FACTOR = float(os.environ["TORCHLOOPS_PLANT_FACTOR"])
    _step = styles.RawTrainer.step


    def slow_step(self, *batch):
        start = time.perf_counter()
        loss = _step(self, *batch)
        end = start + FACTOR * (time.perf_counter() - start)
        while time.perf_counter() < end:
            pass
        return loss


    styles.RawTrainer.step = slow_step
    '''
)


@pytest.mark.slow
def test_pytest_benchmark_gate_fails_on_planted_slowdown(tmp_path):
    storage = tmp_path / "benchmarks"
    timed = [sys.executable, "-m", "pytest", GATE_TEST, "-q", "-p", "no:cacheprovider",
             "--benchmark-enable", f"--benchmark-storage=file://{storage}", "--benchmark-max-time=0.5"]
    done = _run(timed + ["--benchmark-autosave"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list(storage.rglob("0001_*.json"))) == 1
    (tmp_path / "plant.py").write_text(PLANT)
    env = _env(PYTHONPATH=str(tmp_path), TORCHLOOPS_PLANT_FACTOR="3.0")  # 3x: clear of the other xdist worker's load
    done = _run(timed + ["-p", "plant", "--benchmark-compare=0001", "--benchmark-compare-fail=median:25%"], env=env)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Performance has regressed" in done.stdout + done.stderr


@pytest.mark.skipif(os.environ.get("TORCHLOOPS_ASV_CONTINUOUS") != "1",
                    reason="builds a virtualenv and the project per commit; set TORCHLOOPS_ASV_CONTINUOUS=1")
def test_asv_continuous_in_virtualenv(tmp_path):
    asv, head = _asv(), _head()
    base = _run(["git", "rev-parse", "HEAD~1"]).stdout.strip() or head
    config = _asv_config(tmp_path)
    machine, _ = _machine(tmp_path)
    done = _run([asv, "continuous", "--config", str(config), *machine, "--factor", "1.25", "--quick",
                 "--bench", SMALL_BENCH, base, head], env=_env(HOME=str(tmp_path)))
    # exit status 0: no regression beyond the factor (1 would be one); anything else is a broken recipe
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert "Creating virtualenv" in done.stdout or "Installing" in done.stdout, done.stdout

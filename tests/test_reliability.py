"""A bad run never passes as a good number, and no run corrupts what earlier runs saved.

Divergence within one step, atomic result/checkpoint files under interruption
(real SIGINT/SIGTERM on a real run), ``--deterministic``, and concurrent writers.
Checkpoints themselves (``torchloops.measurement.checkpoint``): tests/test_checkpoint.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import torchloops as W
from torchloops.measurement import benchmarking as B
from torchloops.measurement import checkpoint as C
from torchloops.support import launcher, outputs
from torchloops.cli import main

from conftest import STYLES, default_sigint

REPO = Path(__file__).resolve().parent.parent
PREVIOUS = [{"previous": "run", "kept": True}]


def _tmp_files(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".torchloops-"))


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("style", STYLES)
def test_divergence_is_caught_within_one_step(style):
    # lr 1e6: the loss is infinite after a few steps; regression evaluates only every 40 steps
    config = W.configure("regression", style, lr=1e6, steps=200)
    assert config.eval_every == 40
    result = W.run(config, record_step_losses=True)
    first_bad = next(i for i, v in enumerate(result.step_losses, 1) if not math.isfinite(v))
    assert result.diverged and result.diverged_at_step == first_bad
    assert result.steps == first_bad < config.eval_every  # stopped at once, not at the next evaluation
    assert result.history[-1]["step"] == first_bad
    assert not result.reached_target


def test_finite_run_has_no_divergence_step():
    result = W.run(W.configure("regression", "raw", steps=30))
    assert not result.diverged and result.diverged_at_step is None


def test_cli_divergence_is_exit_1_one_line_and_recorded(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["run", "regression", "--style", "module", "--lr", "1e6", "--quiet", "--json", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("torchloops: error: 1 run(s) diverged")
    assert "regression/module at step" in err[0]
    [record] = json.loads(out.read_text())
    assert record["diverged"] and record["diverged_at_step"] == record["steps"] < 40
    row = next(line for line in captured.out.splitlines() if line.startswith("regression"))
    assert "DIVERGED at step" in row and " us " not in row and " ms " not in row  # no time shown


def test_benchmarks_never_report_a_time_for_a_diverged_run():
    config = W.configure("regression", "module", lr=1e6, steps=200, until_target=True)
    with pytest.raises(B.Diverged, match="diverged at step"):
        B.run_to_target(config)
    with pytest.raises(B.Diverged, match="diverged"):
        B.check_finite(W.run(W.configure("regression", "raw", lr=1e6, steps=50)))
    with pytest.raises(B.Diverged, match="warm-up"):
        B.Prepared(W.configure("mlp_sgd", "raw", lr=1e4, epochs=2)).warm_up(B.WARMUP_STEPS)
    prepared = B.Prepared(W.configure("regression", "module", lr=1e6, epochs=2))
    for _ in range(20):
        prepared.step()  # what a timer would call
    with pytest.raises(B.Diverged, match="timed"):
        prepared.check()
    B.Prepared(W.configure("regression", "module", epochs=2)).warm_up(B.WARMUP_STEPS).check()  # a sane run passes


# --------------------------------------------------------------------------- atomic writes, signals


def test_interrupted_json_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(PREVIOUS))

    def half_then_interrupt(payload, handle, **kw):
        handle.write('[{"half": ')
        handle.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.json, "dump", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_json(str(path), [{"new": 1}])
    assert json.loads(path.read_text()) == PREVIOUS
    assert _tmp_files(tmp_path) == []


def test_interrupted_checkpoint_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    params = W.initial_parameters(W.get_workload("regression"), 0)
    C.save(str(path), "regression", params)
    before = path.read_bytes()

    def half_then_interrupt(obj, handle, *a, **kw):
        handle.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(C.torch, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        C.save(str(path), "regression", params)
    assert path.read_bytes() == before
    assert _tmp_files(tmp_path) == []


def _start_long_run(folder: Path, *extra):
    """A real run of several minutes (classification, full schedule) writing to folder/r.json."""
    code = ("import sys; import torchloops.cli as c; print('ready', flush=True); "
            "sys.exit(c.main(sys.argv[1:]))")
    argv = ["run", "classification", "--style", "raw", "--quiet", "--json", str(folder / "r.json"), *extra]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig,status,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_killed_run_exits_cleanly_and_keeps_the_previous_file(tmp_path, sig, status, word):
    (tmp_path / "r.json").write_text(json.dumps(PREVIOUS))
    (tmp_path / "m.pt").write_bytes(b"previous checkpoint")
    proc = _start_long_run(tmp_path, "--save", str(tmp_path / "m.pt"))
    time.sleep(2.5)  # data, build, then well inside the 50,000-step training loop
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.strip().splitlines() == [f"torchloops: {word} ({sig.name}); files written before are unchanged"]
    assert "Traceback" not in err and out == ""
    assert json.loads((tmp_path / "r.json").read_text()) == PREVIOUS
    assert (tmp_path / "m.pt").read_bytes() == b"previous checkpoint"
    assert _tmp_files(tmp_path) == []


def test_sigterm_handler_is_restored_after_main():
    before = signal.getsignal(signal.SIGTERM)
    assert main(["list"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_importing_the_package_installs_no_signal_handler():
    """A fresh interpreter imports the package, every module of it and the CLI, with a rank's
    environment (``run --nproc`` started it): SIGINT and SIGTERM keep Python's own handlers."""
    code = ("import importlib, pkgutil, signal, torchloops, workloads\n"
            "for package in (torchloops, workloads):\n"
            "    for m in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        if m.name != 'torchloops.__main__':  # that one runs the CLI\n"
            "            importlib.import_module(m.name)\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
            "signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)")
    env = dict(os.environ, **{launcher.LAUNCHED_ENV: "1"})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          preexec_fn=default_sigint)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_rank_stopped_while_importing_torch_ends_quietly(tmp_path, sig, status):
    """A ddp rank's program (:data:`torchloops.support.launcher.RANK_MAIN`) signalled by torchrun's agent
    while it is still importing torch: the signal's status, no traceback, nothing written.
    ``-X importtime`` reports each finished import on stderr: a torch module's line means
    the rank is inside ``import torch``, past its handler's installation."""
    out = tmp_path / "r.json"
    argv = ["run", "regression", "--style", "raw", "--quiet", "--json", str(out)]
    env = dict(os.environ, **{launcher.LAUNCHED_ENV: "1"})
    proc = subprocess.Popen([sys.executable, "-X", "importtime", *launcher.rank_python_args(argv)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    try:
        for line in proc.stderr:
            if line.rstrip().split("|")[-1].strip().startswith("torch"):
                break
        else:
            pytest.fail("the rank never imported torch")
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err[-2000:]
    assert "Traceback" not in err and not out.exists()


# --------------------------------------------------------------------------- --deterministic


def test_deterministic_switch_is_on_during_the_run_and_recorded():
    seen = []
    config = W.configure("lenet", "module", steps=3, deterministic=True)
    result = W.run(config, trainer_hook=lambda t: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert seen == [True] and result.deterministic is True
    assert torch.are_deterministic_algorithms_enabled() is False  # restored afterwards
    assert W.run(W.configure("lenet", "module", steps=3)).deterministic is False


def test_cli_records_deterministic(tmp_path):
    out = tmp_path / "r.json"
    assert main(["run", "regression", "--style", "raw", "--steps", "5", "--quiet", "--deterministic",
                 "--json", str(out)]) == 0
    assert [r["deterministic"] for r in json.loads(out.read_text())] == [True]


@pytest.mark.parametrize("workload", ["lenet", "classification"])
def test_same_seed_bitwise_equal_with_and_without_deterministic(workload):
    def losses(deterministic):
        config = W.configure(workload, "module", steps=12, seed=4, deterministic=deterministic)
        result = W.run(config, record_step_losses=True)
        return result.step_losses, result.test_loss

    off, on = losses(False), losses(True)
    assert off == losses(False)
    assert on == losses(True)
    assert on == off  # CPU kernels are deterministic already: the switch changes nothing here


# --------------------------------------------------------------------------- concurrent writers


def _cli(*argv):
    return subprocess.Popen([sys.executable, "-m", "torchloops", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_processes_write_different_files_in_one_folder(tmp_path):
    procs = [_cli("run", "regression", "--style", style, "--steps", "40", "--quiet", "--json", str(tmp_path / f"{style}.json"))
             for style in ("raw", "module")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    for style in ("raw", "module"):
        [record] = json.loads((tmp_path / f"{style}.json").read_text())
        assert record["style"] == style
    assert _tmp_files(tmp_path) == []


def test_two_processes_write_the_same_file(tmp_path):
    out = tmp_path / "same.json"
    procs = [_cli("run", "regression", "--style", style, "--steps", "40", "--quiet", "--json", str(out))
             for style in ("raw", "module")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    [record] = json.loads(out.read_text())  # one complete record: the last writer's
    assert record["style"] in ("raw", "module") and record["steps"] == 40
    assert _tmp_files(tmp_path) == []


def test_many_writers_and_a_reader_never_see_a_partial_file(tmp_path):
    out = tmp_path / "r.json"
    outputs.write_json(str(out), {"writer": -1, "rows": []})
    stop, seen, errors = threading.Event(), set(), []

    def writer(n):
        for i in range(40):
            outputs.write_json(str(out), {"writer": n, "rows": list(range(2000 + i))})

    def reader():
        while not stop.is_set():
            try:
                seen.add(json.loads(out.read_text())["writer"])
            except Exception as error:  # noqa: BLE001 -- a partial file is the failure
                errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert json.loads(out.read_text())["rows"] == list(range(2039))  # a last write, complete
    assert _tmp_files(tmp_path) == []


# --------------------------------------------------------------------------- environment oddities


def test_environment_oddities_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["run", "regression", "--threads", "0"], "positive integer"),
        (["run", "regression", "--threads", "100000"], "valid: 1 to 1024"),
        (["run", "regression", "--json", str(afile / "out.json")], "is a file, not a folder"),
        (["run", "regression", "--style", "raw", "--save", str(afile / "m.pt")], "is a file, not a folder"),
        (["run", "regression", "--json", "bad\0name.json"], "not a usable file path"),
        (["run", "regression", "--json", ""], "not a usable file path"),
        (["run", "regression", "--style", "raw", "--save", str(tmp_path)], "is a directory"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (argv, err)
    if os.path.isdir("/proc"):  # os.access says root may write there; the probe finds it cannot
        assert main(["run", "regression", "--json", "/proc/out.json"]) == 2
        assert "is not writable" in capsys.readouterr().err

    def refused(**_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refused)  # a folder that refuses new entries
    assert main(["run", "regression", "--json", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not writable (Permission denied)" in err


def test_unwritable_folder_at_write_time_is_one_line(tmp_path, capsys, monkeypatch):
    # the folder became unwritable after the check (or root-squashed NFS): still one line, exit 2
    def refuse(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    assert main(["run", "regression", "--style", "raw", "--steps", "2", "--quiet",
                 "--json", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and "Permission denied" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_read_only_folder_is_refused_before_running(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["run", "regression", "--json", str(folder / "out.json")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)


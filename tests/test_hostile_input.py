"""Hostile input: arbitrary argument lists and override values never end in a traceback.

Property-based (hypothesis).  The outcome of any input is a valid run (or the
plan of one), or exit status 2 with one line on stderr.  The command-line tests
replace the training itself with a stub that records the run was reached (the
real runs are covered with tiny ``--steps`` runs below), so several hundred
examples run in seconds.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchloops as W
from torchloops.measurement import runner as runner_module
from torchloops import cli
from torchloops.commands import run as run_command

FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
TINY_RUNS = settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))


class _Planned(Exception):
    """The stub of training: the input was accepted and a run would start."""


def _stub_run(configs, **kwargs):
    assert configs and all(isinstance(config, W.RunConfig) for config in configs)
    raise _Planned()


def _stub_launch(args):
    raise _Planned()


FLAGS = ["--style", "--device", "--seed", "--epochs", "--steps", "--lr", "--batch-size", "--threads",
         "--until-target", "--nproc", "--json", "--step-losses", "--quiet", "--deterministic", "--save"]
VALUES = (W.workload_names() + W.STYLES.names() + W.PLACEMENTS.names()
          + ["all", "0", "1", "-1", "2", "3", "800", "801", "1e6", "1e-300", "1e400", "nan", "inf", "-inf",
             "0x10", "1_000", "٣", " 5 ", "", "-", "--", "out.json", "sub/out.json", "m.pt", "/", ".",
             "4294967295", "4294967296", "99999999999999999999999", "1025", "1024"])
TOKEN = st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=12),
                  st.integers().map(str), st.floats().map(repr))
COMMAND = st.one_of(st.just("run"), st.just("list"), st.text(max_size=10).filter(lambda t: t not in ("compare", "converge")))


def _outcome(argv):
    """('planned' | 'ok' | 'help' | 'usage', stderr) for ``torchloops argv`` with training stubbed out."""
    err, out = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        mp.setattr(run_command, "run_interleaved", _stub_run)
        mp.setattr(run_command, "_launch_ranks", _stub_launch)
        try:
            status = cli.main(argv)
        except _Planned:
            return "planned", err.getvalue()
        except SystemExit as done:  # -h/--help: argparse prints the help and exits 0
            assert done.code == 0, (argv, err.getvalue())
            return "help", err.getvalue()
    assert status in (0, 2), (argv, status, err.getvalue())
    return ("ok" if status == 0 else "usage"), err.getvalue()


@pytest.fixture(scope="module")
def sandbox():
    """The current folder a scratch one (relative --json/--save paths land there)."""
    mp = pytest.MonkeyPatch()
    with tempfile.TemporaryDirectory() as folder:
        mp.chdir(folder)
        yield folder
    mp.undo()


def _check(argv):
    kind, err = _outcome(argv)
    assert "Traceback" not in err, (argv, err)
    if kind == "usage":
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("torchloops"), (argv, err)
    return kind


@FAST
@given(command=COMMAND, rest=st.lists(TOKEN, max_size=8))
def test_any_argument_list_is_a_run_or_one_line_exit_2(sandbox, command, rest):
    _check([command, *rest])


@FAST
@given(workload=st.sampled_from(W.workload_names() + ["all"]), pairs=st.lists(
    st.tuples(st.sampled_from(FLAGS), st.one_of(st.sampled_from(VALUES), st.text(max_size=12),
                                                 st.integers().map(str), st.floats().map(repr))), max_size=5))
def test_flag_value_pairs_are_a_run_or_one_line_exit_2(sandbox, workload, pairs):
    argv = ["run", workload]
    for flag, value in pairs:
        argv += [flag, value]
    _check(argv)


EXTREME = st.sampled_from([10**400, -10**400, 2**64, 2**31, 10**7, 10**9, 1e308, -0.0, 5e-324,
                           float("inf"), float("-inf"), float("nan")])
NUMBER_OR_TEXT = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=2000), EXTREME,
    st.floats(), st.floats(min_value=1e-12, max_value=1e3), st.text(max_size=8),
)


@FAST
@given(
    workload=st.one_of(st.sampled_from(W.workload_names()), st.text(max_size=10)),
    style=st.one_of(st.sampled_from(W.STYLES.names()), st.text(max_size=10)),
    device=st.one_of(st.sampled_from(W.PLACEMENTS.names()), st.text(max_size=6)),
    seed=st.one_of(st.integers(), st.integers(min_value=0, max_value=2**32 - 1), EXTREME, st.floats(), st.text(max_size=4)),
    epochs=NUMBER_OR_TEXT, steps=NUMBER_OR_TEXT, lr=NUMBER_OR_TEXT, batch_size=NUMBER_OR_TEXT,
    threads=st.one_of(st.integers(), st.integers(min_value=-1, max_value=2048), EXTREME, st.floats(), st.text(max_size=4)),
    eval_every=NUMBER_OR_TEXT,
)
def test_runner_overrides_are_a_config_or_a_usage_error(workload, style, device, seed, epochs, steps, lr,
                                                        batch_size, threads, eval_every):
    try:
        config = W.configure(workload, style, device, seed, epochs=epochs, steps=steps, lr=lr,
                             batch_size=batch_size, threads=threads, eval_every=eval_every)
    except W.UsageError as error:
        assert "\n" not in str(error)
        return
    except W.Unavailable:
        return
    assert 1 <= config.total_steps <= runner_module.MAX_STEPS
    assert math.isfinite(config.lr) and config.lr > 0
    assert 1 <= config.threads <= runner_module.MAX_THREADS


@TINY_RUNS
@given(
    workload=st.sampled_from(W.workload_names()),
    style=st.sampled_from(W.STYLES.names()),
    lr=st.one_of(st.floats(min_value=1e-300, max_value=1e300), st.sampled_from([1e-300, 1e6, 1e300])),
    steps=st.integers(min_value=1, max_value=3),
    batch=st.one_of(st.none(), st.integers(min_value=1, max_value=2000)),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_tiny_real_runs_end_in_0_1_or_2_with_one_line(tmp_path_factory, workload, style, lr, steps, batch, seed):
    argv = ["run", workload, "--style", style, "--lr", repr(lr), "--steps", str(steps), "--seed", str(seed),
            "--quiet", "--json", str(tmp_path_factory.getbasetemp() / "tiny.json")]
    if batch is not None:
        argv += ["--batch-size", str(batch)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(argv)
    lines = err.getvalue().splitlines()
    assert status in (0, 1, 2), (argv, status, err.getvalue())
    assert len(lines) == (0 if status == 0 else 1), (argv, err.getvalue())
    if status == 1:
        assert "diverged" in lines[0]


OVERRIDES = ("seed", "epochs", "steps", "lr", "batch_size", "threads", "eval_every", "until_target", "deterministic")


@FAST
@given(
    workload=st.sampled_from(W.workload_names()),
    style=st.sampled_from(W.STYLES.names()),
    overrides=st.dictionaries(st.sampled_from(OVERRIDES), NUMBER_OR_TEXT, max_size=3),
)
def test_one_bad_override_among_valid_choices_is_a_usage_error(workload, style, overrides):
    seed = overrides.pop("seed", 0)
    try:
        config = W.configure(workload, style, "cpu", seed, **overrides)
    except W.UsageError as error:
        assert "\n" not in str(error) and len(str(error)) < 300
        return
    assert 1 <= config.total_steps <= runner_module.MAX_STEPS
    assert math.isfinite(config.lr) and config.lr > 0
    assert 1 <= config.threads <= runner_module.MAX_THREADS

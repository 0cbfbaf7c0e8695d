"""Output files respect what their path names (:mod:`torchloops.support.outputs`): a regular file or a new
name is replaced atomically; a named pipe or a character device is written in place and stays
what it is; a symbolic link is followed and stays a link; ``--json -`` is standard output with
the table on standard error; what cannot take a file is refused before any work.

Every test here failed against the writer before it (a temporary file renamed over whatever the
name was): the pipe, the device and the links were replaced by regular files."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from torchloops.cli import main

RUN = ["run", "regression", "--style", "module", "--steps", "5", "--quiet"]


def _leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.startswith(".torchloops-")]


class _Reader(threading.Thread):
    """A reader waiting on a named pipe, as ``jq < pipe`` would: it keeps all it reads."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.data = path, b""
        self.start()

    def run(self):
        with open(self.path, "rb") as pipe:
            self.data = pipe.read()

    def received(self) -> bytes:
        self.join(timeout=30)
        assert not self.is_alive(), "the reader got no end of file"
        return self.data


def _unblock(path: Path) -> None:
    """Release a reader still waiting on the pipe ``path`` (the command failed): open it to write."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader waiting; or the pipe is gone
        pass


def _fifo(folder: Path) -> Path:
    path = folder / "pipe.json"
    os.mkfifo(path)
    return path


def test_a_named_pipe_with_a_reader_gets_the_records_and_stays_a_pipe(tmp_path, capsys):
    pipe = _fifo(tmp_path)
    reader = _Reader(pipe)
    try:
        assert main(RUN + ["--json", str(pipe)]) == 0
    finally:
        _unblock(pipe)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    [record] = json.loads(reader.received())
    assert record["workload"] == "regression" and record["steps"] == 5
    assert _leftovers(tmp_path) == []


def test_a_link_to_a_regular_file_stays_a_link_and_its_target_is_replaced(tmp_path, capsys):
    target = tmp_path / "results" / "records.json"
    target.parent.mkdir()
    target.write_text("[]\n")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    assert main(RUN + ["--json", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    [record] = json.loads(target.read_text())
    assert record["steps"] == 5
    assert _leftovers(tmp_path) == [] and _leftovers(target.parent) == []


def test_a_link_to_a_named_pipe_is_written_through(tmp_path, capsys):
    pipe = _fifo(tmp_path)
    link = tmp_path / "link.json"
    link.symlink_to(pipe)
    reader = _Reader(pipe)
    try:
        assert main(RUN + ["--json", str(link)]) == 0
    finally:
        _unblock(pipe)
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(pipe).st_mode)
    assert json.loads(reader.received())[0]["steps"] == 5


def _full_device(folder: Path) -> str:
    """A character device that refuses every write with ENOSPC: a node of /dev/full's own made in
    ``folder`` where this user may (a broken writer then replaces only that node), else /dev/full
    itself where its folder cannot be renamed into (not root)."""
    if not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)):
        pytest.skip("no /dev/full character device here")
    node = folder / "full"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.stat("/dev/full").st_rdev)
        return str(node)
    except OSError:
        if os.geteuid() == 0:
            pytest.skip("cannot make a device node here, and root could replace /dev/full itself")
        return "/dev/full"


def test_a_full_device_is_one_line_and_stays_a_device(tmp_path, capsys):
    device = _full_device(tmp_path)
    assert main(RUN + ["--json", device]) == 2
    err = capsys.readouterr().err
    assert err == f"torchloops: error: cannot write {device!r}: No space left on device\n"
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert _leftovers(tmp_path) == []


def test_a_checkpoint_to_a_full_device_is_one_line(tmp_path, capsys):
    device = _full_device(tmp_path)
    assert main(RUN + ["--save", device]) == 2
    assert capsys.readouterr().err.endswith(f"cannot write {device!r}: No space left on device\n")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_a_checkpoint_and_a_trace_through_links_to_pipes(tmp_path, capsys):
    """The binary writers (torch.save, the Chrome trace) follow a link to a pipe too."""
    for argv, name in ((RUN + ["--save"], "model.pt"),
                       (["profile", "regression", "--steps", "2", "--warmup", "1", "--trace"], "trace.json")):
        pipe = tmp_path / f"{name}.pipe"
        os.mkfifo(pipe)
        link = tmp_path / name
        link.symlink_to(pipe)
        reader = _Reader(pipe)
        try:
            assert main(argv + [str(link)]) == 0
        finally:
            _unblock(pipe)
        data = reader.received()
        assert link.is_symlink() and stat.S_ISFIFO(os.lstat(pipe).st_mode)
        assert data.startswith(b"PK\x03\x04") if name.endswith(".pt") else "traceEvents" in json.loads(data)
    assert _leftovers(tmp_path) == []


def test_dash_is_standard_output_and_the_table_goes_to_standard_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torchloops", *RUN, "--json", "-"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [record] = json.loads(proc.stdout)  # all of standard output is the JSON: `| jq .` works
    assert record["workload"] == "regression"
    assert "step time" in proc.stderr and "regression  module" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no file named "-"


@pytest.mark.slow
def test_dash_through_ddp_ranks_is_standard_output_too(tmp_path):
    """``--nproc 2``: rank 0's table (a child of torchrun) goes to standard error as well; the
    launcher writes the records it read back from rank 0."""
    from torchloops.execution import distributed

    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    proc = subprocess.run([sys.executable, "-m", "torchloops", "run", "regression", "--style", "raw", "--steps", "3",
                           "--quiet", "--device", "ddp", "--nproc", "2", "--backend", "gloo", "--json", "-"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    [record] = json.loads(proc.stdout)
    assert record["world_size"] == 2 and "ddp 2xgloo" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--save", "--trace"])
def test_dash_is_refused_where_standard_output_is_not_offered(tmp_path, capsys, monkeypatch, option):
    monkeypatch.chdir(tmp_path)
    argv = RUN if option == "--save" else ["profile", "regression", "--steps", "2", "--warmup", "1"]
    assert main(argv + [option, "-"]) == 2
    assert capsys.readouterr().err == (f"torchloops: error: {option} '-': standard output takes --json only; "
                                       "give a file path\n")
    assert list(tmp_path.iterdir()) == []


def test_a_socket_is_refused_before_running(tmp_path, capsys):
    path = tmp_path / "s.json"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        assert main(RUN + ["--json", str(path)]) == 2
    finally:
        server.close()
    assert "is a socket; give a file path" in capsys.readouterr().err
    assert stat.S_ISSOCK(os.lstat(path).st_mode)

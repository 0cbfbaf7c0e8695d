"""Output files: the one writer of every file a command or a script writes, and the checks of an
output path made before any work.

What the path names decides how it is written (docs/reliability.md):

* a regular file, or a name that does not exist yet: a temporary file beside it, fsynced and
  renamed onto it (killed at any moment, the previous file stays whole);
* a symbolic link: followed to its target, and the target written by these rules (a regular
  file is replaced; the link stays a link);
* a named pipe (FIFO) or a character device (``/dev/null``, ``/dev/full``, a terminal): written
  in place, never replaced; the content is made in memory first, then written in one go;
* ``-`` (``--json`` only): standard output, while :func:`json_to_standard_output` sends
  everything else printed to standard error (``torchloops run ... --json - | jq .``);
* anything else (a directory, a socket, a block device): refused before any work.

A write that fails (ENOSPC on ``/dev/full``, EPIPE from a pipe whose reader left) is one line
(a :class:`UsageError`, or the caller's ``error``); no partial regular file is left.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
import tempfile
from typing import Optional

from torchloops.core.registry import UsageError

STANDARD_OUTPUT = "-"
_json_fd: Optional[int] = None  # standard output, held for `-` by json_to_standard_output


def _mode(path: str, name: str, error=UsageError) -> Optional[int]:
    """The mode of what ``path`` names, links followed; None where nothing is there yet."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as why:  # a loop of links, a folder that may not be searched
        raise error(f"{name}: {why.strerror or why}") from None


def _in_place(mode: Optional[int]) -> bool:
    return mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode))


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_output_path(path: str, option: str = "--json", standard_output: bool = False) -> None:
    """Fail before any work if ``path`` cannot be written; ``-`` only where ``standard_output``."""
    if path == STANDARD_OUTPUT:
        if not standard_output:
            raise UsageError(f"{option} '-': standard output takes --json only; give a file path")
        return
    if not path or "\0" in path:
        raise UsageError(f"{option} {path!r} is not a usable file path")
    mode = _mode(path, f"{option} {path!r}")
    if mode is not None and not stat.S_ISREG(mode):
        _check_in_place(path, option, mode)
        return
    folder = os.path.dirname(os.path.realpath(path))  # a link's target is what gets replaced
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: {folder!r} is a file, not a folder")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: folder {folder!r} does not exist")
    _probe(folder, f"{option} {path!r}: folder {folder!r} is not writable")


def _check_in_place(path: str, option: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise UsageError(f"{option} {path!r} is a directory; give a file path")
    if not _in_place(mode):
        raise UsageError(f"{option} {path!r} is {_kind(mode)}; give a file path, a named pipe or a character device")
    if not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path!r} is not writable")


def _probe(folder: str, message: str) -> None:
    """Create and remove a folder in ``folder``: a real probe, where ``os.access`` says yes to
    root even when the filesystem refuses (/proc)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".torchloops-probe-", dir=folder))
    except OSError as error:
        raise UsageError(f"{message} ({error.strerror})") from None


def check_out_dir(path: str, option: str = "--out") -> None:
    """Fail before any work if the folder ``path`` cannot be created (or used) there."""
    if not path or "\0" in path:
        raise UsageError(f"{option} {path!r} is not a usable folder path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path!r} exists and is not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{option} {path!r}: {existing!r} is not a directory")
    _probe(existing, f"{option} {path!r}: cannot create folders in {existing!r}")


def replaced_atomically(path: str) -> bool:
    """Whether :func:`output_file` replaces ``path`` by a rename (a regular file, a link to one, a
    new name), so that it can be read back after it is written; not ``-``, a pipe or a device."""
    return path != STANDARD_OUTPUT and not _in_place(_mode(path, f"cannot write {path!r}"))


@contextlib.contextmanager
def output_file(path: str, binary: bool = False, suffix: str = "", error=UsageError):
    """A handle whose content becomes ``path`` on success, by the rules of this module.

    ``suffix`` ends the temporary file's name; a file system error is ``error`` (one line).
    Interrupted at any point (an exception, SIGINT, SIGTERM through the CLI's handler), a
    regular file keeps its previous content, no temporary file is left, and nothing is
    written to a pipe, a device or standard output.
    """
    if path == STANDARD_OUTPUT or _in_place(_mode(path, f"cannot write {path!r}", error)):
        buffer = io.BytesIO()
        handle = buffer if binary else io.TextIOWrapper(buffer, encoding="utf-8", write_through=True)
        yield handle
        _write_in_place(path, buffer.getvalue(), error)
    else:
        with _replaced(path, binary, suffix, error) as handle:
            yield handle


@contextlib.contextmanager
def _replaced(path: str, binary: bool, suffix: str, error):
    """A temporary file beside ``path``'s target (links followed), fsynced and renamed onto it."""
    target = os.path.realpath(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".torchloops-", suffix=suffix + ".tmp", dir=os.path.dirname(target))
    except OSError as why:
        raise error(f"cannot write {path!r}: {why.strerror or why}") from None
    try:
        with open(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _permissions(target))  # mkstemp's 0600 is not what a results file wants
        os.replace(tmp, target)
    except OSError as why:
        _remove(tmp)
        raise error(f"cannot write {path!r}: {why.strerror or why}") from None
    except BaseException:
        _remove(tmp)
        raise


def _permissions(target: str) -> int:
    """The permissions of the file being replaced, else the umask's for a new file."""
    if os.path.isfile(target):
        return stat.S_IMODE(os.stat(target).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _remove(tmp: str) -> None:
    if os.path.exists(tmp):
        os.unlink(tmp)


def _write_in_place(path: str, data: bytes, error) -> None:
    """``data`` written to a pipe, a device or standard output (a pipe waits for its reader, as ``tee``)."""
    where = "standard output" if path == STANDARD_OUTPUT else repr(path)
    try:
        if path == STANDARD_OUTPUT:
            sys.stdout.flush()
            _write_all(_json_fd if _json_fd is not None else sys.stdout.fileno(), data)
            return
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as why:
        raise error(f"cannot write {where}: {why.strerror or why}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_json(path: str, payload) -> None:
    """``payload`` as JSON at ``path`` (``-``: standard output), never half-written."""
    with output_file(path, suffix=".json") as handle:
        json.dump(payload, handle, indent=1)
        handle.write("\n")


@contextlib.contextmanager
def json_to_standard_output(active: bool = True):
    """While ``active``: ``-`` is standard output, and everything else written there (printed
    tables, torch's own output, child processes) goes to standard error instead."""
    global _json_fd
    if not active:
        yield
        return
    sys.stdout.flush()
    try:
        _json_fd = os.dup(1)
    except OSError as why:
        raise UsageError(f"--json -: standard output is not open ({why.strerror})") from None
    os.dup2(2, 1)
    previous, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = previous
        os.dup2(_json_fd, 1)
        os.close(_json_fd)
        _json_fd = None

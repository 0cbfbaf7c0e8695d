"""Command line: the parser built from the commands' modules, and the entry point.

Every command is a module of :mod:`torchloops.commands` (``list``, ``run``, ``compare``,
``converge``, ``compile``, ``diff``, ``profile``, ``count``); this module adds each one's
sub-parser, dispatches to it, and turns what it raises into one line and an exit status:
bad input ends with one line on stderr naming what is valid and exit status 2, before
anything runs or is written; ``--json -`` writes the JSON to standard output and everything
else printed to standard error; SIGINT and SIGTERM end a command with 130 and 143, every
file written before it unchanged.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from torchloops import UsageError
from torchloops import commands
from torchloops.execution import distributed
from torchloops.support.console import PROG, ArgumentParser
from torchloops.execution.graphs import CaptureUnsafe
from torchloops.support.outputs import STANDARD_OUTPUT, json_to_standard_output


class _Parser(ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """``torchloops``'s parser: one sub-command per module of :data:`torchloops.commands.NAMES`."""
    parser = _Parser(prog=PROG, description="The documented PyTorch workloads in four equivalent styles, timed.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in commands.modules().values():
        module.add_parser(sub).set_defaults(handler=module.main)
    return parser


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt, so every finally removes its temporary file."""


def _raise_terminated(signum, _frame):
    raise Terminated()


def _on_sigterm():
    """Install the SIGTERM handler for the duration of a command (main thread only); returns the undo."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    restore = _on_sigterm()
    try:
        args = build_parser().parse_args(argv)
        with json_to_standard_output(getattr(args, "json", None) == STANDARD_OUTPUT):
            return args.handler(args)
    except UsageError as error:
        print(f"{_who()}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except CaptureUnsafe as error:  # cuda_graph: a step that cannot be captured and replayed
        print(f"{_who()}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        if not _nondeterministic(error):
            raise
        print(f"{_who()}: error: --deterministic: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (SIGINT); files written before are unchanged", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG}: terminated (SIGTERM); files written before are unchanged", file=sys.stderr)
        return 143
    except BrokenPipeError:  # stdout closed by its reader (`torchloops list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own final flush too
        return 141  # 128 + SIGPIPE, as a shell reports a pipeline's writer
    finally:
        restore()


def _nondeterministic(error: RuntimeError) -> bool:
    """torch's refusal of an operation without a deterministic implementation (--deterministic)."""
    text = str(error)
    return "does not have a deterministic implementation" in text or "Deterministic behavior was enabled" in text


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _who() -> str:
    """The program's name, and the rank when torchrun started this process (each rank reports)."""
    if distributed.launched_by_torchrun():
        return f"{PROG} (rank {distributed.rank()} of {distributed.world_size()})"
    return PROG


def entry_point() -> None:
    sys.exit(main())

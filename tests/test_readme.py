"""The README's Quickstart and CI agree: `.ci/run` runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_quickstart_has_exactly_two_commands():
    commands = quickstart_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "torchloops" in main_job and "pytest" in tests
    for command in commands:
        assert "-c constraints.txt" in command  # torch pinned: the CPU build, not CUDA


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_commands()[1] in ci


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PREFIXES = (".venv/bin/torchloops ", "torchloops ", "python -m workloads ", ".venv/bin/python -m workloads ")


def documented_commands():
    """Every concrete torchloops command line in a code block or span of the README or a docs page
    (synopsis lines with [OPTIONAL] parts, <placeholders>, UPPERCASE names, ... or alternatives,
    and a bare command name, are not commands)."""
    found = []
    for path in DOCS:
        text = path.read_text()
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))  # inline code
        for block in blocks + spans:
            for line in block.splitlines():
                line = line.split("#")[0].strip().rstrip("\\").strip()
                for prefix in PREFIXES:
                    command = line[len(prefix):]
                    placeholder = re.search(r"[\[\]<>|…]|\.\.\.|\b[A-Z][A-Z_]*\b", command)
                    if line.startswith(prefix) and " " in command and not placeholder:
                        found.append((path.name, command))
    return found


def test_documented_commands_parse():
    import shlex

    from workloads import cli

    commands = documented_commands()
    assert len(commands) >= 10  # the extraction finds the docs' examples
    for where, command in commands:
        cli.build_parser().parse_args(shlex.split(command))  # a UsageError names the bad one


def test_readme_is_a_front_page_and_every_link_resolves():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 10 * 1024
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to a missing {target}"

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
PREFIXES = (".venv/bin/torchloops ", "torchloops ", "python -m torchloops ", ".venv/bin/python -m torchloops ")


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

    from torchloops import cli

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


# Every file of the repository that cites other files: the docs, the code (comments and
# docstrings) and the tests.
CITING = DOCS + [path for folder in ("torchloops", "workloads", "examples", "tests", "scripts", "benchmarks")
                 for path in sorted((ROOT / folder).rglob("*.py"))]
REPO_PATH = re.compile(r"(?<![\w./-])((?:torchloops|workloads|examples|tests|scripts|benchmarks|docs|\.ci)/[\w./-]*[\w/])(?![\w<*{-])")
# Files outside the repository a clone lacks: the notes' own file and the project's notes about them
# (spelled in two parts, so that this file does not cite them itself).
OUTSIDE = re.compile("|".join(["shared" + "/", r"\bSPEC" + r"\.md", r"\bseed" + "/", "000_ff506" + "adf640d1cbe"]))


def ignored_outputs():
    """The plain paths of .gitignore: files the suite's commands write (a doc may name them)."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return tuple(line.strip("/") for line in lines if line and not line.startswith("#") and "*" not in line)


def cited_paths(text: str):
    """Repository paths a text names (``workloads/reference/`` ...), placeholders left out
    (``workloads/<name>.py``, ``workloads/reference/W.json``: a component in capitals)."""
    for match in REPO_PATH.finditer(text):
        path = match.group(1)
        if not any(re.fullmatch(r"[A-Z][A-Z_]*(\.\w+)?", part) for part in path.split("/")):
            yield path


def test_every_cited_file_is_in_the_repository():
    """A clone is complete: no doc, comment or test cites a file outside the repository (the notes
    are cited by section title), and every repository path a doc or comment names exists."""
    outputs = ignored_outputs()
    missing, outside = [], []
    for source in CITING:
        text = source.read_text()
        outside += [f"{source.relative_to(ROOT)}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
        missing += [f"{source.relative_to(ROOT)}: {path}" for path in cited_paths(text)
                    if not (ROOT / path).exists() and not path.startswith(outputs)]
    assert len(CITING) > 50 and not outside and not missing, (outside, missing)


def test_the_citation_check_catches_what_it_looks_for():
    assert list(cited_paths("see `workloads/reference/lenet.json`; workloads/<name>.py; reference/W.json")) == \
        ["workloads/reference/lenet.json"]
    missing = "docs/" + "missing.md"
    assert list(cited_paths(f"see {missing}.")) == [missing] and not (ROOT / missing).exists()
    for text in ("in " + "SPEC" + ".md", "shared" + "/", "seed" + "/x.txt", "(`000_ff506" + "adf640d1cbe.txt`)"):
        assert OUTSIDE.search(text), text
    assert "docs/compare/results.json".startswith(ignored_outputs())  # written by `compare --out docs/compare`

"""The package's layering, as declared in pyproject.toml's import-linter contracts: commands ->
measurement -> styles and placements -> workloads -> data and registry, imports only downwards,
every module in a layer, and no import cycle anywhere in the package."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers_and_have_no_cycle(monkeypatch):
    monkeypatch.chdir(ROOT)  # root_package is found from the repository root
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, verbose=False) == 0

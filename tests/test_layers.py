"""The layers of docs/architecture.md, as import-linter checks them (``[tool.importlinter]`` in
pyproject.toml): featx keeps them, and one forbidden import, even inside a function, breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_featx_keeps_its_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "message"),
    [
        # A lower layer reaching up: the networks importing the pipeline that runs them.
        ("nets/backbones.py", "import featx.embed.engine",
         "featx.nets is not allowed to import featx.embed"),
        # Neighbours on one layer stay independent.
        ("cache/store.py", "from featx.weights import install_weights",
         "featx.cache is not allowed to import featx.weights"),
        # The cache never needs a network framework.
        ("cache/files.py", "import keras", "featx.cache is not allowed to import keras"),
        # The OpenVINO engine is reached through featx.nets.build only.
        ("embed/engine.py", "from featx.nets import openvino_engine",
         "featx.embed is not allowed to import featx.nets.openvino_engine"),
    ],
)
def test_a_forbidden_import_breaks_them(
    tmp_path: Path, module: str, statement: str, message: str
) -> None:
    shutil.copytree(ROOT / "featx", tmp_path / "featx",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "featx" / module
    path.write_text(path.read_text() + f"\n\ndef _added_by_the_test():\n    {statement}\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout
    assert message in result.stdout


def test_no_module_imports_itself_through_others() -> None:
    # The layers keep subpackages from circling; this keeps modules from it, inside a subpackage
    # too (imports inside functions and under TYPE_CHECKING count). A package's face is left
    # out: featx/__init__.py and each subpackage's __init__ import their modules by design.
    import grimp

    graph = grimp.build_graph("featx")
    faces = {m for m in graph.modules if m == "featx" or graph.find_children(m)}
    edges = {m: graph.find_modules_directly_imported_by(m) - faces
             for m in graph.modules - faces}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)

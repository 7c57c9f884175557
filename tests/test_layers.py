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

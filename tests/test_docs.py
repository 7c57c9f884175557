"""The README's Python examples run as written (on a small folder laid out as they expect)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path, imagenet_weights, lite0_weights):
    rng = np.random.default_rng(0)
    for label, cls in enumerate(["NORMAL", "PNEUMONIA"]):
        folder = tmp_path / "chest_xray" / "train" / cls
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 90, size=(48, 48), dtype=np.uint8) + 120 * label
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpeg")
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(tmp_path / "new_scan.jpeg")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=dict(os.environ), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def test_readme_coral_example_prints_the_numbers_the_readme_shows():
    """The domain-adaptation example's comment says what it prints: "0.94 (source only: 0.5)".
    Run it, plus the source-only head the comment compares with, and read the numbers back."""
    (code,) = [b for b in BLOCKS if "CORAL(make_head" in b]
    shown = re.search(
        r"print\(model\.score\(X_target, y\)\)\s+# ([\d.]+) \(source only: ([\d.]+)\)", code)
    assert shown, "the README's CORAL example no longer says what it prints"
    adapted, source_only = shown.group(1), shown.group(2)
    check = code + 'print(make_head("logreg").fit(X_source, y).score(X_target, y))\n'
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout.strip().splitlines()
    assert len(printed) == 3, run.stdout
    # Printed to the precision the README gives (0.94 is two decimals, 0.5 one).
    assert f"{float(printed[0]):.{len(adapted.split('.')[1])}f}" == adapted
    assert f"{float(printed[2]):.{len(source_only.split('.')[1])}f}" == source_only
    assert printed[1].startswith("{") and "'reg'" in printed[1]  # the chosen parameters

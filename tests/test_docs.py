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

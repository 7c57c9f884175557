"""featx.report.plots: PNG files of a leaderboard and a confusion matrix; matplotlib only when
drawing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featx import plot_confusion_matrix, plot_leaderboard, tune_heads


@pytest.fixture(scope="module")
def boards():
    rng = np.random.default_rng(0)
    y = np.repeat(["T-shirt/top", "Ankle boot", "Bag"], 20)
    X = rng.normal(size=(60, 4)) + (y == "Bag")[:, None] * 2
    a = tune_heads(X, y, heads=["logreg", "knn"], cv=3, test_size=0.25)
    b = tune_heads(X[:, :1], y, heads=["logreg", "knn"], cv=3, test_size=0.25)
    return a, b


def test_importing_featx_does_not_import_matplotlib():
    code = "import sys, featx, featx.report.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_leaderboard_plot_one_or_several_boards(boards, tmp_path):
    a, b = boards
    one = plot_leaderboard(a, tmp_path / "one.png")
    both = plot_leaderboard({"features": a, "pixels": b}, tmp_path / "sub" / "both.png",
                            title="features vs pixels")
    for path in (one, both):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 800 and im.height >= 300
    with Image.open(both) as im_both, Image.open(one) as im_one:
        assert im_both.height > im_one.height  # two rows per head


def test_confusion_matrix_plot_in_the_given_class_order(boards, tmp_path):
    a, _ = boards
    path = plot_confusion_matrix(a.y_true, a.y_pred, tmp_path / "cm.png",
                                 labels=["T-shirt/top", "Ankle boot", "Bag"])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > im.height >= 500
        pixels = np.asarray(im.convert("L"))
    assert pixels.min() < 50 and pixels.max() > 200  # drawn, not blank

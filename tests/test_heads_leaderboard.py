"""featx.heads.leaderboard: rows with an extra column (the layer probe's), combining
leaderboards."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from featx import FeatxError, Leaderboard, tune_heads


@pytest.fixture(scope="module")
def boards():
    """Two leaderboards on the same labels: informative features and nearly useless ones."""
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 20)
    good = rng.normal(size=(60, 4)) + 3 * (np.arange(60)[:, None] // 20)
    bad = rng.normal(size=(60, 4))
    kw = dict(heads=["logreg", "knn"], cv=3, test_size=0.25)
    return {"deep": tune_heads(good, y, **kw), "shallow": tune_heads(bad, y, **kw)}


def test_combine_adds_a_column_and_ranks_every_row(boards):
    board = Leaderboard.combine(boards, column="layer")
    assert board.columns == ["layer"]
    assert len(board) == 4
    assert [r.cv_mean for r in board] == sorted((r.cv_mean for r in board), reverse=True)
    assert {(r.extra["layer"], r.head) for r in board} == {
        (layer, head) for layer in ("deep", "shallow") for head in ("logreg", "knn")
    }
    assert board.best.extra["layer"] == "deep"
    # The rows are the tuned ones, not copies of their numbers: same estimator objects.
    assert board.best.estimator is boards["deep"][board.best.head].estimator
    # The confusion matrix belongs to the best row's board; the originals are untouched.
    assert board.y_pred is boards["deep"].y_pred
    assert boards["deep"].columns == [] and boards["deep"].best.extra == {}
    # board[name] is that head's best row.
    assert board["knn"].extra["layer"] == "deep"


def test_extra_column_in_text_csv_and_frame(boards, tmp_path):
    board = Leaderboard.combine(boards, column="layer")
    text = board.to_text()
    header = text.splitlines()[0].split()
    assert header[:3] == ["#", "layer", "head"]
    assert "4 rows (2 layers x 2 heads)" in text
    assert text.splitlines()[2].split()[1] == "deep"
    with open(board.to_csv(tmp_path / "probe.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["layer", "head", "cv_mean"]
    assert [r["layer"] for r in rows] == [r.extra["layer"] for r in board]
    frame = board.to_frame()
    assert list(frame.columns[:2]) == ["layer", "head"] and len(frame) == 4
    # A plain leaderboard's text is unchanged: no extra column, "N heads".
    plain = boards["deep"].to_text()
    assert plain.splitlines()[0].split()[:2] == ["#", "head"]
    assert "2 heads, 3-fold" in plain


def test_combine_refuses_boards_that_are_not_comparable(boards):
    rng = np.random.default_rng(1)
    other = tune_heads(rng.normal(size=(40, 3)), np.repeat(["a", "b"], 20), heads=["logreg"],
                       cv=3)
    with pytest.raises(FeatxError, match="other samples, folds or scoring.*expected the same"):
        Leaderboard.combine({"deep": boards["deep"], "other": other}, column="layer")
    with pytest.raises(FeatxError, match="one or more leaderboards"):
        Leaderboard.combine({}, column="layer")
    once = Leaderboard.combine(boards, column="layer")
    with pytest.raises(FeatxError, match="already has a 'layer' column; pick another"):
        Leaderboard.combine({"x": once}, column="layer")


def test_csv_holds_every_rows_columns_when_only_some_rows_counted_leaks(boards, tmp_path):
    # A layer probe: one layer wide enough for the duplicate search, one not.
    import copy

    deep = copy.deepcopy(boards["deep"])
    for r in deep:
        r.n_test_leaked, r.test_score_leak_free = 0, r.test_score
    board = Leaderboard.combine({"deep": deep, "shallow": boards["shallow"]}, column="layer")
    with open(board.to_csv(tmp_path / "probe.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and "test_score_leak_free" in rows[0]
    assert {r["layer"] for r in rows if r["n_test_leaked"] == "0"} == {"deep"}
    assert {r["n_test_leaked"] for r in rows if r["layer"] == "shallow"} == {""}

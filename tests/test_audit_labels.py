"""Label issues by confident learning (written here, no cleanlab) and the neighbours' labels."""

from __future__ import annotations

import numpy as np
import pytest

from featx.audit.index import EmbeddingIndex
from featx.audit.labels import (
    confident_joint,
    exact_neighbours,
    find_label_issues,
    neighbour_disagreement,
    out_of_fold_probabilities,
)
from featx.exceptions import FeatxError


@pytest.fixture
def noisy():
    """Three separable classes of 40 rows, four labels flipped."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    X = rng.normal(size=(120, 12)) + 3.5 * np.eye(3, 12)[y]
    flipped = np.array([3, 45, 90, 100])
    y_noisy = y.copy()
    y_noisy[flipped] = (y[flipped] + 1) % 3
    return X.astype(np.float32), y, y_noisy, flipped


def test_flipped_labels_come_first_with_their_true_class(noisy):
    X, y, y_noisy, flipped = noisy
    issues = find_label_issues(X, y_noisy, cv=4, k=8)
    top = issues.index[:len(flipped)]
    assert sorted(top.tolist()) == flipped.tolist()
    assert (issues.suggested[:len(flipped)] == y[top]).all()
    assert (issues.label[:len(flipped)] == y_noisy[top]).all()
    assert (np.diff(issues.score) <= 0).all() and ((issues.score >= 0) & (issues.score <= 1)).all()
    assert len(issues) < 12  # the clean rows are not reported wholesale
    assert 2 <= issues.n_estimated <= 10


def test_string_labels_and_a_head_of_ones_own(noisy):
    from sklearn.naive_bayes import GaussianNB

    X, y, y_noisy, flipped = noisy
    names = np.array(["cat", "dog", "eel"])[y_noisy]
    issues = find_label_issues(X, names, head=GaussianNB(), cv=3, k=8)
    assert set(issues.index[:4].tolist()) == set(flipped.tolist())
    assert set(issues.label.tolist()) <= {"cat", "dog", "eel"}
    with pytest.raises(FeatxError, match="has no predict_proba"):
        out_of_fold_probabilities(X, y, head=object())


def test_out_of_fold_probabilities_on_samples_cover_every_row(noisy):
    X, y, _, _ = noisy
    p, classes = out_of_fold_probabilities(X, y, cv=3, max_fit_rows=60)
    assert p.shape == (120, 3) and classes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)
    assert (p.argmax(axis=1) == y).mean() > 0.9
    again, _ = out_of_fold_probabilities(X, y, cv=3, max_fit_rows=60)
    np.testing.assert_array_equal(p, again)  # seeded


def test_confident_joint_counts_by_per_class_thresholds():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6], [0.8, 0.2]])
    joint, confident, thresholds = confident_joint(p, np.array([0, 0, 1, 1, 1]))
    np.testing.assert_allclose(thresholds, [0.75, (0.8 + 0.6 + 0.2) / 3])
    # row 1 reaches no threshold (0.6 < 0.75, 0.4 < 0.533); row 4 is labelled 1 but is 0
    assert confident.tolist() == [0, -1, 1, 1, 0]
    assert joint.tolist() == [[1, 0], [1, 2]]


def test_neighbour_disagreement_leaves_out_self_and_padding():
    y = np.array([0, 0, 1, 1])
    ids = np.array([[0, 1, 2], [2, 3, -1], [0, -1, -1], [-1, -1, -1]])
    d, shares = neighbour_disagreement(y, ids, 2)
    assert d.tolist() == [0.5, 1.0, 1.0, 0.0]
    np.testing.assert_allclose(shares[0], [0.5, 0.5])
    with pytest.raises(FeatxError, match="only 4 labelled rows"):
        neighbour_disagreement(y, np.array([[9], [0], [0], [0]]), 2)
    with pytest.raises(FeatxError, match=r"\(n, k\) array"):
        neighbour_disagreement(y, np.zeros((3, 2), int), 2)


def test_neighbours_from_an_index_match_the_exact_search(noisy):
    X, _, y_noisy, _ = noisy
    index = EmbeddingIndex.from_array(X)
    _, from_index = index.search_self(6)
    np.testing.assert_array_equal(np.sort(from_index, axis=1),
                                  np.sort(exact_neighbours(X, 6), axis=1))
    p, _ = out_of_fold_probabilities(X, y_noisy, cv=3)
    a = find_label_issues(X, y_noisy, probabilities=p, neighbours=index, k=6)
    b = find_label_issues(X, y_noisy, probabilities=p, neighbours=from_index)
    np.testing.assert_array_equal(a.index, b.index)


def test_too_few_images_for_out_of_fold_probabilities_is_one_line(noisy):
    X, y, _, _ = noisy
    few = y.copy()
    few[-2:] = 3  # class 3 has two images
    with pytest.raises(FeatxError, match=r"class 3 has 2 images, fewer than the cv=5 folds"):
        find_label_issues(X, few)
    with pytest.raises(FeatxError, match="at least 2 classes"):
        find_label_issues(X, np.zeros(len(X)))
    with pytest.raises(FeatxError, match="one label per row"):
        find_label_issues(X, y[:-1])
    with pytest.raises(FeatxError, match="probabilities has shape"):
        find_label_issues(X, y, probabilities=np.zeros((3, 3)))

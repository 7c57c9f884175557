"""RBFMap: the Nyström feature map behind the kernel SGD head."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.metrics.pairwise import rbf_kernel

from featx.heads.kernel_map import RBFMap


def _gram(rbf: RBFMap, X: np.ndarray) -> np.ndarray:
    """Inner products of the mapped rows, the shift undone (float64)."""
    Z = rbf.transform(X).astype(np.float64) + rbf.offset_
    return Z @ Z.T


def test_reproduces_the_kernel_on_its_landmarks() -> None:
    # Every row a landmark, no eigenvalue dropped: Nyström is exact there, so what is left is
    # float32 rounding (measured 1e-6).
    X = np.random.default_rng(0).normal(size=(60, 6))
    rbf = RBFMap(60, n_pca=None, whiten=0, gamma=0.2).fit(X)
    assert len(rbf.eigenvalues_) == 60
    np.testing.assert_allclose(_gram(rbf, X), rbf_kernel(X, gamma=0.2), atol=1e-4)


def test_is_the_nystroem_approximation_of_its_landmarks() -> None:
    # New rows: K(x, L) pinv(K(L, L)) K(L, x) computed in float64 from the same landmarks
    # (measured 2e-6 apart): the float32 matmul-and-exp path and the folded normalisation.
    rng = np.random.default_rng(1)
    X, new = rng.normal(size=(500, 5)), rng.normal(size=(100, 5))
    rbf = RBFMap(200, n_pca=None, whiten=0).fit(X)
    landmarks = rbf.landmarks_.astype(np.float64) + rbf.mean_
    K_xl, K_ll = rbf_kernel(new, landmarks, gamma=0.2), rbf_kernel(landmarks, gamma=0.2)
    expected = K_xl @ np.linalg.pinv(K_ll, rcond=1e-5, hermitian=True) @ K_xl.T
    np.testing.assert_allclose(_gram(rbf, new), expected, atol=1e-4)


def test_approximates_the_kernel_on_new_rows() -> None:
    # Relative Frobenius error on 100 new rows in 3 dimensions: 0.108 with 30 landmarks, 0.005
    # with 300 (at most 0.025 over the seeds and the dimensions 3 and 4 tried).
    rng = np.random.default_rng(0)
    X, new = rng.normal(size=(600, 3)), rng.normal(size=(100, 3))
    K = rbf_kernel(new, gamma=1 / 3)

    def error(n_components: int) -> float:
        rbf = RBFMap(n_components, n_pca=None, whiten=0).fit(X)
        return float(np.linalg.norm(_gram(rbf, new) - K) / np.linalg.norm(K))

    coarse, fine = error(30), error(300)
    assert fine < 0.02
    assert fine < coarse / 5


def test_projection_keeps_distances_within_the_data_span() -> None:
    # Rows on a 4-dimensional affine subspace of 12: projecting on 4 axes changes no distance,
    # and gamma stays 1 / n_features_in_.
    rng = np.random.default_rng(2)
    basis, shift = rng.normal(size=(4, 12)), rng.normal(size=12)
    X = rng.normal(size=(300, 4)) @ basis + shift
    new = rng.normal(size=(50, 4)) @ basis + shift
    flat = RBFMap(100, n_pca=None, whiten=0).fit(X)
    projected = RBFMap(100, n_pca=4, whiten=0).fit(X)
    assert projected.components_.shape == (4, 12)
    assert projected.gamma_ == flat.gamma_ == 1 / 12
    np.testing.assert_allclose(_gram(projected, new), _gram(flat, new), atol=1e-4)


def test_whiten_one_makes_the_landmarks_components_orthonormal() -> None:
    X = np.random.default_rng(3).normal(size=(400, 8))
    rbf = RBFMap(100, n_pca=None, whiten=1).fit(X)
    landmarks = rbf.landmarks_ + rbf.mean_
    Z = rbf.transform(landmarks).astype(np.float64)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-4)
    moments = (Z + rbf.offset_).T @ (Z + rbf.offset_) / len(Z)
    np.testing.assert_allclose(moments, np.eye(len(moments)), atol=1e-3)


def test_transform_is_float32_and_deterministic() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 20))
    first = RBFMap(64, n_pca=8, random_state=7).fit(X)
    Z = first.transform(X)
    assert Z.dtype == np.float32 and Z.shape == (300, 64)
    assert first.transform(X.astype(np.float32)).dtype == np.float32
    np.testing.assert_array_equal(RBFMap(64, n_pca=8, random_state=7).fit(X).transform(X), Z)
    other = RBFMap(64, n_pca=8, random_state=8).fit(X)
    assert not np.array_equal(other.landmarks_, first.landmarks_)


def test_pickle_round_trips_exactly() -> None:
    X = np.random.default_rng(5).normal(size=(200, 16))
    rbf = RBFMap(50, n_pca=6).fit(X)
    again = pickle.loads(pickle.dumps(rbf))
    np.testing.assert_array_equal(again.transform(X), rbf.transform(X))


def test_skops_round_trips_trusting_only_the_class() -> None:
    sio = pytest.importorskip("skops.io")
    X = np.random.default_rng(6).normal(size=(200, 16))
    rbf = RBFMap(50, n_pca=6).fit(X)
    data = sio.dumps(rbf)
    assert sio.get_untrusted_types(data=data) == ["featx.heads.kernel_map.RBFMap"]
    again = sio.loads(data, trusted=["featx.heads.kernel_map.RBFMap"])
    np.testing.assert_array_equal(again.transform(X), rbf.transform(X))


def test_fewer_rows_than_components_uses_every_row() -> None:
    X = np.random.default_rng(8).normal(size=(40, 5))
    rbf = RBFMap(1024).fit(X)
    assert rbf.landmarks_.shape == (40, 5)
    assert rbf.get_feature_names_out()[:2].tolist() == ["rbfmap0", "rbfmap1"]


def test_rejects_a_whiten_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="whiten"):
        RBFMap(whiten=2).fit(np.ones((10, 3)))

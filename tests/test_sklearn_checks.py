"""scikit-learn's own estimator checks, run against ImageEmbedder with a tiny backbone."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from featx import ImageEmbedder
from tests.conftest import tiny_dense

# Checks that cannot pass for a frozen network, each with its reason.
EXPECTED_FAILURES: dict[str, str] = {}


def _expected_failures(estimator):
    return EXPECTED_FAILURES


@parametrize_with_checks(
    [ImageEmbedder(tiny_dense, weights=None)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)

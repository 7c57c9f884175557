"""scikit-learn's own estimator checks, run against ImageEmbedder with a tiny backbone."""

from __future__ import annotations

from functools import partial

import pytest
from sklearn.utils.estimator_checks import estimator_checks_generator

from featx import ImageEmbedder
from tests.conftest import tiny_dense

# Every check passes; none is expected to fail. One is not collected, with its reason:
NOT_APPLICABLE = {
    "check_array_api_input": (
        "a frozen Keras network consumes NumPy arrays; the check itself skips unless "
        "array-api-strict is installed and SCIPY_ARRAY_API=1"
    ),
}


def _name(check) -> str:
    return (check.func if isinstance(check, partial) else check).__name__


CHECKS = [
    pytest.param(estimator, check, id=_name(check))
    for estimator, check in estimator_checks_generator(ImageEmbedder(tiny_dense, weights=None))
    if _name(check) not in NOT_APPLICABLE
]


def test_all_checks_are_collected():
    assert len(CHECKS) >= 40


@pytest.mark.parametrize(("estimator", "check"), CHECKS)
def test_sklearn_compatible(estimator, check):
    check(estimator)

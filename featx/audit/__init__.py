"""The audit: a nearest-neighbour index per cache group; duplicates, leaks, label issues and
outliers.

``featx.audit`` is this package and, called, :func:`featx.audit.findings.audit`:
``featx.audit(images, y, cache="emb.h5")`` audits a labelled image set (the package's module
object is made callable below, because ``import featx.audit`` would otherwise replace a function
of that name on ``featx`` with the package).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from featx.audit.duplicates import (
    DEFAULT_THRESHOLD,
    Pairs,
    duplicate_groups,
    find_duplicates,
    find_leaks,
)
from featx.audit.findings import AuditResult, Table, audit
from featx.audit.index import EmbeddingIndex
from featx.audit.labels import LabelIssues, find_label_issues
from featx.audit.outliers import outlier_scores

__all__ = [
    "EmbeddingIndex",
    "Pairs",
    "DEFAULT_THRESHOLD",
    "find_duplicates",
    "find_leaks",
    "duplicate_groups",
    "outlier_scores",
    "LabelIssues",
    "find_label_issues",
    "AuditResult",
    "Table",
    "audit",
]


class _CallableAudit(types.ModuleType):
    """The package, callable as :func:`~featx.audit.findings.audit`."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditResult:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableAudit

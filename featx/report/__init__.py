"""Plots and the self-contained HTML report."""

from __future__ import annotations

from featx.report.page import embedding_map, write_report
from featx.report.plots import (
    plot_confusion_matrix,
    plot_depth,
    plot_embedding_map,
    plot_leaderboard,
)

__all__ = [
    "plot_confusion_matrix",
    "plot_depth",
    "plot_embedding_map",
    "plot_leaderboard",
    "embedding_map",
    "write_report",
]

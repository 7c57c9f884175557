"""What a tuning command leaves in its output folder, written in one place: :func:`write_outputs`.

``featx heads`` (in memory, at scale, adapted to a target) and ``featx probe`` write the same
things: the leaderboard as CSV, the command's own plot of it (drawn by the caller), the best
head's confusion matrix, the saved model (``model.featx``) and ``report.html``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_outputs"]


def write_outputs(
    out: str | os.PathLike[str],
    board: Any,
    model: Any,
    *,
    plot: Callable[[Path], Path],
    confusion: str | None,
    csv_name: str = "leaderboard.csv",
    report_title: str | None = None,
    embeddings: Any = None,
    labels: Any = None,
    tested: Sequence[str] | None = None,
    notes: Sequence[str] = (),
    random_state: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write a tuned leaderboard's outputs into the folder ``out`` (made when missing).

    Parameters
    ----------
    out : path
        The folder.
    board : Leaderboard
        What was tuned (a :class:`~featx.LayerProbe` too).
    model : FeatxModel
        The best head with its embedder, saved as ``model.featx``
        (:meth:`featx.FeatxModel.portable` makes one).
    plot : callable
        Draws the command's plot of the board into the folder it is given; returns the file.
    confusion : str or None
        The start of the best head's confusion matrix's title (its accuracy follows);
        ``None``: no matrix (no labelled predictions to show).
    csv_name : str, default="leaderboard.csv"
        The leaderboard's CSV file.
    report_title : str or None
        ``report.html``'s title; ``None``: no report.
    embeddings, labels, tested, notes, random_state
        As :func:`featx.report.write_report` takes them (the map's rows and labels, the sources
        of the rows behind ``board.y_true``, lines under the title, the map's seed).
    log : callable, optional
        Told about the report (its t-SNE map takes a few seconds).

    Returns
    -------
    list of Path
        The files written, in that order.
    """
    import numpy as np

    from featx.report.page import write_report
    from featx.report.plots import plot_confusion_matrix

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = [board.to_csv(folder / csv_name), plot(folder)]
    if confusion is not None:
        accuracy = np.mean(np.asarray(board.y_true) == np.asarray(board.y_pred))
        written.append(plot_confusion_matrix(
            board.y_true, board.y_pred, folder / "confusion_matrix.png",
            title=f"{confusion} accuracy {accuracy:.1%}"))
    plots = written[1:]
    written.append(model.save(folder / "model.featx"))
    if report_title is not None:
        if log is not None:
            log(f"writing {folder / 'report.html'} (with a t-SNE map of the embeddings)")
        written.append(write_report(
            folder / "report.html", board, embeddings=embeddings, labels=labels,
            eval_sources=tested, plots=plots, title=report_title, notes=notes,
            random_state=random_state,
        ))
    return written

"""``report.html``: one self-contained page to look at after tuning heads.

:func:`write_report` writes a single HTML file that needs nothing else to be read: no featx, no
network, no other file. Every image in it (the plots, the embedding map, the thumbnails) is an
inline ``data:image/png;base64`` URI, the style sheet is inline, and there is no script. It
holds the leaderboard (a table and its plot), the best head's confusion matrix, its per-class
precision and recall, a 2-D t-SNE map of the embeddings coloured by class, and thumbnails of the
evaluated images the best head got wrong, each captioned with the true and the predicted class.

The t-SNE map runs on a seeded sample of at most ``max_points`` embeddings (reduced to 50
dimensions by PCA first), on one thread: a few seconds, however many images were tuned on.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["write_report", "embedding_map"]

_THUMB = 96  # thumbnail edge, pixels

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.summary { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.8em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f4f4f4; }
td.text, th.text { text-align: left; }
tr.best td { font-weight: 600; background: #eef6ff; }
img.plot { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
div.thumbs { display: flex; flex-wrap: wrap; gap: 10px; }
figure.miss { margin: 0; width: 150px; font-size: 0.8em; text-align: center; }
figure.miss img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
                  border: 2px solid #d62728; background: #fafafa; }
figure.miss .true { color: #2ca02c; }
figure.miss .pred { color: #d62728; }
figure.miss .src { color: #888; word-break: break-all; }
footer { margin-top: 3em; color: #888; font-size: 0.8em; }
"""


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" alt="{html.escape(alt)}" src="{_png_uri(data)}">'


def embedding_map(
    embeddings: Any, labels: Any, *, max_points: int = 1500, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE coordinates of a seeded sample of embeddings.

    Parameters
    ----------
    embeddings : array-like of shape (n, width)
    labels : array-like of shape (n,)
    max_points : int, default=1500
        At most this many rows are mapped (a seeded random sample keeps t-SNE to seconds).
    random_state : int, default=0
        Seeds the sample, PCA and t-SNE: the same data gives the same map.

    Returns
    -------
    coords : ndarray of shape (m, 2)
    labels : ndarray of shape (m,)
        The labels of the sampled rows, in the order of ``coords``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (20, 8)), rng.normal(6, 1, (20, 8))])
    >>> coords, y = embedding_map(X, [0] * 20 + [1] * 20, max_points=30)
    >>> coords.shape, sorted(set(y.tolist()))
    ((30, 2), [0, 1])
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    X = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    if X.ndim != 2 or len(X) != len(y):
        raise FeatxError(
            f"expected embeddings of shape (n, width) and n labels; got {X.shape} and {y.shape}."
        )
    if len(X) < 5:
        raise FeatxError(f"a map needs at least 5 embeddings; got {len(X)}.")
    rng = np.random.default_rng(random_state)
    if len(X) > max_points:
        keep = np.sort(rng.choice(len(X), size=max_points, replace=False))
        X, y = X[keep], y[keep]
    keep_finite = np.isfinite(X).all(axis=1)
    X, y = X[keep_finite], y[keep_finite]
    # One thread: on a busy machine OpenMP's spinning threads made t-SNE 10x slower (measured).
    with threadpool_limits(limits=1):
        n_comp = min(50, X.shape[1], len(X))
        Z = PCA(n_components=n_comp, random_state=random_state).fit_transform(X) \
            if X.shape[1] > n_comp else X
        perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3)))
        coords = TSNE(n_components=2, init="pca", perplexity=perplexity,
                      random_state=random_state).fit_transform(Z)
    return np.asarray(coords), y


def _thumbnail(source: Any) -> bytes | None:
    """A PNG thumbnail of an image file or array; ``None`` when it cannot be read."""
    from PIL import Image, ImageOps

    try:
        if isinstance(source, (str, os.PathLike)):
            with Image.open(source) as opened:
                image = ImageOps.exif_transpose(opened)
                image.load()
        else:
            arr = np.asarray(source)
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            image = Image.fromarray(arr.squeeze())
    except (OSError, ValueError, TypeError):
        return None
    image = image.convert("RGB")
    if max(image.size) > _THUMB:
        image.thumbnail((_THUMB, _THUMB), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"array {np.asarray(source).shape}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _leaderboard_table(board: Any) -> str:
    binary = any(r.roc_auc is not None for r in board)
    leaks = any(getattr(r, "n_test_leaked", None) is not None for r in board)
    head = ["#", "head", f"cv {board.scoring}", "± std", "test", *(["leak-free"] * leaks),
            "bal. acc.", "macro-F1"]
    head += ["ROC AUC"] if binary else []
    head += ["fit s", "best parameters"]
    rows = []
    for i, r in enumerate(board, 1):
        cells = [str(i), r.head, _fmt(r.cv_mean), _fmt(r.cv_std), _fmt(r.test_score),
                 *([_fmt(r.test_score_leak_free)] * leaks), _fmt(r.balanced_accuracy),
                 _fmt(r.macro_f1)]
        cells += [_fmt(r.roc_auc)] if binary else []
        params = ", ".join(f"{k.removeprefix('clf__')}={v!r}" for k, v in
                           sorted(r.best_params.items()))
        cells += [f"{r.fit_seconds:.2f}", params]
        tds = "".join(
            f'<td class="text">{html.escape(c)}</td>' if j in (1, len(cells) - 1)
            else f"<td>{html.escape(c)}</td>" for j, c in enumerate(cells)
        )
        rows.append(f'<tr class="{"best" if i == 1 else "head"}">{tds}</tr>')
    ths = "".join(
        f'<th class="text">{html.escape(h)}</th>' if j in (1, len(head) - 1)
        else f"<th>{html.escape(h)}</th>" for j, h in enumerate(head)
    )
    return f'<table id="leaderboard-table"><tr>{ths}</tr>{"".join(rows)}</table>'


def _per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[Any]) -> str:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(classes), zero_division=0
    )
    rows = []
    for c, p, r, f, n in zip(classes, precision, recall, f1, support, strict=True):
        rows.append(f'<tr><td class="text">{html.escape(str(c))}</td><td>{p:.3f}</td>'
                    f"<td>{r:.3f}</td><td>{f:.3f}</td><td>{int(n)}</td></tr>")
    return ('<table id="per-class-table"><tr><th class="text">class</th><th>precision</th>'
            f'<th>recall</th><th>F1</th><th>images</th></tr>{"".join(rows)}</table>')


def _misclassified(board: Any, eval_sources: Sequence[Any] | None, limit: int) -> str:
    y_true, y_pred = np.asarray(board.y_true), np.asarray(board.y_pred)
    wrong = np.flatnonzero(y_true != y_pred)
    where = "test images" if board.n_test else "training images (out-of-fold predictions)"
    intro = (f"<p>The best head, {html.escape(board.best.head)}, got {len(wrong)} of "
             f"{len(y_true)} {where} wrong.")
    if eval_sources is None:
        return intro + " The images were not given to the report, so none is shown.</p>"
    if len(eval_sources) != len(y_true):
        raise FeatxError(
            f"eval_sources holds {len(eval_sources)} images; expected one per evaluated row of "
            f"the leaderboard ({len(y_true)}: its y_true), in the same order."
        )
    if not len(wrong):
        return intro + "</p>"
    shown = wrong[:limit]
    more = f" The first {len(shown)} are shown." if len(shown) < len(wrong) else ""
    figures = []
    for i in shown:
        thumb = _thumbnail(eval_sources[i])
        name = _name(eval_sources[i])
        true, pred = html.escape(str(y_true[i])), html.escape(str(y_pred[i]))
        picture = (_img(thumb, f"{name}: true {y_true[i]}, predicted {y_pred[i]}", "thumb")
                   if thumb else '<span class="unreadable">(unreadable)</span>')
        figures.append(
            f'<figure class="miss" data-true="{true}" data-pred="{pred}">{picture}'
            f'<figcaption><span class="true">true: {true}</span><br>'
            f'<span class="pred">predicted: {pred}</span><br>'
            f'<span class="src">{html.escape(os.path.basename(name))}</span></figcaption></figure>'
        )
    return intro + more + '</p><div class="thumbs">' + "".join(figures) + "</div>"


def write_report(
    path: str | os.PathLike[str],
    board: Any,
    *,
    embeddings: Any = None,
    labels: Any = None,
    eval_sources: Sequence[Any] | None = None,
    plots: Sequence[str | os.PathLike[str]] | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
    max_points: int = 1500,
    max_thumbnails: int = 60,
    random_state: int = 0,
) -> Path:
    """Write ``report.html``: a self-contained page about a tuned :class:`~featx.Leaderboard`.

    Parameters
    ----------
    path : path
        The HTML file to write.
    board : Leaderboard
        From :func:`featx.tune_heads` (or the layer probe).
    embeddings, labels : array-like, optional
        All the embeddings tuned on (train and test) and their classes, for the t-SNE map.
    eval_sources : sequence of paths or image arrays, optional
        The images behind ``board.y_true``, in its order (the test images, or the training
        images when there was no test set): thumbnails of the ones the best head got wrong.
    plots : sequence of PNG paths, optional
        Plots to inline; by default the leaderboard and the best head's confusion matrix are
        drawn here.
    title : str, optional
    notes : sequence of str
        Extra lines for the summary (data set, backbone, ...).
    max_points : int, default=1500
        At most this many embeddings go into the t-SNE map (a seeded sample).
    max_thumbnails : int, default=60
        At most this many misclassified images are shown.
    random_state : int, default=0
        Seeds the map's sample and t-SNE.

    Returns
    -------
    path : Path

    Examples
    --------
    >>> import os, tempfile
    >>> from featx import tune_heads
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["a", "b"], 20)
    >>> X = rng.normal(size=(40, 4)) + (y == "b")[:, None]
    >>> board = tune_heads(X, y, heads=["logreg"], cv=3)
    >>> page = write_report(os.path.join(tempfile.mkdtemp(), "report.html"), board,
    ...                     embeddings=X, labels=y)
    >>> text = page.read_text()
    >>> "<h2>Leaderboard</h2>" in text, "src=\\"data:image/png;base64," in text
    (True, True)
    """
    from featx._version import __version__
    from featx.report.plots import plot_confusion_matrix, plot_embedding_map, plot_leaderboard

    out = Path(path)
    best = board.best
    y_true, y_pred = np.asarray(board.y_true), np.asarray(board.y_pred)
    accuracy = float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")
    where = (f"{board.n_test} held-out test images" if board.n_test
             else f"{board.n_train} training images, out-of-fold predictions")
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="featx-report-") as tmp:
        if plots is None:
            plots = [
                plot_leaderboard(board, Path(tmp) / "leaderboard.png"),
                plot_confusion_matrix(
                    y_true, y_pred, Path(tmp) / "confusion_matrix.png", labels=list(board.classes),
                    title=f"{best.head}: {where}, accuracy {accuracy:.1%}",
                ),
            ]
        images = "".join(_img(Path(p).read_bytes(), Path(p).stem) for p in plots)
        sections.append(
            '<section id="leaderboard"><h2>Leaderboard</h2>'
            f"<p>Ranked by {board.cv}-fold cross-validated {html.escape(board.scoring)}; the "
            "test set never picks a head.</p>"
            + "".join(f'<p class="note">{html.escape(n)}</p>' for n in getattr(board, "notes", ()))
            + f"{_leaderboard_table(board)}{images}</section>"
        )
        sections.append(
            '<section id="per-class"><h2>Per-class precision and recall</h2>'
            f"<p>{html.escape(best.head)} on {where}.</p>"
            f"{_per_class_table(y_true, y_pred, list(board.classes))}</section>"
        )
        if embeddings is not None and labels is not None:
            coords, mapped = embedding_map(embeddings, labels, max_points=max_points,
                                           random_state=random_state)
            n_all = len(np.asarray(labels))
            picture = plot_embedding_map(
                coords, mapped, Path(tmp) / "map.png",
                title=f"t-SNE of {len(coords)} embeddings"
                + (f" (a seeded sample of {n_all})" if len(coords) < n_all else ""),
            )
            sections.append(
                '<section id="map"><h2>Embedding map</h2><p>t-SNE (after PCA to 50 '
                "dimensions) of the embeddings, coloured by class: classes that overlap here "
                "are the ones a head finds hard to separate.</p>"
                f"{_img(picture.read_bytes(), 'embedding map')}</section>"
            )
        else:
            sections.append('<section id="map"><h2>Embedding map</h2><p>No embeddings were '
                            "given to the report.</p></section>")
    sections.append(
        '<section id="misclassified"><h2>What the best head got wrong</h2>'
        f"{_misclassified(board, eval_sources, max_thumbnails)}</section>"
    )
    heading = title or f"featx: {len(board)} tuned heads"
    summary = [
        f"Best head: <b>{html.escape(best.head)}</b>, cv {html.escape(board.scoring)} "
        + (f"{best.cv_mean:.3f} ± {best.cv_std:.3f}" if np.isfinite(best.cv_std)
           else f"{best.cv_mean:.3f} on the validation block ({best.protocol})")
        + (f", test {best.test_score:.3f}" if best.test_score is not None else "")
        + f". {board.n_train} training images, {board.n_test} test images, "
        f"{len(board.classes)} classes.",
        *(html.escape(n) for n in notes),
    ]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(heading)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(heading)}</h1>\n"
        + "".join(f'<p class="summary">{line}</p>\n' for line in summary)
        + "\n".join(sections)
        + f"\n<footer>Written by featx {html.escape(__version__)} on {stamp}. Self-contained: "
        "every image is inlined; no script, no other file.</footer>\n</body>\n</html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out

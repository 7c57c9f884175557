"""``report.html`` of ``featx audit``: what the audit found, with thumbnails side by side.

:func:`write_audit_report` writes one self-contained page (inline images and style, no script,
as :mod:`featx.report.page` does for tuned heads): the summary, then each duplicate pair and
each leak as two thumbnails side by side with their similarity, the top label issues (the
image, its label and the suggested one) and the top outliers.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from featx.report.page import _STYLE, _img, _thumbnail

__all__ = ["write_audit_report", "write_audit_outputs"]

_AUDIT_STYLE = """
div.pairs { display: flex; flex-wrap: wrap; gap: 14px; }
figure.pair { margin: 0; padding: 4px; border: 1px solid #ddd; font-size: 0.8em;
              text-align: center; width: 214px; }
figure.pair img, figure.issue img { width: 96px; height: 96px; object-fit: contain;
                                    image-rendering: pixelated; background: #fafafa; }
figure.pair .side { display: inline-block; width: 100px; vertical-align: top;
                    word-break: break-all; color: #888; }
figure.issue { margin: 0; width: 150px; font-size: 0.8em; text-align: center; }
figure.issue .given { color: #d62728; }
figure.issue .suggested { color: #2ca02c; }
figure.issue .src { color: #888; word-break: break-all; }
"""


def _picture(source: str, alt: str) -> str:
    thumb = _thumbnail(source) if os.path.isfile(source) else None
    return _img(thumb, alt, "thumb") if thumb else '<span class="unreadable">(no image)</span>'


def _pairs(table: Any, left: str, right: str, limit: int, what: str) -> str:
    n = len(table)
    if not n:
        return f"<p>No {what}.</p>"
    rows = list(table.rows())[:limit]
    more = f" The first {len(rows)} are shown." if len(rows) < n else ""
    cols = list(table.columns)
    figures = []
    for row in rows:
        cells = dict(zip(cols, row, strict=True))
        a, b = str(cells[left]), str(cells[right])
        kind = cells.get("kind", "")
        figures.append(
            f'<figure class="pair" data-similarity="{cells["similarity"]:.4f}">'
            f'<span class="side">{_picture(a, a)}<br>{html.escape(os.path.basename(a))}</span>'
            f'<span class="side">{_picture(b, b)}<br>{html.escape(os.path.basename(b))}</span>'
            f"<figcaption>similarity {cells['similarity']:.3f}"
            + (f" ({html.escape(str(kind))})" if kind else "") + "</figcaption></figure>")
    return (f"<p>{n} {what}.{more}</p>" + '<div class="pairs">' + "".join(figures) + "</div>")


def _issues(table: Any, limit: int) -> str:
    n = len(table)
    if not n:
        return "<p>No label issues (or no labels).</p>"
    rows = list(table.rows())[:limit]
    more = f" The first {len(rows)} are shown." if len(rows) < n else ""
    figures = []
    for path, label, suggested, score in rows:
        name = str(path)
        figures.append(
            f'<figure class="issue" data-score="{score:.4f}">{_picture(name, name)}'
            f'<figcaption><span class="given">label: {html.escape(str(label))}</span><br>'
            f'<span class="suggested">suggested: {html.escape(str(suggested))}</span><br>'
            f"score {score:.3f}<br>"
            f'<span class="src">{html.escape(os.path.basename(name))}</span></figcaption>'
            "</figure>")
    return (f"<p>{n} images whose label disagrees with out-of-fold predictions and their "
            f"neighbours, most likely wrong first.{more}</p>"
            '<div class="thumbs">' + "".join(figures) + "</div>")


def _outliers(table: Any, limit: int) -> str:
    n = len(table)
    if not n:
        return "<p>No outliers.</p>"
    rows = list(table.rows())[:limit]
    figures = [
        f'<figure class="issue">{_picture(str(p), str(p))}<figcaption>score {s:.3f}<br>'
        f'<span class="src">{html.escape(os.path.basename(str(p)))}</span></figcaption>'
        "</figure>" for p, s in rows]
    more = f" The first {len(rows)} are shown." if len(rows) < n else ""
    return (f"<p>{n} images far from all others.{more}</p>"
            '<div class="thumbs">' + "".join(figures) + "</div>")


def write_audit_report(
    path: str | os.PathLike[str],
    result: Any,
    *,
    title: str = "featx audit",
    notes: list[str] | None = None,
    max_shown: int = 60,
) -> Path:
    """Write the audit's ``report.html``.

    Parameters
    ----------
    path : path
        The HTML file to write.
    result : AuditResult
        From :func:`featx.audit`.
    title : str
    notes : list of str, optional
        Lines under the title (the sources, the cache).
    max_shown : int, default=60
        At most this many rows of each finding get thumbnails.

    Returns
    -------
    Path
    """
    from featx._version import __version__

    summary = [html.escape(line.strip()) for line in result.summary_text().splitlines()]
    sections = [
        '<section id="duplicates"><h2>Duplicates</h2>'
        + _pairs(result.duplicates, "path_a", "path_b", max_shown, "duplicate pairs")
        + "</section>",
        '<section id="leaks"><h2>Train/test leaks</h2>'
        + (_pairs(result.leaks, "test_path", "train_path", max_shown,
                  "test images with a copy in training (test left, training right)")
           if result.summary.get("n_test") else "<p>No test set was given.</p>")
        + "</section>",
        '<section id="label-issues"><h2>Label issues</h2>'
        + _issues(result.label_issues, max_shown) + "</section>",
        '<section id="outliers"><h2>Outliers</h2>'
        + _outliers(result.outliers, max_shown) + "</section>",
    ]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}{_AUDIT_STYLE}</style>\n"
        f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        + "".join(f'<p class="summary">{line}</p>\n' for line in summary)
        + "".join(f'<p class="summary">{html.escape(n)}</p>\n' for n in notes or [])
        + "\n".join(sections)
        + f"\n<footer>Written by featx {html.escape(__version__)} on {stamp}. Self-contained: "
        "every image is inlined; no script, no other file.</footer>\n</body>\n</html>\n"
    )
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out


def write_audit_outputs(
    out: str | os.PathLike[str],
    result: Any,
    *,
    title: str = "featx audit",
    notes: list[str] | None = None,
) -> list[Path]:
    """Write ``duplicates.csv``, ``leaks.csv``, ``label_issues.csv``, ``outliers.csv`` and
    ``report.html`` into the folder ``out``, all or nothing.

    Everything is written into a temporary folder beside ``out`` first; then the folder is
    renamed to ``out`` (when ``out`` does not exist) or each file is renamed into it (one
    ``os.replace`` each: a reader sees the old file or the new complete one, never a part).

    Returns
    -------
    list of Path
        The files, where they now are.
    """
    folder = Path(out)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        names = [p.name for p in result.write_csv(tmp)]
        names.append(write_audit_report(tmp / "report.html", result, title=title,
                                        notes=notes).name)
        if not folder.exists():
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the folder's
            os.replace(tmp, folder)
        else:
            for name in names:
                os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [folder / name for name in names]

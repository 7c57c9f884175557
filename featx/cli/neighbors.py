"""``featx neighbors``: the cached images most similar to a query image (or to each of a folder's).

A thin layer over :class:`featx.EmbeddingIndex`: the cache group's index (built once and kept
beside the cache), the query embedded by the backbone the group was made with (never written
into the cache: a query is not part of the collection), a table of the neighbours' source paths,
and with ``--out`` the same as ``neighbors.csv`` and ``neighbors.html`` (thumbnails).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from featx.cli.args import add_command, say_for
from featx.exceptions import CacheGroupError, FeatxError


def add_neighbors_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx neighbors`` to the ``featx`` subcommands."""
    cmd = add_command(
        commands, "neighbors", cmd_neighbors, [flags],
        help="the cached images most similar to a query image or folder",
        description="Find the cached images nearest to QUERY (an image, a folder of images or a "
        "CSV list) by cosine similarity of their embeddings. The query is embedded with the "
        "backbone the cache's embeddings were made with; the cache's index is built once and "
        "kept beside the cache (FILE.index/). Prints query, rank, similarity and the "
        "neighbour's source path; --out also writes neighbors.csv and neighbors.html.",
    )
    cmd.add_argument("query", metavar="QUERY", help="an image file, a folder of images or a CSV")
    cmd.add_argument("--cache", required=True, metavar="FILE", help="the embedding cache")
    cmd.add_argument("-k", type=int, default=10, metavar="K",
                     help="neighbours per query (default 10)")
    cmd.add_argument("--group", metavar="PREFIX",
                     help="the cache group (a fingerprint prefix, as featx info shows) when the "
                     "cache holds several")
    cmd.add_argument("--path-column", default="path",
                     help="with a CSV QUERY: the column of image paths (default path)")
    cmd.add_argument("--out", metavar="DIR",
                     help="also write neighbors.csv and neighbors.html (thumbnails) here")


def cmd_neighbors(args: argparse.Namespace) -> int:
    from featx.audit.index import EmbeddingIndex
    from featx.audit.sources import cached_sources
    from featx.cli.sources import list_source

    say = say_for(args)
    if args.k < 1:
        raise FeatxError(f"-k must be at least 1; got {args.k}.")
    if not Path(args.query).exists():
        raise FeatxError(f"query {args.query!r} does not exist; pass an image file, a folder of "
                         "images or a CSV file.")
    group = _group(args)
    queries = [str(p) for p in list_source(args.query, args.path_column)]
    embedder = _embedder(group)
    Q, names = _embed_queries(embedder, queries)
    index = EmbeddingIndex.from_cache(args.cache, group.fingerprint)
    say(f"{len(index)} cached images ({group.label}); index {index.kind}"
        + (f" at {index.path}" if index.path else ""))
    sims, keys = index.search(Q, min(args.k, len(index)))
    flat = [str(k) for k in keys.ravel()]
    found = dict(zip(flat, cached_sources(args.cache, group.fingerprint, flat), strict=True))
    rows = [(names[q], r + 1, float(sims[q, r]), found.get(str(keys[q, r])) or str(keys[q, r]))
            for q in range(len(names)) for r in range(sims.shape[1]) if sims[q, r] > -2]
    _print_table(rows)
    if args.out:
        _write_out(Path(args.out), rows)
        say(f"wrote {Path(args.out) / 'neighbors.csv'} and {Path(args.out) / 'neighbors.html'}")
    return 0


def _group(args: argparse.Namespace) -> Any:
    from featx.cache.groups import choose_group

    if not Path(args.cache).exists():
        raise FeatxError(f"cache file {args.cache!r} does not exist. Embed the images to search "
                         f"first: featx embed SRC --backbone NAME --cache {args.cache}")
    try:
        group = choose_group(args.cache, args.group, offer_backbone=False)
    except CacheGroupError as exc:
        if not exc.groups:
            raise FeatxError(f"{exc} Run featx embed SRC --backbone NAME --cache {args.cache} "
                             "first.") from None
        raise FeatxError(f"{exc} Pass --group PREFIX.") from None
    if group.rows < 1:
        raise FeatxError(f"cache group {group.fingerprint} of {args.cache} holds no embeddings "
                         f"({group.failures} failed item(s) only); embed images into it "
                         f"first: featx embed SRC --backbone NAME --cache {args.cache}")
    return group


def _embedder(group: Any) -> Any:
    from featx.cache.groups import embedder_params_from_group
    from featx.embed.embedder import ImageEmbedder

    # No cache: a query is embedded, never added to the collection it is compared with.
    return ImageEmbedder(**embedder_params_from_group(group), on_error="skip")


def _embed_queries(embedder: Any, queries: list[str]) -> tuple[Any, list[str]]:
    """The readable queries' rows and names; an unreadable one is said, none readable an error."""
    import numpy as np

    from featx.cli.args import reason

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ImageEmbedder skipped", category=UserWarning)
        Q = embedder.fit_transform(queries)
    report = embedder.report_
    for e in report.errors:
        print(f"  {e.source}: {reason(e)} (left out)")
    names = np.delete(np.asarray(queries, dtype=object), report.dropped).tolist()
    if not names:
        raise FeatxError(f"no query image could be read ({len(queries)} given); pass image "
                         "files PIL can open (PNG, JPEG, ...).")
    return Q, names


def _print_table(rows: list[tuple[str, int, float, str]]) -> None:
    width = max([len("query")] + [len(r[0]) for r in rows])
    print(f"{'query':<{width}}  rank  similarity  neighbour")
    for query, rank, sim, source in rows:
        print(f"{query:<{width}}  {rank:>4}  {sim:>10.4f}  {source}")


def _write_out(out: Path, rows: list[tuple[str, int, float, str]]) -> None:
    """neighbors.csv and neighbors.html, each written to a temporary file and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["query", "rank", "similarity", "neighbor"])
    writer.writerows([(q, r, f"{s:.6f}", n) for q, r, s, n in rows])
    _atomic(out / "neighbors.csv", text.getvalue())
    _atomic(out / "neighbors.html", _page(rows))


def _page(rows: list[tuple[str, int, float, str]]) -> str:
    from featx.report.page import _img, _thumbnail

    def figure(source: str, caption: str) -> str:
        thumb = _thumbnail(source)
        img = _img(thumb, source, "thumb") if thumb else '<div class="none">(not readable)</div>'
        return (f'<figure>{img}<figcaption>{html.escape(caption)}<br>'
                f'<span class="src">{html.escape(source)}</span></figcaption></figure>')

    parts = []
    for query in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == query]
        figures = [figure(query, "query")] + [figure(n, f"{rank}: {sim:.4f}")
                                              for _, rank, sim, n in mine]
        parts.append(f'<h2>{html.escape(query)}</h2><div class="thumbs">{"".join(figures)}</div>')
    style = ("body{font-family:sans-serif;margin:2em}div.thumbs{display:flex;flex-wrap:wrap;"
             "gap:10px}figure{margin:0;width:150px;font-size:.8em;text-align:center}"
             "img.thumb{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;"
             "background:#fafafa}.src{color:#888;word-break:break-all}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>featx neighbors</title>"
            f"<style>{style}</style></head><body><h1>Nearest cached images</h1>"
            f"{''.join(parts)}</body></html>\n")


def _atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

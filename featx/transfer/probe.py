"""The layer probe: which depth of a backbone transfers best to a data set.

:func:`probe_layers` embeds the images once through a network that returns several cut layers
from one forward pass (:func:`featx.embed.engine.embed_items` with one configuration per layer),
caches each layer's pooled rows in the group an ``ImageEmbedder(layer=that_layer)`` reads, tunes the
heads on every layer with the same folds and test split (:func:`featx.tune_heads`), and returns
one leaderboard with a ``layer`` column (:class:`LayerProbe`). Probing k layers costs one forward
pass plus k times the heads.

Wide early layers. Pooled widths stay small (one value per channel), but ``pooling="flatten"``
keeps every position of the feature map: 802,816 values per image at MobileNet's second layer
at 224 px. A flattened layer wider than :data:`MAX_FLATTEN_WIDTH` is refused before anything is
embedded, with a message that names ``"avg"`` and ``"max"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, ImageLoadError
from featx.heads.leaderboard import Leaderboard

__all__ = ["MAX_FLATTEN_WIDTH", "ProbedLayer", "LayerProbe", "probe_layers"]

#: The widest flattened layer :func:`probe_layers` embeds: 65,536 float32 values, 256 kB per
#: image in the cache (MobileNet's last feature map at 224 px is 7 x 7 x 1024 = 50,176).
MAX_FLATTEN_WIDTH = 65_536


@dataclass(frozen=True)
class ProbedLayer:
    """One probed depth.

    Attributes
    ----------
    name : str
        The Keras layer name (``"conv_pw_11_relu"``); the default cut's name, or ``"default"``
        where Keras names that layer by a counter.
    layer : str, int or None
        What ``ImageEmbedder(layer=...)`` takes for it; ``None`` for the default cut.
    depth : int
        Its position among the probed layers, 1 the shallowest (in the order given).
    width : int
        Features per image.
    fingerprint : str
        The cache group holding its rows (that of ``ImageEmbedder(layer=layer, ...)``).
    """

    name: str
    layer: str | int | None
    depth: int
    width: int
    fingerprint: str

    @property
    def is_default(self) -> bool:
        """Whether this is the backbone's default cut (an embedder without ``layer``)."""
        return self.layer is None


@dataclass
class LayerProbe(Leaderboard):
    """A :class:`~featx.Leaderboard` with one row per (layer, head) and a ``layer`` column.

    Attributes
    ----------
    layers : list of ProbedLayer
        The probed depths, shallow to deep (in the order given).
    embedder_params : dict
        The ``ImageEmbedder`` parameters shared by every layer (all but ``layer``).
    embed_seconds : float
        Wall time of the one embedding pass (cache lookups included).
    n_embedded, n_hits : int
        Images that went through the network, and those whose rows all came from the cache.
    dropped : list of int
        Positions of the images left out because they could not be read (``on_error="skip"``).
    test_dropped : list of int
        The same for the images of ``test=``, positions in that set.
    errors : list of ImageLoadError
        Why each left-out image could not be read (training images first, then ``test=``'s).
    """

    layers: list[ProbedLayer] = field(default_factory=list)
    embedder_params: dict[str, Any] = field(default_factory=dict, repr=False)
    embed_seconds: float = 0.0
    n_embedded: int = 0
    n_hits: int = 0
    dropped: list[int] = field(default_factory=list)
    test_dropped: list[int] = field(default_factory=list)
    errors: list[ImageLoadError] = field(default_factory=list, repr=False)

    def layer_of(self, name: str) -> ProbedLayer:
        """The probed layer called ``name``."""
        for p in self.layers:
            if p.name == name:
                return p
        raise KeyError(f"no layer {name!r} was probed; the layers are "
                       f"{[p.name for p in self.layers]}")

    @property
    def best_layer(self) -> ProbedLayer:
        """The layer of the best row."""
        return self.layer_of(self.best.extra["layer"])

    def embedder(self, layer: str | None = None, **params: Any) -> Any:
        """An ``ImageEmbedder`` at the best layer (or at ``layer``, a probed layer's name):
        it reads the probe's cached rows. ``params`` replace the probe's (e.g. ``cache=None``)."""
        from featx.embed.embedder import ImageEmbedder

        chosen = self.best_layer if layer is None else self.layer_of(layer)
        return ImageEmbedder(**{**self.embedder_params, "layer": chosen.layer, **params})

    def best_at(self, name: str) -> Any:
        """The best row (a :class:`~featx.HeadResult`) at the layer called ``name``."""
        for r in self.results:
            if r.extra.get("layer") == name:
                return r
        raise KeyError(f"no layer {name!r} was probed")

    def decision(self) -> str:
        """Which depth won, by how much over the default cut, and with what fold spread."""
        best, top = self.best, self.best_layer
        k = len(self.layers)
        lines = [
            f"best: {best.head} at {top.name} (depth {top.depth} of {k}), cv {self.scoring} "
            f"{best.cv_mean:.3f} ± {best.cv_std:.3f} over {self.cv} folds"
            + (f", test {best.test_score:.3f}" if best.test_score is not None else "") + "."
        ]
        reference = next((p for p in self.layers if p.is_default), None)
        what = "the default cut"
        if reference is None:
            reference, what = self.layers[-1], "the deepest layer probed"
        if reference == top:
            others = [r for r in self.results if r.extra["layer"] != top.name]
            if others:
                runner = others[0]
                gap = best.cv_mean - runner.cv_mean
                lines.append(
                    f"{what} ({top.name}) wins; the next depth, {runner.extra['layer']} "
                    f"({runner.head}), scores {runner.cv_mean:.3f} ± {runner.cv_std:.3f}: "
                    f"{gap:+.3f}, {_spread(gap, best.cv_std, runner.cv_std)}."
                )
            return "\n".join(lines)
        ref = self.best_at(reference.name)
        gap = best.cv_mean - ref.cv_mean
        if gap <= 0:  # a tie: the shallower layer is listed first
            lines.append(
                f"{what} ({reference.name}, depth {reference.depth}) scores the same, "
                f"{ref.cv_mean:.3f} ± {ref.cv_std:.3f} with {ref.head}: no depth beats it."
            )
            return "\n".join(lines)
        lines.append(
            f"{what} ({reference.name}, depth {reference.depth}) scores {ref.cv_mean:.3f} ± "
            f"{ref.cv_std:.3f} with {ref.head}: {top.name} is {gap:+.3f} better, "
            f"{_spread(gap, best.cv_std, ref.cv_std)}."
        )
        return "\n".join(lines)


def _spread(gap: float, std_a: float, std_b: float) -> str:
    spread = max(std_a, std_b)
    if spread <= 0:
        return "with no spread over the folds"
    ratio = gap / spread
    verdict = ("within the fold spread: the difference may be noise" if ratio < 1
               else "beyond the fold spread")
    return f"{ratio:.1f} x the larger fold std ({spread:.3f}), {verdict}"


def _layer_list(backbone: Any, layers: Any) -> list[str | int | None]:
    if isinstance(layers, str) and layers == "auto":
        if not isinstance(backbone, str) or os.path.splitext(backbone)[1] in (".keras", ".h5"):
            raise FeatxError(
                f"layers='auto' needs a registry backbone (featx.list_backbones()); got "
                f"{backbone!r}. Name the layers to probe instead, e.g. layers=['flatten_1', None] "
                "(None is the default cut)."
            )
        from featx.nets.auto_layers import auto_layers

        return list(auto_layers(backbone))
    if isinstance(layers, (str, int)) or layers is None:
        layers = [layers]
    out = list(layers)
    if not out or not all(lay is None or isinstance(lay, (str, int, np.integer)) for lay in out):
        raise FeatxError(
            f"layers={layers!r} is not valid. Expected 'auto' or a list of layer names or "
            "indices (None for the default cut)."
        )
    out = [int(lay) if isinstance(lay, np.integer) else lay for lay in out]
    if len(set(map(str, out))) != len(out):
        raise FeatxError(f"layers={out!r} names a layer twice; expected distinct layers.")
    return out


def _label(backbone: Any, layer: str | int | None) -> str:
    if layer is not None:
        return str(layer)
    if isinstance(backbone, str):
        from featx.exceptions import UnknownBackboneError
        from featx.nets.auto_layers import default_cut_name

        try:
            return default_cut_name(backbone)
        except UnknownBackboneError:
            pass
    return "default"


def probe_layers(
    images: Any,
    y: Any,
    *,
    embedder: Any = None,
    layers: Any = "auto",
    heads: Any = None,
    cv: int = 5,
    test_size: float | None = None,
    test: tuple[Any, Any] | None = None,
    scoring: str = "accuracy",
    search: str = "grid",
    grids: Mapping[str, Mapping[str, list[Any]]] | None = None,
    random_state: int = 0,
    n_jobs: int | None = None,
    max_flatten_width: int = MAX_FLATTEN_WIDTH,
    log: Callable[[str], None] | None = None,
) -> LayerProbe:
    """Probe several depths of one backbone: one forward pass, every layer cached and tuned.

    Parameters
    ----------
    images : sequence of paths, or anything :class:`featx.ImageEmbedder` takes
        The labelled images.
    y : array-like of shape (n_images,)
        Their labels.
    embedder : ImageEmbedder, optional
        The backbone and how images reach it (default: ``ImageEmbedder()``, MobileNet): every
        option but ``layer`` (``layers=`` chooses) is the same for every layer, each layer's
        rows go to the cache group ``embedder.set_params(layer=that_layer)`` reads (so the
        embedder chosen afterwards reads them all), and its ``batch_size``, ``n_workers``,
        ``retry_failed`` and ``verbose`` (progress) run the one pass. Its ``on_error``:
        ``"raise"`` after embedding (and caching) the rest, or ``"skip"``: leave the images
        that cannot be read and their labels out (``"nan"`` is refused: heads need numbers).
    layers : "auto" or sequence of str, int or None, default="auto"
        Which cut layers: ``"auto"`` (registry backbones) takes 5-8 block outputs from early
        layers to the default cut (:func:`featx.nets.auto_layers.auto_layers`); else Keras layer
        names or indices, ``None`` being the default cut. Reported in the order given.
    heads : sequence, optional
        As in :func:`featx.tune_heads` (default: its ``DEFAULT_HEADS``).
    cv, test_size, scoring, search, grids, random_state, n_jobs
        As in :func:`featx.tune_heads`: every layer is tuned on the same folds and test split.
    test : (images, y), optional
        Held-out labelled images, scored at every layer (``test_score``, ``y_true``/``y_pred``
        of the best) and never tuned on; embedded in the same forward pass as ``images`` and
        cached with them. Instead of ``test_size``.
    max_flatten_width : int, default=MAX_FLATTEN_WIDTH
        With ``pooling="flatten"``, refuse layers wider than this (before embedding anything).
    log : callable, optional
        Called with a line per step (embedding, each layer's heads).

    Returns
    -------
    LayerProbe
        A leaderboard with a ``layer`` column, best first; ``decision()`` says which depth won.

    Examples
    --------
    >>> import keras, numpy as np
    >>> from featx import ImageEmbedder
    >>> from featx.transfer.probe import probe_layers
    >>> def tiny(shape):
    ...     x = inp = keras.Input(shape)
    ...     x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="early")(x)
    ...     x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="late")(x)
    ...     return keras.Model(inp, x)
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 12)
    >>> images = rng.integers(0, 100, (24, 16, 16, 3), dtype=np.uint8) + 120 * y[:, None, None,
    ...     None].astype(np.uint8)
    >>> probe = probe_layers(images, y, embedder=ImageEmbedder(tiny, input_size=16),
    ...                      layers=["early", "late"], heads=["logreg"], cv=3)
    >>> probe.columns, sorted(r.extra["layer"] for r in probe)
    (['layer'], ['early', 'late'])
    """
    from sklearn.base import clone

    from featx.embed.embedder import ImageEmbedder
    from featx.embed.engine import embed_items, output_widths
    from featx.embed.images import as_items
    from featx.heads.tuning import tune_heads

    say = log or (lambda line: None)
    embedder = ImageEmbedder() if embedder is None else embedder
    _check_embedder(embedder)
    backbone, cache = embedder.backbone, embedder.cache
    wanted = _layer_list(backbone, layers)
    configs = [clone(embedder).set_params(layer=lay).backbone_config() for lay in wanted]
    items, kind = as_items(images)
    labels = np.asarray(y)
    if labels.shape != (len(items),):
        raise FeatxError(
            f"y must hold one label per image ({len(items)}); got shape {labels.shape}."
        )
    n_train = len(items)
    if test is not None:
        if test_size:
            raise FeatxError("pass test=(images, y) or test_size=, not both.")
        test_items, test_labels = _test_set(test, kind)
        items, labels = [*items, *test_items], np.concatenate([labels, test_labels])
    names = [_label(backbone, lay) for lay in wanted]
    if embedder.pooling == "flatten":
        widths = output_widths(configs, kind, None)
        for name, width in zip(names, widths, strict=True):
            if width > max_flatten_width:
                raise FeatxError(
                    f"pooling='flatten' at layer {name!r} gives {width:,} features per image, "
                    f"above the limit of {max_flatten_width:,} (MAX_FLATTEN_WIDTH: "
                    f"{4 * width / 1e6:.1f} MB per image in the cache, and heads that fit for "
                    "minutes). Use pooling='avg' or pooling='max' (one value per channel), or "
                    "probe deeper layers only."
                )
    say(f"embedding {len(items)} images once for {len(configs)} layers of "
        f"{configs[0].name}" + (f" through the cache {cache}" if cache else ""))
    started = time.perf_counter()
    result = embed_items(configs, items, kind=kind, cache=cache, batch_size=embedder.batch_size,
                         n_workers=embedder.n_workers, retry_failed=embedder.retry_failed,
                         verbose=bool(embedder.verbose))
    embed_seconds = time.perf_counter() - started
    report = result.report
    say(f"  {report.summary()} ({embed_seconds:.1f} s)")
    keep = np.ones(len(items), bool)
    if result.failed:
        if embedder.on_error == "raise":
            lines = "; ".join(str(e) for e in result.failed[:10])
            raise ImageLoadError(
                f"{len(result.failed)} of {len(items)} images",
                f"could not be loaded: {lines}. The others were embedded"
                + (" and cached" if cache else "") + "; pass on_error='skip' to leave the bad "
                "ones (and their labels) out.",
            )
        keep[[e.index for e in result.failed if e.index is not None]] = False
    fit, held = keep.copy(), keep.copy()
    fit[n_train:], held[:n_train] = False, False
    boards: dict[str, Leaderboard] = {}
    for name, rows in zip(names, result.outputs, strict=True):
        say(f"layer {name} ({rows.shape[1]} features):")
        boards[name] = tune_heads(
            rows[fit], labels[fit], heads=heads, cv=cv, test_size=test_size,
            test=(rows[held], labels[held]) if test is not None else None, scoring=scoring,
            search=search, grids=grids, random_state=random_state, n_jobs=n_jobs, log=say,
        )
    probe = LayerProbe.combine(boards, column="layer")
    assert isinstance(probe, LayerProbe)
    probe.layers = [
        ProbedLayer(name=name, layer=lay, depth=i + 1, width=int(rows.shape[1]),
                    fingerprint=config.fingerprint)
        for i, (name, lay, rows, config) in enumerate(
            zip(names, wanted, result.outputs, configs, strict=True))
    ]
    probe.embedder_params = {k: v for k, v in embedder.get_params().items() if k != "layer"}
    probe.embed_seconds = embed_seconds
    probe.n_embedded = report.n_embedded
    probe.n_hits = report.n_hits
    probe.dropped = [int(i) for i in np.flatnonzero(~keep[:n_train])]
    probe.test_dropped = [int(i) for i in np.flatnonzero(~keep[n_train:])]
    probe.errors = list(result.failed)
    return probe


def _check_embedder(embedder: Any) -> None:
    """Refuse what the probe cannot do with an embedder: a cut (``layers=`` chooses), a pooling
    that leaves more than one vector per image, NaN rows."""
    if embedder.layer is not None:
        raise FeatxError(
            f"the embedder is cut at layer={embedder.layer!r}, but probe_layers cuts at each of "
            "layers=; leave the embedder's layer out (None) and name the layers to probe."
        )
    if embedder.pooling not in ("auto", "avg", "max", "flatten", "cls", "cls_avg", "pooled"):
        raise FeatxError(
            f"pooling={embedder.pooling!r} cannot be probed: heads need one vector per image. "
            "Expected 'auto', 'avg', 'max' or 'flatten' ('cls', 'cls_avg' for a Keras Hub "
            "encoder)."
        )
    if embedder.on_error not in ("raise", "skip"):
        raise FeatxError(
            f"on_error={embedder.on_error!r} cannot be probed: heads need numbers. Expected "
            "'raise' or 'skip' (leave the images that cannot be read out)."
        )


def _test_set(test: Any, kind: str) -> tuple[list[Any], np.ndarray]:
    """The items and labels of ``test=(images, y)``, checked like the training set."""
    from featx.embed.images import as_items

    if not isinstance(test, (tuple, list)) or len(test) != 2:
        raise FeatxError(
            f"test= must be a pair (images, y); got {type(test).__name__}."
        )
    items, test_kind = as_items(test[0])
    labels = np.asarray(test[1])
    if test_kind != kind:
        raise FeatxError(f"test= holds {test_kind} but the training set holds {kind}.")
    if labels.shape != (len(items),):
        raise FeatxError(
            f"test= must hold one label per image ({len(items)}); got shape {labels.shape}."
        )
    return list(items), labels


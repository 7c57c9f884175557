"""Keras Hub presets as featx backbones: what ``"keras_hub:<preset>"`` means, without Keras.

``ImageEmbedder("keras_hub:dinov2_small")`` names a Keras Hub preset; ``"keras_hub:/path/dir"``
a preset directory on disk (what ``save_to_preset`` writes, or the Kaggle CLI downloads);
``"keras_hub:kaggle://<org>/<model>/keras/<variant>[/<version>]"`` and
``"keras_hub:hf://<org>/<model>"`` a handle, passed to Keras Hub as it is. This module
resolves any of these into a :class:`~featx.nets.backbones.BackboneConfig`: the family (DINOv2,
SigLIP, CLIP vision, ViT), the native input size, the token pooling and the identity that goes
into the fingerprint, reading at most the directory's JSON files and hashing its weights. It
never imports Keras or Keras Hub (the registry resolves through it); building the network, the
image converter and the token pooling are :mod:`featx.nets.hub_model`'s.

Identity: a preset name is ``<name>@keras-hub-<version>`` (each Keras Hub release pins every
preset's Kaggle handle and version, as ``imagenet@keras-<version>`` does for
``keras.applications``); a handle is the handle with the Keras Hub version (a Kaggle handle
without its version, or a Hugging Face repository, follows what the host serves: pin a Kaggle
version, or download the preset into a directory, for embeddings that cannot change under the
same handle); a directory is the sha256 of its ``config.json`` and
``image_converter.json`` (architecture and preprocessing) and, for its weights, of its weights
files. Two presets never share a cache group.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.exceptions import FeatxError, UnknownBackboneError
from featx.nets.identity import file_sha256, keras_backend_name

# The registry (featx.nets.backbones) imports this module, never the other way round: a preset
# resolves into the fields of a BackboneConfig, which the registry builds.

__all__ = [
    "FAMILIES",
    "HANDLES",
    "HUB_PREFIX",
    "HUB_PREPROCESS",
    "PRESETS",
    "HubFamily",
    "HubPreset",
    "TOKEN_POOLINGS",
    "backbone_names",
    "block_name",
    "describe_preset",
    "download_hint",
    "feature_map_pooling",
    "handle_model",
    "hub_auto_layers",
    "is_hub",
    "missing_extra_message",
    "hub_fields",
]

HUB_PREFIX = "keras_hub:"
#: The preprocessing name of a preset's own image converter (its scale and offset).
HUB_PREPROCESS = "keras_hub.image_converter"
#: Poolings of token outputs (N, T, D), beside "avg", "max" and "flatten".
TOKEN_POOLINGS = ("cls", "cls_avg", "pooled")


@dataclass(frozen=True)
class HubFamily:
    """A family of Keras Hub image encoders and how its tokens are pooled.

    Attributes
    ----------
    name : str
        ``"dinov2"``, ``"siglip"``, ``"clip"`` or ``"vit"``.
    classes : tuple of str
        The Keras Hub classes a preset's ``config.json`` names (a two-tower backbone's vision
        encoder is used).
    has_cls : bool
        Whether the first token is a class token.
    pooled : bool
        Whether the encoder has its own pooled output (SigLIP's attention-pooling head).
    default_pooling : str
        What ``pooling="auto"`` means at the default cut, and why (``source``).
    source : str
        Where the default pooling comes from.
    """

    name: str
    classes: tuple[str, ...]
    has_cls: bool
    pooled: bool
    default_pooling: str
    source: str


FAMILIES: dict[str, HubFamily] = {
    f.name: f for f in (
        HubFamily("dinov2", ("DINOV2Backbone",), True, False, "cls_avg",
                  "DINOv2's linear evaluation: the class token concatenated with the mean of "
                  "the patch tokens (Oquab et al. 2023, sec. 7)"),
        HubFamily("siglip", ("SigLIPVisionEncoder", "SigLIPBackbone"), False, True, "pooled",
                  "SigLIP's own image embedding: its multihead attention-pooling head "
                  "(Zhai et al. 2023)"),
        HubFamily("clip", ("CLIPVisionEncoder", "CLIPBackbone"), True, False, "cls",
                  "CLIP's image representation: the class token after the final layer norm, "
                  "before the projection (Radford et al. 2021)"),
        HubFamily("vit", ("ViTBackbone",), True, False, "cls",
                  "ViT's image representation: the class token after the final layer norm "
                  "(Dosovitskiy et al. 2021)"),
    )
}


def _rows() -> dict[str, tuple[str, int, int, int]]:
    """The presets featx knows offline: name -> (family, native size, width, blocks). The
    widths and depths are the architectures' (ViT-S/B/L/H, SigLIP So400m, ...)."""
    size_word = {"small": (384, 12), "base": (768, 12), "large": (1024, 24),
                 "huge": (1280, 32), "giant": (1536, 40), "so400m": (1152, 27)}
    rows: dict[str, tuple[str, int, int, int]] = {}
    for reg in ("", "with_registers_"):
        for word in ("small", "base", "large", "giant"):
            rows[f"dinov2_{reg}{word}"] = ("dinov2", 224, *size_word[word])
    for name in ("siglip_base_patch16_224", "siglip_base_patch16_256", "siglip_base_patch16_384",
                 "siglip_base_patch16_512", "siglip_large_patch16_256", "siglip_large_patch16_384",
                 "siglip_so400m_patch14_224", "siglip_so400m_patch14_384",
                 "siglip2_base_patch16_224", "siglip2_base_patch16_256",
                 "siglip2_base_patch32_256", "siglip2_base_patch16_384",
                 "siglip2_large_patch16_256", "siglip2_large_patch16_384",
                 "siglip2_large_patch16_512", "siglip2_so400m_patch14_224",
                 "siglip2_so400m_patch14_384", "siglip2_so400m_patch16_256",
                 "siglip2_so400m_patch16_384", "siglip2_so400m_patch16_512"):
        word = name.split("_")[1]
        rows[name] = ("siglip", int(name.rsplit("_", 1)[1]), *size_word[word])
    clip = {"clip_vit_base_patch16": (224, "base"), "clip_vit_base_patch32": (224, "base"),
            "clip_vit_large_patch14": (224, "large"), "clip_vit_large_patch14_336": (336, "large"),
            "clip_vit_b_32_laion2b_s34b_b79k": (224, "base"),
            "clip_vit_h_14_laion2b_s32b_b79k": (224, "huge")}
    for name, (size, word) in clip.items():
        rows[name] = ("clip", size, *size_word[word])
    for name in ("vit_base_patch16_224_imagenet", "vit_base_patch16_384_imagenet",
                 "vit_large_patch16_224_imagenet", "vit_large_patch16_384_imagenet",
                 "vit_base_patch32_384_imagenet", "vit_large_patch32_384_imagenet",
                 "vit_base_patch16_224_imagenet21k", "vit_base_patch32_224_imagenet21k",
                 "vit_huge_patch14_224_imagenet21k", "vit_large_patch16_224_imagenet21k",
                 "vit_large_patch32_224_imagenet21k"):
        word = name.split("_")[1]
        rows[name] = ("vit", int(name.split("_")[3]), *size_word[word])
    return rows


#: Keras Hub presets featx knows without a network: name -> (family, native size, width of the
#: default pooling's token, transformer blocks). Other preset names work with ``input_size=``.
PRESETS: dict[str, tuple[str, int, int, int]] = _rows()


@dataclass(frozen=True)
class HubPreset:
    """A Keras Hub preset as featx sees it before anything is built.

    Attributes
    ----------
    preset : str
        What Keras Hub's ``from_preset`` is given: a preset name, a ``kaggle://`` or ``hf://``
        handle, or a directory's absolute path.
    is_dir : bool
        A local preset directory.
    family : HubFamily
        Its family.
    input_size : int or None
        Its native (square) input size, when known.
    width : int or None
        The hidden width of its tokens, when known.
    num_layers : int or None
        Its transformer blocks, when known.
    """

    preset: str
    is_dir: bool
    family: HubFamily
    input_size: int | None
    width: int | None
    num_layers: int | None


def is_hub(backbone: Any) -> bool:
    """Whether ``backbone`` names a Keras Hub preset (``"keras_hub:<preset>"``)."""
    return isinstance(backbone, str) and backbone.startswith(HUB_PREFIX)


def _family_of_class(class_name: str, where: str) -> HubFamily:
    for family in FAMILIES.values():
        if class_name in family.classes:
            return family
    known = ", ".join(c for f in FAMILIES.values() for c in f.classes)
    raise UnknownBackboneError(
        f"{where} holds a Keras Hub {class_name}, which featx does not embed with yet. "
        f"Expected one of: {known}."
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FeatxError(
            f"could not read {str(path)!r}: {exc}. Expected a Keras Hub preset directory "
            "written by save_to_preset (config.json, model.weights.h5, image_converter.json)."
        ) from exc
    if not isinstance(data, dict):
        raise FeatxError(f"{str(path)!r} does not hold a JSON object; is it a Keras Hub preset?")
    return data


def _vision_config(config: dict[str, Any]) -> dict[str, Any]:
    """The image encoder's arguments (a two-tower backbone nests them under vision_encoder)."""
    args: dict[str, Any] = config.get("config", {})
    vision = args.get("vision_encoder")
    if isinstance(vision, dict):
        nested: dict[str, Any] = vision.get("config", {})
        return nested
    return args


def _describe_dir(path: Path) -> HubPreset:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnknownBackboneError(
            f"{str(path)!r} is not a Keras Hub preset directory: it has no config.json. "
            "Expected a directory written by keras_hub's save_to_preset (or downloaded with the "
            "Kaggle CLI)."
        )
    config = _read_json(config_file)
    family = _family_of_class(str(config.get("class_name")), repr(str(path)))
    args = _vision_config(config)
    size: int | None = None
    converter = path / "image_converter.json"
    if converter.is_file():
        image_size = _read_json(converter).get("config", {}).get("image_size")
        if image_size:
            size = int(image_size[0])
    if size is None and args.get("image_shape"):
        size = int(args["image_shape"][0])
    layers = args.get("num_layers")
    return HubPreset(str(path.resolve()), True, family, size, args.get("hidden_dim"),
                     int(layers) if layers is not None else None)


def describe_preset(text: str) -> HubPreset:
    """What ``"keras_hub:<preset>"`` names (``text`` without the prefix); reads only files.

    Examples
    --------
    >>> from featx.nets.hub import describe_preset
    >>> p = describe_preset("dinov2_small")
    >>> p.family.name, p.input_size, p.width, p.num_layers
    ('dinov2', 224, 384, 12)
    """
    if not text:
        raise UnknownBackboneError(
            f"backbone {HUB_PREFIX!r} names no preset. Expected 'keras_hub:<preset name>' "
            f"(e.g. keras_hub:dinov2_small) or 'keras_hub:<preset directory>'."
        )
    if "://" in text:
        return _describe_handle(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _describe_dir(path)
    if os.sep in text or "/" in text or text.startswith((".", "~")):
        raise UnknownBackboneError(
            f"Keras Hub preset directory {text!r} does not exist. Expected a directory written "
            "by save_to_preset, or a preset name such as 'dinov2_small'."
        )
    return _named(text, text)


def _named(preset: str, name: str) -> HubPreset:
    """``preset`` (a preset name, or a handle whose model is ``name``): its row in
    :data:`PRESETS`, else its family from the name's prefix."""
    key = name.replace("-", "_").lower()
    if key in PRESETS:
        family, size, width, layers = PRESETS[key]
        return HubPreset(preset, False, FAMILIES[family], size, width, layers)
    for prefix, family in (("dinov2", "dinov2"), ("siglip", "siglip"), ("medsiglip", "siglip"),
                           ("clip", "clip"), ("vit", "vit")):
        if key.startswith(prefix):
            return HubPreset(preset, False, FAMILIES[family], None, None, None)
    raise UnknownBackboneError(
        f"Keras Hub preset {preset!r} is not one featx embeds with. Expected a DINOv2, SigLIP, "
        f"CLIP or ViT preset (e.g. {', '.join(list(PRESETS)[:3])}, ...; "
        "featx.list_backbones(hub=True) lists them), a Kaggle or Hugging Face handle "
        f"({', '.join(HANDLES.values())}) or a local preset directory."
    )


#: The handles Keras Hub downloads a preset from, and their form.
HANDLES = {"kaggle": "kaggle://<org>/<model>/keras/<variant>[/<version>]",
           "hf": "hf://<org>/<model>"}


def handle_model(handle: str) -> str:
    """The model a ``kaggle://`` or ``hf://`` handle names (Kaggle's variant, Hugging Face's
    repository), checked against the form Keras Hub takes.

    Examples
    --------
    >>> handle_model("kaggle://keras/dinov2/keras/dinov2_small/1")
    'dinov2_small'
    >>> handle_model("hf://keras/siglip_base_patch16_224")
    'siglip_base_patch16_224'
    """
    scheme, _, path = handle.partition("://")
    parts = path.split("/")
    if scheme not in HANDLES:
        raise UnknownBackboneError(
            f"Keras Hub preset {handle!r} names a {scheme}:// handle, which featx does not pass "
            f"on. Expected {' or '.join(HANDLES.values())}, a preset name or a local directory."
        )
    kaggle = scheme == "kaggle"
    if "" in parts or len(parts) not in ((4, 5) if kaggle else (2,)):
        raise UnknownBackboneError(
            f"Keras Hub preset handle {handle!r} is not of the form {HANDLES[scheme]} (e.g. "
            + ("'kaggle://keras/dinov2/keras/dinov2_small/1'" if kaggle
               else "'hf://keras/dinov2_small'") + ")."
        )
    return parts[3] if kaggle else parts[1]


def _describe_handle(handle: str) -> HubPreset:
    """A Kaggle or Hugging Face handle, passed to Keras Hub as it is: its family (and, for a
    model featx knows, its size and depth) from the model's name."""
    return _named(handle, handle_model(handle))


def keras_hub_version() -> str:
    try:
        return importlib.metadata.version("keras-hub")
    except importlib.metadata.PackageNotFoundError:
        raise FeatxError(missing_extra_message()) from None


def missing_extra_message() -> str:
    return ("Keras Hub backbones need the keras-hub package, which is not installed: "
            "pip install 'featx[hub]'.")


def download_hint(preset: str) -> str:
    """How to get a preset (a name or a handle) onto a machine that cannot download it."""
    local = handle_model(preset) if "://" in preset else preset
    if preset.startswith("kaggle://"):
        cli = (f"kaggle models instances versions download {preset[len('kaggle://'):]}, then "
               "unpack it")
    elif preset.startswith("hf://"):
        cli = f"hf download {preset[len('hf://'):]} --local-dir {local}"
    else:
        cli = (f"kaggle models instances versions download keras/<model>/keras/{preset}/"
               "<version>, then unpack it")
    return (
        f"Download it on a machine with a network: python -c \"import keras_hub as h; "
        f"h.models.Backbone.from_preset('{preset}').save_to_preset('{local}'); "
        f"h.layers.ImageConverter.from_preset('{preset}').save_to_preset('{local}')\" "
        f"(or the command line: {cli}), copy the directory here and "
        f"pass ImageEmbedder('keras_hub:/path/to/{local}')."
    )


def _dir_digest(path: Path, names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + file_sha256(path / name).encode() + b"\0")
    return h.hexdigest()


def _weights_files(path: Path) -> list[str]:
    names = sorted(p.name for p in path.iterdir()
                   if p.is_file() and (p.name.endswith(".weights.h5")
                                       or p.name == "model.weights.json"))
    if not names:
        raise FeatxError(
            f"Keras Hub preset directory {str(path)!r} has no weights file (model.weights.h5). "
            "Expected a directory written by save_to_preset; pass weights=None for a random "
            "initialisation of its architecture."
        )
    return names


def _identity(preset: HubPreset, weights: Any) -> tuple[str, str]:
    """(architecture and preprocessing identity, weights identity)."""
    if weights not in ("imagenet", "preset", None):
        raise FeatxError(
            f"weights={weights!r} is not understood for a Keras Hub preset. Expected "
            "'preset' (or the default 'imagenet'): the preset's own weights, or None for a "
            "seeded random initialisation of its architecture."
        )
    random_id = f"random@seed0:{keras_backend_name()}"
    if not preset.is_dir:
        version = keras_hub_version()
        return (f"{preset.preset}@keras-hub-{version}",
                random_id if weights is None else f"preset@keras-hub-{version}")
    path = Path(preset.preset)
    arch = ["config.json"] + (["image_converter.json"]
                              if (path / "image_converter.json").is_file() else [])
    arch_id = f"sha256:{_dir_digest(path, arch)}"
    if weights is None:
        return arch_id, random_id
    return arch_id, f"sha256:{_dir_digest(path, _weights_files(path))}"


def feature_map_pooling(pooling: str) -> str:
    """A pooling for a feature map (every backbone but a Keras Hub one): ``"auto"`` is avg."""
    if pooling in TOKEN_POOLINGS:
        raise ValueError(
            f"pooling={pooling!r} pools the tokens of a Keras Hub encoder ('keras_hub:<preset>'). "
            "Expected 'auto', 'avg', 'max', 'flatten' or 'none' for this backbone."
        )
    return "avg" if pooling == "auto" else pooling


def backbone_names(registry: list[str], *, hub: bool, network: bool | None) -> list[str]:
    """:func:`featx.list_backbones`: the registry's names, with Keras Hub's presets featx knows
    (``hub=True``; their weights come from Kaggle, or a preset directory:
    ``"keras_hub:/path"``); ``network=False`` keeps the backbones whose pretrained weights featx
    installs without a network (``featx weights install``), ``network=True`` those whose weights
    need one (Keras or Keras Hub downloads them).

    Examples
    --------
    >>> from featx import list_backbones
    >>> list_backbones(network=False)
    ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'mobilenet']
    >>> "keras_hub:dinov2_small" in list_backbones(hub=True, network=True)
    True
    """
    from featx._home import INSTALLABLE

    names = registry + ([HUB_PREFIX + p for p in sorted(PRESETS)] if hub else [])
    if network is None:
        return names
    return [n for n in names if (n not in INSTALLABLE) == network]


def block_name(i: int) -> str:
    """featx's name of transformer block ``i`` (0-based) of a Keras Hub encoder."""
    return f"block_{i}"


def _check_pooling(preset: HubPreset, layer: str | int | None, pooling: str) -> str:
    family = preset.family
    if pooling == "auto":
        if layer is None:
            return family.default_pooling
        return "cls" if family.has_cls else "avg"
    if pooling == "pooled" and (layer is not None or not family.pooled):
        where = "at a block" if layer is not None else f"for {family.name}"
        raise ValueError(
            f"pooling='pooled' is the encoder's own pooled output, which SigLIP has at its "
            f"default cut and which is not there {where}. Expected 'cls', 'avg' or 'cls_avg' "
            "(or 'auto')."
        )
    if pooling in ("cls", "cls_avg") and not family.has_cls:
        raise ValueError(
            f"pooling={pooling!r} needs a class token, which {family.name} encoders do not "
            "have. Expected 'pooled' (its attention-pooling head), 'avg' or 'max'."
        )
    if pooling == "none":
        raise ValueError(
            "pooling='none' would keep every token (N, T, D), but an embedding is one vector "
            "per image. Expected 'auto', 'cls', 'avg', 'cls_avg', 'max' or 'flatten'."
        )
    return pooling


def hub_fields(
    backbone: str,
    *,
    weights: Any,
    layer: str | int | None,
    pooling: str,
    size: tuple[int, int] | None,
    resize: str,
    prep: str,
) -> dict[str, Any]:
    """The fields of ``"keras_hub:<preset>"``'s ``BackboneConfig``, found from files only."""
    preset = describe_preset(backbone[len(HUB_PREFIX):])
    source_id, weights_id = _identity(preset, weights)
    if size is None:
        if preset.input_size is None:
            raise FeatxError(
                f"featx does not know the native input size of Keras Hub preset "
                f"{preset.preset!r}. Pass input_size= (the size in its name, e.g. 224), or a "
                "local preset directory (its image_converter.json says)."
            )
        size = (preset.input_size, preset.input_size)
    if isinstance(layer, str) and layer not in ("embeddings",) and not (
        layer.startswith("block_") and layer[6:].lstrip("-").isdigit()
    ):
        raise ValueError(
            f"layer={layer!r} is not a layer of a Keras Hub encoder. Expected 'embeddings', "
            "'block_<i>' (transformer block i, from 0), an int i (block i; -1 the last) or "
            "None (the encoder's output after its final norm)."
        )
    return dict(
        kind="hub", name=backbone, weights=weights, weights_id=weights_id, layer=layer,
        pooling=_check_pooling(preset, layer, pooling), input_size=size, resize=resize,
        preprocess=HUB_PREPROCESS if prep == "auto" else prep, source=preset,
        source_id=source_id,
    )


def hub_auto_layers(backbone: str) -> list[str | None]:
    """``layers="auto"`` for a Keras Hub preset: five transformer blocks spread from early to
    late, then the default cut (``None``)."""
    preset = describe_preset(backbone[len(HUB_PREFIX):])
    n = preset.num_layers
    if not n:
        raise FeatxError(
            f"featx does not know how many blocks Keras Hub preset {preset.preset!r} has, so "
            "layers='auto' cannot choose them. Name them (layers=['block_3', 'block_7', None]) "
            "or pass a local preset directory."
        )
    picks = sorted({max(0, k * n // 6 - 1) for k in range(1, 6)})
    return [*(block_name(i) for i in picks), None]

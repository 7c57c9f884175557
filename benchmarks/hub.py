"""Keras Hub encoders through featx: a ViT-S/14 at 224 px (DINOv2-small's shape, random weights)
from JPEG photos, per engine, against each engine's model-only ceiling; and what the common
preset shapes cost per image.

    .venv/bin/python -m benchmarks.hub [--images 256] [--batch-size 32] [--repeats 2]
        [--shapes dinov2_small,siglip_base_patch16_224,...] [--shape-images 64]

Every measurement runs in a fresh process (``--method``), on a random-weight preset of the
shape saved to a temporary directory (random weights cost the same as real ones):

  keras ceiling     featx's compiled Keras network (TensorFlow) on pixels already decoded and
                    resized (the converter's scale and offset inside, as featx runs it)
  openvino ceiling  the same network converted by featx and run by OpenVINO's CPU plugin in
                    float32, on the same pixels
  featx             ImageEmbedder("keras_hub:<dir>", engine=...) from the JPEG files (decoding,
                    resizing and the network overlapping), no cache

The methods compared run alternately in one process (so that a busy machine slows each alike),
the fastest repeat of each reported; bfloat16 rows (OpenVINO on AMX units) give other numbers
and are set apart.

The table (with the machine) is printed and written to benchmarks/results/hub.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

#: Random-weight stand-ins for presets: name -> (family, image size, patch, blocks, width, heads,
#: MLP width). The architectures are the published ones (ViT-S/B; SigLIP's and CLIP's base).
SHAPES: dict[str, tuple[str, int, int, int, int, int, int]] = {
    "dinov2_small": ("dinov2", 224, 14, 12, 384, 6, 1536),
    "dinov2_base": ("dinov2", 224, 14, 12, 768, 12, 3072),
    "siglip_base_patch16_224": ("siglip", 224, 16, 12, 768, 12, 3072),
    "clip_vit_base_patch16": ("clip", 224, 16, 12, 768, 12, 3072),
    "clip_vit_base_patch32": ("clip", 224, 32, 12, 768, 12, 3072),
    "vit_base_patch16_224_imagenet": ("vit", 224, 16, 12, 768, 12, 3072),
}
IMAGENET = {"scale": [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)],
            "offset": [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]}


def make_preset(shape: str, root: Path) -> Path:
    """A random-weight preset directory of ``shape`` (built once per ``root``)."""
    path = root / shape
    if (path / "config.json").is_file():
        return path
    import keras
    import keras_hub

    family, size, patch, blocks, width, heads, mlp = SHAPES[shape]
    keras.utils.set_random_seed(0)
    common = {"patch_size": patch, "num_layers": blocks, "hidden_dim": width,
              "num_heads": heads, "intermediate_dim": mlp, "image_shape": (size, size, 3)}
    if family == "dinov2":
        backbone = keras_hub.models.DINOV2Backbone(position_embedding_shape=(518, 518, 3),
                                                   **common)
        converter = keras_hub.layers.DINOV2ImageConverter(image_size=(size, size), **IMAGENET)
    elif family == "siglip":
        backbone = keras_hub.models.SigLIPVisionEncoder(**common)
        converter = keras_hub.layers.SigLIPImageConverter(image_size=(size, size),
                                                          scale=1 / 127.5, offset=-1.0)
    elif family == "clip":
        backbone = keras_hub.models.CLIPVisionEncoder(**common)
        converter = keras_hub.layers.CLIPImageConverter(image_size=(size, size), **IMAGENET)
    else:
        backbone = keras_hub.models.ViTBackbone(
            image_shape=(size, size, 3), patch_size=patch, num_layers=blocks, num_heads=heads,
            hidden_dim=width, mlp_dim=mlp)
        converter = keras_hub.layers.ViTImageConverter(image_size=(size, size),
                                                       scale=1 / 127.5, offset=-1.0)
    backbone.save_to_preset(str(path))
    converter.save_to_preset(str(path))
    return path


def _pixels(paths: list[str], size: int) -> np.ndarray:
    from featx.embed.images import Item, load_pixels

    return np.stack([load_pixels(Item("path", p, p), (size, size)) for p in paths])


def _method(method: str, preset: Path, paths: list[str], batch: int,
            precision: str = "float32") -> Any:
    """A function running the whole measured work once (warmed up before the clock)."""
    from featx import ImageEmbedder
    from featx.nets.backbones import resolve_backbone
    from featx.nets.build import get_network

    backbone = f"keras_hub:{preset}"
    if method.endswith("_ceiling"):
        engine = method.removesuffix("_ceiling")
        network = get_network(resolve_backbone(backbone, engine=engine, precision=precision))
        assert network.engine == engine, network.note
        x = _pixels(paths, network.sample_shape[0])
        network.embed(x[:batch])

        def ceiling() -> None:
            for i in range(0, len(x), batch):
                network.embed(x[i : i + batch])

        return ceiling
    engine = method.removeprefix("featx_")
    emb = ImageEmbedder(backbone, engine=engine, batch_size=batch, precision=precision)
    emb.fit_transform(paths[:batch])

    def featx() -> None:
        assert emb.fit_transform(paths).shape[0] == len(paths)

    return featx


#: What ``--method`` may name: one method, or several measured alternately in one process.
GROUPS = {
    "all": ["keras_ceiling", "openvino_ceiling", "featx_keras", "featx_openvino",
            "openvino_ceiling_bf16", "featx_openvino_bf16"],
    "ceilings": ["keras_ceiling", "openvino_ceiling"],
}


def _measure(args: argparse.Namespace) -> None:
    """One method, or a group of them alternately in one process (so that a busy machine slows
    each alike); the fastest repeat of each is reported."""
    paths = sorted(str(p) for p in Path(args.folder).glob("*.jpg"))[: args.n]
    methods = GROUPS.get(args.method, [args.method])
    runs = {m: _method(m.removesuffix("_bf16"), Path(args.preset), paths, args.batch_size,
                       "mixed_bfloat16" if m.endswith("_bf16") else "float32")
            for m in methods}
    best = {m: (float("inf"), 0.0) for m in methods}
    for _ in range(args.repeats):
        for method, run in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            seconds = time.perf_counter() - t0
            if seconds < best[method][0]:
                best[method] = (seconds, time.process_time() - c0)
    for method, (seconds, cpu) in best.items():
        print(json.dumps({"method": method, "images": len(paths), "seconds": seconds,
                          "images_per_s": len(paths) / seconds,
                          "cpu_ms": 1000 * cpu / len(paths)}))


def measure_all(method: str, preset: Path, folder: Path, n: int, batch: int,
                repeats: int) -> dict[str, dict[str, Any]]:
    """Run ``--method`` in a fresh process; its results by method."""
    cmd = [sys.executable, "-m", "benchmarks.hub", "--method", method, "--preset", str(preset),
           "--folder", str(folder), "--n", str(n), "--batch-size", str(batch),
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    for r in lines:
        print(f"  {preset.name:<30} {r['method']:<16} {r['images_per_s']:7.1f} img/s", flush=True)
    return {r["method"]: r for r in lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="preset shapes for the cost-per-image table ('' for none)")
    parser.add_argument("--shape-images", type=int, default=64)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.method:
        _measure(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="featx-hub-bench-"))
    os.environ.setdefault("FEATX_HOME", str(work / "home"))
    try:
        return _tables(args, work)
    finally:  # presets and converted models: about 3.5 GB with every shape
        shutil.rmtree(work, ignore_errors=True)


def _tables(args: argparse.Namespace, work: Path) -> int:
    from benchmarks.photos import make_photo_folder
    from benchmarks.run import machine

    folder = work / "photos"
    make_photo_folder(folder, args.images)
    main_preset = make_preset("dinov2_small", work)
    print(f"ViT-S/14 at 224 px (dinov2_small's shape, random weights), {args.images} photos")
    res = measure_all("all", main_preset, folder, args.images, args.batch_size, args.repeats)
    best = max(res["keras_ceiling"]["images_per_s"], res["openvino_ceiling"]["images_per_s"])
    bf16 = res["openvino_ceiling_bf16"]["images_per_s"]
    lines = [f"<!-- written by benchmarks/hub.py on {time.strftime('%Y-%m-%d')} -->",
             f"Machine: {machine()}", "",
             f"### ViT-S/14, 224 px (DINOv2-small's shape, random weights): {args.images} JPEG "
             f"photos, batch {args.batch_size}, fastest of {args.repeats} (all six "
             "alternating in one process)", "",
             "| method | images/s | vs its engine's ceiling | vs the faster ceiling | "
             "CPU ms per image |", "|---|---:|---:|---:|---:|"]
    labels = {"keras_ceiling": "Keras ceiling (TensorFlow), model only",
              "openvino_ceiling": "OpenVINO ceiling, float32, model only",
              "featx_keras": "featx, engine='keras', from JPEG files",
              "featx_openvino": "featx, engine='openvino', from JPEG files",
              "openvino_ceiling_bf16": "OpenVINO ceiling, bfloat16, model only",
              "featx_openvino_bf16": "featx, engine='openvino', precision='mixed_bfloat16'"}
    for method, r in res.items():
        engine = "keras" if "keras" in method else "openvino"
        own = (bf16 if method.endswith("_bf16")
               else res[f"{engine}_ceiling"]["images_per_s"])
        lines.append(f"| {labels[method]} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / own:.2f}x | **{r['images_per_s'] / best:.2f}x** | "
                     f"{r['cpu_ms']:.0f} |")
    lines += ["", "(\"The faster ceiling\" is the faster float32 one; bfloat16 gives other "
              "numbers, see benchmarks/results/precision-accuracy.md.)"]
    shapes = [s for s in args.shapes.split(",") if s]
    if shapes:
        lines += ["", f"### Cost per image by preset shape (random weights, model only, "
                  f"{args.shape_images} images, batch {args.batch_size}, fastest of "
                  f"{args.repeats}, both engines alternating in one process)", "",
                  "| preset | family | input | default pooling | width | Keras ms/image | "
                  "OpenVINO ms/image |", "|---|---|---:|---|---:|---:|---:|"]
        from featx.nets.backbones import resolve_backbone

        for shape in shapes:
            preset = make_preset(shape, work)
            config = resolve_backbone(f"keras_hub:{preset}")
            family, size, _, _, width, _, _ = SHAPES[shape]
            both = measure_all("ceilings", preset, folder, args.shape_images, args.batch_size,
                               args.repeats)
            ms = {e: 1000 / both[f"{e}_ceiling"]["images_per_s"] for e in ("keras", "openvino")}
            out_width = 2 * width if config.pooling == "cls_avg" else width
            lines.append(f"| {shape} | {family} | {size} | {config.pooling} | {out_width} | "
                         f"{ms['keras']:.0f} | {ms['openvino']:.0f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hub.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

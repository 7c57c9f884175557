"""What the layer probe's embedding costs: a 6-layer probe against one ``featx embed`` pass.

Both embed the same JPEG photos (benchmarks/photos.py) with the same backbone into a fresh cache:
the baseline is ``ImageEmbedder(backbone, cache=...)`` at its default cut (what ``featx embed``
runs); the probe is the embedding part of ``probe_layers(layers="auto")``: one forward pass of a
network with six outputs, six cache groups written. Networks are built before the clock (both
are built once per process and shared); runs alternate, and the median is reported.

Run (from the repository root):

    .venv/bin/python -m benchmarks.probe                     # 400 photos, MobileNet, 3 runs
    .venv/bin/python -m benchmarks.probe --n 1000 --backbone mobilenet --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="photos (default 400)")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engine", default="auto", choices=("auto", "keras", "openvino"))
    parser.add_argument("--photos", default=None, help="folder for the photos (default: temp)")
    args = parser.parse_args(argv)

    from benchmarks.photos import make_photo_folder
    from featx import ImageEmbedder
    from featx.embed.engine import embed_items
    from featx.embed.images import as_items
    from featx.nets.auto_layers import auto_layers
    from featx.nets.build import get_network

    work = Path(tempfile.mkdtemp(prefix="featx-probe-bench-"))
    paths = make_photo_folder(Path(args.photos) if args.photos else work / "photos", args.n)
    layers = auto_layers(args.backbone)
    params = dict(backbone=args.backbone, input_size=args.input_size, engine=args.engine)
    configs = [ImageEmbedder(**params, layer=lay).backbone_config() for lay in layers]
    items, _ = as_items(paths)
    baseline = ImageEmbedder(**params)
    # Build both networks (and compile their forward passes) before the clock.
    probe_net = get_network(configs)
    base_net = get_network(configs[-1])
    warm = items[:8]
    embed_items(configs, warm)
    embed_items(configs[-1], warm)

    times: dict[str, list[float]] = {"embed": [], "probe": []}
    for run in range(args.runs):
        for what in ("embed", "probe") if run % 2 == 0 else ("probe", "embed"):
            cache = work / f"{what}-{run}.h5"
            started = time.perf_counter()
            if what == "embed":
                baseline.set_params(cache=str(cache)).transform(paths)
            else:
                embed_items(configs, items, cache=cache)
            times[what].append(time.perf_counter() - started)
    embed_s = statistics.median(times["embed"])
    probe_s = statistics.median(times["probe"])
    print(f"{args.n} JPEG photos, {args.backbone} ({probe_net.engine} engine, "
          f"{probe_net.sample_shape[0]} px), median of {args.runs} runs, each into a fresh cache")
    print(f"probed layers: {', '.join(str(lay) for lay in layers[:-1])}, default cut")
    print(f"{'pass':40s} {'seconds':>8s} {'img/s':>8s} {'ratio':>6s}")
    rows = [("featx embed (default cut, 1 output)", embed_s),
            (f"probe embedding ({len(configs)} outputs, 1 pass)", probe_s)]
    for label, seconds in rows:
        print(f"{label:40s} {seconds:8.2f} {args.n / seconds:8.1f} {seconds / embed_s:6.2f}x")
    print(f"runs (s): embed {[round(t, 2) for t in times['embed']]}, "
          f"probe {[round(t, 2) for t in times['probe']]}")
    ratio = probe_s / embed_s
    print(f"probe / embed = {ratio:.2f}x (target <= 1.3x): {'met' if ratio <= 1.3 else 'NOT met'}")
    assert base_net.n_seen > 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

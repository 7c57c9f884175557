"""A pretrained tabular Keras model whose penultimate layer feeds a gradient-boosting head.

Industrial fault detection: a network was trained on one plant's sensor logs (ten sensors:
motor current, vibration, bearing and ambient temperature, pressures, flow, speed, noise) to
tell normal running from three faults (bearing wear, cavitation, motor overload). A second
plant, built differently, has few labelled logs. Its sensor rows go through the first plant's
network, cut at its penultimate layer, and a tuned histogram gradient boosting classifier is
trained on those features, against the same head on the raw sensors. The data are synthetic:
faults change sensors relative to the operating point (speed and load), which a network learns
from many examples and trees on a few raw columns find hard.

    python examples/tabular_penultimate.py             # 8,000 pretraining rows, 300 labelled
    python examples/tabular_penultimate.py --small     # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featx import ImageEmbedder, tune_heads

FAULTS = ("normal", "bearing wear", "cavitation", "motor overload")
SENSORS = ("current", "vibration_x", "vibration_y", "bearing_temp", "ambient_temp",
           "pressure_in", "pressure_out", "flow", "speed", "acoustic")


def sensor_logs(n: int, plant: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of the ten sensors and their fault labels (0 = normal), for plant 0 or 1."""
    rng = np.random.default_rng(seed)
    fault = rng.integers(0, len(FAULTS), n)
    speed = rng.uniform(0.5, 1.5, n)
    load = rng.uniform(0.1, 1.0, n)
    gain = (1.0, 1.25)[plant]  # the second plant runs bigger pumps, in a warmer hall
    ambient = rng.normal((20.0, 28.0)[plant], 3.0, n)
    severity = rng.uniform(0.3, 1.0, n)
    current = gain * (2 + 3 * load * speed) * (1 + 0.35 * severity * (fault == 3))
    vib = 0.5 + 0.3 * speed**2 * (1 + 1.2 * severity * (fault == 1))
    bearing = ambient + 12 * load * speed * (1 + 0.5 * severity * (fault == 1) + 0.3 * (fault == 3))
    p_in = rng.normal(2.0, 0.2, n)
    lift = gain * 3 * speed**2 * (1 - 0.4 * severity * (fault == 2))
    flow = gain * 10 * speed * (1 - 0.25 * severity * (fault == 2))
    acoustic = 60 + 8 * speed + 6 * severity * (fault == 2) + 3 * severity * (fault == 1)
    X = np.column_stack([
        current, vib, vib * rng.uniform(0.8, 1.2, n), bearing, ambient, p_in, p_in + lift,
        flow, speed * 1500, acoustic,
    ])
    X *= rng.normal(1.0, 0.04, X.shape)  # sensor noise
    return X.astype(np.float32), fault


def pretrain(X: np.ndarray, y: np.ndarray, path: Path, epochs: int) -> Path:
    """The first plant's network: normalisation built in, 'penultimate' before the softmax."""
    import keras

    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization(name="normalise")
    norm.adapt(X)
    model = keras.Sequential([
        keras.Input((X.shape[1],)),
        norm,
        keras.layers.Dense(64, activation="relu", name="hidden"),
        keras.layers.Dense(32, activation="relu", name="penultimate"),
        keras.layers.Dense(len(FAULTS), activation="softmax", name="faults"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(X, y, epochs=epochs, batch_size=64, validation_split=0.1, verbose=0)
    print(f"pretrained on {len(X)} rows of plant A: validation accuracy "
          f"{history.history['val_accuracy'][-1]:.3f}")
    model.save(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where the model goes (default: a temp folder)")
    parser.add_argument("--n-pretrain", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=300, help="labelled rows of plant B")
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--small", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    if args.small:
        args.n_pretrain, args.epochs, args.n_train, args.n_test = 1500, 5, 90, 200
    out = args.out or Path(tempfile.mkdtemp(prefix="featx-tabular-"))
    out.mkdir(parents=True, exist_ok=True)

    X_a, y_a = sensor_logs(args.n_pretrain, plant=0, seed=0)
    model_path = pretrain(X_a, y_a, out / "plant_a.keras", args.epochs)

    X_train, y_train = sensor_logs(args.n_train, plant=1, seed=1)
    X_test, y_test = sensor_logs(args.n_test, plant=1, seed=2)
    names = np.asarray(FAULTS)
    # A 2-D array of rows goes through the network, cut at its penultimate layer.
    embedder = ImageEmbedder(str(model_path), layer="penultimate")
    features = {"train": embedder.fit_transform(X_train), "test": embedder.transform(X_test)}
    raw = {"train": X_train, "test": X_test}
    print(f"plant B: {len(X_train)} labelled rows, {len(X_test)} to test; the network's "
          f"penultimate layer gives {features['train'].shape[1]} features per row")
    grids = {"hist_gb": {"clf__learning_rate": [0.1]}} if args.small else None
    print(f"\n{'features':<24} {'width':>6} {'cv acc':>7} {'test acc':>9} {'macro-F1':>9}")
    for label, X in (("penultimate layer", features), ("raw sensors", raw)):
        board = tune_heads(X["train"], names[y_train], test=(X["test"], names[y_test]),
                           heads=["hist_gb"], grids=grids, cv=3 if args.small else 5)
        r = board.best
        print(f"{label:<24} {X['train'].shape[1]:>6} {r.cv_mean:>7.3f} {r.test_score:>9.3f} "
              f"{r.macro_f1:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

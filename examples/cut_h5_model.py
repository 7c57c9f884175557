"""A Keras model trained earlier, saved as .h5, cut at a named layer and used as the embedder.

The usual situation: someone trained a small CNN for one task and saved it as ``model.h5``; its
``flatten_1`` layer is a good feature extractor for a related task. Here the CNN is trained
first (on five Fashion-MNIST classes: T-shirt, trouser, pullover, dress, coat; or digits 0-4
without the Debian package), saved as HDF5, then loaded by featx from the file and cut at
``flatten_1`` to embed images of the *other* five classes, which it never saw; a tuned logistic
regression on those features is compared with one on raw pixels.

    python examples/cut_h5_model.py                    # 3,000 images to train the CNN
    python examples/cut_h5_model.py --small            # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featx import ImageEmbedder, tune_heads
from featx.data.demo import load_demo_data


def train_cnn(images: np.ndarray, labels: np.ndarray, path: Path, epochs: int) -> Path:
    """Train a small CNN (its Flatten layer named 'flatten_1') and save it as HDF5."""
    import keras

    keras.utils.set_random_seed(0)
    h, w = images.shape[1:3]
    model = keras.Sequential([
        keras.Input((h, w, 1)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv2d_1"),
        keras.layers.MaxPooling2D(name="max_pooling2d_1"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv2d_2"),
        keras.layers.MaxPooling2D(name="max_pooling2d_2"),
        keras.layers.Flatten(name="flatten_1"),
        keras.layers.Dense(64, activation="relu", name="dense_1"),
        keras.layers.Dense(int(labels.max()) + 1, activation="softmax", name="dense_2"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images[..., None], labels, epochs=epochs, batch_size=64, verbose=0)
    accuracy = history.history["accuracy"][-1]
    print(f"trained the CNN on {len(images)} images, {epochs} epoch{'s' * (epochs != 1)}: "
          f"training accuracy {accuracy:.3f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls HDF5 a legacy format; it is what we test
        model.save(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where model.h5 goes (default: a temp folder)")
    parser.add_argument("--n-pretrain", type=int, default=3000,
                        help="images of the first five classes to train the CNN on")
    parser.add_argument("--n-train", type=int, default=500,
                        help="labelled images of the other five classes for the head")
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny sizes, one epoch")
    args = parser.parse_args(argv)
    if args.small:
        args.n_pretrain, args.n_train, args.n_test, args.epochs = 300, 60, 40, 1
    out = args.out or Path(tempfile.mkdtemp(prefix="featx-h5-"))
    out.mkdir(parents=True, exist_ok=True)

    # Enough images that each half of the classes gets its share.
    total_train = 2 * max(args.n_pretrain, args.n_train)
    name, x_train, y_train, x_test, y_test, classes = load_demo_data(total_train, 2 * args.n_test)
    old, new = y_train < 5, y_train >= 5
    h5 = train_cnn(x_train[old][: args.n_pretrain], y_train[old][: args.n_pretrain],
                   out / "model.h5", args.epochs)

    # Later, elsewhere: the file is all there is. Cut it at the named layer.
    embedder = ImageEmbedder(str(h5), layer="flatten_1")
    test_new = y_test >= 5
    X_train, yl_train = x_train[new][: args.n_train], y_train[new][: args.n_train]
    X_test, yl_test = x_test[test_new], y_test[test_new]
    features = {"train": embedder.fit_transform(X_train), "test": embedder.transform(X_test)}
    pixels = {"train": X_train.reshape(len(X_train), -1) / 255.0,
              "test": X_test.reshape(len(X_test), -1) / 255.0}
    unseen = ", ".join(classes[k] for k in sorted(set(yl_train.tolist())))
    print(f"{name}: embedding {len(X_train)} + {len(X_test)} images of the unseen classes "
          f"({unseen}) with {h5.name} cut at 'flatten_1' -> {features['train'].shape[1]} "
          "features")
    print(f"\n{'features':<22} {'width':>6} {'cv acc':>7} {'test acc':>9}")
    for label, X in (("CNN 'flatten_1' layer", features), ("raw pixels", pixels)):
        board = tune_heads(X["train"], yl_train, test=(X["test"], yl_test), heads=["logreg"],
                           cv=3 if args.small else 5)
        r = board.best
        print(f"{label:<22} {X['train'].shape[1]:>6} {r.cv_mean:>7.3f} {r.test_score:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

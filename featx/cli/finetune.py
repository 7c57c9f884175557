"""``featx finetune``: a backbone's top layers trained on labelled images, into a new ``.keras``."""

from __future__ import annotations

import argparse
from typing import Any

from featx.cli.args import (
    add_command,
    add_label_column,
    add_labelled_source,
    embedder_flags,
    embedder_from_args,
    fraction,
    learning_rate,
    positive_int,
    say_for,
)
from featx.cli.sources import labelled_source

#: The embedder's options fine-tuning does not take: it trains with Keras in float32, and its
#: --batch-size is the training step's.
_NOT_TRAINED = ("engine", "precision", "calibration", "retry_failed", "batch_size")


def add_finetune_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx finetune`` to the ``featx`` subcommands."""
    finetune = add_command(
        commands, "finetune", cmd_finetune,
        [flags, embedder_flags(cache=False, without=_NOT_TRAINED)],
        help="fine-tune a backbone's top layers on labelled images into a new .keras backbone",
        description="Train a new classifier on the frozen backbone's features, then unfreeze "
        "its top layers and train them at a low learning rate (BatchNormalization frozen, early "
        "stopping on a stratified validation split). Writes a .keras file that `featx embed "
        "--backbone FILE` and ImageEmbedder(FILE) embed from, with the same preprocessing, cut "
        "at the layer that feeds the new classifier.",
    )
    add_labelled_source(finetune)
    finetune.add_argument("--out", required=True, metavar="FILE.keras",
                          help="the fine-tuned backbone to write")
    which = finetune.add_mutually_exclusive_group()
    which.add_argument("--top-layers", type=positive_int, metavar="N",
                       help="unfreeze the last N layers (default: the top 15%%)")
    which.add_argument("--from-layer", metavar="NAME",
                       help="unfreeze this layer and every layer above it")
    finetune.add_argument("--epochs", type=positive_int, default=5, metavar="E",
                          help="most epochs of fine-tuning (default 5; early stopping)")
    finetune.add_argument("--learning-rate", type=learning_rate, default=1e-5, metavar="F",
                          help="learning rate of the top layers (default 1e-5)")
    finetune.add_argument("--validation-split", type=fraction, default=0.1, metavar="F",
                          help="stratified share held out for early stopping (default 0.1)")
    finetune.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                          help="images per training step (default 32)")
    finetune.add_argument("--augment", action="store_true",
                          help="random flips and shifts of the training images")
    finetune.add_argument("--random-state", type=int, default=0, metavar="N",
                          help="seed of the split, the shuffling and the weights (default 0)")
    add_label_column(finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from featx.transfer.finetune import fine_tune

    paths, y = labelled_source(args.src, args.path_column, args.label_column)
    fine_tune(
        paths, y, out=args.out, embedder=embedder_from_args(args), top_layers=args.top_layers,
        from_layer=args.from_layer, epochs=args.epochs, learning_rate=args.learning_rate,
        validation_split=args.validation_split, batch_size=args.batch_size,
        augment=args.augment, random_state=args.random_state, log=say_for(args),
    )
    return 0

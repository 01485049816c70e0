"""Command-line entry points that the Snakemake rules call (``python -m workflow_lib.cli``).

Each subcommand parses paths and a JSON blob of settings, then calls plain library functions:
the rules stay thin and every step can also be run, and debugged, by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError

log = logging.getLogger("workflow_lib")

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}


def command(name: str, *arguments: tuple[tuple[str, ...], dict]):
    """Register a subcommand with its argparse arguments."""
    def register(function: Callable[[argparse.Namespace], None]):
        function.cli_arguments = arguments  # type: ignore[attr-defined]
        COMMANDS[name] = function
        return function
    return register


def arg(*flags: str, **options) -> tuple[tuple[str, ...], dict]:
    return flags, options


JSON = arg("--settings", type=json.loads, required=True, help="settings as a JSON object")


@command("demo-data", arg("--out", type=Path, required=True), JSON)
def demo_data(args: argparse.Namespace) -> None:
    from .demo import generate_demo_dataset

    summary = generate_demo_dataset(args.out, args.settings)
    log.info("demo dataset: %d training clips (%d verified, %d wrong labels), %d test clips",
             summary["n_train"], summary["n_verified"], summary["n_wrong_labels"], summary["n_test"])


@command("validate", arg("--root", type=Path, required=True), arg("--folds", type=int, required=True),
         arg("--out-dir", type=Path, required=True), JSON)
def validate(args: argparse.Namespace) -> None:
    from .dataset import class_table, validate_dataset
    from .io import write_csv

    train, test, problems = validate_dataset(args.root, args.settings, args.folds)
    for row in problems.rows:
        log.warning("%s line %s: %s (%s)", row["file"], row["line"], row["problem"], row["outcome"])
    write_csv(problems.frame(), args.out_dir / "problems.csv")
    write_csv(class_table(train), args.out_dir / "classes.csv")
    write_csv(test, args.out_dir / "test.csv")
    write_csv(train, args.out_dir / "train.csv")
    log.info("%d training clips, %d classes, %d test clips, %d problems",
             len(train), train["label"].nunique(), len(test), len(problems.rows))


@command("preprocess-shard", arg("--listing", type=Path, required=True),
         arg("--split", required=True), arg("--shard", type=int, required=True),
         arg("--shards", type=int, required=True), arg("--versions", type=int, nargs="+", required=True),
         arg("--out-dir", type=Path, required=True), JSON)
def preprocess_shard(args: argparse.Namespace) -> None:
    from .io import read_csv_str
    from .preprocess import process_shard, write_shard

    listing = read_csv_str(args.listing)
    arrays, manifests = process_shard(listing, args.shard, args.shards, args.versions,
                                      args.settings["sample_rate"], args.settings["sox_effects"])
    stem = {v: args.out_dir / f"v{v}" / args.split / f"shard{args.shard}" for v in args.versions}
    write_shard(arrays, manifests, {v: p.with_suffix(".npy") for v, p in stem.items()},
                {v: p.with_suffix(".csv") for v, p in stem.items()})
    first = manifests[args.versions[0]]
    log.info("shard %d/%d of %s: %d files, statuses %s", args.shard, args.shards, args.split,
             len(first), first["status"].value_counts().to_dict())


@command("merge-manifests", arg("--out", type=Path, required=True),
         arg("shards", type=Path, nargs="+"))
def merge_manifests(args: argparse.Namespace) -> None:
    from .preprocess import merge_manifests as merge

    merged = merge(args.shards, args.out)
    log.info("%s: %d files, statuses %s", args.out, len(merged),
             merged["status"].value_counts().to_dict())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflow_lib.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, function in COMMANDS.items():
        child = sub.add_parser(name, help=(function.__doc__ or "").strip().split("\n")[0])
        for flags, options in function.cli_arguments:
            child.add_argument(*flags, **options)
        child.set_defaults(function=function)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.function(args)
    except UserError as error:
        # Bad data, bad settings or a missing tool: one clear line, no traceback.
        log.error("%s failed: %s", args.command, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

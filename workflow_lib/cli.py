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


@command("folds", arg("--manifest", type=Path, required=True), arg("--out", type=Path, required=True),
         arg("--folds", type=int, required=True), arg("--seed", type=int, required=True))
def folds(args: argparse.Namespace) -> None:
    from .stages import folds_job

    table = folds_job(args.manifest, args.out, args.folds, args.seed)
    sizes = table.groupby(["fold", "verified"]).size().unstack(fill_value=0)
    log.info("fold sizes (columns: verified 0/1):\n%s", sizes.to_string())


@command("train", arg("--manifest", type=Path, required=True), arg("--folds", type=Path, required=True),
         arg("--classes", type=Path, required=True), arg("--fold", type=int, required=True),
         arg("--out-dir", type=Path, required=True), arg("--threads", type=int, default=1),
         arg("--lock-dir", type=Path, required=True), arg("--train-list", type=Path),
         arg("--init", type=Path), JSON)
def train(args: argparse.Namespace) -> None:
    """Train one fold model (initial training, or fine-tuning with --train-list and --init)."""
    from .stages import TrainingJob, run_training_job
    from .training import FitSettings

    s = args.settings
    job = TrainingJob(
        manifest_csv=args.manifest, folds_csv=args.folds, classes_csv=args.classes,
        fold=args.fold, out_dir=args.out_dir, preset=s["preset"], net=s["net"],
        fit=FitSettings(**s["fit"]), frames=s["frames"], device=s["device"],
        threads=args.threads, lock_dir=args.lock_dir, train_list_csv=args.train_list,
        init_checkpoint=args.init)
    history = run_training_job(job)
    best = history.loc[history["valid_loss"].idxmin()] if history["valid_loss"].notna().any() else history.iloc[-1]
    log.info("best epoch %d: valid loss %.4f, accuracy %.4f, MAP@3 %.4f", best["epoch"],
             best["valid_loss"], best["valid_acc"], best["valid_map3"])


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

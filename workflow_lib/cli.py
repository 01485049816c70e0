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

import pandas as pd

from . import __version__
from .choice import choose_chain_job, read_choice
from .dataset import class_table, validate_pool, validate_test, validate_train
from .demo import DemoDataJob, demo_data_job
from .errors import UserError
from .export_formats import EXPORT_FORMATS
from .io import read_csv_str, write_csv
from .layout import COPIES_SPLIT, Layout
from .preprocess import merge_manifests as merge_manifest_files
from .preprocess import shard_clips, write_shard_files
from .report_tables import results_page
from .selection import best_epoch_row, selection_note, selection_table
from .systems import systems_job
from .task import SINGLE, TASKS, task_named

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
#: The task of the evaluate, summary and systems jobs (job_settings.task_arguments): which
#: scores, tables and plots they write.
TASK = arg(
    "--task",
    choices=list(TASKS),
    default=SINGLE.name,
    help="single-label: accuracy, MAP@3, confusion; multi-label: lwlrap, per-class tables",
)
#: The arguments of every job that may claim a GPU (workflow_lib/devices.py): CPU threads and
#: the folder of the GPU locks.
DEVICE = (arg("--threads", type=int, default=1), arg("--lock-dir", type=Path, required=True))


def path_or_none(text: str) -> Path | None:
    """An optional path argument a rule always passes: "" means absent (Path("") would be ".")."""
    return Path(text) if text else None


def iteration_fold_paths(pairs: Sequence[str]) -> dict[tuple[int, int], Path]:
    """``iteration:fold=path`` arguments -> {(iteration, fold): path}."""
    paths = {}
    for pair in pairs:
        key, path = pair.split("=", 1)
        iteration, fold = key.split(":")
        paths[(int(iteration), int(fold))] = Path(path)
    return paths


@command("demo-data", arg("--out", type=Path, required=True), JSON)
def demo_data(args: argparse.Namespace) -> None:
    """The demo dataset of the settings' task (key ``task``; absent: single-label)."""
    summary = demo_data_job(job=DemoDataJob.from_settings(args.out, args.settings))
    log.info(
        "demo dataset: %d training clips (%d verified, %d wrong labels), %d test clips",
        summary["n_train"],
        summary["n_verified"],
        summary["n_wrong_labels"],
        summary["n_test"],
    )


def _log_problems(problems) -> None:
    for row in problems.rows:
        log.warning("%s line %s: %s (%s)", row["file"], row["line"], row["problem"], row["outcome"])


@command(
    "validate",
    arg("--root", type=Path, required=True),
    arg("--folds", type=int, required=True),
    arg("--out-dir", type=Path, required=True),
    JSON,
)
def validate(args: argparse.Namespace) -> None:
    """The training split: train.csv, classes.csv and its problems (train_problems.csv)."""
    train, problems = validate_train(args.root, args.settings, args.folds)
    _log_problems(problems)
    write_csv(problems.frame(), args.out_dir / "train_problems.csv")
    classes = class_table(train)  # classes, not label sets (a multi-label clip has several)
    write_csv(classes, args.out_dir / "classes.csv")
    write_csv(train, args.out_dir / "train.csv")
    log.info("%d training clips, %d classes, %d problems", len(train), len(classes), len(problems.rows))


@command(
    "validate-test",
    arg("--root", type=Path, required=True),
    arg("--classes", type=Path, required=True),
    arg(
        "--train-problems",
        type=Path,
        nargs="+",
        required=True,
        help="train_problems.csv (and, with the unlabelled pool, pool_problems.csv)",
    ),
    arg("--out-dir", type=Path, required=True),
    JSON,
)
def validate_test_split(args: argparse.Namespace) -> None:
    """The test split: test.csv, and problems.csv = the training split's problems (and the
    pool's) + its own."""
    test, problems = validate_test(args.root, args.settings, list(read_csv_str(args.classes)["label"]))
    _log_problems(problems)
    earlier = [read_csv_str(path) for path in args.train_problems]
    every = pd.concat([*earlier, problems.frame().astype(str)], ignore_index=True)
    write_csv(every, args.out_dir / "problems.csv")
    write_csv(test, args.out_dir / "test.csv")
    log.info("%d test clips, %d problems", len(test), len(problems.rows))


@command(
    "validate-pool",
    arg("--root", type=Path, required=True),
    arg("--train", type=Path, required=True, help="the validated train.csv (pool names must differ)"),
    arg("--out-dir", type=Path, required=True),
    JSON,
)
def validate_pool_split(args: argparse.Namespace) -> None:
    """The unlabelled pool: pool.csv and its problems (pool_problems.csv)."""
    training = set(read_csv_str(args.train)["fname"])
    pool, problems = validate_pool(args.root, args.settings, training)
    _log_problems(problems)
    write_csv(problems.frame(), args.out_dir / "pool_problems.csv")
    write_csv(pool, args.out_dir / "pool.csv")
    log.info(
        "%d pool clips (%d usable), %d problems",
        len(pool),
        int((pool["path"] != "").sum()),
        len(problems.rows),
    )


@command(
    "preprocess-shard",
    arg("--listing", type=Path, required=True),
    arg("--split", required=True),
    arg("--shard", type=int, required=True),
    arg("--shards", type=int, required=True),
    arg("--versions", type=int, nargs="+", required=True),
    arg("--out-dir", type=Path, required=True),
    JSON,
)
def preprocess_shard(args: argparse.Namespace) -> None:
    """SoX-clip and transform one shard of a listing into every spectrogram version (the
    listing is split into shards so that preprocessing runs as parallel jobs)."""
    stem = {v: Path(Layout.shard_stem(args.out_dir, v, args.split, args.shard)) for v in args.versions}
    clips = shard_clips(
        read_csv_str(args.listing),
        args.shard,
        args.shards,
        args.versions,
        args.settings["sample_rate"],
        args.settings["sox_effects"],
        args.settings.get("spectrograms", "fast"),
    )
    manifests = write_shard_files(
        clips,
        args.versions,
        {v: p.with_suffix(".npy") for v, p in stem.items()},
        {v: p.with_suffix(".csv") for v, p in stem.items()},
    )
    first = manifests[args.versions[0]]
    log.info(
        "shard %d/%d of %s: %d files, statuses %s",
        args.shard,
        args.shards,
        args.split,
        len(first),
        first["status"].value_counts().to_dict(),
    )


@command("noise-files", arg("--noise-dir", type=Path, required=True), arg("--out", type=Path, required=True))
def noise_files(args: argparse.Namespace) -> None:
    """data/noise_files.csv: every file under the noise folder, usable or why it is skipped."""
    # audiomentations (through waveform_augment) loads librosa: only the copy jobs need it
    from .waveform_augment import USABLE_NOISE, noise_table

    table = noise_table(args.noise_dir)
    write_csv(table, args.out)
    skipped = table[table["status"] != USABLE_NOISE]
    for _, row in skipped.iterrows():
        log.warning("noise file %s skipped: %s (%s)", row["file"], row["status"], row["detail"])
    log.info("%d of %d noise files usable", len(table) - len(skipped), len(table))


@command(
    "copy-shard",
    arg("--listing", type=Path, required=True),
    arg("--noise", type=path_or_none, help="the noise_files.csv table; empty: no noise folder"),
    arg("--shard", type=int, required=True),
    arg("--shards", type=int, required=True),
    arg("--versions", type=int, nargs="+", required=True),
    arg("--out-dir", type=Path, required=True),
    JSON,
)
def copy_shard(args: argparse.Namespace) -> None:
    """The waveform copies of one shard of the training clips (workflow_lib/waveform_augment.py)."""
    # audiomentations loads librosa: only the copy jobs need it
    from .waveform_augment import COPY_COLUMNS, WaveformAugmentation, copy_clips, usable_noise

    aug = WaveformAugmentation.from_settings(args.settings["augmentation"])
    if aug.noise and args.noise is None:
        raise UserError("copy-shard: the settings name a noise folder; give its table with --noise")
    noise = usable_noise(read_csv_str(args.noise), Path(aug.noise_dir)) if aug.noise else []
    stem = {v: Path(Layout.shard_stem(args.out_dir, v, COPIES_SPLIT, args.shard)) for v in args.versions}
    clips = copy_clips(
        read_csv_str(args.listing),
        args.shard,
        args.shards,
        args.versions,
        args.settings["preprocessing"],
        aug,
        noise,
    )
    manifests = write_shard_files(
        clips,
        args.versions,
        {v: p.with_suffix(".npy") for v, p in stem.items()},
        {v: p.with_suffix(".csv") for v, p in stem.items()},
        COPY_COLUMNS,
    )
    log.info("shard %d/%d: %d waveform copies", args.shard, args.shards, len(manifests[args.versions[0]]))


@command("merge-manifests", arg("--out", type=Path, required=True), arg("shards", type=Path, nargs="+"))
def merge_manifests(args: argparse.Namespace) -> None:
    """Join the shards' manifests into one per version and split; the log counts each status
    so that skipped clips are visible in the job log, not only in the CSV."""
    merged = merge_manifest_files(args.shards, args.out)
    log.info("%s: %d files, statuses %s", args.out, len(merged), merged["status"].value_counts().to_dict())


@command(
    "folds",
    arg("--manifest", type=Path, required=True),
    arg("--out", type=Path, required=True),
    arg("--folds", type=int, required=True),
    arg("--seed", type=int, required=True),
)
def folds(args: argparse.Namespace) -> None:
    """Deal the stratified folds (verified and unverified clips dealt separately) and log
    the fold sizes, the first thing to check when a fold looks odd."""
    # stages imports torch: only the commands that run a job load it
    from .stages import folds_job

    table = folds_job(args.manifest, args.out, args.folds, args.seed)
    sizes = table.groupby(["fold", "verified"]).size().unstack(fill_value=0)
    log.info("fold sizes (columns: verified 0/1):\n%s", sizes.to_string())


@command(
    "train",
    arg("--manifest", type=Path, required=True),
    arg("--folds", type=Path, required=True),
    arg("--classes", type=Path, required=True),
    arg("--fold", type=int, required=True),
    arg("--out-dir", type=Path, required=True),
    *DEVICE,
    arg("--train-list", type=Path),
    arg("--init", type=Path),
    JSON,
)
def train(args: argparse.Namespace) -> None:
    """Train one fold model (initial training, or fine-tuning with --train-list and --init)."""
    # stages imports torch: only the commands that run a job load it
    from .stages import TrainingJob, run_training_job

    job = TrainingJob.from_settings(
        args.settings,
        manifest_csv=args.manifest,
        folds_csv=args.folds,
        classes_csv=args.classes,
        fold=args.fold,
        out_dir=args.out_dir,
        threads=args.threads,
        lock_dir=args.lock_dir,
        train_list_csv=args.train_list,
        init_checkpoint=args.init,
    )
    history = run_training_job(job)
    best = best_epoch_row(history)
    log.info(
        "best epoch %d: valid loss %.4f, accuracy %.4f, MAP@3 %.4f%s",
        best["epoch"],
        best["valid_loss"],
        best["valid_acc"],
        best["valid_map3"],
        f", lwlrap {best['valid_lwlrap']:.4f}" if job.task.label_sets else "",
    )


def fold_paths(pairs: list[str]) -> dict[int, Path]:
    """``fold=path`` arguments -> {fold: path}."""
    return {int(k): Path(v) for k, v in (pair.split("=", 1) for pair in pairs)}


@command(
    "initial-list",
    arg("--start", choices=["all", "verified", "noisy"], required=True),
    arg("--folds", type=Path, required=True),
    arg("--out", type=Path, required=True),
)
def initial_list(args: argparse.Namespace) -> None:
    """train.csv layout naming the clips iteration 0 trains on (all, the verified, or the unverified ones)."""
    # stages imports torch: only the commands that run a job load it
    from .stages import initial_list_job

    table = initial_list_job(args.folds, args.out, args.start)
    log.info("%s: %d of %d clips", args.start, int(table["manually_verified"].sum()), len(table))


@command(
    "self-verify",
    arg("--models", nargs="+", required=True, help="fold=best.pt ..."),
    arg("--manifest", type=Path, required=True),
    arg("--folds", type=Path, required=True),
    arg("--classes", type=Path, required=True),
    arg("--train", type=Path, required=True),
    arg("--out-dir", type=Path, required=True),
    *DEVICE,
    JSON,
)
def self_verify(args: argparse.Namespace) -> None:
    """Judge the held-out unverified clips with their fold's model; apply the chain's policy."""
    # self_verify and stages import torch: only the commands that run a job load it
    from .self_verify import TrustSettings
    from .stages import TrustJob, self_verify_job

    job = TrustJob(
        model_paths=fold_paths(args.models),
        manifest_csv=args.manifest,
        folds_csv=args.folds,
        classes_csv=args.classes,
        train_csv=args.train,
        out_dir=args.out_dir,
        settings=TrustSettings.from_json(args.settings),
        threads=args.threads,
        lock_dir=args.lock_dir,
    )
    decisions = self_verify_job(job)
    _log_trusted(decisions, job.settings, "unverified")
    if "correct" in decisions:  # label sets: one row per (clip, given label)
        accepted = decisions[decisions["accepted"]]
        log.info(
            "precision of trusted labels %.4f (given noisy labels: %.4f)",
            accepted["correct"].mean() if len(accepted) else float("nan"),
            decisions["correct"].mean(),
        )
    elif "true_label" in decisions:
        accepted = decisions[decisions["accepted"]]
        log.info(
            "precision of trusted labels %.4f (given unverified labels: %.4f)",
            (accepted["trusted_label"] == accepted["true_label"]).mean() if len(accepted) else float("nan"),
            (decisions["given_label"] == decisions["true_label"]).mean(),
        )


def _log_trusted(decisions: pd.DataFrame, settings, judged: str) -> None:
    """One log line of a trust job: how many of the judged clips (or labels) the policy
    trusted, and the reasons of every decision."""
    log.info(
        "policy %s trusted %d of %d %s %s; reasons %s",
        settings.policy.name,
        int(decisions["accepted"].sum()),
        len(decisions),
        judged,
        settings.task.trust_unit,
        decisions["reason"].value_counts().to_dict(),
    )


@command(
    "judge-pool",
    arg("--models", nargs="+", required=True, help="fold=best.pt ..."),
    arg("--manifest", type=Path, required=True, help="the pool's spectrogram manifest"),
    arg("--pool", type=Path, required=True, help="the validated pool.csv"),
    arg("--classes", type=Path, required=True),
    arg("--out-dir", type=Path, required=True),
    *DEVICE,
    JSON,
)
def judge_pool(args: argparse.Namespace) -> None:
    """Judge the unlabelled pool by the mean of the fold models; apply the chain's policy."""
    # self_verify and stages import torch: only the commands that run a job load it
    from .self_verify import TrustSettings
    from .stages import PoolJob, pool_job

    job = PoolJob(
        model_paths=fold_paths(args.models),
        pool_manifest_csv=args.manifest,
        pool_csv=args.pool,
        classes_csv=args.classes,
        out_dir=args.out_dir,
        settings=TrustSettings.from_json(args.settings),
        threads=args.threads,
        lock_dir=args.lock_dir,
    )
    decisions = pool_job(job)
    _log_trusted(decisions, job.settings, "pool")


@command(
    "select",
    arg("--histories", nargs="+", required=True, help="iteration:fold=history.csv ..."),
    arg("--tolerance", type=float, default=0.0, help="near-tie validation-loss difference"),
    arg("--out", type=Path, required=True),
)
def select(args: argparse.Namespace) -> None:
    """Pick the iteration with the lowest mean verified validation loss (multi-label: the highest
    mean lwlrap; near-tie rule)."""
    table = selection_table(iteration_fold_paths(args.histories), args.tolerance)
    if selection_note(table):
        log.warning("%s (%s)", selection_note(table), args.out)
    if table["near_tie"].sum() > 1:
        log.warning(
            "iterations %s are within %g of the best mean validation score: chose the "
            "highest mean accuracy among them, then the earliest",
            table.loc[table["near_tie"], "iteration"].tolist(),
            args.tolerance,
        )
    write_csv(table, args.out)
    chosen = table.loc[table["chosen"]].iloc[0]
    log.info(
        "chosen iteration %d: mean valid loss %.4f, accuracy %.4f%s",
        chosen["iteration"],
        chosen["mean_valid_loss"],
        chosen["mean_valid_acc"],
        f", lwlrap {chosen['mean_valid_lwlrap']:.4f}" if "mean_valid_lwlrap" in chosen else "",
    )


@command(
    "predict",
    arg("--selection", type=Path, required=True),
    arg("--models", nargs="+", required=True, help="iteration:fold=best.pt ..."),
    arg("--train-manifest", type=Path, required=True),
    arg("--test-manifest", type=Path, required=True),
    arg("--folds", type=Path, required=True),
    arg("--classes", type=Path, required=True),
    arg("--out-test", type=Path, required=True),
    arg("--out-valid", type=Path, required=True),
    *DEVICE,
    JSON,
)
def predict(args: argparse.Namespace) -> None:
    """Posteriors of the chosen iteration's fold models (test clips and out-of-fold)."""
    # stages imports torch: only the commands that run a job load it
    from .stages import predict_job

    s = args.settings  # job_settings.prediction_settings
    iteration = predict_job(
        args.selection,
        iteration_fold_paths(args.models),
        args.train_manifest,
        args.test_manifest,
        args.folds,
        args.classes,
        args.out_test,
        args.out_valid,
        frames=s["frames"],
        batch_size=s["batch_size"],
        device=s["device"],
        threads=args.threads,
        lock_dir=args.lock_dir,
        tta_shifts=s.get("tta_shifts", 0),
    )
    log.info("predicted with iteration %d", iteration)


@command(
    "fuse",
    arg("--tests", nargs="+", required=True, help="preset=test.csv ..."),
    arg("--valids", nargs="+", required=True, help="preset=valid_oof.csv ..."),
    arg("--classes", type=Path, required=True),
    arg("--out-probs", type=Path, required=True),
    arg("--out-weights", type=Path, required=True),
    arg("--out-submission", type=Path, required=True),
    arg("--test-manifest", type=Path, help="every listed test clip gets a submission row"),
    arg("--out-status", type=Path, help="fname,status,detail per test clip"),
    JSON,
)
def fuse(args: argparse.Namespace) -> None:
    """Fuse the presets' posteriors; write the submission."""
    # stages imports torch: only the commands that run a job load it
    from .fusion import FusionSettings
    from .stages import fuse_job

    def pairs(items):
        return {k: Path(v) for k, v in (item.split("=", 1) for item in items)}

    fuse_job(
        pairs(args.tests),
        pairs(args.valids),
        args.classes,
        args.out_probs,
        args.out_weights,
        args.out_submission,
        args.test_manifest,
        args.out_status,
        settings=FusionSettings.from_json(args.settings),
    )


@command(
    "evaluate",
    arg("--test", type=Path, required=True),
    arg("--classes", type=Path, required=True),
    arg("--systems", nargs="+", required=True, help="name=probabilities.csv ..."),
    arg("--out-dir", type=Path, required=True),
    TASK,
    arg("--note", default="", help="said in every row's note (a transductive chain's)"),
)
def evaluate(args: argparse.Namespace) -> None:
    """Accuracy and MAP@3 (multi-label: lwlrap, P/R/F1) per system and set; per-class report
    and (single-label) confusion of the fusion."""
    # stages imports torch: only the commands that run a job load it
    from .stages import evaluate_job

    systems = {k: Path(v) for k, v in (item.split("=", 1) for item in args.systems)}
    scores = evaluate_job(
        args.test, args.classes, systems, args.out_dir, task=task_named(args.task), note=args.note
    )
    log.info("\n%s", scores.to_string(index=False))


@command(
    "summary",
    arg("--presets", nargs="+", required=True),
    arg("--selections", nargs="+", required=True),
    arg("--self-verify-dirs", nargs="*", default=[]),
    arg("--scores", type=Path),
    arg("--submission-status", type=Path),
    arg("--classes", type=Path, help="classes.csv: classes without verified clips are named in cv_note"),
    arg("--out", type=Path, required=True),
    TASK,
)
def summary(args: argparse.Namespace) -> None:
    """results/summary.csv: one row per preset, the table to compare with the paper."""
    # stages imports torch: only the commands that run a job load it
    from .stages import summary_job

    table = summary_job(
        args.presets,
        [Path(p) for p in args.selections],
        [Path(p) for p in args.self_verify_dirs],
        args.scores,
        args.out,
        args.submission_status,
        args.classes,
        task=task_named(args.task),
    )
    log.info("\n%s", table.to_string(index=False))


@command(
    "plot-training",
    arg("--preset", required=True),
    arg("--histories", nargs="+", required=True, help="iteration:fold=history.csv ..."),
    arg("--self-verify", nargs="*", default=[], help="iteration=per_class.csv ..."),
    arg("--out-curves", type=Path, required=True),
    arg("--out-counts", type=Path, required=True),
)
def plot_training(args: argparse.Namespace) -> None:
    """Training curves and self-verified counts of one preset."""
    # matplotlib: only the plot commands load it
    from .plots import self_verified_counts, training_curves

    histories: dict[int, list[Path]] = {}
    for pair in args.histories:
        key, path = pair.split("=", 1)
        histories.setdefault(int(key.split(":")[0]), []).append(Path(path))
    training_curves(histories, args.preset, args.out_curves)
    tables = {
        int(k): pd.read_csv(v, dtype={"label": str})
        for k, v in (pair.split("=", 1) for pair in args.self_verify)
    }
    self_verified_counts(tables, args.preset, args.out_counts)


@command(
    "plot-evaluation",
    arg("--confusion", type=Path, help="confusion.csv (single-label runs)"),
    arg("--per-class", type=Path, required=True),
    arg("--out-confusion", type=Path, help="with --confusion"),
    arg("--out-per-class", type=Path, required=True),
)
def plot_evaluation(args: argparse.Namespace) -> None:
    """Confusion matrix (single-label) and per-class scores of the fused system."""
    # matplotlib: only the plot commands load it
    from .plots import confusion_matrix_plot, per_class_plot

    if (args.confusion is None) != (args.out_confusion is None):
        raise UserError("plot-evaluation: give --confusion and --out-confusion together")
    if args.confusion is not None:
        confusion_matrix_plot(pd.read_csv(args.confusion, dtype={"true_label": str}), args.out_confusion)
    per_class_plot(pd.read_csv(args.per_class, dtype={"label": str}), "fusion", args.out_per_class)


@command(
    "report-tables",
    arg("--summary", type=Path, required=True),
    arg("--systems", type=Path, help="systems.csv: one row per chain"),
    arg("--out", type=Path, required=True),
)
def report_tables(args: argparse.Namespace) -> None:
    """The run's result tables as one HTML page, first in the Snakemake report."""
    tables = [("Summary: one row per preset and the fusion", args.summary)]
    if args.systems is not None:
        tables.append(("Chains: one row per chain and preset", args.systems))
    results_page(tables, args.out)


@command(
    "systems",
    arg("--test", type=Path, required=True),
    arg("--classes", type=Path, required=True),
    arg("--spec", type=json.loads, required=True, help="JSON list of chains and presets"),
    arg("--min-trusted-share", type=float, default=0.0),
    arg("--out", type=Path, required=True),
    arg("--out-iterations", type=Path, required=True),
    arg("--out-plot", type=Path, required=True),
    TASK,
    arg("--choice", type=Path, help="results/chosen/choice.csv (chain_choice: cv): the picked chain"),
)
def systems(args: argparse.Namespace) -> None:
    """One row per chain, one per chain and iteration, and their plot."""
    table = systems_job(
        args.spec,
        args.test,
        args.classes,
        args.out,
        args.out_iterations,
        args.out_plot,
        args.min_trusted_share,
        task=task_named(args.task),
        picked=read_choice(args.choice) if args.choice else None,
    )
    with pd.option_context("display.width", 200, "display.max_columns", 14):
        log.info("\n%s", table.drop(columns="description").to_string(index=False))


@command(
    "choose-chain",
    arg(
        "--spec",
        type=json.loads,
        required=True,
        help='{"selections": {chain: {preset: csv}}, "summaries": {chain: csv}}',
    ),
    arg("--tolerance", type=float, default=0.0),
    arg("--out-dir", type=Path, required=True),
)
def choose_chain(args: argparse.Namespace) -> None:
    """chain_choice: cv: pick the chain by its verified validation clips (results/chosen/)."""
    choice = choose_chain_job(args.spec["selections"], args.spec["summaries"], args.tolerance, args.out_dir)
    log.info(
        "chain picked by cross-validation: %s (%s %.4f; runner-up %s, margin %.4f): %s",
        choice["chain"],
        choice["criterion"],
        choice["value"],
        choice["runner_up"] or "none",
        choice["margin"],
        choice["reason"],
    )


# --------------------------------------------------------------------------- using the tagger
# `tag` (also the `sv-tag` console script) and `export` (rule export_tagger, rules/export.smk);
# the logic is in workflow_lib/tagger.py (no torch at import) and workflow_lib/export.py.


@command(
    "tag",
    arg(
        "inputs",
        type=Path,
        nargs="*",
        help="audio files, folders (searched "
        "recursively) or '-' (raw PCM on standard input, with --raw-rate)",
    ),
    arg("--list", dest="list_file", type=Path, help="a file naming one path per line"),
    arg("--out", type=Path, default=Path("tags.csv"), help="the CSV to write (tags.csv)"),
    arg(
        "--bundle",
        type=Path,
        help="an exported tagger folder (results/export): tag without the run's results/ tree",
    ),
    arg(
        "--backend",
        choices=["auto", "torch", *EXPORT_FORMATS],
        default="auto",
        help="run: torch; bundle: torchscript or onnx (auto: torchscript when torch is installed, else onnx)",
    ),
    arg("--results", type=Path, help="the run's results folder (results)"),
    arg("--configfile", type=Path, help="the run's config file (config.yaml)"),
    arg(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="the run's overrides, as given to snakemake --config (e.g. run_preset=paper)",
    ),
    arg("--top-k", type=int, default=3, help="labels per row (3)"),
    arg(
        "--threshold",
        type=float,
        help="multi-label taggers: tag every class whose probability reaches this (0.5)",
    ),
    arg("--all-classes", action="store_true", help="add one posterior column per class"),
    arg(
        "--batch-size",
        type=int,
        help="spectrograms per network call (run: compute.eval_batch_size; bundle: 32)",
    ),
    arg("--device", choices=["auto", "cpu", "cuda"], default="auto"),
    arg("--jobs", type=int, default=1, help="preprocessing processes (1)"),
    arg("--timeline", action="store_true", help="tag windows of each file over time"),
    arg("--window", type=float, help="timeline window length in seconds (2.0)"),
    arg("--hop", type=float, help="timeline hop in seconds (1.0)"),
    arg("--plot", type=Path, help="timeline PNG (the CSV's name with .png)"),
    arg("--raw-rate", type=int, help="sample rate of raw 16-bit mono PCM read from '-'"),
)
def tag(args: argparse.Namespace) -> int:
    """Tag audio files with the trained system; exit 1 when any file could not be tagged."""
    # the tagger's librosa and madmom: only the tag command loads them
    from .tagger import TagOptions, run_tag

    options = {k: v for k, v in vars(args).items() if k not in ("command", "function")}
    return run_tag(TagOptions(**options))


@command(
    "export", arg("--results", type=Path, required=True), arg("--out-dir", type=Path, required=True), JSON
)
def export(args: argparse.Namespace) -> None:
    """Write the fused tagger (TorchScript, ONNX), classes, settings and model card."""
    # export imports torch and onnx: only the export command loads them
    from .export import export_bundle

    worst = export_bundle(args.results, args.settings, args.out_dir)
    log.info("exported the tagger to %s (TorchScript and ONNX within %.1e of torch)", args.out_dir, worst)


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per registered job (:data:`COMMANDS`): the rules call these, so a
    job's arguments are declared once, next to the function that runs it."""
    parser = argparse.ArgumentParser(prog="python -m workflow_lib.cli", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, function in COMMANDS.items():
        child = sub.add_parser(name, help=(function.__doc__ or "").strip().split("\n")[0])
        for flags, options in function.cli_arguments:
            child.add_argument(*flags, **options)
        child.set_defaults(function=function)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one job; a rejected input (bad data, bad settings) is one log line and exit 1,
    never a traceback from deep inside."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    # Every job's log names the release that wrote it (CHANGELOG.md), so a result can be cited.
    log.info("workflow_lib %s: %s", __version__, args.command)
    try:
        code = args.function(args)
    except UserError as error:
        # Bad data, bad settings or a missing tool: one clear line, no traceback.
        log.error("%s failed: %s", args.command, error)
        return 1
    return int(code or 0)


def tag_main() -> int:
    """The `sv-tag` console script: ``python -m workflow_lib.cli tag`` under a short name."""
    return main(["tag", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())

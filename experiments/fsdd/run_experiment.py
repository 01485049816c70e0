#!/usr/bin/env python
"""The noisy-label experiment on recorded speech (FSDD), every chain, in one command.

    .venv/bin/python experiments/fsdd/run_experiment.py            # one repetition
    .venv/bin/python experiments/fsdd/run_experiment.py --study \
        --test-speakers george jackson lucas nicolas theo yweweler --seeds 2018   # the study

Steps:

1. Build a noisy-label dataset in the FSDKaggle2018 layout from the Free Spoken Digit Dataset
   (``{digit}_{speaker}_{take}.wav``) with ``workflow_lib.noisy_dataset``: one speaker held out
   as the test set, a share of the remaining clips verified, a share of the unverified labels
   replaced by a wrong digit (true labels kept in ``train_true_labels.csv``). The audio is
   symlinked, not copied. A build whose settings match is reused (so nothing reruns).
2. Run the workflow on it: the repository's ``config.yaml``, then this folder's ``config.yaml``
   (the CPU-sized settings and the chains), then any ``--overlay`` files; Snakemake merges
   them recursively. The working directory is ``<out>/work``.
3. Copy ``results/{systems.csv,systems_iterations.csv,systems.png}`` to ``<out>/`` and write
   ``<out>/experiment.json`` (dataset counts, the resolved settings that matter, the
   Snakemake command, wall time).

``--multi-label``: the multi-label variant (DCASE 2019 Task 2 style, ``dataset.layout:
fsdkaggle2019``): step 1 mixes the recordings in pairs with ``workflow_lib.mixtures`` (labels =
both digits; of the training mixtures a share curated, and in a share of the noisy ones one
digit of the pair replaced by a wrong one; the held-out speaker's clips make the test
mixtures), and step 2 adds ``experiments/fsdd/multilabel.yaml`` (the layout and the chains
compared). Its default output folder is ``experiments/fsdd/results_multilabel``; the study
compares test lwlrap.

``--study``: one repetition per held-out speaker and seed (the seed drives the dataset split,
the label noise and the method's seed), each in ``<out>/<speaker>_s<seed>/`` as above; a
repetition whose ``experiment.json`` exists is not run again, and a killed one resumes.
Repetitions run seed-major (every speaker once before the next seed). With ``--copy-to DIR``
the finished repetitions kept in DIR count as finished too (copied back to ``<out>``), so the
same command resumes a study on a new machine. After each repetition ``<out>/study_runs.csv``
(the systems rows of every finished repetition in ``<out>``, whichever command ran it),
``study_summary.csv`` (per chain: n, mean, std, min, max) and ``study_paired.csv`` (per chain:
paired test-accuracy differences to ``self_verification`` and ``all_labels``, 95 % t-interval,
wins, losses, Wilcoxon and sign-test p-values), ``study_regret.csv`` (the CV pick's regret;
the pick replayed with the repetition's ``trust.selection_tolerance``), ``study_trust.csv``
(per chain and judging iteration: trusted labels, their precision and recall over the
repetitions) and ``study_paired.png`` are rewritten (workflow_lib/study.py;
``python -m workflow_lib.study <out>`` recomputes and prints them). Each ``experiment.json``
names the code that ran it (``code``: workflow_lib version, git commit, uncommitted changes).

``--reuse-from EARLIER`` (with ``--study``): each repetition starts from the finished one of the
same name in another study's output folder (its dataset linked, its work folder copied), so a
study of new chains retrains none of the chains the earlier study ran (:func:`start_from_earlier`).

``--pool-fraction F`` (single-label): the builder also holds back a share F of each digit's
training clips without their labels, and the run gets them as its unlabelled pool
(``dataset.unlabelled_audio_dir``, their true labels for measuring only); name a chain that
uses it, e.g. ``--chains self_verification pseudo_labels`` (docs/method.md "Beyond the paper",
"An unlabelled pool").

A killed run resumes where it stopped when started again (training checkpoints every epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from workflow_lib.errors import UserError  # noqa: E402
from workflow_lib.io import write_json  # noqa: E402
from workflow_lib.machine import load_average, machine_record  # noqa: E402
from workflow_lib.mixtures import MixtureSettings, build_mixture_dataset  # noqa: E402
from workflow_lib.noisy_dataset import NoisyDatasetSettings, build_noisy_dataset  # noqa: E402
from workflow_lib.study import finished_repetitions  # noqa: E402

#: Environment variable with the FSDD recordings folder: the default of --fsdd.
FSDD_ENV = "SV_FSDD_DIR"
NAME_PATTERN = r"^(?P<label>\d+)_(?P<group>[a-z]+)_(?P<take>\d+)\.wav$"
COPIED = {
    "results/systems.csv": "systems.csv",
    "results/systems_iterations.csv": "systems_iterations.csv",
    "results/systems.png": "systems.png",
}
#: --multi-label: the layout and the chains compared (merged after config.yaml of this folder).
MULTI_LABEL_CONFIG = HERE / "multilabel.yaml"


def snakemake_binary() -> str:
    beside = Path(sys.executable).with_name("snakemake")
    if beside.is_file():
        return str(beside)
    found = shutil.which("snakemake")
    if found is None:
        raise SystemExit("snakemake not found (activate the project's virtual environment)")
    return found


def subset_source(fsdd: Path, takes: int | None, folder: Path) -> Path:
    """The FSDD folder itself, or a folder of symlinks to takes 0 ... takes-1 of every digit
    and speaker (a small real-audio version for tests)."""
    if takes is None:
        return fsdd
    import re

    regex = re.compile(NAME_PATTERN)
    wanted = sorted(
        p for p in fsdd.glob("*.wav") if (m := regex.match(p.name)) and int(m.group("take")) < takes
    )
    if not wanted:
        raise SystemExit(f"no FSDD recordings with take < {takes} in {fsdd}")
    folder.mkdir(parents=True, exist_ok=True)
    present = {p.name for p in folder.iterdir()}
    if present != {p.name for p in wanted}:
        for name in present:
            (folder / name).unlink()
        for path in wanted:
            os.symlink(path.resolve(), folder / path.name)
    return folder


def dataset_settings(args: argparse.Namespace) -> NoisyDatasetSettings | MixtureSettings:
    """The builder's settings: single-label noisy dataset, or pairs mixed (--multi-label)."""
    if args.multi_label:
        return MixtureSettings(
            test_groups=(args.test_group,),
            curated_fraction=args.verified_fraction,
            noise_rate=args.noise_rate,
            public_fraction=args.public_fraction,
            uses_per_clip=args.uses_per_clip,
            seed=args.seed,
        )
    return NoisyDatasetSettings(
        test_groups=(args.test_group,),
        verified_fraction=args.verified_fraction,
        noise_rate=args.noise_rate,
        public_fraction=args.public_fraction,
        copy_mode="symlink",
        seed=args.seed,
        pool_fraction=args.pool_fraction,
    )


def reusable_build(
    dataset: Path, settings: NoisyDatasetSettings | MixtureSettings, source: Path
) -> dict | None:
    """The build_info of an earlier build in ``dataset`` from ``source`` with these settings
    (nothing to rebuild, so nothing downstream reruns), else None."""
    info_path = dataset / "build_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    if info is None or info["settings"] != settings.to_json() or info["source"]["audio_dir"] != str(source):
        if dataset.is_symlink():  # started from another study's repetition (--reuse-from)
            raise SystemExit(
                f"{dataset.parent.name}: its dataset is linked from {dataset.resolve()} (--reuse-from), "
                "which was built with other dataset settings or from other audio; run this study "
                "with the same dataset options, or without --reuse-from (nothing was rebuilt there)"
            )
        return None
    print(f"reusing the dataset in {dataset}", file=sys.stderr)
    return info


def build_dataset(args: argparse.Namespace, out: Path) -> dict:
    """Build (or reuse) the noisy dataset; returns its build_info."""
    source = subset_source(
        args.fsdd, args.takes, out.parent / "source_subset" if args.study else out / "source_subset"
    )
    settings = dataset_settings(args)
    dataset = out / "dataset"
    earlier = reusable_build(dataset, settings, source)
    if earlier is not None:
        return earlier
    print(f"building the dataset in {dataset}", file=sys.stderr)
    if args.multi_label:
        return build_mixture_dataset(source, dataset, settings, name_pattern=NAME_PATTERN, overwrite=True)
    return build_noisy_dataset(source, dataset, settings, name_pattern=NAME_PATTERN, overwrite=True)


def config_files(args: argparse.Namespace) -> list[Path]:
    """The config files of a run, in merge order: the repository's, the experiment's own
    (``args.experiment_configs``), then the ``--overlay`` files."""
    return [REPO / "config.yaml", *args.experiment_configs, *(Path(o).resolve() for o in args.overlay)]


def snakemake_command(args: argparse.Namespace, out: Path) -> list[str]:
    command = [
        snakemake_binary(),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        *map(str, config_files(args)),
        "--config",
        f"dataset_root={(out / 'dataset').resolve()}",
        "--directory",
        str(out / "work"),
        "--cores",
        str(args.cores),
        "--rerun-incomplete",
        "--printshellcmds",
    ]
    if args.dry_run:
        command.append("-n")
    return command + list(args.snakemake_args)


def resolved_settings(args: argparse.Namespace) -> dict:
    """The settings the workflow resolves from the same config files (for experiment.json)."""
    import yaml

    from workflow_lib.config import deep_merge, resolve_settings

    config: dict = {}
    for path in config_files(args):
        config = deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
    config["dataset_root"] = "<dataset>"
    s = resolve_settings(config)
    return {
        "run_preset": s["run_preset"],
        "method": s["method"],
        "run_chains": s["run_chains"],
        "chains": {c: s["chains"][c] for c in s["run_chains"]},
        "trust": s["trust"],
        "preprocessing": {"shards": s["preprocessing"]["shards"]},
        "compute": s["compute"],
    }


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every corpus's driver shares (this one's and experiments/drums'): the
    label-noise settings, the config overlays, the study's seeds and chains."""
    p.add_argument("--verified-fraction", type=float, default=0.4)
    p.add_argument("--noise-rate", type=float, default=0.3, help="share of unverified labels made wrong")
    p.add_argument("--public-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=2018, help="dataset seed")
    p.add_argument(
        "--overlay",
        action="append",
        default=[],
        help="extra config file merged after the experiment's config.yaml (repeatable)",
    )
    p.add_argument("--cores", type=int, default=2)
    p.add_argument(
        "--study",
        action="store_true",
        help="one repetition per held-out group (speaker, kit) x --seeds, then the study tables",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="--study: seeds")
    p.add_argument(
        "--copy-to",
        type=Path,
        default=None,
        help="--study: also copy the small result files (per repetition systems*.csv, "
        "systems.png, experiment.json; the study CSVs) here, e.g. to commit them",
    )
    p.add_argument(
        "--chains",
        nargs="+",
        default=None,
        help="chains to run (default: run_chains of the experiment's config.yaml)",
    )
    p.add_argument(
        "--reuse-from",
        type=Path,
        default=None,
        help="--study: start each repetition from the finished one of the same name in this "
        "folder (another study's --out, same dataset options): its dataset is shared and its "
        "work folder copied, so the chains both studies run are the same runs and only the "
        "new chains train; a repetition not finished there is skipped",
    )
    p.add_argument("--dry-run", action="store_true", help="build the dataset, plan, run nothing")
    p.add_argument("snakemake_args", nargs="*", help="passed on to snakemake (after --)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (dataset/, work/, systems.csv ...); default experiments/fsdd/results "
        "(--multi-label: experiments/fsdd/results_multilabel)",
    )
    p.add_argument(
        "--fsdd",
        type=Path,
        default=os.environ.get(FSDD_ENV) or None,
        help=f"the FSDD recordings folder (default: ${FSDD_ENV})",
    )
    p.add_argument(
        "--multi-label",
        action="store_true",
        help="pairs of recordings mixed, label sets (FSDKaggle2019 layout, lwlrap)",
    )
    p.add_argument(
        "--uses-per-clip",
        type=int,
        default=1,
        help="--multi-label: mixtures each recording appears in (1: 1,250 training mixtures)",
    )
    p.add_argument("--test-speaker", dest="test_group", default="theo", help="held-out speaker (test set)")
    p.add_argument(
        "--test-speakers", dest="test_groups", nargs="+", default=None, help="--study: held-out speakers"
    )
    p.add_argument(
        "--takes",
        type=int,
        default=None,
        help="use only takes 0 ... N-1 of each digit and speaker (a small version)",
    )
    p.add_argument(
        "--pool-fraction",
        type=float,
        default=0.0,
        help="single-label: share of each digit's training clips held back without labels as the "
        "unlabelled pool (dataset.unlabelled_audio_dir); needs a chain with pool: true, e.g. "
        "--chains self_verification pseudo_labels (default 0: no pool)",
    )
    add_run_arguments(p)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = HERE / ("results_multilabel" if args.multi_label else "results")
    args.experiment_configs = [HERE / "config.yaml", *([MULTI_LABEL_CONFIG] if args.multi_label else [])]
    return args


#: Builds (or reuses) a repetition's dataset in ``<out>/dataset``; returns its build_info.
DatasetBuilder = Callable[[argparse.Namespace, Path], dict]


@contextlib.contextmanager
def repetition_lock(out: Path):
    """Hold ``<out>/driver.lock`` (an exclusive flock, freed by the kernel when the process dies)
    while a driver runs the repetition in ``out``: a second driver there stops with a message
    instead of racing the first, and the holder knows no other driver runs there."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "driver.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another driver is running the repetition in {out}; wait for it") from None
        yield


def clear_stale_snakemake_lock(command: list[str], out: Path, env: dict) -> None:
    """A killed repetition (a study cut off at a session's end) leaves Snakemake's lock in
    ``<out>/work/.snakemake/locks``, and every rerun would refuse to start. Called under
    :func:`repetition_lock`, so no other driver runs there: the lock is stale and
    ``snakemake --unlock`` removes it (resumption as promised by "rerun to resume")."""
    locks = out / "work" / ".snakemake" / "locks"
    if not (locks.is_dir() and any(locks.iterdir())):
        return
    print(f"removing a stale Snakemake lock in {out / 'work'}", file=sys.stderr, flush=True)
    unlock = [word for word in command if word != "-n"] + ["--unlock"]
    subprocess.run(unlock, env=env, check=True, capture_output=True)


def run_one(args: argparse.Namespace, out: Path, build: DatasetBuilder = build_dataset) -> int:
    """One repetition into ``out``: dataset (``build``), workflow, copied tables, experiment.json."""
    with repetition_lock(out):
        return _run_one_locked(args, out, build)


def _run_one_locked(args: argparse.Namespace, out: Path, build: DatasetBuilder) -> int:
    settings = resolved_settings(args)
    info = build(args, out)
    command = snakemake_command(args, out)
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    started = time.time()
    code = code_record()  # before the run: what the checkout held when the jobs started
    machine = machine_record()  # and the load the run started under
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    clear_stale_snakemake_lock(command, out, env)
    done = subprocess.run(command, env=env)
    seconds = time.time() - started
    if done.returncode != 0 or args.dry_run:
        return done.returncode
    for source, name in COPIED.items():
        if (out / "work" / source).is_file():
            shutil.copyfile(out / "work" / source, out / name)
    record = {
        "dataset": {k: info[k] for k in RECORDED_DATASET_KEYS if k in info},
        "settings": settings,
        "snakemake_command": command,
        "code": code,
        "machine": machine | {"load_average_at_end": load_average()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if (out / "dataset").is_symlink():
        record["started_from"] = str((out / "dataset").resolve().parent)
    write_json(record, out / "experiment.json")  # atomic: its presence marks "finished"
    print(f"done in {seconds / 60:.1f} min: {out / 'systems.csv'}, {out / 'systems.png'}", file=sys.stderr)
    return 0


#: The dataset build's counts and settings a repetition's experiment.json keeps.
RECORDED_DATASET_KEYS = (
    "n_train",
    "n_verified",
    "n_unverified",
    "n_corrupted",
    "n_wrong_labels",
    "n_test",
    "n_pool",
    "classes",
    "settings",
)
#: The files whose uncommitted changes would make a repetition's commit a wrong account of
#: its code (git pathspecs, relative to the repository).
CODE_PATHS = (
    "workflow_lib",
    "rules",
    "Snakefile",
    "config.yaml",
    "schemas",
    "experiments/*/*.yaml",
    "experiments/*/*.py",
)


def code_record(repo: Path = REPO) -> dict:
    """Which code ran a repetition, for experiment.json: the workflow_lib version and, in a git
    checkout, the commit and whether :data:`CODE_PATHS` had uncommitted changes. A study run
    over several sessions can span commits; this says which one each repetition had."""
    from workflow_lib import __version__

    record: dict = {"workflow_lib": __version__}
    git = ["git", "-C", str(repo)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=60
        )
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: the version alone
        return record
    return record | {"git_commit": head.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def write_overlay(args: argparse.Namespace, out: Path, seed: int | None) -> Path | None:
    """Settings of a repetition beyond the config files: the chains, the method's seed and,
    with --pool-fraction, the pool the builder held back."""
    import yaml

    extra: dict = {}
    if args.chains:
        extra["run_chains"] = list(args.chains)
    if seed is not None:
        extra["method"] = {"seed": seed}
    if getattr(args, "pool_fraction", 0.0) > 0:  # the builder's held-back clips are the pool
        extra["dataset"] = {
            "unlabelled_audio_dir": "audio_unlabelled",
            "unlabelled_true_labels_csv": "unlabelled_true_labels.csv",
        }
    if not extra:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / "repetition.yaml"
    path.write_text("# written by run_experiment.py\n" + yaml.safe_dump(extra, sort_keys=True))
    return path


REPETITION_FILES = ("systems.csv", "systems_iterations.csv", "systems.png", "experiment.json")


def copy_repetition(source: Path, target: Path) -> None:
    """A finished repetition's small files; the record last, since it marks "finished"."""
    target.mkdir(parents=True, exist_ok=True)
    for file in REPETITION_FILES:  # experiment.json is the last of them
        if (source / file).is_file():
            shutil.copyfile(source / file, target / file)


def copy_small_files(out: Path, target: Path) -> None:
    """Every finished repetition's tables, plot and record and the study's CSVs, to ``target``."""
    for rep in finished_repetitions(out):
        copy_repetition(rep, target / rep.name)
    from workflow_lib.study import STUDY_FILES

    for file in STUDY_FILES:
        if (out / file).is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / file, target / file)


def study_tables(out: Path) -> None:
    """The study's files (workflow_lib/study.py STUDY_FILES) over every finished repetition
    in ``out``, whichever command ran it, so a run of some groups or seeds never narrows them."""
    from workflow_lib.study import read_study, write_study

    finished = finished_repetitions(out)
    if not finished:
        return
    write_study(read_study(out), out)
    print(f"study: {len(finished)} repetition(s) -> {out / 'study_summary.csv'}", file=sys.stderr)


def study_repetitions(groups: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """(group, seed) in the order they run: seed-major, so a study stopped part-way has held
    out every group once before it repeats any with another seed."""
    return [(group, seed) for seed in seeds for group in groups]


def restore_kept_repetitions(kept: Path, out: Path) -> None:
    """Finished repetitions whose small files were kept (``--copy-to``) but whose run folder
    is gone (a new machine, a cleaned disk) count as finished again: their record and tables
    go back under ``out``, so the same command resumes the study instead of redoing them."""
    for rep in finished_repetitions(kept):
        if not (out / rep.name / "experiment.json").is_file():
            copy_repetition(rep, out / rep.name)
            print(f"{rep.name}: finished earlier, restored from {kept}", file=sys.stderr)


#: Snakemake's per-run state that a copied work folder must not take along.
SNAKEMAKE_RUN_STATE = ("locks", "incomplete", "log", "shadow")


def start_from_earlier(earlier: Path, rep: Path) -> bool:
    """Seed the repetition folder ``rep`` from the finished repetition of the same name in
    ``earlier`` (--reuse-from), unless ``rep`` already has a work folder (then it resumes as
    it is). The dataset is a link to the earlier one, so the run's ``dataset_root`` resolves to
    the same path and no job's input or parameters change; the work folder is copied with its
    files' times and Snakemake's metadata, so the jobs both studies share are up to date and
    only the new chains' jobs run. The earlier folder is only read. False: nothing to start
    from (not finished there)."""
    if (rep / "work").exists():
        return True
    source = earlier / rep.name
    if not ((source / "experiment.json").is_file() and (source / "work").is_dir()):
        return False
    if (rep / "dataset").exists() and not (rep / "dataset").is_symlink():
        return False  # a dataset of its own was built here: the repetition runs on its own
    rep.mkdir(parents=True, exist_ok=True)
    if not (rep / "dataset").is_symlink():
        (rep / "dataset").symlink_to((source / "dataset").resolve(), target_is_directory=True)
    partial = rep / "work.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(
        source / "work", partial, symlinks=True, ignore=shutil.ignore_patterns(*SNAKEMAKE_RUN_STATE)
    )
    partial.rename(rep / "work")  # a killed copy leaves only work.partial, redone next time
    print(f"{rep.name}: started from {source}", file=sys.stderr)
    return True


def run_study(args: argparse.Namespace, out: Path, build: DatasetBuilder = build_dataset) -> int:
    """One repetition per held-out group (``args.test_groups``) and seed, each resumable."""
    repetitions = study_repetitions(args.test_groups or [args.test_group], args.seeds or [args.seed])
    if args.copy_to and not args.dry_run:
        restore_kept_repetitions(args.copy_to.resolve(), out)
    base_overlays = list(args.overlay)
    reuse_from = getattr(args, "reuse_from", None)  # a hand-made Namespace (tests) may lack it
    for group, seed in repetitions:
        rep = out / f"{group}_s{seed}"
        if (rep / "experiment.json").is_file() and not args.dry_run:
            print(f"{rep.name}: finished earlier, kept", file=sys.stderr)
            continue
        if reuse_from is not None and not start_from_earlier(reuse_from.resolve(), rep):
            print(f"{rep.name}: not finished in {reuse_from}; skipped (rerun when it is)", file=sys.stderr)
            continue
        overlay = write_overlay(args, rep, seed)
        one = argparse.Namespace(
            **{
                **vars(args),
                "test_group": group,
                "seed": seed,
                "overlay": base_overlays + ([str(overlay)] if overlay else []),
            }
        )
        code = run_one(one, rep, build)
        if code != 0:
            print(f"{rep.name}: failed (exit {code}); rerun the same command to resume", file=sys.stderr)
            return code
        study_tables(out)
        if args.copy_to:
            copy_small_files(out, args.copy_to.resolve())
    study_tables(out)
    if args.copy_to:
        copy_small_files(out, args.copy_to.resolve())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fsdd is None:
        print(f"error: where are the FSDD recordings? Pass --fsdd DIR or set {FSDD_ENV}", file=sys.stderr)
        return 1
    if not args.fsdd.is_dir():
        print(f"error: FSDD recordings not found at {args.fsdd} (--fsdd)", file=sys.stderr)
        return 1
    if args.pool_fraction and args.multi_label:
        print(
            "error: --pool-fraction: the mixture builder (--multi-label) holds back no pool", file=sys.stderr
        )
        return 1
    out = args.out.resolve()
    try:
        if args.study:
            return run_study(args, out)
        overlay = write_overlay(args, out, None)
        if overlay is not None:
            args.overlay = [*args.overlay, str(overlay)]
        return run_one(args, out)
    except UserError as exc:  # e.g. --pool-fraction without a chain that uses the pool (ConfigError)
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

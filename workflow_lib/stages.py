"""Job-level functions: read the workflow's CSVs, call the library, write the outputs.

One function per kind of Snakemake job; each takes plain paths and settings so it can be run
and tested without Snakemake.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .audio import USABLE_STATUSES
from .data import ClipBank
from .dataset import read_classes
from .dataset_layouts import TRANSDUCTIVE_NOTE
from .devices import select_device
from .errors import UserError
from .evaluation import (
    FUSION_CV_NOTE,
    PER_CLASS_COLUMNS,
    SCORING_SETS,
    class_reports,
    evaluate_systems,
    pool_summary,
    preset_summary,
    scored_rows,
    test_columns,
)
from .folds import make_folds, split_fold
from .fusion import (
    UNPREDICTED_ROW,
    FusionSettings,
    Validation,
    fusion_named,
    parameter_table,
    probabilities,
    probability_frame,
    submission,
    submission_status,
)
from .io import atomic_path, load_torch, read_csv_str, write_csv
from .labels import split_labels
from .layout import COPIES_SPLIT, MODEL_FILES, POOL_FILES, TRUST_FILES, Layout
from .model import architecture_metadata, build_network, load_model
from .policies import Clips, apply_policy, low_trust, policy_named
from .pool import decide_pool, mean_fold_posteriors, pool_clips, pool_list
from .pool import posterior_table as pool_posterior_table
from .preprocess import SpectrogramStore, joined_store
from .selection import best_epoch_row, chosen_iteration
from .self_verify import TABLES, TrustSettings, judge_folds, with_truth
from .soft_targets import confusion_rows, soften
from .task import MULTI, SINGLE, Task, task_named, task_of_saved
from .training import CheckpointPolicy, FitSettings, MixupPartners, RunOptions, fit, predict_whole

log = logging.getLogger(__name__)


def folds_job(
    manifest_csv: Path, out_csv: Path, n_folds: int, seed: int, *, task: Task | None = None
) -> pd.DataFrame:
    """Folds over the usable training clips (files skipped in preprocessing are left out);
    label sets are dealt by iterative stratification (workflow_lib/folds.py). ``task`` None
    (the workflow's rule): chosen from the labels, as folds.csv always was, so a multi-label
    dataset whose clips each carry one label keeps its round-robin folds."""
    manifest = read_csv_str(manifest_csv)
    usable = manifest[manifest["status"].isin(USABLE_STATUSES)]
    left_out = len(manifest) - len(usable)
    if left_out:
        log.warning("%d training file(s) skipped in preprocessing are not in any fold", left_out)
    folds = make_folds(
        usable[["fname", "label", "verified"]].reset_index(drop=True), n_folds, seed, task=task
    )
    write_csv(folds, out_csv)
    return folds


@dataclass(frozen=True)
class TrainingJob:
    """One fold model of one iteration: initial training (it0) or fine-tuning (it1 ...)."""

    manifest_csv: Path
    folds_csv: Path
    classes_csv: Path
    fold: int
    out_dir: Path
    preset: str
    net: dict
    fit: FitSettings
    frames: int
    device: str = "auto"
    threads: int = 1
    lock_dir: Path = Path(".gpu_locks")
    train_list_csv: Path | None = None  # fine-tuning: the self-verified list of iteration i
    init_checkpoint: Path | None = None  # fine-tuning: the fold's iteration-i parameters
    options: RunOptions = RunOptions()  # checkpoints, compile: how, not what (not fingerprinted)
    task: Task = SINGLE  # MULTI: label sets, BCE on sigmoids (dataset.layout fsdkaggle2019)
    copies: dict | None = None  # waveform augmentation's settings: train on the copies too
    # a pool chain's fine-tuning: the trusted pool clips (pool_list.csv) and their spectrograms
    pool_list_csv: Path | None = None
    pool_manifest_csv: Path | None = None
    # soft relabelling towards the confusion rows: the previous iteration's valid_posteriors.csv
    valid_posteriors_csv: Path | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **where: Any) -> TrainingJob:
        """The job of a job-settings object (``job_settings.fit_settings``, as the rules pass
        it; without ``task``: single-label) run on ``where``: the paths, fold, threads and lock
        folder, by keyword as this class names them."""
        run = settings.get("run", {})
        checkpoint = CheckpointPolicy.from_settings(run.get("checkpoint_every"))
        options = RunOptions(
            checkpoint,
            compile=bool(run.get("compile", False)),
            cudnn_benchmark=bool(run.get("cudnn_benchmark", True)),
        )
        pool = settings.get("pool") or {}
        if pool:
            where = {
                **where,
                "pool_list_csv": Path(pool["list"]),
                "pool_manifest_csv": Path(pool["manifest"]),
            }
        if settings.get("valid_posteriors"):
            where = {**where, "valid_posteriors_csv": Path(settings["valid_posteriors"])}
        return cls(
            preset=settings["preset"],
            net=settings["net"],
            fit=FitSettings(**settings["fit"]),
            frames=settings["frames"],
            device=settings["device"],
            options=options,
            task=task_named(settings.get("task", SINGLE.name)),
            copies=settings.get("copies"),
            **where,
        )

    @property
    def copies_csv(self) -> Path | None:
        """The waveform copies' manifest, beside the training clips' (when on)."""
        return None if self.copies is None else self.manifest_csv.with_name(f"{COPIES_SPLIT}.csv")


def training_sets(job: TrainingJob, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training clips, verified validation clips) of the job's fold, with class indices
    (column ``target``; for label sets no ``target``: the sets stay in ``label`` and
    :func:`targets_of` makes the multi-hot rows).

    With a training list (train.csv layout), only its ``manually_verified == 1`` clips train,
    under the list's ``label`` (a policy may correct one, or keep a trusted subset of a set)
    and, when present, its ``weight``.
    """
    folds = read_csv_str(job.folds_csv)
    train, valid = split_fold(folds, job.fold)
    if job.train_list_csv is not None:
        listing = read_csv_str(job.train_list_csv)
        listing = listing[listing["manually_verified"] == "1"].set_index("fname")
        train = train[train["fname"].isin(listing.index)]
        train = train.assign(label=train["fname"].map(listing["label"]))
        if "weight" in listing:
            train = train.assign(weight=train["fname"].map(listing["weight"]).astype(float))
    valid = valid[valid["verified"].astype(int) == 1]
    if job.pool_list_csv is not None:  # after the fold's clips; never in validation
        own = train.assign(pool=False, weight=train.get("weight", 1.0))
        train = pd.concat([own, trusted_pool(job.pool_list_csv)], ignore_index=True)
    prepared = _PREPARED[job.task.name]
    return prepared(train, classes), prepared(valid, classes)


def trusted_pool(pool_list_csv: Path) -> pd.DataFrame:
    """The unlabelled pool's clips a pool chain's fine-tuning adds (pool_list.csv), as training
    rows: their trusted label (set) and weight, ``verified`` 0 (trusted, not verified, as the
    self-verified clips), no fold, ``pool`` True (their spectrograms are in the pool's store)."""
    listing = read_csv_str(pool_list_csv)
    return pd.DataFrame(
        {
            "fname": listing["fname"],
            "label": listing["label"],
            "verified": "0",
            "fold": "-1",
            "weight": listing["weight"].astype(float),
            "pool": True,
        }
    )


def unlabelled_clips(job: TrainingJob) -> list[str]:
    """The unlabelled clips of a fine-tuning job with consistency training
    (``job.fit.consistency.unlabelled``): the fold's training-part unverified clips that the
    chain's training list does not trust (``manually_verified`` not 1). Never a validation
    clip (they are the fold's own, judged only by the other folds' models) nor another fold's.
    Empty when the option is off or the job has no training list (iteration 0)."""
    settings = job.fit.consistency
    if settings is None or not settings.unlabelled or job.train_list_csv is None:
        return []
    train, _ = split_fold(read_csv_str(job.folds_csv), job.fold)
    listing = read_csv_str(job.train_list_csv)
    untrusted = set(listing.loc[listing["manually_verified"] != "1", "fname"])
    unverified = train[train["verified"].astype(int) != 1]
    return [f for f in unverified["fname"] if f in untrusted]


def mixup_partner_clips(job: TrainingJob, classes: list[str]) -> pd.DataFrame:
    """The clips mixup draws partners from in a job with ``job.fit.mixup_partners``
    ``unverified``: every unverified clip of the fold's training part, trusted or not, with its
    given label (folds.csv: the noisy label, never a policy's correction or subset), prepared
    as :func:`training_sets` prepares training clips. Never a validation clip nor another
    fold's. Empty when the option is off; a UserError when it is on and there is none (the
    setting would change nothing)."""
    if job.fit.mixup_partners is None:
        return pd.DataFrame(columns=["fname", "label", "verified", "fold"])
    train, _ = split_fold(read_csv_str(job.folds_csv), job.fold)
    unverified = train[train["verified"].astype(int) != 1]
    if unverified.empty:
        raise UserError(
            f"mixup partners {job.fit.mixup_partners}: fold {job.fold}'s training part has no "
            "unverified clip to mix with; use partners: batch or a dataset with unverified clips"
        )
    return _PREPARED[job.task.name](unverified, classes)


def _with_class_index(clips: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Single-label clips with their class index (column ``target``)."""
    index = {label: i for i, label in enumerate(classes)}
    return clips.assign(target=clips["label"].map(index)).reset_index(drop=True)


def _checked_sets(clips: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Clips with their label sets checked: every label a class, no empty set (a clip
    without a label would train as 'no class present')."""
    known = set(classes)
    for fname, cell in zip(clips["fname"], clips["label"].fillna("")):
        labels = split_labels(cell)
        unknown = [label for label in labels if label not in known]
        if not labels or unknown:
            problem = f"labels {unknown} not in classes.csv" if unknown else "no label"
            raise UserError(f"training clip {fname}: {problem}")
    return clips.reset_index(drop=True)


#: How :func:`training_sets` prepares a task's clips, by ``task.name``.
_PREPARED = {SINGLE.name: _with_class_index, MULTI.name: _checked_sets}


def targets_of(clips: pd.DataFrame, classes: list[str], task: Task) -> np.ndarray:
    """Training targets (``task.targets``): class indices, or multi-hot rows of the ``label`` sets."""
    return task.targets(clips, classes)


def training_targets(job: TrainingJob, train: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The training clips' targets (:func:`targets_of`); with ``job.fit.soft_relabel``, soft
    rows (:func:`workflow_lib.soft_targets.soften`): S estimated on the fold's verified
    training clips, applied to the trusted unverified clips (and the verified ones when
    ``verified``). Without the option the hard targets, exactly as before."""
    targets = targets_of(train, classes, job.task)
    settings = job.fit.soft_relabel
    if settings is None:
        return targets
    verified = train["verified"].astype(int).to_numpy() == 1
    rows = np.ones_like(verified) if settings.verified else ~verified
    confusion = confusion_table(job, classes) if settings.towards == "confusion" else None
    return soften(targets, verified, rows, settings.strength, len(classes), confusion)


def confusion_table(job: TrainingJob, classes: list[str]) -> np.ndarray:
    """The confusion rows single-label soft relabelling ``towards: confusion`` smooths towards
    (:func:`workflow_lib.soft_targets.confusion_rows`): from the out-of-fold posteriors of the
    verified clips of the other folds only, i.e. this fold's verified training clips. The
    fold's own validation clips never shape its training targets (no leak into its model
    selection). No posteriors file is an error, never a silent fall-back to the prior."""
    if job.task.label_sets:
        raise UserError(
            "soft relabelling towards: confusion is single-label only (multi-label: co-occurrence)"
        )
    if job.valid_posteriors_csv is None:
        raise UserError(
            "soft relabelling towards: confusion needs the previous iteration's valid_posteriors.csv "
            "(the rule fine_tune passes it as the job setting valid_posteriors), and this job has none"
        )
    frame = checked_valid_posteriors(job.valid_posteriors_csv, read_csv_str(job.folds_csv), classes)
    training = frame[frame["fold"].astype(int) != job.fold]
    labels = training["label"].map({label: i for i, label in enumerate(classes)}).to_numpy()
    log.info(
        "soft relabelling towards the confusion rows of %d verified training clips (%s)",
        len(training),
        job.valid_posteriors_csv,
    )
    return confusion_rows(labels, training[classes].to_numpy(dtype=np.float64), len(classes))


#: The columns of valid_posteriors.csv before the class columns (:func:`posterior_frame`).
POSTERIOR_KEYS = ["fname", "fold", "label"]


def checked_valid_posteriors(path: Path, folds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """valid_posteriors.csv, checked as untrusted input, with float class columns: its key
    columns, then exactly the classes; finite, non-negative values; every clip once, a verified
    clip of folds.csv with the same fold and label there (a file of other folds would let a
    fold's own validation clips shape its targets). Each problem is a UserError naming it."""
    if not Path(path).is_file():
        raise UserError(f"{path} is missing: the self_verify job of the previous iteration writes it")
    frame = read_csv_str(path)
    problem = _posterior_columns_problem(list(frame.columns), classes)
    if problem is None:
        values = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all() or (values < 0).any():
            problem = "a class column holds a value that is not a finite non-negative number"
        else:
            frame[classes] = values
            problem = _posterior_clips_problem(frame, folds)
    if problem is not None:
        raise UserError(f"{path}: {problem}; rerun the self_verify job that writes it")
    return frame


def _posterior_columns_problem(columns: list[str], classes: list[str]) -> str | None:
    """What is wrong with valid_posteriors.csv's header, or None."""
    missing = [c for c in POSTERIOR_KEYS if c not in columns]
    if missing:
        return f"required column(s) {missing} missing"
    found = [c for c in columns if c not in POSTERIOR_KEYS]
    if found != classes:
        unknown = sorted(set(found) - set(classes))
        absent = sorted(set(classes) - set(found))
        return f"class columns differ from classes.csv (unknown: {unknown}, missing: {absent}, or order)"
    return None


def _posterior_clips_problem(frame: pd.DataFrame, folds: pd.DataFrame) -> str | None:
    """What is wrong with valid_posteriors.csv's clips against folds.csv, or None."""
    if frame["fname"].duplicated().any():
        return f"clip {frame.loc[frame['fname'].duplicated(), 'fname'].iloc[0]} appears twice"
    known = folds.set_index("fname")
    absent = frame.loc[~frame["fname"].isin(known.index), "fname"]
    if len(absent):
        return f"clip {absent.iloc[0]} is not in folds.csv"
    rows = known.loc[frame["fname"]]
    for column, want in (("fold", rows["fold"]), ("label", rows["label"])):
        differs = frame[column].to_numpy() != want.to_numpy()
        if differs.any():
            return f"clip {frame['fname'][differs].iloc[0]}: its {column} differs from folds.csv's"
    if (rows["verified"].astype(int) != 1).any():
        return "a clip is not verified in folds.csv (the file holds verified clips only)"
    return None


def loss_weights(train: pd.DataFrame) -> np.ndarray | None:
    """Per-clip loss weights of a training set, or None when every weight is 1 (the plain mean
    loss, bit for bit)."""
    if "weight" not in train or np.allclose(train["weight"].to_numpy(dtype=float), 1.0):
        return None
    return train["weight"].to_numpy(dtype=np.float32)


def with_copies(
    job: TrainingJob, train: pd.DataFrame, store: SpectrogramStore
) -> tuple[pd.DataFrame, SpectrogramStore]:
    """The training clips and their waveform copies (workflow_lib/waveform_augment.py), and
    one store holding both; unchanged when the option is off. Only the copies of the clips
    this job trains on are added, each with its source's row (label, verified, weight: its
    trust decision), so a copy never trains where its source does not: never in its source's
    validation fold, never as an untrusted clip."""
    if job.copies_csv is None:
        return train, store
    copies = SpectrogramStore.open(job.copies_csv)
    rows = copies.manifest[copies.manifest["source"].isin(set(train["fname"]))]
    added = train.set_index("fname").loc[rows["source"]].reset_index()
    added["fname"] = rows["fname"].to_numpy()
    log.info(
        "waveform augmentation: %d copies of %d of the %d training clips added (%d rows)",
        len(added),
        rows["source"].nunique(),
        len(train),
        len(train) + len(added),
    )
    joined = pd.concat([train, added], ignore_index=True)
    if "pool" in joined:  # pool clips last: training_bank reads the rest, then the pool's store
        in_pool = joined["pool"].fillna(False).astype(bool)
        joined = pd.concat([joined[~in_pool], joined[in_pool]], ignore_index=True)
    return joined, joined_store(store, copies)


def file_digest(path: Path | None) -> str:
    """SHA-256 of a file's bytes (empty for no file): part of a training job's fingerprint,
    so a resumed job refuses a checkpoint made from other inputs."""
    if path is None:
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(
    job: TrainingJob,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    unlabelled: list[str] | None = None,
    partners: pd.DataFrame | None = None,
) -> str:
    """Identifies a run's settings and data; a checkpoint from another run is never resumed.
    ``unlabelled`` (consistency training's clips) and ``partners`` (mixup's partner clips,
    :func:`mixup_partner_clips`, with their targets) only when not empty: other runs keep
    theirs."""

    def targets(clips: pd.DataFrame) -> list:
        if job.task.label_sets:  # the label-set cell
            return clips["label"].astype(str).tolist()
        return clips["target"].astype(int).tolist()

    payload = {
        "fit": job.fit.record(),
        "net": job.net,
        "frames": job.frames,
        "train": list(zip(train["fname"], targets(train))),
        "valid": list(zip(valid["fname"], targets(valid))),
        "init": file_digest(job.init_checkpoint),
        **job.task.saved_marker(),  # none for single-label: its fingerprints stay as they were
    }
    if unlabelled:
        payload["unlabelled"] = list(unlabelled)
    if partners is not None and len(partners):
        payload["mixup_partners"] = list(zip(partners["fname"], targets(partners)))
    if job.copies is not None:  # waveform augmentation: how the copies were made
        payload["copies"] = job.copies
    if job.valid_posteriors_csv is not None:  # the confusion rows' source shapes the targets
        payload["valid_posteriors"] = file_digest(job.valid_posteriors_csv)
    weights = loss_weights(train)
    if weights is not None:
        payload["weights"] = [round(float(w), 6) for w in weights]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def save_model(path: Path, state_dict: dict, job: TrainingJob, classes: list[str], **extra) -> None:
    """A self-describing parameter file: enough to rebuild the network and name its outputs.

    It carries its task's marker (``job.task.saved_marker()``; none for single-label), so
    whatever loads one turns its logits into probabilities the way it was trained
    (``task_of_saved``), and its network's name and arguments (``architecture``,
    ``architecture_args``: :func:`workflow_lib.model.load_model` rebuilds it from them).
    ``width`` and ``dropout`` stay for the readers of older models' keys.
    """
    with atomic_path(path) as tmp:
        torch.save(
            {
                "state_dict": state_dict,
                "width": job.net["width"],
                "classes": classes,
                "dropout": job.net["dropout"],
                "preset": job.preset,
                "spectrogram": job.net["spectrogram"],
                "fold": job.fold,
                **extra,
                **job.task.saved_marker(),
                **architecture_metadata(job.net),
            },
            tmp,
        )


def _bank_or_none(
    job: TrainingJob, store: SpectrogramStore, fnames: list[str], device: torch.device
) -> ClipBank | None:
    """The clips' bank on the training device, None when there are none: the extra banks of
    fine-tuning options (consistency's unlabelled clips, mixup's partners) load as the
    training clips do."""
    return ClipBank.from_store(store, fnames, job.frames, device) if fnames else None


def _unlabelled_bank(
    job: TrainingJob, store: SpectrogramStore, device: torch.device
) -> tuple[list[str], ClipBank | None]:
    """Consistency training's unlabelled clips (:func:`unlabelled_clips`) and their bank on
    the training device (None when there are none)."""
    unlabelled = unlabelled_clips(job)
    if job.fit.consistency is not None:
        log.info("consistency training: %d unlabelled clips", len(unlabelled))
    return unlabelled, _bank_or_none(job, store, unlabelled, device)


def _partner_bank(
    job: TrainingJob, store: SpectrogramStore, device: torch.device, classes: list[str]
) -> tuple[pd.DataFrame, MixupPartners | None]:
    """Mixup's partner clips (:func:`mixup_partner_clips`) and, when the option is on, their
    bank on the training device with their given labels as targets (``task.targets``)."""
    clips = mixup_partner_clips(job, classes)
    if job.fit.mixup_partners is None:
        return clips, None
    log.info("mixup partners: %d unverified clips", len(clips))
    bank = _bank_or_none(job, store, list(clips["fname"]), device)
    return clips, MixupPartners(bank, targets_of(clips, classes, job.task))


def training_bank(
    job: TrainingJob, store: SpectrogramStore, train: pd.DataFrame, device: torch.device
) -> ClipBank:
    """The training clips' spectrograms in ``train``'s order: the fold's clips from the
    training store, then (a pool chain's fine-tuning) the trusted pool clips from the pool's."""
    if job.pool_manifest_csv is None or "pool" not in train:
        return ClipBank.from_store(store, list(train["fname"]), job.frames, device)
    pool = train["pool"].astype(bool).to_numpy()
    log.info("unlabelled pool: %d trusted pool clips join the training clips", int(pool.sum()))
    own = ClipBank.from_store(store, list(train.loc[~pool, "fname"]), job.frames, device)
    if not pool.any():
        return own
    pool_store = SpectrogramStore.open(job.pool_manifest_csv)
    return ClipBank.concat(
        [own, ClipBank.from_store(pool_store, list(train.loc[pool, "fname"]), job.frames, device)]
    )


def run_training_job(job: TrainingJob) -> pd.DataFrame:
    """Train one fold model; write best.pt, last.pt and history.csv into ``job.out_dir``."""
    choice = select_device(job.device, job.lock_dir, job.threads)
    log.info("%s fold %d -> %s on %s", job.preset, job.fold, job.out_dir, choice.describe())
    torch.manual_seed(job.fit.seed)
    classes = read_classes(job.classes_csv)
    train, valid = training_sets(job, classes)
    log.info("%d training clips, %d verified validation clips", len(train), len(valid))
    store = SpectrogramStore.open(job.manifest_csv)
    train, train_store = with_copies(job, train, store)
    train_bank = training_bank(job, train_store, train, choice.device)
    valid_bank = ClipBank.from_store(store, list(valid["fname"]), job.frames, choice.device)
    unlabelled, extra = _unlabelled_bank(job, store, choice.device)
    partner_clips, partners = _partner_bank(job, store, choice.device, classes)
    model = build_network(job.net, len(classes))
    if job.init_checkpoint is not None:
        model.load_state_dict(
            load_torch(job.init_checkpoint, Layout.model_rule(job.init_checkpoint))["state_dict"]
        )
    job.out_dir.mkdir(parents=True, exist_ok=True)
    files = {role: job.out_dir / name for role, name in MODEL_FILES.items()}
    state = fit(
        model,
        train_bank,
        training_targets(job, train, classes),
        valid_bank,
        targets_of(valid, classes, job.task),
        job.fit,
        files["resume"],
        fingerprint(job, train, valid, unlabelled, partner_clips),
        on_epoch=lambda h: write_csv(h, files["history"]),
        options=job.options,
        train_weights=loss_weights(train),
        task=job.task,
        unlabelled_bank=extra,
        mixup_partners=partners,
    )
    history = pd.DataFrame(state.history, columns=list(job.task.history_columns))
    best = best_epoch_row(history)
    scores = {"valid_lwlrap": float(best["valid_lwlrap"])} if job.task.label_sets else {}
    save_model(
        files["last"],
        {k: v.cpu() for k, v in model.state_dict().items()},
        job,
        classes,
        epoch=len(history),
    )
    save_model(
        files["best"],
        state.best_state,
        job,
        classes,
        epoch=int(best["epoch"]),
        valid_loss=state.best_loss,
        **scores,
    )
    write_csv(history, files["history"])
    files["resume"].unlink(missing_ok=True)
    choice.release()
    return history


# --- self-verification, prediction, fusion, evaluation --------------------------------------


def fold_models(model_paths: dict[int, Path], device: str) -> dict[int, torch.nn.Module]:
    """{fold: network in evaluation mode} from {fold: best.pt}."""
    return load_fold_models(model_paths, device)[0]


def load_fold_models(model_paths: dict[int, Path], device: str) -> tuple[dict[int, torch.nn.Module], Task]:
    """({fold: network in evaluation mode}, the task they were trained for) from {fold: best.pt};
    the models of one iteration are all of one task (else a UserError). No model: single-label."""
    models, tasks = {}, set()
    for fold, path in model_paths.items():
        models[fold], saved = load_model(path, device)
        tasks.add(task_of_saved(saved))
    if len(tasks) > 1:
        raise UserError(
            f"the models {sorted(map(str, model_paths.values()))} mix single- and multi-label networks"
        )
    return models, tasks.pop() if tasks else SINGLE


#: Iteration-0 training sets (config ``chains.*.start``).
STARTS = ("all", "verified", "noisy")


def initial_list_job(folds_csv: Path, out_csv: Path, start: str) -> pd.DataFrame:
    """train.csv layout naming the clips iteration 0 trains on, with their given labels:
    ``all`` every clip, ``verified`` the verified clips only, ``noisy`` the unverified clips
    only (a warm-up: the chain's fine-tuning then trains on the verified + trusted clips of
    its self-verified lists, as the DCASE 2019 systems trained on the noisy set first)."""
    if start not in STARTS:
        raise UserError(f"unknown iteration-0 training set {start!r}; one of {', '.join(STARTS)}")
    folds = read_csv_str(folds_csv)
    verified = folds["verified"].astype(int)
    trusted = {"all": 1, "verified": verified, "noisy": 1 - verified}[start]
    if start == "noisy" and not (verified == 0).any():
        raise UserError("start: noisy trains iteration 0 on the unverified clips, and there are none")
    table = pd.DataFrame({"fname": folds["fname"], "label": folds["label"], "manually_verified": trusted})
    write_csv(table, out_csv)
    return table


@dataclass(frozen=True, kw_only=True)
class TrustJob:
    """One iteration of one chain: its fold models judge, its policy decides. The files it
    reads and writes, where it runs, and its one settings object (by keyword)."""

    model_paths: dict[int, Path]
    manifest_csv: Path
    folds_csv: Path
    classes_csv: Path
    train_csv: Path
    out_dir: Path
    settings: TrustSettings
    threads: int = 1
    lock_dir: Path = Path(".gpu_locks")


def posterior_frame(clips: Clips, classes: list[str], label_column: str) -> pd.DataFrame:
    """fname, fold, the given (or verified) label, one column per class."""
    frame = clips.table[["fname", "fold", label_column]].reset_index(drop=True)
    return pd.concat([frame, pd.DataFrame(clips.posteriors, columns=classes)], axis=1)


def trust_models(model_paths: dict[int, Path], device: str, task: Task) -> dict[int, torch.nn.Module]:
    """:func:`load_fold_models`, refusing models trained for the other task (a softmax model
    judged with sigmoids, or the reverse, would give meaningless scores)."""
    models, trained_for = load_fold_models(model_paths, device)
    if models and trained_for is not task:
        raise UserError(
            f"{sorted(map(str, model_paths.values()))} hold {trained_for.name} models, but this run is "
            f"{task.name} (config dataset.layout)"
        )
    return models


def self_verify_job(job: TrustJob) -> pd.DataFrame:
    """Judge every fold's held-out unverified clips (and, for calibration and label spreading,
    its verified validation clips, with another random stream), apply the chain's policy, and
    write posteriors, decisions, per-class table and the next training list."""
    settings = job.settings
    choice = select_device(settings.device, job.lock_dir, job.threads)
    classes = read_classes(job.classes_csv)
    folds = read_csv_str(job.folds_csv)
    embeddings = policy_named(settings.policy.name).needs_embeddings
    judged, reference = _judge_held_out(job, folds, choice.device, embeddings)
    for clips in (judged, reference):
        if clips.posteriors.shape[1] == 0:
            clips.posteriors = np.zeros((len(clips.table), len(classes)))
    decisions = apply_policy(judged, reference, classes, settings.policy, settings.context, settings.task)
    train = read_csv_str(job.train_csv)
    truth = train.set_index("fname")["true_label"] if "true_label" in train else pd.Series(dtype=str)
    decisions = with_truth(decisions, truth, settings.task)
    _write_trust_files(job, classes, folds, (judged, reference), decisions)
    _warn_low_trust(settings, decisions)
    choice.release()
    return decisions


def _write_trust_files(
    job: TrustJob,
    classes: list[str],
    folds: pd.DataFrame,
    judged: tuple[Clips, Clips],
    decisions: pd.DataFrame,
) -> None:
    """posteriors.csv (judged) and valid_posteriors.csv (reference), decisions.csv, the
    per-class table and the next training list, as the task makes them."""
    out = {role: job.out_dir / name for role, name in TRUST_FILES.items()}
    tables = TABLES[job.settings.task.name]
    write_csv(posterior_frame(judged[0], classes, "given_label"), out["posteriors"])
    write_csv(posterior_frame(judged[1], classes, "label"), out["valid_posteriors"])
    write_csv(decisions, out["decisions"])
    write_csv(tables.precision(decisions, classes), out["per_class"])
    write_csv(tables.training_list(folds, decisions), out["train_list"])


@dataclass(frozen=True, kw_only=True)
class PoolJob:
    """The unlabelled pool judged by one chain's fold models of one iteration (rule
    judge_pool): the files it reads and writes, where it runs, its one settings object."""

    model_paths: dict[int, Path]
    pool_manifest_csv: Path
    pool_csv: Path  # the validated listing (its true_label, when known, for measuring only)
    classes_csv: Path
    out_dir: Path
    settings: TrustSettings
    threads: int = 1
    lock_dir: Path = Path(".gpu_locks")


def pool_job(job: PoolJob) -> pd.DataFrame:
    """Judge every usable pool clip by the mean of the fold models, let the chain's policy
    decide (workflow_lib/pool.py), and write pool_posteriors.csv, pool_decisions.csv,
    pool_per_class.csv (precision and recall when the pool's true labels are known) and
    pool_list.csv (what the next fine-tuning adds)."""
    settings = job.settings
    choice = select_device(settings.device, job.lock_dir, job.threads)
    classes = read_classes(job.classes_csv)
    store = SpectrogramStore.open(job.pool_manifest_csv)
    fnames = list(store.manifest["fname"])
    bank = ClipBank.from_store(store, fnames, settings.frames, choice.device)
    models = trust_models(job.model_paths, choice.device, settings.task)
    posteriors = mean_fold_posteriors(models, bank, settings)
    if posteriors.shape[1] == 0:
        posteriors = np.zeros((len(fnames), len(classes)))
    decisions = decide_pool(pool_clips(fnames, posteriors, classes, settings.task), classes, settings)
    listing = read_csv_str(job.pool_csv)
    decisions = with_truth(decisions, listing.set_index("fname")["true_label"], settings.task)
    out = {role: job.out_dir / name for role, name in POOL_FILES.items()}
    write_csv(pool_posterior_table(fnames, posteriors, classes, settings.task), out["posteriors"])
    write_csv(decisions, out["decisions"])
    write_csv(TABLES[settings.task.name].precision(decisions, classes), out["per_class"])
    write_csv(pool_list(decisions, settings.task), out["pool_list"])
    choice.release()
    return decisions


def _warn_low_trust(settings: TrustSettings, decisions: pd.DataFrame) -> None:
    """A WARNING when the policy trusted none, or few, of what it judged (policies.low_trust)."""
    policy = settings.policy
    n_trusted = int(decisions["accepted"].sum())
    if low_trust(n_trusted, len(decisions), policy.name, policy.min_trusted_share):
        log.warning(
            "policy %s trusted %d of %d judged %s at iteration %d: the next "
            "fine-tuning is on little more than the verified clips",
            policy.name,
            n_trusted,
            len(decisions),
            settings.task.trust_unit,
            settings.iteration,
        )


def _judge_held_out(
    job: TrustJob, folds: pd.DataFrame, device: torch.device, embeddings: bool
) -> tuple[Clips, Clips]:
    """(judged, reference): every fold model's posteriors (and embeddings, for the policies
    that need them) of its held-out unverified clips, the ones to judge, and of its held-out
    verified clips, the reference some policies calibrate on. Each set has its own random
    stream (``seed``, ``[seed, 1]``): judging the reference does not shift the judgement."""
    store = SpectrogramStore.open(job.manifest_csv)
    settings = job.settings
    models = trust_models(job.model_paths, device, settings.task)

    def held_out(verified: str) -> tuple[dict[int, pd.DataFrame], dict[int, ClipBank]]:
        clips = {
            k: folds[(folds["fold"].astype(int) == k) & (folds["verified"] == verified)].reset_index(
                drop=True
            )
            for k in job.model_paths
        }
        banks = {
            k: ClipBank.from_store(store, list(c["fname"]), settings.frames, device) for k, c in clips.items()
        }
        return clips, banks

    seed = settings.seed
    unverified, banks = held_out("0")
    judged = judge_folds(
        models, banks, unverified, settings, np.random.default_rng(seed), "given_label", embeddings
    )
    verified, valid_banks = held_out("1")
    reference = judge_folds(
        models, valid_banks, verified, settings, np.random.default_rng([seed, 1]), "label", embeddings
    )
    return judged, reference


def write_test_posteriors(
    models: dict[int, torch.nn.Module],
    test_manifest: Path,
    classes: list[str],
    frames: int,
    batch_size: int,
    device: torch.device,
    out_csv: Path,
    task: Task = SINGLE,
    tta_shifts: int = 0,
) -> None:
    """Fold-averaged posteriors (the task's activation: softmax, or per-class sigmoids) of every
    test clip on its whole length-fixed spectrogram (``tta_shifts``: :func:`_posteriors`)."""
    store = SpectrogramStore.open(test_manifest)
    bank = ClipBank.from_store(store, list(store.manifest["fname"]), frames, device)
    probs = np.mean([_posteriors(m, bank, batch_size, task, tta_shifts) for m in models.values()], axis=0)
    write_csv(probability_frame(store.manifest["fname"], probs, classes), out_csv)


def predict_job(
    selection_csv: Path,
    models: dict[tuple[int, int], Path],
    train_manifest: Path,
    test_manifest: Path,
    folds_csv: Path,
    classes_csv: Path,
    out_test: Path,
    out_valid: Path,
    frames: int,
    batch_size: int,
    device: str = "auto",
    threads: int = 1,
    lock_dir: Path = Path(".gpu_locks"),
    tta_shifts: int = 0,
) -> int:
    """Chosen iteration's fold models ({(iteration, fold): best.pt}): test posteriors (fold
    average) and out-of-fold posteriors of the verified validation clips (for the fitted
    fusions). Posteriors are sigmoids when the models are multi-label (the task their checkpoints
    say, :func:`load_fold_models`). ``tta_shifts`` > 0: both averaged over that many circularly
    time-shifted copies too (the validation clips as the test clips, so a fusion fitted on them
    sees posteriors like those it fuses). Returns the iteration."""
    iteration = chosen_iteration(selection_csv)
    paths = {k: path for (i, k), path in sorted(models.items()) if i == iteration}
    if not paths:
        raise UserError(f"no model of the chosen iteration {iteration} was given")
    choice = select_device(device, lock_dir, threads)
    classes = read_classes(classes_csv)
    folds = read_csv_str(folds_csv)
    models_by_fold, task = load_fold_models(paths, choice.device)
    write_test_posteriors(
        models_by_fold, test_manifest, classes, frames, batch_size, choice.device, out_test, task, tta_shifts
    )
    train_store = SpectrogramStore.open(train_manifest)
    parts = []
    for k, model in models_by_fold.items():
        valid = folds[(folds["fold"].astype(int) == k) & (folds["verified"] == "1")]
        bank = ClipBank.from_store(train_store, list(valid["fname"]), frames, choice.device)
        probs = _posteriors(model, bank, batch_size, task, tta_shifts)
        frame = probability_frame(valid["fname"], probs, classes)
        frame.insert(1, "label", valid["label"].to_numpy())
        frame.insert(2, "fold", k)
        parts.append(frame)
    write_csv(pd.concat(parts, ignore_index=True), out_valid)
    choice.release()
    return iteration


def _posteriors(
    model: torch.nn.Module, bank: ClipBank, batch_size: int, task: Task, tta_shifts: int = 0
) -> np.ndarray:
    """Posteriors of one model on a bank (training.predict_whole) with the task's activation:
    the one place this module tells the training layer which task it predicts for; with
    ``tta_shifts`` > 0 averaged over circularly time-shifted copies (test-time augmentation)."""
    return predict_whole(model, bank, batch_size, task=task, shifts=tta_shifts)


def fuse_job(
    test_csvs: dict[str, Path],
    valid_csvs: dict[str, Path],
    classes_csv: Path,
    out_probs: Path,
    out_weights: Path,
    out_submission: Path,
    test_manifest: Path | None = None,
    out_status: Path | None = None,
    *,
    settings: FusionSettings,
) -> None:
    """Fuse the presets (``settings.method``: a fusion.FUSIONS name; the fitted ones learn from
    the validation posteriors ``valid_csvs``, read only for them) and write the fused
    posteriors, the fusion's parameters (``out_weights``) and the challenge submission.

    With ``test_manifest`` (any spectrogram version's test manifest: one row per listed test
    clip, usable or not) every listed clip gets a submission row, empty when it could not be
    predicted, and ``out_status`` says why per clip (see :func:`submission_status`). The task
    (``settings.task``) decides the rest: multi-label posteriors are sigmoids, the learned
    fusion is fitted with binary cross-entropy on the multi-hot sets of the validation clips,
    and the submission has the 2019 format (workflow_lib/fusion.py).
    """
    classes = read_classes(classes_csv)
    presets = list(test_csvs)
    tests = [pd.read_csv(test_csvs[p], dtype={"fname": str}) for p in presets]
    expected = usable_test_clips(test_manifest)
    check_complete_predictions({path: (t, "predict") for path, t in zip(test_csvs.values(), tests)}, expected)
    fnames = tests[0]["fname"]
    stack = np.stack([probabilities(t.set_index("fname").loc[fnames].reset_index(), classes) for t in tests])
    fusion = fusion_named(settings.method)
    validation = _validation(valid_csvs, presets, classes) if fusion.reads_validation else None
    fitted = fusion.fit(validation, len(presets), classes, settings)
    fused = fusion.apply(stack, fitted, settings.task)
    write_csv(parameter_table(fusion, fitted, presets, classes), out_weights)
    write_csv(probability_frame(fnames, fused, classes), out_probs)
    answers = submission(fnames, fused, classes, settings.task)
    if test_manifest is not None:
        answers = _every_listed_clip(
            answers, set(fnames), test_manifest, out_status, settings.task, settings.note
        )
    write_csv(answers, out_submission)


def _validation(valid_csvs: dict[str, Path], presets: list[str], classes: list[str]) -> Validation:
    """The presets' out-of-fold posteriors of the verified validation clips, in the first
    preset's clip order: clips none of the fold models trained on (never a test clip)."""
    valids = [pd.read_csv(valid_csvs[p], dtype={"fname": str, "label": str}) for p in presets]
    order = valids[0]["fname"]
    valid_stack = np.stack(
        [probabilities(v.set_index("fname").loc[order].reset_index(), classes) for v in valids]
    )
    return Validation(valid_stack, valids[0]["label"])


def _every_listed_clip(
    answers: pd.DataFrame,
    predicted: set[str],
    test_manifest: Path,
    out_status: Path | None,
    task: Task,
    note: str = "",
) -> pd.DataFrame:
    """The submission with a row for every listed test clip, empty where it could not be
    predicted (a challenge submission names every clip, :data:`UNPREDICTED_ROW`); writes why
    per clip to ``out_status`` (with ``note``, a column saying it on every row)."""
    status = submission_status(read_csv_str(test_manifest), predicted)
    answers = status[["fname"]].merge(answers, on="fname", how="left")
    if note:
        status = status.assign(note=note)
    if UNPREDICTED_ROW[task.name]:
        answers = answers.fillna(UNPREDICTED_ROW[task.name])
    unpredicted = status[status["status"] != "predicted"]
    if len(unpredicted):
        log.warning(
            "%d of %d test clip(s) could not be predicted: empty rows in the submission, reasons in %s",
            len(unpredicted),
            len(status),
            out_status,
        )
    if out_status is not None:
        write_csv(status, out_status)
    return answers


def usable_test_clips(test_manifest: Path | None) -> pd.Series | None:
    """The test clips that were predicted (a usable preprocessing status); None without a
    manifest."""
    if test_manifest is None:
        return None
    manifest = read_csv_str(test_manifest)
    return manifest.loc[manifest["status"].isin(USABLE_STATUSES), "fname"]


def check_complete_predictions(
    tables: dict[Path, tuple[pd.DataFrame, str]], expected: pd.Series | None
) -> None:
    """Every posterior table ({path: (table, the rule that writes it)}) must have a row for
    every clip that was predicted (``expected``: the usable clips of the test manifest; None:
    the union of the tables). A table missing rows is damaged (truncated, edited): scoring
    the rest would report a smaller test set as if it were the whole one, and the submission
    would call the lost clips by their preprocessing status.
    """
    names = [set(frame["fname"]) for frame, _ in tables.values()]
    wanted = set(expected) if expected is not None else set().union(*names)
    for path, (frame, rule) in tables.items():
        lost = sorted(wanted - set(frame["fname"]))
        if lost:
            raise UserError(
                f"{path} lacks the posteriors of {len(lost)} of {len(wanted)} test clips "
                f"(e.g. {lost[:3]}): the file is incomplete. Delete it and run the same "
                f"snakemake command again (the rule {rule} rebuilds it), or rerun with "
                f"--forcerun {rule}"
            )


NO_TEST_LABELS = "no test labels"


def evaluate_job(
    test_csv: Path,
    classes_csv: Path,
    systems: dict[str, Path],
    out_dir: Path,
    *,
    task: Task = SINGLE,
    note: str = "",
) -> pd.DataFrame:
    """summary.csv for every system; per_class.csv and confusion.csv of the last (the fusion).

    Scored clips that have no prediction (undecodable, missing) are counted per set in
    ``n_unpredicted`` and left out of ``n`` and the scores. Without any scored test label
    (predict-only run) every row says ``no test labels`` in ``note`` and the per-class and
    confusion tables are written with their header only. The task decides the scores
    (workflow_lib/evaluation.py): multi-label gives lwlrap and the scores at a threshold,
    per-class lwlrap, and no confusion.csv (:attr:`Task.confusion`). ``note``: said in every
    row's ``note`` too (a transductive chain's, dataset_layouts.TRANSDUCTIVE_NOTE).
    """
    classes = read_classes(classes_csv)
    test = read_csv_str(test_csv)
    frames = {name: pd.read_csv(path, dtype={"fname": str}) for name, path in systems.items()}
    rules = {name: "fuse" if name == "fusion" else "predict" for name in frames}
    check_complete_predictions({systems[name]: (frames[name], rules[name]) for name in frames}, None)
    predicted = set.intersection(*(set(f["fname"]) for f in frames.values()))
    scored = scored_rows(test, classes, task)
    missing = scored.loc[~scored["fname"].isin(predicted)]
    if len(missing):
        log.warning(
            "%d scored test clip(s) have no prediction (skipped in preprocessing) and are "
            "not scored, e.g. %s",
            len(missing),
            list(missing["fname"][:3]),
        )
    test = test[test["fname"].isin(predicted)]
    scores = evaluate_systems(test, frames, classes, task)
    scores["n_unpredicted"] = [_unpredicted_in_set(missing, name) for name in scores["set"]]
    scores["note"] = "; ".join(n for n in (NO_TEST_LABELS if scored.empty else "", note) if n)
    write_csv(scores, out_dir / "summary.csv")
    _write_class_reports(test, frames, classes, task, out_dir)
    if scored.empty:
        log.info("%s: predictions only, nothing is scored", NO_TEST_LABELS)
    return scores


def _write_class_reports(
    test: pd.DataFrame, frames: dict[str, pd.DataFrame], classes: list[str], task: Task, out_dir: Path
) -> None:
    """per_class.csv of every system and, where the task has one, confusion.csv of the last
    (header only without scored clips)."""
    per_class, confusion = [], pd.DataFrame(columns=["true_label", *classes])
    for name, frame in frames.items() if not scored_rows(test, classes, task).empty else ():
        table, confusion = class_reports(test, frame, classes, task)
        per_class.append(table.assign(system=name))
    columns = PER_CLASS_COLUMNS[task.name]
    write_csv(
        pd.concat(per_class, ignore_index=True)[columns] if per_class else pd.DataFrame(columns=columns),
        out_dir / "per_class.csv",
    )
    if task.confusion:
        write_csv(confusion, out_dir / "confusion.csv")


def _unpredicted_in_set(missing: pd.DataFrame, set_name: str) -> int:
    usages = SCORING_SETS[set_name]
    return int((missing["usage"].isin(usages) | (missing["usage"] == "")).sum())


def test_note(scores: pd.DataFrame | None, status_csv: Path | None) -> str:
    """The ``test_note`` of results/summary.csv: 'no test labels', the transductive note
    (when the evaluation says it) and/or how many test clips got an empty prediction ('' when
    every clip was predicted and scored)."""
    notes = []
    cells = scores["note"] if scores is not None and "note" in scores else []
    said = {part for cell in cells if isinstance(cell, str) for part in cell.split("; ")}
    if scores is None or NO_TEST_LABELS in said:
        notes.append(NO_TEST_LABELS)
    if TRANSDUCTIVE_NOTE in said:
        notes.append(TRANSDUCTIVE_NOTE)
    if status_csv is not None and Path(status_csv).is_file():
        status = read_csv_str(status_csv)
        bad = int((status["status"] != "predicted").sum())
        if bad:
            notes.append(
                f"{bad} of {len(status)} test clips not predicted (empty rows in "
                f"submission.csv; reasons in {Path(status_csv).name})"
            )
    return "; ".join(notes)


def summary_job(
    presets: list[str],
    selections: list[Path],
    self_verify_dirs: list[Path],
    scores_csv: Path | None,
    out_csv: Path,
    submission_status_csv: Path | None = None,
    classes_csv: Path | None = None,
    *,
    task: Task = SINGLE,
) -> pd.DataFrame:
    """results/summary.csv (see workflow_lib.evaluation.preset_summary), plus ``test_note``;
    ``classes_csv`` (classes.csv) names the classes without verified clips in ``cv_note``."""
    scores = pd.read_csv(scores_csv) if scores_csv is not None and scores_csv.is_file() else None
    unvalidated = []
    if classes_csv is not None:
        classes = read_csv_str(classes_csv)
        unvalidated = list(classes.loc[classes["n_verified"].astype(int) == 0, "label"])
    rows = []
    for preset, selection_csv in zip(presets, selections):
        tables = {
            int(p.name[2:]): pd.read_csv(p / TRUST_FILES["per_class"], dtype={"label": str})
            for p in self_verify_dirs
            if p.parent.name == preset
        }
        selection = pd.read_csv(selection_csv)
        row = preset_summary(preset, selection, tables, scores, task, unvalidated)
        rows.append(row | pool_summary(_pool_tables(self_verify_dirs, preset), selection))
    fused = test_columns(scores, "fusion", task) if scores is not None else {}
    if fused:
        rows.append({"preset": "fusion", **fused, "cv_note": FUSION_CV_NOTE})
    table = pd.DataFrame(rows)
    table["test_note"] = test_note(scores, submission_status_csv)
    for column in ("chosen_iteration", "self_verified_clips", "pool_trusted_clips"):
        if column in table:  # integers, blank for the fusion row
            table[column] = table[column].astype("Int64")
    write_csv(table, out_csv)
    return table


def _pool_tables(self_verify_dirs: list[Path], preset: str) -> dict[int, pd.DataFrame]:
    """{iteration: pool_per_class.csv} of a pool chain's trust folders (rule summary lists
    them as inputs for pool chains only; other chains' folders hold none)."""
    return {
        int(p.name[2:]): pd.read_csv(p / POOL_FILES["per_class"], dtype={"label": str})
        for p in self_verify_dirs
        if p.parent.name == preset and (p / POOL_FILES["per_class"]).is_file()
    }

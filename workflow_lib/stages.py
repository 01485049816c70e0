"""Job-level functions: read the workflow's CSVs, call the library, write the outputs.

One function per kind of Snakemake job; each takes plain paths and settings so it can be run
and tested without Snakemake.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .audio import USABLE_STATUSES
from .data import ClipBank
from .devices import select_device
from .folds import make_folds, split_fold
from .io import atomic_path, read_csv_str, write_csv
from .model import build_model
from .preprocess import SpectrogramStore
from .training import HISTORY_COLUMNS, FitSettings, fit

log = logging.getLogger(__name__)


def folds_job(manifest_csv: Path, out_csv: Path, n_folds: int, seed: int) -> pd.DataFrame:
    """Folds over the usable training clips (files skipped in preprocessing are left out)."""
    manifest = read_csv_str(manifest_csv)
    usable = manifest[manifest["status"].isin(USABLE_STATUSES)]
    left_out = len(manifest) - len(usable)
    if left_out:
        log.warning("%d training file(s) skipped in preprocessing are not in any fold", left_out)
    folds = make_folds(usable[["fname", "label", "verified"]].reset_index(drop=True), n_folds, seed)
    write_csv(folds, out_csv)
    return folds


def read_classes(classes_csv: Path) -> list[str]:
    """The class list, in index order (sorted labels of train.csv)."""
    table = read_csv_str(classes_csv)
    return list(table.sort_values("index", key=lambda s: s.astype(int))["label"])


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
    train_list_csv: Path | None = None     # fine-tuning: the self-verified list of iteration i
    init_checkpoint: Path | None = None    # fine-tuning: the fold's iteration-i parameters


def training_sets(job: TrainingJob, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training clips, verified validation clips) of the job's fold, with class indices."""
    folds = read_csv_str(job.folds_csv)
    train, valid = split_fold(folds, job.fold)
    if job.train_list_csv is not None:
        trusted = read_csv_str(job.train_list_csv)
        trusted = set(trusted.loc[trusted["manually_verified"] == "1", "fname"])
        train = train[train["fname"].isin(trusted)]
    valid = valid[valid["verified"].astype(int) == 1]
    index = {label: i for i, label in enumerate(classes)}
    train = train.assign(target=train["label"].map(index))
    valid = valid.assign(target=valid["label"].map(index))
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def file_digest(path: Path | None) -> str:
    if path is None:
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(job: TrainingJob, train: pd.DataFrame, valid: pd.DataFrame) -> str:
    """Identifies a run's settings and data; a checkpoint from another run is never resumed."""
    payload = {"fit": asdict(job.fit), "net": job.net, "frames": job.frames,
               "train": list(zip(train["fname"], train["target"].astype(int).tolist())),
               "valid": list(zip(valid["fname"], valid["target"].astype(int).tolist())),
               "init": file_digest(job.init_checkpoint)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def save_model(path: Path, state_dict: dict, job: TrainingJob, classes: list[str], **extra) -> None:
    """A self-describing parameter file: enough to rebuild the network and name its outputs."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, "width": job.net["width"], "classes": classes,
                    "dropout": job.net["dropout"],
                    "preset": job.preset, "spectrogram": job.net["spectrogram"],
                    "fold": job.fold, **extra}, tmp)


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved network in evaluation mode; returns (model, metadata)."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(saved["width"], len(saved["classes"]), tuple(saved["dropout"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved


def run_training_job(job: TrainingJob) -> pd.DataFrame:
    """Train one fold model; write best.pt, last.pt and history.csv into ``job.out_dir``."""
    choice = select_device(job.device, job.lock_dir, job.threads)
    log.info("%s fold %d -> %s on %s", job.preset, job.fold, job.out_dir, choice.describe())
    torch.manual_seed(job.fit.seed)
    classes = read_classes(job.classes_csv)
    train, valid = training_sets(job, classes)
    log.info("%d training clips, %d verified validation clips", len(train), len(valid))
    store = SpectrogramStore.open(job.manifest_csv)
    train_bank = ClipBank.from_store(store, list(train["fname"]), job.frames, choice.device)
    valid_bank = ClipBank.from_store(store, list(valid["fname"]), job.frames, choice.device)
    model = build_model(job.net["width"], len(classes), tuple(job.net["dropout"]))
    if job.init_checkpoint is not None:
        model.load_state_dict(torch.load(job.init_checkpoint, map_location="cpu",
                                         weights_only=False)["state_dict"])
    job.out_dir.mkdir(parents=True, exist_ok=True)
    history_csv = job.out_dir / "history.csv"
    state = fit(model, train_bank, train["target"].to_numpy(), valid_bank,
                valid["target"].to_numpy(), job.fit, job.out_dir / "resume.pt",
                fingerprint(job, train, valid), on_epoch=lambda h: write_csv(h, history_csv))
    history = pd.DataFrame(state.history, columns=HISTORY_COLUMNS)
    best_epoch = int(history.loc[history["valid_loss"].idxmin(), "epoch"]) if history["valid_loss"].notna().any() else len(history)
    save_model(job.out_dir / "last.pt", {k: v.cpu() for k, v in model.state_dict().items()}, job,
               classes, epoch=len(history))
    save_model(job.out_dir / "best.pt", state.best_state, job, classes, epoch=best_epoch,
               valid_loss=state.best_loss)
    write_csv(history, history_csv)
    (job.out_dir / "resume.pt").unlink(missing_ok=True)
    choice.release()
    return history

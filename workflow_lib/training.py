"""The training loop: excerpts, mixup, soft-target cross-entropy, Adam, schedule, validation.

Used for both stages of docs/method.md: initial training (all clips of the fold, mixup, 500 epochs)
and fine-tuning (verified + self-verified clips, no mixup, 30 epochs). After every epoch the
whole state (model, optimizer, random generators, history, best parameters) is saved
atomically, so a killed job resumes at the next epoch and ends with the same result as an
uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .data import ClipBank
from .io import atomic_path
from .metrics import accuracy, map_at_3

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc",
                   "valid_map3", "seconds"]


@dataclass(frozen=True)
class FitSettings:
    """Everything that decides a training run's result (its fingerprint guards resumption)."""

    epochs: int
    lr: float
    constant_epochs: int
    batch_size: int
    excerpt_frames: int
    mixup_alpha: float | None    # None: no mixup (fine-tuning)
    seed: int
    eval_batch_size: int = 32
    amp: bool = True


def learning_rate(epoch: int, base_lr: float, constant_epochs: int, total_epochs: int) -> float:
    """Constant for ``constant_epochs`` epochs, then linear decay reaching 0 at ``total_epochs``.

    ``epoch`` counts from 0; paper: 1e-3 for epochs 0-100, 5e-4 at 300, 2.5e-6 at 499.
    """
    if epoch < constant_epochs:
        return base_lr
    return base_lr * (total_epochs - epoch) / (total_epochs - constant_epochs)


def mixup(inputs: torch.Tensor, targets: torch.Tensor, alpha: float, rng: np.random.Generator,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with the batch in reverse order; lambda ~ Beta(alpha, alpha) per sample."""
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=len(inputs)).astype(np.float32))
    lam = lam.to(inputs.device)
    mixed = lam.view(-1, 1, 1, 1) * inputs + (1 - lam).view(-1, 1, 1, 1) * inputs.flip(0)
    mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets.flip(0)
    return mixed, mixed_targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy against (possibly mixed) probability targets."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked (no loss scaling needed); full precision on CPU."""
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


@torch.no_grad()
def predict_whole(model: nn.Module, bank: ClipBank, batch_size: int, amp: bool = True) -> np.ndarray:
    """Posteriors of every clip of ``bank`` on its whole length-fixed spectrogram, batched."""
    model.eval()
    outputs = []
    for start in range(0, len(bank), batch_size):
        clips = torch.arange(start, min(start + batch_size, len(bank)))
        with autocast_for(bank.device, amp):
            logits = model(bank.whole(clips))
        outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    n_classes = getattr(model, "n_classes", 0)
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, n_classes), np.float32)


def evaluate(model: nn.Module, bank: ClipBank, targets: np.ndarray, batch_size: int,
             amp: bool) -> dict[str, float]:
    """Loss, accuracy and MAP@3 on whole clips (the verified validation clips)."""
    if len(bank) == 0:
        return {"valid_loss": math.nan, "valid_acc": math.nan, "valid_map3": math.nan}
    probs = predict_whole(model, bank, batch_size, amp)
    picked = probs[np.arange(len(targets)), targets]
    return {"valid_loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()),
            "valid_acc": accuracy(probs, targets), "valid_map3": map_at_3(probs, targets)}


@dataclass
class TrainState:
    """What a checkpoint holds; enough to continue exactly where a killed job stopped."""

    epoch: int                    # epochs completed
    history: list[dict]
    best_loss: float
    best_state: dict | None
    rng_state: dict
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    fingerprint: str


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainState) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "state": asdict(state)}, tmp)


def load_checkpoint(path: Path, fingerprint: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> TrainState | None:
    """Restore a checkpoint written by the same run; ignore one from other settings or data."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved["state"]["fingerprint"] != fingerprint:
        log.warning("ignoring checkpoint %s: written with other settings or data", path)
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return TrainState(**saved["state"])


def _run_epoch(model, optimizer, bank, targets, settings, rng, device, n_classes):
    """One pass over the training clips in random order; returns (mean loss, accuracy)."""
    model.train()
    order = rng.permutation(len(bank))
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    batches = [b for b in batches if len(b) >= 2]   # batch norm and mixup need two examples
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    for batch in batches:
        clips = torch.from_numpy(batch)
        inputs = bank.excerpts(clips, bank.random_starts(len(batch), settings.excerpt_frames, rng),
                               settings.excerpt_frames)
        soft = F.one_hot(targets[clips.to(device)], n_classes).float()
        if settings.mixup_alpha is not None:
            inputs, soft = mixup(inputs, soft, settings.mixup_alpha, rng)
        with autocast_for(device, settings.amp):
            logits = model(inputs)
        loss = soft_cross_entropy(logits, soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(batch)
        correct += (logits.detach().argmax(1) == soft.argmax(1)).sum()
        seen += len(batch)
    seen = max(seen, 1)
    return float(total_loss) / seen, float(correct) / seen


def fit(model: nn.Module, train_bank: ClipBank, train_targets: np.ndarray, valid_bank: ClipBank,
        valid_targets: np.ndarray, settings: FitSettings, checkpoint: Path, fingerprint: str,
        on_epoch: Callable[[pd.DataFrame], None] | None = None) -> TrainState:
    """Train, validating after every epoch; keep the parameters of the lowest validation loss."""
    device = train_bank.device
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    state = load_checkpoint(checkpoint, fingerprint, model, optimizer)
    rng = np.random.default_rng(settings.seed)
    if state is None:
        state = TrainState(0, [], math.inf, None, {}, torch.get_rng_state(), None, fingerprint)
    else:
        rng.bit_generator.state = state.rng_state
        torch.set_rng_state(state.torch_rng)
        if state.cuda_rng is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state.cuda_rng, device)
        log.info("resuming from epoch %d (checkpoint %s)", state.epoch + 1, checkpoint)
    targets = torch.tensor(np.asarray(train_targets), dtype=torch.int64, device=device)
    n_classes = int(getattr(model, "n_classes"))
    for epoch in range(state.epoch, settings.epochs):
        started = time.perf_counter()
        lr = learning_rate(epoch, settings.lr, settings.constant_epochs, settings.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loss, train_acc = _run_epoch(model, optimizer, train_bank, targets, settings, rng,
                                           device, n_classes)
        scores = evaluate(model, valid_bank, valid_targets, settings.eval_batch_size, settings.amp)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
               **scores, "seconds": round(time.perf_counter() - started, 3)}
        state.history.append(row)
        no_validation = math.isnan(scores["valid_loss"])   # then the last epoch is kept
        if state.best_state is None or no_validation or scores["valid_loss"] < state.best_loss:
            state.best_loss = scores["valid_loss"]
            state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.epoch = epoch + 1
        state.rng_state = copy.deepcopy(rng.bit_generator.state)
        state.torch_rng = torch.get_rng_state()
        state.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        save_checkpoint(checkpoint, model, optimizer, state)
        log.info("epoch %d/%d lr %.2e train loss %.4f acc %.3f | valid loss %.4f acc %.3f "
                 "map@3 %.3f | %.1f s", epoch + 1, settings.epochs, lr, train_loss, train_acc,
                 scores["valid_loss"], scores["valid_acc"], scores["valid_map3"], row["seconds"])
        if on_epoch is not None:
            on_epoch(pd.DataFrame(state.history, columns=HISTORY_COLUMNS))
    return state

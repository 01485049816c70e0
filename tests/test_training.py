"""The training loop's parts (workflow_lib.training, data, metrics) against docs/method.md.

docs/method.md "Initial training": random 384-frame excerpts of each clip's 3,000-frame spectrogram;
mixup with the batch in reverse order (lambda ~ Beta(a, a) per sample, labels mixed as one-hot);
categorical cross-entropy on the soft targets; Adam; lr constant for 100 epochs then linear to 0
at epoch 500; validation on whole clips after every epoch, keeping the lowest validation loss.
docs/method.md "Fine-tuning": lr per preset, constant for 5 epochs then linear to 0 at 30.
docs/method.md "Preprocessing" 5: the length fix (tile, then cut at 3,000 frames).
docs/method.md "Metrics": MAP@3 scores 1, 1/2, 1/3 for a hit at rank 1, 2, 3.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from workflow_lib.data import ClipBank
from workflow_lib.metrics import accuracy, map_at_3
from workflow_lib.model import build_model
from workflow_lib.preprocess import SpectrogramStore
from workflow_lib.spectrograms import fix_length
from workflow_lib.training import (
    HISTORY_COLUMNS,
    FitSettings,
    evaluate,
    fit,
    learning_rate,
    mixup,
    soft_cross_entropy,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the machine's cores are shared, and two contended threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- learning-rate schedule

@pytest.mark.parametrize("epoch, expected", [
    (0, 1e-3), (50, 1e-3), (99, 1e-3), (100, 1e-3), (101, 1e-3 * 399 / 400), (300, 5e-4),
    (499, 2.5e-6),
])
def test_paper_schedule(epoch, expected):
    """docs/method.md: lr 1e-3, constant for 100 epochs, then linear decay to 0 at epoch 500."""
    assert learning_rate(epoch, 1e-3, 100, 500) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("epoch, expected", [
    (0, 2e-4), (4, 2e-4), (5, 2e-4), (10, 2e-4 * 20 / 25), (17, 2e-4 * 13 / 25), (29, 8e-6),
])
def test_fine_tuning_schedule(epoch, expected):
    """docs/method.md: fine-tuning lr (2e-4 for vgg_gap_spec2) constant 5 epochs, then linear to 0 at 30."""
    assert learning_rate(epoch, 2e-4, 5, 30) == pytest.approx(expected, rel=1e-9)


def test_schedule_decays_linearly_to_zero():
    rates = [learning_rate(e, 1e-3, 100, 500) for e in range(501)]
    assert rates[500] == pytest.approx(0.0, abs=1e-15)
    steps = np.diff(rates[100:])
    assert np.allclose(steps, -1e-3 / 400)
    assert all(r == 1e-3 for r in rates[:101])


# ---------------------------------------------------------------- mixup and loss

def _one_hot(labels, n_classes):
    return F.one_hot(torch.as_tensor(labels), n_classes).float()


@pytest.mark.parametrize("alpha", [0.2, 0.3])
def test_mixup_mixes_with_the_reversed_batch(alpha):
    """docs/method.md: mixup with the batch in reverse order, lambda ~ Beta(a, a) per sample."""
    n = 7
    inputs = torch.randn(n, 1, 6, 5)
    labels = [0, 1, 2, 3, 1, 0, 2]
    targets = _one_hot(labels, 4)
    mixed, mixed_targets = mixup(inputs, targets, alpha, np.random.default_rng(123))
    lam = torch.from_numpy(np.random.default_rng(123).beta(alpha, alpha, size=n).astype(np.float32))
    assert len(set(lam.tolist())) == n, "one lambda per sample, not one per batch"
    expected = lam.view(-1, 1, 1, 1) * inputs + (1 - lam).view(-1, 1, 1, 1) * inputs.flip(0)
    assert torch.allclose(mixed, expected, atol=1e-6)
    # Reverse pairing, written out: example i is mixed with example n - 1 - i.
    for i in range(n):
        j = n - 1 - i
        assert torch.allclose(mixed[i], lam[i] * inputs[i] + (1 - lam[i]) * inputs[j], atol=1e-6)
        soft = torch.zeros(4)
        soft[labels[i]] += lam[i]
        soft[labels[j]] += 1 - lam[i]
        assert torch.allclose(mixed_targets[i], soft, atol=1e-6)
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(n), atol=1e-6)
    assert torch.all(mixed_targets >= 0)


@pytest.mark.parametrize("alpha", [0.2, 0.3])
def test_mixup_lambda_follows_beta(alpha):
    """docs/method.md: lambda ~ Beta(a, a). Recovered from the targets of many mixed pairs."""
    n = 20_000
    labels = [0] * (n // 2) + [1] * (n // 2)   # example i pairs with n-1-i: the other class
    inputs = torch.zeros(n, 1, 1, 1)
    _, mixed_targets = mixup(inputs, _one_hot(labels, 2), alpha, np.random.default_rng(5))
    lam = np.where(np.asarray(labels) == 0, mixed_targets[:, 0].numpy(), mixed_targets[:, 1].numpy())
    # float32 rounds the ~2 % of draws within 6e-8 of 1 to exactly 1.0 (ties break the KS
    # test), so test the distribution truncated at 0.999, and the mass above it separately.
    cut = 0.999

    def truncated_ks(a: float, b: float) -> float:
        below = lam[lam < cut].astype(np.float64)
        mass = scipy.stats.beta.cdf(cut, a, b)
        return scipy.stats.kstest(below, lambda x: scipy.stats.beta.cdf(x, a, b) / mass).pvalue

    assert truncated_ks(alpha, alpha) > 0.01
    expected_above = scipy.stats.beta.sf(cut, alpha, alpha)
    assert abs((lam >= cut).mean() - expected_above) < 4 * math.sqrt(expected_above / n)
    # The test has power: another Beta, or a uniform lambda, is rejected.
    assert truncated_ks(2 * alpha, 2 * alpha) < 1e-6
    assert truncated_ks(1.0, 1.0) < 1e-6
    mean, var = 0.5, 1 / (4 * (2 * alpha + 1))
    assert lam.mean() == pytest.approx(mean, abs=0.01)
    assert lam.var() == pytest.approx(var, rel=0.05)


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot_targets():
    """docs/method.md: categorical cross-entropy on the soft targets (one-hot: the usual loss)."""
    torch.manual_seed(0)
    logits = torch.randn(9, 5) * 3
    labels = torch.randint(0, 5, (9,))
    assert torch.allclose(soft_cross_entropy(logits, _one_hot(labels, 5)),
                          F.cross_entropy(logits, labels), atol=1e-6)
    soft = torch.softmax(torch.randn(9, 5), dim=1)
    assert torch.allclose(soft_cross_entropy(logits, soft), F.cross_entropy(logits, soft), atol=1e-6)


# ---------------------------------------------------------------- the data path

FRAMES = 100
BANK_ORDER = (3, 0, 5, 1, 4, 2)   # bank row -> stored clip


@pytest.fixture(scope="module")
def stored_clips() -> list[np.ndarray]:
    """(1, 128, T) spectrograms shorter than, equal to and longer than FRAMES."""
    rng = np.random.default_rng(11)
    return [rng.normal(size=(1, 128, t)).astype(np.float32) for t in (1, 7, 37, 100, 163, 300)]


@pytest.fixture(scope="module")
def bank(stored_clips) -> ClipBank:
    """Built through SpectrogramStore -> ClipBank.from_store, as training does."""
    lengths = [c.shape[-1] for c in stored_clips]
    manifest = pd.DataFrame({"fname": [f"c{i}.wav" for i in range(len(stored_clips))],
                             "status": "clipped", "shard": 0, "n_frames": lengths,
                             "offset": np.cumsum([0] + lengths[:-1])})
    store = SpectrogramStore(manifest, {0: np.concatenate(stored_clips, axis=-1)})
    # Ask in another order than stored, to catch offset mix-ups.
    return ClipBank.from_store(store, [f"c{i}.wav" for i in BANK_ORDER], FRAMES)


def test_excerpts_read_the_length_fixed_clip(bank, stored_clips):
    """docs/method.md "Preprocessing" 5: excerpts come from the tiled/cut 3,000-frame spectrogram.

    Every excerpt frame j of clip c equals frame (start + j) % T of the stored clip, i.e. frame
    start + j of fix_length(clip).
    """
    rng = np.random.default_rng(3)
    length = 40
    for _ in range(20):
        clips = torch.from_numpy(rng.integers(0, len(bank), size=8))
        starts = bank.random_starts(8, length, rng)
        out = bank.excerpts(clips, starts, length)
        assert out.shape == (8, 1, 128, length)
        for row, (c, s) in enumerate(zip(clips.tolist(), starts.tolist())):
            stored = stored_clips[BANK_ORDER[c]]
            fixed = fix_length(stored, FRAMES)
            np.testing.assert_array_equal(out[row].numpy(), fixed[:, :, s:s + length])
            t = stored.shape[-1]
            np.testing.assert_array_equal(out[row, 0, :, 5].numpy(), stored[0, :, (s + 5) % t])


def test_random_starts_stay_inside(bank):
    """Uniform starts 0 ... frames - length, both ends reachable, never past the clip."""
    rng = np.random.default_rng(4)
    length = 90
    starts = bank.random_starts(5000, length, rng).numpy()
    assert starts.min() == 0 and starts.max() == FRAMES - length
    assert set(np.unique(starts)) == set(range(FRAMES - length + 1))
    # Roughly uniform over the 11 possible starts.
    counts = np.bincount(starts)
    assert scipy.stats.chisquare(counts).pvalue > 0.001


def test_whole_equals_fix_length(bank, stored_clips):
    whole = bank.whole(torch.arange(len(bank)))
    assert whole.shape == (len(bank), 1, 128, FRAMES)
    for row, index in enumerate(BANK_ORDER):
        np.testing.assert_array_equal(whole[row].numpy(), fix_length(stored_clips[index], FRAMES))


# ---------------------------------------------------------------- metrics

def test_map_at_3_hand_computed():
    """docs/method.md "Metrics": 1, 1/2, 1/3 for a hit at rank 1, 2, 3; 0 otherwise."""
    probs = np.array([[0.1, 0.2, 0.3, 0.4]] * 4)   # ranking: 3, 2, 1, 0
    for target, score in [(3, 1.0), (2, 1 / 2), (1, 1 / 3), (0, 0.0)]:
        assert map_at_3(probs[:1], np.array([target])) == pytest.approx(score)
    assert map_at_3(probs, np.array([3, 2, 1, 0])) == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert accuracy(probs, np.array([3, 2, 1, 0])) == pytest.approx(0.25)


def brute_force_map3(probs: np.ndarray, targets: np.ndarray) -> float:
    total = 0.0
    for row, target in zip(probs, targets):
        ranked = sorted(range(len(row)), key=lambda k: -row[k])
        for rank, k in enumerate(ranked[:3]):
            if k == target:
                total += 1.0 / (rank + 1)
                break
    return total / len(targets)


@pytest.mark.parametrize("n_classes", [3, 5, 41])
def test_map_at_3_against_brute_force(n_classes):
    rng = np.random.default_rng(n_classes)
    for _ in range(20):
        probs = rng.dirichlet(np.ones(n_classes), size=30)
        targets = rng.integers(0, n_classes, size=30)
        assert map_at_3(probs, targets) == pytest.approx(brute_force_map3(probs, targets), abs=1e-12)


# ---------------------------------------------------------------- fit()

N_CLASSES = 3


def band_bank(per_class: int, frames: int, rng: np.random.Generator) -> tuple[ClipBank, np.ndarray]:
    """Class c: energy in frequency bins [10 + 40c, 30 + 40c) over noise; random clip lengths."""
    parts, targets = [], []
    for c in range(N_CLASSES):
        for _ in range(per_class):
            clip = rng.normal(0, 0.3, (128, int(rng.integers(20, 90)))).astype(np.float32)
            clip[10 + 40 * c:30 + 40 * c] += 2.0
            parts.append(clip)
            targets.append(c)
    lengths = np.array([p.shape[1] for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    frames_major = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1).T))
    return (ClipBank(frames_major, torch.from_numpy(offsets), torch.from_numpy(lengths), frames),
            np.array(targets))


def test_fit_learns_a_separable_problem_and_keeps_the_best_epoch(tmp_path):
    """docs/method.md "Initial training": validate after every epoch, keep the lowest-loss parameters."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_bank, train_targets = band_bank(8, 256, rng)
    valid_bank, valid_targets = band_bank(4, 256, rng)
    model = build_model(6, N_CLASSES, dropout=(0.0, 0.0))
    settings = FitSettings(epochs=7, lr=3e-3, constant_epochs=4, batch_size=8,
                           excerpt_frames=192, mixup_alpha=0.2, seed=0)
    seen = []
    state = fit(model, train_bank, train_targets, valid_bank, valid_targets, settings,
                tmp_path / "resume.pt", "fingerprint", on_epoch=seen.append)

    history = pd.DataFrame(state.history)
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == list(range(1, 8))
    assert [len(h) for h in seen] == list(range(1, 8))
    assert all(list(h.columns) == HISTORY_COLUMNS for h in seen)
    assert history["lr"].tolist() == pytest.approx([learning_rate(e, 3e-3, 4, 7) for e in range(7)])
    assert state.epoch == 7

    best = history.loc[history["valid_loss"].idxmin()]
    assert best["valid_acc"] >= 0.9, history.to_string()
    assert history["valid_acc"].iloc[-1] >= 0.9, history.to_string()
    assert history["valid_loss"].iloc[0] > best["valid_loss"]   # it learned something
    assert state.best_loss == pytest.approx(best["valid_loss"], abs=0)

    # The kept parameters really are those of the lowest-validation-loss epoch.
    rebuilt = build_model(6, N_CLASSES, dropout=(0.0, 0.0))
    rebuilt.load_state_dict(state.best_state)
    scores = evaluate(rebuilt, valid_bank, valid_targets, batch_size=5, amp=False)
    assert scores["valid_loss"] == pytest.approx(best["valid_loss"], rel=1e-5)
    assert scores["valid_acc"] == pytest.approx(best["valid_acc"])
    if int(best["epoch"]) != 7:   # then the last epoch's parameters differ from the kept ones
        last = model.state_dict()
        assert any(not torch.equal(last[k].cpu(), v) for k, v in state.best_state.items())

    saved = torch.load(tmp_path / "resume.pt", weights_only=False)
    assert saved["state"]["epoch"] == 7 and saved["state"]["fingerprint"] == "fingerprint"

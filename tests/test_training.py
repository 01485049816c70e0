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
    CheckpointPolicy,
    DeviceFeatures,
    DeviceSampler,
    FitSettings,
    RunOptions,
    _run_epoch,
    checkpoint_epochs,
    evaluate,
    fit,
    learning_rate,
    load_checkpoint,
    make_optimizer,
    mixup,
    prepare_model,
    soft_cross_entropy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- learning-rate schedule


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0, 1e-3),
        (50, 1e-3),
        (99, 1e-3),
        (100, 1e-3),
        (101, 1e-3 * 399 / 400),
        (300, 5e-4),
        (499, 2.5e-6),
    ],
)
def test_paper_schedule(epoch, expected):
    """docs/method.md: lr 1e-3, constant for 100 epochs, then linear decay to 0 at epoch 500."""
    assert learning_rate(epoch, 1e-3, 100, 500) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0, 2e-4),
        (4, 2e-4),
        (5, 2e-4),
        (10, 2e-4 * 20 / 25),
        (17, 2e-4 * 13 / 25),
        (29, 8e-6),
    ],
)
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
    mixed, mixed_targets = mixup(inputs, targets, alpha, DeviceSampler(123, "cpu"))
    lam = DeviceSampler(123, "cpu").beta(alpha, n)
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
    labels = [0] * (n // 2) + [1] * (n // 2)  # example i pairs with n-1-i: the other class
    inputs = torch.zeros(n, 1, 1, 1)
    _, mixed_targets = mixup(inputs, _one_hot(labels, 2), alpha, DeviceSampler(5, "cpu"))
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
    assert torch.allclose(
        soft_cross_entropy(logits, _one_hot(labels, 5)), F.cross_entropy(logits, labels), atol=1e-6
    )
    soft = torch.softmax(torch.randn(9, 5), dim=1)
    assert torch.allclose(soft_cross_entropy(logits, soft), F.cross_entropy(logits, soft), atol=1e-6)


# ---------------------------------------------------------------- the data path

FRAMES = 100
BANK_ORDER = (3, 0, 5, 1, 4, 2)  # bank row -> stored clip


@pytest.fixture(scope="module")
def stored_clips() -> list[np.ndarray]:
    """(1, 128, T) spectrograms shorter than, equal to and longer than FRAMES."""
    rng = np.random.default_rng(11)
    return [rng.normal(size=(1, 128, t)).astype(np.float32) for t in (1, 7, 37, 100, 163, 300)]


@pytest.fixture(scope="module")
def bank(stored_clips) -> ClipBank:
    """Built through SpectrogramStore -> ClipBank.from_store, as training does."""
    lengths = [c.shape[-1] for c in stored_clips]
    manifest = pd.DataFrame(
        {
            "fname": [f"c{i}.wav" for i in range(len(stored_clips))],
            "status": "clipped",
            "shard": 0,
            "n_frames": lengths,
            "offset": np.cumsum([0] + lengths[:-1]),
        }
    )
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
            np.testing.assert_array_equal(out[row].numpy(), fixed[:, :, s : s + length])
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
    probs = np.array([[0.1, 0.2, 0.3, 0.4]] * 4)  # ranking: 3, 2, 1, 0
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
            clip[10 + 40 * c : 30 + 40 * c] += 2.0
            parts.append(clip)
            targets.append(c)
    lengths = np.array([p.shape[1] for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    frames_major = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1).T))
    return (
        ClipBank(frames_major, torch.from_numpy(offsets), torch.from_numpy(lengths), frames),
        np.array(targets),
    )


def test_fit_learns_a_separable_problem_and_keeps_the_best_epoch(tmp_path):
    """docs/method.md "Initial training": validate after every epoch, keep the lowest-loss parameters."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_bank, train_targets = band_bank(8, 256, rng)
    valid_bank, valid_targets = band_bank(4, 256, rng)
    model = build_model(6, N_CLASSES, dropout=(0.0, 0.0))
    settings = FitSettings(
        epochs=7, lr=3e-3, constant_epochs=4, batch_size=8, excerpt_frames=192, mixup_alpha=0.2, seed=0
    )
    seen = []
    state = fit(
        model,
        train_bank,
        train_targets,
        valid_bank,
        valid_targets,
        settings,
        tmp_path / "resume.pt",
        "fingerprint",
        on_epoch=seen.append,
    )

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
    assert history["valid_loss"].iloc[0] > best["valid_loss"]  # it learned something
    assert state.best_loss == pytest.approx(best["valid_loss"], abs=0)

    # The kept parameters really are those of the lowest-validation-loss epoch.
    rebuilt = build_model(6, N_CLASSES, dropout=(0.0, 0.0))
    rebuilt.load_state_dict(state.best_state)
    scores = evaluate(rebuilt, valid_bank, valid_targets, batch_size=5, amp=False)
    assert scores["valid_loss"] == pytest.approx(best["valid_loss"], rel=1e-5)
    assert scores["valid_acc"] == pytest.approx(best["valid_acc"])
    if int(best["epoch"]) != 7:  # then the last epoch's parameters differ from the kept ones
        last = model.state_dict()
        assert any(not torch.equal(last[k].cpu(), v) for k, v in state.best_state.items())

    saved = torch.load(tmp_path / "resume.pt", weights_only=False)
    assert saved["state"]["epoch"] == 7 and saved["state"]["fingerprint"] == "fingerprint"


# ---------------------------------------------------------------- checkpoint policy


def test_checkpoint_policy_epochs_minutes_and_the_last_epoch():
    """compute.checkpoint_every: N epochs or M minutes, whichever first; always the last epoch."""
    policy = CheckpointPolicy(epochs=25, minutes=30)
    assert not policy.due(24, 60 * 29.9) and policy.due(25, 0) and policy.due(1, 60 * 30)
    assert not CheckpointPolicy(None, None).due(10**6, 1e9)
    # The paper's 500 epochs at GPU speed (seconds per epoch): every 25th epoch, 20 in all.
    assert checkpoint_epochs(500, policy, 12.0) == list(range(25, 501, 25))
    # Slow epochs (CPU, 10 min each): the 30-minute trigger fires every 3rd epoch.
    assert checkpoint_epochs(10, policy, 600.0) == [3, 6, 9, 10]
    # Fine-tuning, 30 epochs: at 25 and at the end; the demo's policy: every epoch.
    assert checkpoint_epochs(30, policy, 12.0) == [25, 30]
    assert checkpoint_epochs(4, CheckpointPolicy(1, None), 1.0) == [1, 2, 3, 4]
    assert CheckpointPolicy.from_settings({"epochs": None, "minutes": 5}) == CheckpointPolicy(None, 5)
    assert CheckpointPolicy.from_settings(None) == CheckpointPolicy()


class _Killed(RuntimeError):
    pass


def test_resume_from_a_sparse_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """Checkpoints every 3 epochs: a job killed after epoch 5 loses epochs 4-5, resumes from
    epoch 3 and ends exactly as the uninterrupted run (history, best and last parameters);
    a temporary checkpoint file left by a killed save is removed."""
    settings = FitSettings(
        epochs=7, lr=3e-3, constant_epochs=4, batch_size=8, excerpt_frames=192, mixup_alpha=0.2, seed=5
    )
    options = RunOptions(CheckpointPolicy(epochs=3, minutes=None))

    def run(path, kill_after=None):
        rng = np.random.default_rng(0)
        train_bank, train_targets = band_bank(6, 256, rng)
        valid_bank, valid_targets = band_bank(3, 256, rng)
        torch.manual_seed(1)
        model = build_model(6, N_CLASSES, dropout=(0.1, 0.2))

        def on_epoch(history):
            if kill_after is not None and len(history) == kill_after:
                raise _Killed

        state = fit(
            model,
            train_bank,
            train_targets,
            valid_bank,
            valid_targets,
            settings,
            path,
            "fp",
            on_epoch=on_epoch,
            options=options,
        )
        return state, model

    straight, straight_model = run(tmp_path / "straight.pt")
    saved = torch.load(tmp_path / "straight.pt", weights_only=False)
    assert saved["state"]["epoch"] == 7  # the last epoch always writes one
    killed = tmp_path / "killed.pt"
    with pytest.raises(_Killed):
        run(killed, kill_after=5)
    assert torch.load(killed, weights_only=False)["state"]["epoch"] == 3
    stale = tmp_path / ".killed.pt.s1gk1ll.tmp"  # what a save interrupted by SIGKILL leaves
    stale.write_bytes(b"half a checkpoint")
    resumed, resumed_model = run(killed)
    assert not stale.exists(), "the resumed job's first checkpoint removes the leftover"
    assert [h["epoch"] for h in resumed.history] == list(range(1, 8))
    columns = [c for c in HISTORY_COLUMNS if c != "seconds"]
    a = pd.DataFrame(straight.history)[columns].to_numpy(float)
    b = pd.DataFrame(resumed.history)[columns].to_numpy(float)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert a[-1, 2] < a[0, 2], "it trained"
    for key, tensor in straight.best_state.items():
        assert tensor.device.type == "cpu"
        torch.testing.assert_close(resumed.best_state[key], tensor, rtol=1e-5, atol=1e-6)
    for key, tensor in straight_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], tensor, rtol=1e-5, atol=1e-6)


def test_checkpoint_of_an_older_format_is_ignored(tmp_path):
    model = build_model(4, N_CLASSES)
    optimizer = torch.optim.Adam(model.parameters())
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": {"fingerprint": "fp"}},
        tmp_path / "old.pt",
    )
    assert load_checkpoint(tmp_path / "old.pt", "fp", model, optimizer) is None


# ---------------------------------------------------------------- the training step's device path


def test_device_sampler_is_seeded_and_resumable():
    """Order, starts and mixup weights: same seed, same draws; a saved state continues the stream."""
    a, b, c = DeviceSampler(7, "cpu"), DeviceSampler(7, "cpu"), DeviceSampler(8, "cpu")
    draws = lambda s: (s.permutation(50), s.starts(40, 11), s.beta(0.2, 30))  # noqa: E731
    for x, y in zip(draws(a), draws(b)):
        assert torch.equal(x, y)
    assert not torch.equal(draws(a)[0], draws(c)[0])
    state = a.get_state()
    first = draws(a)
    a.set_state(state)
    for x, y in zip(draws(a), first):
        assert torch.equal(x, y)
    assert sorted(first[0].tolist()) == list(range(50))
    assert first[1].min() >= 0 and first[1].max() <= 10
    lam = DeviceSampler(0, "cpu").beta(0.2, 100_000)
    assert lam.dtype == torch.float32 and torch.isfinite(lam).all()
    assert lam.min() >= 0 and lam.max() <= 1
    assert float(lam.mean()) == pytest.approx(0.5, abs=0.01)


def test_channels_last_gives_the_same_outputs_and_steps():
    """The CUDA layout (channels_last) computes what NCHW computes: forward and a training step."""
    torch.manual_seed(0)
    reference = build_model(6, N_CLASSES, dropout=(0.0, 0.0))
    other = build_model(6, N_CLASSES, dropout=(0.0, 0.0))
    other.load_state_dict(reference.state_dict())
    prepare_model(other, torch.device("cpu"), RunOptions(features=DeviceFeatures(channels_last=True)))
    assert other.state_dict()[next(k for k, v in other.state_dict().items() if v.dim() == 4)].is_contiguous(
        memory_format=torch.channels_last
    )
    x = torch.randn(4, 1, 128, 192)
    reference.eval()
    other.eval()
    torch.testing.assert_close(
        other(x.contiguous(memory_format=torch.channels_last)), reference(x), rtol=1e-4, atol=1e-5
    )
    rng = np.random.default_rng(1)
    bank, targets = band_bank(4, 256, rng)
    # One training step (one batch of all 12 clips; SGD, so tiny gradient differences stay tiny).
    settings = FitSettings(
        epochs=1, lr=0.1, constant_epochs=1, batch_size=12, excerpt_frames=192, mixup_alpha=0.3, seed=0
    )
    losses, steps = [], []
    for model, channels_last in ((reference, False), (other, True)):
        before = {k: v.clone() for k, v in model.named_parameters()}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss, _ = _run_epoch(
            model,
            optimizer,
            bank,
            torch.as_tensor(targets),
            settings,
            DeviceSampler(3, "cpu"),
            torch.device("cpu"),
            N_CLASSES,
            DeviceFeatures(channels_last=channels_last),
        )
        losses.append(loss)
        steps.append({k: (v - before[k]).detach() for k, v in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # The updates agree up to float32 summation order (batch norm on 12 examples amplifies it
    # in single entries, so compare the whole update: its direction and its size).
    a, b = (torch.cat([v.flatten() for v in step.values()]) for step in steps)
    assert float(F.cosine_similarity(a, b, dim=0)) > 0.9999
    assert float((a - b).norm() / a.norm()) < 1e-2


def test_fused_adam_takes_the_same_steps():
    """make_optimizer uses fused Adam on CUDA; the fused kernel (CPU build here) matches Adam."""
    torch.manual_seed(0)
    a = build_model(4, N_CLASSES, dropout=(0.0, 0.0))
    b = build_model(4, N_CLASSES, dropout=(0.0, 0.0))
    b.load_state_dict(a.state_dict())
    try:
        fused = torch.optim.Adam(b.parameters(), lr=1e-2, fused=True)
    except (RuntimeError, ValueError) as error:
        pytest.skip(f"this torch build has no fused Adam on CPU: {error}")
    plain = make_optimizer(a, 1e-2, torch.device("cpu"))
    assert not plain.defaults.get("fused")
    x, y = torch.randn(3, 1, 128, 192), torch.tensor([0, 1, 2])
    for _ in range(3):
        for model, optimizer in ((a, plain), (b, fused)):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for key, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], tensor, rtol=1e-4, atol=1e-6)


def test_compile_option_compiles_the_forward_module(monkeypatch):
    """compute.compile: prepare_model returns torch.compile(model); off by default."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module: calls.append(module) or ("compiled", module))
    model = build_model(4, N_CLASSES)
    assert prepare_model(model, torch.device("cpu"), RunOptions()) is model
    assert prepare_model(model, torch.device("cpu"), RunOptions(compile=True)) == ("compiled", model)
    assert calls == [model]


# ---------------------------------------------------------------- bank build


@pytest.mark.parametrize("time_major", [True, False], ids=["time-major", "shards-before-0.3"])
def test_from_store_equals_per_clip_reads_over_shards(time_major):
    """One lookup and one copy: the same clips, order and truncation as store.get per clip,
    from time-major shards and from shards of the earlier (1, 128, frames) layout."""
    rng = np.random.default_rng(9)
    shards, rows = {}, []
    for shard in range(2):
        lengths = rng.integers(1, 140, size=5)
        array = rng.normal(size=(int(lengths.sum()), 128)).astype(np.float32)
        shards[shard] = array if time_major else np.ascontiguousarray(array.T)[np.newaxis]
        offsets = np.cumsum(lengths) - lengths
        rows += [
            {
                "fname": f"s{shard}_{i}.wav",
                "status": "clipped",
                "shard": shard,
                "n_frames": int(n),
                "offset": int(o),
            }
            for i, (n, o) in enumerate(zip(lengths, offsets))
        ]
    store = SpectrogramStore(pd.DataFrame(rows), shards)
    names = [r["fname"] for r in rows][::-1][::2] + ["s0_1.wav"]  # any order, repeats allowed
    bank = ClipBank.from_store(store, names, 100)
    assert bank.frames_major.is_contiguous() and bank.frames_major.dtype == torch.float32
    for i, name in enumerate(names):
        expected = store.get(name)[0, :, :100].T
        assert store.get(name).shape == (1, 128, int(store.manifest.set_index("fname").loc[name, "n_frames"]))
        start, length = int(bank.offsets[i]), int(bank.lengths[i])
        np.testing.assert_array_equal(bank.frames_major[start : start + length].numpy(), expected)
    with pytest.raises(KeyError, match="1 clip"):
        ClipBank.from_store(store, ["s0_0.wav", "nope.wav"], 100)


def test_predict_whole_feeds_a_channels_last_model_in_its_layout():
    """Validation and test inference give the same posteriors with the CUDA layout."""
    from workflow_lib.training import _is_channels_last, predict_whole

    torch.manual_seed(2)
    model = build_model(6, N_CLASSES, dropout=(0.0, 0.0))
    bank, _ = band_bank(2, 256, np.random.default_rng(4))
    before = predict_whole(model, bank, batch_size=4, amp=False)
    assert not _is_channels_last(model)
    prepare_model(model, torch.device("cpu"), RunOptions(features=DeviceFeatures(channels_last=True)))
    assert _is_channels_last(model)
    np.testing.assert_allclose(
        predict_whole(model, bank, batch_size=4, amp=False), before, rtol=1e-4, atol=1e-6
    )

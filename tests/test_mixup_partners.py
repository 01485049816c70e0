"""Mixup across parts (issue 22, item 3): the chain option ``mixup`` of fine-tuning jobs, whose
``partners: unverified`` mixes each labelled excerpt with an excerpt of one of the fold's
training-part unverified clips, under that clip's given label.

What is checked, on hand-made inputs: without partners mixup is the reversed batch bit for
bit; with partners inputs and targets are mixed with the same per-excerpt weight; a drawn
partner is always a clip of the partner bank with its own target row (both tasks), also inside
the training step; a fit with partners is deterministic for a seed and resumes exactly after a
kill (both tasks); the partner clips are the fold's training-part unverified clips under their
given labels; settings, recorded params and fingerprints of jobs without the option are those
of before; the config accepts the example chain and refuses bad values and a run chain whose
option could change nothing.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_multilabel_training import CLASSES, job_for, single_label_fingerprint, store  # noqa: F401
from test_training import N_CLASSES, band_bank
from test_workflow_dryrun import run_snakemake, write_fsdkaggle_listing

import workflow_lib.training as training
from workflow_lib.config import ConfigError, resolve_settings
from workflow_lib.data import ClipBank
from workflow_lib.errors import UserError
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import compared_settings, fit_settings, mixup_settings
from workflow_lib.model import build_model
from workflow_lib.stages import (
    TrainingJob,
    fingerprint,
    mixup_partner_clips,
    run_training_job,
    training_sets,
)
from workflow_lib.task import MULTI, SINGLE
from workflow_lib.training import (
    CheckpointPolicy,
    DeviceSampler,
    FitSettings,
    MixupPartners,
    RunOptions,
    fit,
    mixup,
)

from conftest import REPO, TINY_FIT, fold_one_job

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PRESET = "vgg_gap_spec1_1"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the mixing itself


def test_mixup_without_partners_is_the_reversed_batch_bit_for_bit():
    torch.manual_seed(0)
    inputs, targets = torch.randn(6, 1, 4, 5), torch.rand(6, 3)
    mixed, mixed_targets = mixup(inputs, targets, 0.3, DeviceSampler(7, "cpu"))
    lam = DeviceSampler(7, "cpu").beta(0.3, 6)
    expected = lam.view(-1, 1, 1, 1) * inputs + (1 - lam).view(-1, 1, 1, 1) * inputs.flip(0)
    assert torch.equal(mixed, expected)
    assert torch.equal(mixed_targets, lam[:, None] * targets + (1 - lam[:, None]) * targets.flip(0))


@pytest.mark.parametrize(
    "own,other,kept",
    [
        ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], None),  # one-hot rows (single-label)
        ([1.0, 0.0, 1.0], [0.0, 1.0, 1.0], 2),  # multi-hot: class 2 in both sets keeps 1
    ],
)
def test_mixup_with_partners_weighs_inputs_and_targets_alike(own, other, kept):
    """Labelled excerpts all 0, partners all 1: a mixed excerpt's value is 1 - lambda, and the
    target's share of the partner-only class 1 is that same 1 - lambda."""
    n = 9
    inputs, targets = torch.zeros(n, 1, 3, 4), torch.tensor([own] * n)
    partners = (torch.ones(n, 1, 3, 4), torch.tensor([other] * n))
    mixed, mixed_targets = mixup(inputs, targets, 0.4, DeviceSampler(3, "cpu"), partners)
    lam = DeviceSampler(3, "cpu").beta(0.4, n)
    assert len(set(lam.tolist())) == n, "one weight per excerpt"
    torch.testing.assert_close(mixed, (1 - lam).view(-1, 1, 1, 1).expand_as(mixed))
    torch.testing.assert_close(mixed_targets[:, 1], 1 - lam)
    torch.testing.assert_close(mixed_targets[:, 0], lam)
    if kept is not None:
        assert torch.equal(mixed_targets[:, kept], torch.ones(n))


def constant_bank(values: list[float], frames: int = 16) -> ClipBank:
    """One clip per value, every bin and frame equal to it (lengths 3, 4, ...: tiled)."""
    lengths = [3 + i for i in range(len(values))]
    rows = np.concatenate([np.full((n, 128), v, np.float32) for v, n in zip(values, lengths)])
    offsets = np.cumsum([0] + lengths[:-1])
    return ClipBank(torch.from_numpy(rows), torch.as_tensor(offsets), torch.as_tensor(lengths), frames)


def partner_targets(task, count: int) -> np.ndarray:
    """Partner k's target: class k % 3 (single-label) or a multi-hot row telling k apart."""
    if task is SINGLE:
        return np.arange(count) % N_CLASSES
    return np.array([[k % 2, (k // 2) % 2, 1] for k in range(count)], dtype=np.float32)


@pytest.mark.parametrize("task", [SINGLE, MULTI], ids=lambda t: t.name)
def test_a_drawn_partner_is_a_bank_clip_with_its_own_target(task):
    values = [100.0 + k for k in range(5)]
    targets = partner_targets(task, 5)
    partners = training._Partners.of(MixupPartners(constant_bank(values), targets), task, N_CLASSES)
    settings = FitSettings(**TINY_FIT, mixup_alpha=0.3, mixup_partners="unverified")
    inputs, rows = partners.draw(200, settings, DeviceSampler(4, "cpu"))
    assert inputs.shape == (200, 1, 128, 8)
    flat = inputs.flatten(1)
    assert torch.equal(flat.min(1).values, flat.max(1).values), "one clip per excerpt"
    picked = (flat[:, 0] - 100).long()
    assert set(picked.tolist()) == set(range(5)), "uniform over the bank"
    hard = torch.as_tensor(targets)
    expected = torch.nn.functional.one_hot(hard.long(), N_CLASSES).float() if task is SINGLE else hard
    assert torch.equal(rows, expected[picked])


@pytest.mark.parametrize("task", [SINGLE, MULTI], ids=lambda t: t.name)
def test_the_training_step_mixes_only_with_partners_from_the_bank(task, monkeypatch):
    """Through _run_epoch: labelled clips are negative constants, partners 100 + k; every
    batch's partners are bank clips under their own targets, never a labelled clip."""
    calls = []

    def recording(inputs, targets, alpha, sampler, partners=None):
        calls.append((inputs.clone(), partners))
        return mixup(inputs, targets, alpha, sampler, partners)

    monkeypatch.setattr(training, "mixup", recording)
    labelled = constant_bank([-1.0 - i for i in range(6)], frames=256)
    own = task.target_tensor(partner_targets(task, 6), "cpu")
    targets = task.target_tensor(partner_targets(task, 4), "cpu")
    bank = MixupPartners(constant_bank([100.0 + k for k in range(4)], frames=256), partner_targets(task, 4))
    settings = FitSettings(
        **{**TINY_FIT, "excerpt_frames": 192}, mixup_alpha=0.3, mixup_partners="unverified"
    )
    model = build_model(2, N_CLASSES, dropout=(0.0, 0.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    args = (settings, DeviceSampler(2, "cpu"), torch.device("cpu"), N_CLASSES)
    partners = training._Partners.of(bank, task, N_CLASSES)
    training._run_epoch(model, optimizer, labelled, own, *args, task=task, partners=partners)
    assert [len(inputs) for inputs, _ in calls] == [4, 2]
    soft = task.soft_targets(targets, N_CLASSES)
    for inputs, (other, rows) in calls:
        assert (inputs <= -1).all()
        picked = (other.flatten(1)[:, 0] - 100).long()
        assert ((picked >= 0) & (picked < 4)).all() and torch.equal(
            other.flatten(1).min(1).values, picked + 100.0
        )
        assert torch.equal(rows, soft[picked])


# ---------------------------------------------------------------- a fit: seed and resume


def _fit(tmp_path, name, task, partners=True, epochs=3, kill_after=None, features=None):
    """The band problem of tests/test_training.py fine-tuned with mixup (alpha 0.3), seed 5,
    checkpoints every 2 epochs; partners: a third band bank with its targets (else the batch)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_bank, train_targets = band_bank(4, 256, rng)
    valid_bank, valid_targets = band_bank(2, 256, rng)
    extra, extra_targets = band_bank(3, 256, rng)
    if task is MULTI:
        train_targets, valid_targets, extra_targets = (
            np.eye(N_CLASSES, dtype=np.float32)[t] for t in (train_targets, valid_targets, extra_targets)
        )
    model = build_model(4, N_CLASSES, dropout=(0.1, 0.2))
    settings = FitSettings(
        epochs=epochs,
        lr=3e-3,
        constant_epochs=2,
        batch_size=6,
        excerpt_frames=192,
        mixup_alpha=0.3,
        seed=5,
        mixup_partners="unverified" if partners else None,
    )

    def on_epoch(history):
        if kill_after is not None and len(history) == kill_after:
            raise KeyboardInterrupt

    options = RunOptions(CheckpointPolicy(epochs=2, minutes=None), features=features)
    args = (train_bank, train_targets, valid_bank, valid_targets, settings, tmp_path / name, "fp")
    bank = MixupPartners(extra, extra_targets) if partners else None
    return fit(model, *args, on_epoch=on_epoch, options=options, task=task, mixup_partners=bank)


def _scores(state) -> np.ndarray:
    return pd.DataFrame(state.history)[["train_loss", "train_acc", "valid_loss", "valid_acc"]].to_numpy(float)


@pytest.mark.parametrize("task", [SINGLE, MULTI], ids=lambda t: t.name)
def test_fit_with_partners_is_deterministic_and_resumes_exactly(tmp_path, task):
    first = _fit(tmp_path, "a.pt", task)
    np.testing.assert_array_equal(_scores(first), _scores(_fit(tmp_path, "b.pt", task)))
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, "killed.pt", task, epochs=4, kill_after=3)
    resumed = _fit(tmp_path, "killed.pt", task, epochs=4)
    straight = _fit(tmp_path, "straight.pt", task, epochs=4)
    np.testing.assert_array_equal(_scores(resumed), _scores(straight))
    in_batch = _fit(tmp_path, "batch.pt", task, partners=False)
    assert not np.allclose(_scores(first), _scores(in_batch))


def test_partners_train_on_the_cuda_path_on_the_cpu(tmp_path):
    """bf16 autocast, channels-last and fused Adam (the CUDA set, switched on for a CPU run):
    a fit with unverified partners has finite losses and is deterministic."""
    from test_gpu_paths import CUDA_PATH_ON_CPU  # deliberate: only this test needs it

    first = _scores(_fit(tmp_path, "a.pt", MULTI, epochs=2, features=CUDA_PATH_ON_CPU))
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(
        first, _scores(_fit(tmp_path, "b.pt", MULTI, epochs=2, features=CUDA_PATH_ON_CPU))
    )


def test_fit_refuses_partners_without_a_bank_and_a_bank_without_partners(tmp_path):
    rng = np.random.default_rng(0)
    bank, targets = band_bank(2, 64, rng)
    model = build_model(2, N_CLASSES)
    on = FitSettings(**TINY_FIT, mixup_alpha=0.3, mixup_partners="unverified")
    with pytest.raises(ValueError, match="'unverified' with no partner bank"):
        fit(model, bank, targets, bank, targets, on, tmp_path / "a.pt", "fp")
    off = FitSettings(**TINY_FIT, mixup_alpha=0.3)
    with pytest.raises(ValueError, match="None with a partner bank"):
        fit(
            model,
            bank,
            targets,
            bank,
            targets,
            off,
            tmp_path / "b.pt",
            "fp",
            mixup_partners=MixupPartners(bank, targets),
        )
    with pytest.raises(ValueError, match="3 partner targets for 6 partner clips"):
        MixupPartners(bank, targets[:3])


# ---------------------------------------------------------------- settings and fingerprints


def test_fit_settings_record_is_unchanged_without_partners():
    default = FitSettings(**TINY_FIT, mixup_alpha=0.3)
    assert "mixup_partners" not in default.record()
    assert FitSettings(**TINY_FIT, mixup_alpha=0.3, mixup_partners="batch") == default
    on = FitSettings(**TINY_FIT, mixup_alpha=0.3, mixup_partners="unverified")
    assert on.record() == {**default.record(), "mixup_partners": "unverified"}
    with pytest.raises(ValueError, match="need a mixup alpha"):
        FitSettings(**TINY_FIT, mixup_alpha=None, mixup_partners="unverified")
    with pytest.raises(ValueError, match="unknown mixup partners 'pool'"):
        FitSettings(**TINY_FIT, mixup_alpha=0.3, mixup_partners="pool")


def _config(mixup=None, chain="extra", run_preset="paper") -> dict:
    config = copy.deepcopy(CONFIG)
    config["run_preset"] = run_preset
    if mixup is not None:
        config["chains"][chain] = {"start": "all", "policy": "paper", "mixup": mixup}
    return config


def test_fit_settings_are_unchanged_without_the_key():
    """Chains without ``mixup``: the settings and recorded params of before; with it, only the
    chain's fine-tuning jobs get mixup (the preset's alpha unless the chain gives one)."""
    plain = resolve_settings(_config())
    on = resolve_settings(_config({"partners": "unverified"}, chain="extra"))
    for chain in plain["chains"]:
        if chain == "mixup_noisy":
            continue
        for iteration in (0, 1, 2):
            before = fit_settings(plain, PRESET, iteration, chain)
            assert fit_settings(on, PRESET, iteration, chain) == before
            assert compared_settings(fit_settings(on, PRESET, iteration, chain)) == compared_settings(before)
    assert fit_settings(on, PRESET, 0, "extra") == fit_settings(plain, PRESET, 0)
    tuned = fit_settings(on, PRESET, 1, "extra")["fit"]
    plain_tuned = fit_settings(plain, PRESET, 1)["fit"]
    assert plain_tuned["mixup_alpha"] is None and "mixup_partners" not in plain_tuned
    assert tuned == {**plain_tuned, "mixup_alpha": 0.2, "mixup_partners": "unverified"}
    job = TrainingJob.from_settings(
        fit_settings(on, PRESET, 1, "extra"),
        manifest_csv=None,
        folds_csv=None,
        classes_csv=None,
        fold=0,
        out_dir=None,
    )
    assert job.fit.mixup_partners == "unverified" and job.fit.mixup_alpha == 0.2


def test_mixup_settings_resolve_alpha_and_partners():
    assert mixup_settings({}, 0.3) == {"mixup_alpha": 0.3}
    assert mixup_settings({"partners": "batch", "alpha": 0.5}, 0.3) == {"mixup_alpha": 0.5}
    assert mixup_settings({"partners": "unverified"}, 0.2) == {
        "mixup_alpha": 0.2,
        "mixup_partners": "unverified",
    }


def _job(tmp_path: Path, partners="unverified", verified=("1", "0", "0", "1", "0", "0")) -> TrainingJob:
    """Fold 1 of six clips over two folds; the training list corrects u1's label and refuses u0."""
    folds = pd.DataFrame(
        {
            "fname": ["v0", "u0", "u1", "v1", "u2", "u3"],
            "label": ["a", "b", "c", "a", "b", "c"],
            "verified": list(verified),
            "fold": ["0", "0", "0", "1", "1", "1"],
        }
    )
    listing = folds[["fname", "label"]].assign(manually_verified=["1", "0", "1", "1", "0", "0"])
    listing.loc[listing["fname"] == "u1", "label"] = "a"
    fit = FitSettings(**{**TINY_FIT, "mixup_alpha": 0.3, "mixup_partners": partners})
    return fold_one_job(tmp_path, folds, listing, fit)


def test_partner_clips_are_the_folds_unverified_training_clips_under_their_given_labels(tmp_path):
    """Fold 1 trains on fold 0 (v0, u0, u1): the partners are u0 (refused) and u1 (trusted
    under a corrected label), each under the label folds.csv gives it; never v1, u2, u3."""
    clips = mixup_partner_clips(_job(tmp_path), ["a", "b", "c"])
    assert clips["fname"].tolist() == ["u0", "u1"]
    assert clips["label"].tolist() == ["b", "c"] and clips["target"].tolist() == [1, 2]
    assert mixup_partner_clips(_job(tmp_path, partners=None), ["a", "b", "c"]).empty
    with pytest.raises(UserError, match="fold 1's training part has no unverified clip"):
        mixup_partner_clips(_job(tmp_path, verified=("1",) * 6), ["a", "b", "c"])


def test_single_label_fingerprint_is_the_one_of_before(store, tmp_path):  # noqa: F811
    """A default single-label job: the fingerprint written before this option (and before
    multi-label mode) existed; no partners, or none, change nothing."""
    folds = read_csv_str(store["folds"])
    write_csv(folds.assign(label=folds["label"].str.split(",").str[0]), tmp_path / "single.csv")
    job = job_for(store, tmp_path, task=SINGLE, folds_csv=tmp_path / "single.csv")
    sets = training_sets(job, CLASSES)
    assert "mixup_partners" in asdict(job.fit)  # the field exists, and stays out of the record
    assert fingerprint(job, *sets) == single_label_fingerprint(job, *sets)
    assert fingerprint(job, *sets, [], mixup_partner_clips(job, CLASSES)) == fingerprint(job, *sets)


def test_a_fine_tuning_job_trains_with_unverified_partners(store, tmp_path):  # noqa: F811
    """run_training_job, multi-label: the partners are fold 0's training-part noisy clips,
    they enter the fingerprint, and the job trains through them."""
    folds = read_csv_str(store["folds"])
    write_csv(folds[["fname", "label"]].assign(manually_verified="1"), tmp_path / "train_list.csv")
    plain = job_for(store, tmp_path / "plain", train_list_csv=tmp_path / "train_list.csv")
    job = replace(plain, out_dir=tmp_path / "on", fit=replace(plain.fit, mixup_partners="unverified"))
    partners = mixup_partner_clips(job, CLASSES)
    expected = folds.loc[(folds["verified"] == "0") & (folds["fold"] != "0"), "fname"].tolist()
    assert expected and partners["fname"].tolist() == expected
    train, valid = training_sets(job, CLASSES)
    assert fingerprint(job, train, valid, [], partners) != fingerprint(job, train, valid)
    history = run_training_job(job)
    assert len(history) == job.fit.epochs and np.isfinite(history["train_loss"]).all()


# ---------------------------------------------------------------- configuration


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as raised:
        resolve_settings(config)
    return str(raised.value)


def test_config_accepts_mixup_and_the_example_chain():
    settings = resolve_settings(_config({"alpha": 0.4, "partners": "batch"}, chain="extra"))
    assert settings["chains"]["extra"]["mixup"] == {"alpha": 0.4, "partners": "batch"}
    assert CONFIG["chains"]["mixup_noisy"]["mixup"] == {"partners": "unverified"}
    assert "mixup_noisy" not in CONFIG["run_chains"]
    resolve_settings({**_config(run_preset="demo"), "run_chains": ["self_verification", "mixup_noisy"]})


@pytest.mark.parametrize(
    "mixup,fragment",
    [
        ({"alpha": 0}, "chains.extra.mixup.alpha"),
        ({"partners": "pool"}, "chains.extra.mixup.partners"),
        ({"partners": "unverified", "ratio": 0.5}, "chains.extra.mixup"),
    ],
)
def test_config_refuses_bad_mixup_naming_the_key(mixup, fragment):
    message = _error(_config(mixup, chain="extra"))
    assert f"config key {fragment}" in message, message


def test_config_refuses_mixup_in_a_run_chain_without_fine_tuning():
    config = _config({"partners": "unverified"}, chain="extra")
    config["method"]["self_verification"]["iterations"] = 0
    resolve_settings(config)  # defined, not run: nothing to refuse
    config["run_chains"] = ["self_verification", "extra"]
    assert "config key chains.extra.mixup: acts in fine-tuning only" in _error(config)


def test_the_fine_tune_rule_passes_the_chains_option_to_its_jobs_only(tmp_path):
    """A dry run of the method and mixup_noisy: every fine-tuning job of mixup_noisy (and only
    those) gets mixup with the preset's alpha and unverified partners; the method's fine-tuning
    jobs keep mixup off."""
    root = write_fsdkaggle_listing(tmp_path / "data", n_train=60, n_test=10, n_classes=5)
    done, _ = run_snakemake(
        *("-n", "-p", "--cores", "2", "--snakefile", str(REPO / "Snakefile")),
        *("--directory", str(tmp_path / "work"), "--configfile", str(REPO / "config.yaml")),
        *("--config", "run_preset=paper", f"dataset_root={root}"),
        "run_chains=[self_verification,mixup_noisy]",
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    commands = [line for line in output.splitlines() if "workflow_lib.cli train " in line]
    tuned = {
        chain: [c for c in commands if f"chains/{chain}/models/" in c]
        for chain in ("self_verification", "mixup_noisy")
    }
    iterations = CONFIG["method"]["self_verification"]["iterations"]
    per_chain = len(CONFIG["method"]["presets"]) * CONFIG["method"]["folds"] * iterations
    assert len(tuned["mixup_noisy"]) == len(tuned["self_verification"]) == per_chain
    assert all('"mixup_partners": "unverified"' in c for c in tuned["mixup_noisy"])
    narrow = [c for c in tuned["mixup_noisy"] if "/vgg_gap_spec1_1/" in c]
    assert narrow and all('"mixup_alpha": 0.2, "mixup_partners"' in c for c in narrow)
    assert not any("mixup_partners" in c for c in commands if c not in tuned["mixup_noisy"])
    assert all('"mixup_alpha": null' in c for c in tuned["self_verification"])

"""The unlabelled pool (workflow_lib/pool.py, issue 22 item 1; docs/method.md "Beyond the paper").

What is checked: the pool is validated like untrusted training audio (non-audio ignored, a
link leading outside refused, a name clash with a training clip skipped, a missing folder or
true-label file an error); pool clips are proposed under their predicted label (set) and the
chain's policy decides with its caps, exactly as for unverified clips; the fold models' mean
judges them, deterministically for a seed; precision and recall against known true labels;
the trusted pool clips join the training part of a fine-tuning job and never its validation
part; the config refuses a pool no run chain uses, a pool chain without a pool and pool chains
whose policy needs each fold's reference clips; with the pool off every job setting is that of
a config written before the pool existed.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_data_support import _history
from test_multilabel_training import CLASSES as ML_CLASSES
from test_multilabel_training import job_for, store, trained  # noqa: F401 (fixtures)
from test_noisy_dataset import PATTERN, _build, _make_corpus
from test_self_verify import FakeFoldModel, bank_from_arrays, sv_settings
from test_workflow_dryrun import dry_run, rule_inputs, run_snakemake, write_fsdkaggle_listing

from workflow_lib.config import ConfigError, resolve_settings
from workflow_lib.data import ClipBank
from workflow_lib.dataset import DatasetError, validate_pool
from workflow_lib.dataset_layouts import POOL_KEYS, TRANSDUCTIVE_NOTE
from workflow_lib.fusion import FusionSettings
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import (
    chain_evaluation_arguments,
    chain_fusion_settings,
    chain_note,
    fit_settings,
    fusion_settings,
    pool_trust_settings,
    pool_validation_settings,
    trust_settings,
    validation_settings,
    with_pool,
)
from workflow_lib.layout import POOL_FILES
from workflow_lib.noisy_dataset import NoisyDatasetSettings, build_noisy_dataset
from workflow_lib.policies import ACCEPTED, BELOW_THRESHOLD, CLASS_CAP, PolicySettings
from workflow_lib.pool import (
    POOL_FOLD,
    decide_pool,
    mean_fold_posteriors,
    pool_clips,
    pool_list,
    predicted_labels,
)
from workflow_lib.preprocess import MANIFEST_COLUMNS, SpectrogramStore
from workflow_lib.selection import selection_table
from workflow_lib.self_verify import TABLES, TrustSettings, excerpt_posteriors, with_truth
from workflow_lib.stages import (
    PoolJob,
    evaluate_job,
    fingerprint,
    fuse_job,
    pool_job,
    run_training_job,
    summary_job,
    training_bank,
    training_sets,
)
from workflow_lib.stages import test_note as summary_test_note
from workflow_lib.task import MULTI, SINGLE

from conftest import REPO, job_counts, write_wav

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
CLASSES = ["a", "b", "c"]

# --------------------------------------------------------------- proposals and decisions


def test_pool_clips_are_proposed_under_their_predicted_label():
    posteriors = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    judged = pool_clips(["p0", "p1", "p2"], posteriors, CLASSES, SINGLE)
    assert list(judged.table["given_label"]) == ["a", "c", "b"]
    assert set(judged.table["fold"]) == {POOL_FOLD}
    sets = np.array([[0.9, 0.6, 0.1], [0.1, 0.2, 0.3], [0.2, 0.1, 0.7]])
    multi = pool_clips(["p0", "p1", "p2"], sets, CLASSES, MULTI)
    # p1 has no class at 0.5 or above: nothing to judge, left out
    assert list(multi.table["fname"]) == ["p0", "p2"]
    assert list(multi.table["given_label"]) == ["a,b", "c"]
    np.testing.assert_array_equal(multi.posteriors, sets[[0, 2]])
    assert predicted_labels(sets, CLASSES, MULTI) == ["a,b", "", "c"]


def _settings(policy: str, task=SINGLE, **values) -> TrustSettings:
    return sv_settings(task=task, policy=PolicySettings.of(policy, **values))


def test_the_chains_policy_decides_with_its_threshold_and_cap():
    """paper with threshold 0.6 and a cap of 1 per class: p3 (0.55) is below the threshold;
    of p0 (0.9) and p1 (0.8), both class a, the cap keeps the higher; p2 is trusted as c."""
    posteriors = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.25, 0.55, 0.2]])
    judged = pool_clips(["p0", "p1", "p2", "p3"], posteriors, CLASSES, SINGLE)
    decisions = decide_pool(judged, CLASSES, _settings("paper", threshold=0.6, max_per_class=1))
    reasons = dict(zip(decisions["fname"], decisions["reason"]))
    assert reasons == {"p0": ACCEPTED, "p1": CLASS_CAP, "p2": ACCEPTED, "p3": BELOW_THRESHOLD}
    listed = pool_list(decisions, SINGLE)
    assert list(listed["fname"]) == ["p0", "p2"] and list(listed["label"]) == ["a", "c"]
    assert list(listed["weight"]) == [1.0, 1.0]
    none = decide_pool(judged, CLASSES, _settings("none"))
    assert not none["accepted"].any() and pool_list(none, SINGLE).empty
    weighted = pool_list(decide_pool(judged, CLASSES, _settings("weighted", max_per_class=None)), SINGLE)
    np.testing.assert_allclose(weighted["weight"], [0.9, 0.8, 0.7, 0.55])


def test_label_sets_keep_the_trusted_subset_of_the_predicted_set():
    sets = np.array([[0.95, 0.6, 0.1], [0.1, 0.2, 0.3], [0.2, 0.1, 0.97]])
    judged = pool_clips(["p0", "p1", "p2"], sets, CLASSES, MULTI)
    decisions = decide_pool(
        judged, CLASSES, _settings("paper", task=MULTI, threshold=0.9, max_per_class=None)
    )
    assert len(decisions) == 3  # (p0, a), (p0, b), (p2, c)
    listed = pool_list(decisions, MULTI)
    assert dict(zip(listed["fname"], listed["label"])) == {"p0": "a", "p2": "c"}


def test_precision_and_recall_of_the_pool_decisions_against_true_labels():
    """p0 (a, true a) and p2 (c, true b) trusted, p3 (b, true b) below the threshold:
    precision 1/2; recall: of the two correctly predicted clips (p0, p3) one was trusted."""
    posteriors = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.1, 0.2, 0.7], [0.25, 0.55, 0.2]])
    judged = pool_clips(["p0", "p1", "p2", "p3"], posteriors, CLASSES, SINGLE)
    decisions = decide_pool(judged, CLASSES, _settings("paper", threshold=0.6, max_per_class=None))
    truth = pd.Series({"p0": "a", "p1": "c", "p2": "b", "p3": "b"})
    table = TABLES[SINGLE.name].precision(with_truth(decisions, truth, SINGLE), CLASSES)
    total = table[table["label"] == "__all__"].iloc[0]
    assert total["n_accepted"] == 2 and total["precision"] == pytest.approx(0.5)
    assert total["n_correct"] == 2 and total["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize("task", [SINGLE, MULTI])
def test_a_pool_with_no_usable_clip_decides_nothing(task):
    """Every pool file undecodable (no spectrogram): empty decisions, list and tables."""
    judged = pool_clips([], np.zeros((0, 3)), CLASSES, task)
    decisions = decide_pool(judged, CLASSES, _settings("paper", task=task, threshold=0.5))
    assert decisions.empty and pool_list(decisions, task).empty
    total = TABLES[task.name].precision(decisions, CLASSES).iloc[-1]
    assert (total["n_unverified"], total["n_accepted"]) == (0, 0)


# --------------------------------------------------------------- judging by the fold models' mean


def test_the_fold_models_mean_judges_every_pool_clip_on_the_same_excerpts():
    arrays = [np.full((128, 40), float(i)) for i in range(5)]
    bank = bank_from_arrays(arrays, 40)
    models = {k: FakeFoldModel(k, 3) for k in range(3)}
    settings = sv_settings()
    mean = mean_fold_posteriors(models, bank, settings)
    each = [
        excerpt_posteriors(FakeFoldModel(k, 3), bank, settings, np.random.default_rng(settings.seed))
        for k in range(3)
    ]
    np.testing.assert_allclose(mean, np.mean(each, axis=0))
    # every fold model saw every pool clip (none of them trained on one), K times each
    assert all(sorted(set(m.seen)) == [0, 1, 2, 3, 4] for m in models.values())
    assert all(len(m.seen) == 5 * settings.excerpts for m in models.values())
    np.testing.assert_array_equal(mean, mean_fold_posteriors(models, bank, settings))


def test_pool_trust_settings_have_their_own_seed_and_the_chains_policy():
    settings = _resolved_pool()
    pool = pool_trust_settings(settings, "pseudo_labels", "vgg_gap_spec1_1", 2)
    trust = trust_settings(settings, "pseudo_labels", "vgg_gap_spec1_1", 2)
    assert pool["seed"] != trust["seed"]
    assert {k: v for k, v in pool.items() if k != "seed"} == {k: v for k, v in trust.items() if k != "seed"}
    TrustSettings.from_json(pool)  # the job's one settings object


# --------------------------------------------------------------- validation of the pool folder


def test_the_pool_is_validated_like_untrusted_audio(tmp_path):
    root = tmp_path / "data"
    pool = root / "pool"
    for name in ("p0.wav", "p1.wav", "clash.wav"):
        write_wav(pool / name, np.zeros(800, dtype=np.float32) + 0.1, 8000)
    (pool / "notes.txt").write_text("not audio")
    outside = tmp_path / "elsewhere.wav"
    write_wav(outside, np.zeros(800, dtype=np.float32) + 0.1, 8000)
    (pool / "link.wav").symlink_to(outside)
    pd.DataFrame({"fname": ["p0.wav"], "true_label": ["a"]}).to_csv(root / "truth.csv", index=False)
    dataset = {
        "layout": "fsdkaggle2018",
        "unlabelled_audio_dir": "pool",
        "unlabelled_true_labels_csv": "truth.csv",
    }
    listing, problems = validate_pool(root, dataset, {"clash.wav"})
    paths = dict(zip(listing["fname"], listing["path"]))
    assert set(paths) == {"clash.wav", "link.wav", "p0.wav", "p1.wav"}
    assert paths["clash.wav"] == "" and paths["link.wav"] == "" and paths["p0.wav"].endswith("pool/p0.wav")
    assert dict(zip(listing["fname"], listing["true_label"]))["p0.wav"] == "a"
    assert (listing["label"] == "").all() and (listing["verified"] == "").all()
    outcomes = {row["fname"]: row["outcome"] for row in problems.rows}
    assert outcomes == {"notes.txt": "ignored", "link.wav": "skipped", "clash.wav": "skipped"}
    with pytest.raises(DatasetError, match="does not exist"):
        validate_pool(root, {**dataset, "unlabelled_audio_dir": "nowhere"}, set())
    with pytest.raises(DatasetError, match="not found"):
        validate_pool(root, {**dataset, "unlabelled_true_labels_csv": "missing.csv"}, set())
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no audio"):
        validate_pool(root, {**dataset, "unlabelled_audio_dir": "empty"}, set())


# --------------------------------------------------------------- config and settings


def _config(**dataset) -> dict:
    config = copy.deepcopy(CONFIG)
    config["dataset"].update(dataset)
    config["dataset_root"] = "/data/somewhere"
    return config


def _resolved_pool() -> dict:
    config = _config(unlabelled_audio_dir="pool")
    config["run_chains"] = ["self_verification", "pseudo_labels"]
    return resolve_settings(config)


@pytest.mark.parametrize(
    ("dataset", "chains", "fragment"),
    [
        ({"unlabelled_audio_dir": "pool"}, ["self_verification"], "no chain of run_chains sets pool: true"),
        ({}, ["pseudo_labels"], "chains.pseudo_labels.pool: needs dataset.unlabelled_audio_dir"),
        (
            {"unlabelled_true_labels_csv": "t.csv"},
            ["self_verification"],
            "set only with dataset.unlabelled_audio_dir",
        ),
    ],
)
def test_config_refuses_a_pool_nothing_uses_and_a_pool_chain_without_a_pool(dataset, chains, fragment):
    config = _config(**dataset)
    config["run_chains"] = chains
    with pytest.raises(ConfigError, match=fragment):
        resolve_settings(config)


def test_config_refuses_policies_that_need_a_fold_and_the_demo_pool():
    config = _config(unlabelled_audio_dir="pool")
    config["chains"]["pseudo_labels"]["policy"] = "calibrated"
    config["run_chains"] = ["pseudo_labels"]
    with pytest.raises(ConfigError, match="policy calibrated reads each fold's reference"):
        resolve_settings(config)
    demo = _config(unlabelled_audio_dir="pool")
    demo["dataset_root"], demo["run_chains"] = "", ["pseudo_labels"]
    with pytest.raises(ConfigError, match="the demo dataset has no pool"):
        resolve_settings(demo)


def test_with_the_pool_off_every_setting_is_that_of_a_config_without_the_pool():
    """A config written before the pool existed (no pool keys, no pseudo_labels chain) and
    today's default give the same job settings: the validation jobs do not carry the pool keys,
    and a pool chain's fit and trust settings differ from the plain chain's only by with_pool."""
    old = copy.deepcopy(CONFIG)
    for key in POOL_KEYS:
        del old["dataset"][key]
    del old["chains"]["pseudo_labels"]
    before, now = resolve_settings(old), resolve_settings(copy.deepcopy(CONFIG))
    assert validation_settings(before) == validation_settings(now)
    assert not set(POOL_KEYS) & set(validation_settings(now))
    for preset in now["method"]["presets"]:
        for iteration in (0, 1):
            assert fit_settings(before, preset, iteration, "self_verification") == fit_settings(
                now, preset, iteration, "self_verification"
            )
    pooled = _resolved_pool()
    job = fit_settings(pooled, "vgg_gap_spec1_1", 1, "pseudo_labels")
    assert job == fit_settings(pooled, "vgg_gap_spec1_1", 1, "self_verification")
    assert with_pool(job, "l.csv", "m.csv")["pool"] == {"list": "l.csv", "manifest": "m.csv"}
    assert pool_validation_settings(pooled) == {
        "unlabelled_audio_dir": "pool",
        "unlabelled_true_labels_csv": "",
        "unlabelled_test_audio": False,
        "layout": "fsdkaggle2018",
        "follow_external_symlinks": False,
    }


# --------------------------------------------------------------- the banks


def test_concatenated_banks_keep_each_clips_frames():
    first = bank_from_arrays([np.full((128, 30), 1.0), np.full((128, 20), 2.0)], 40)
    second = bank_from_arrays([np.full((128, 25), 3.0)], 40)
    both = ClipBank.concat([first, second])
    assert len(both) == 3 and both.lengths.tolist() == [30, 20, 25]
    whole = both.whole(torch.arange(3))
    assert [float(whole[i].mean()) for i in range(3)] == [1.0, 2.0, 3.0]


# --------------------------------------------------------------- the jobs on a tiny store


def test_the_pool_job_writes_decisions_with_precision_and_a_list(store, trained, tmp_path):  # noqa: F811
    """Multi-label fold models judge the test clips of the tiny store as a pool whose true sets
    are known: every output is written, the decisions are measured against the true sets, the
    list holds trusted subsets of the predicted sets, and a rerun gives the same files."""
    manifest = read_csv_str(store["test"])
    listing = manifest[["fname"]].assign(label="", verified="", path="x", true_label=manifest["label"])
    write_csv(listing, tmp_path / "pool.csv")
    settings = sv_settings(task=MULTI, excerpt_frames=192, frames=256, device="cpu")
    settings = TrustSettings(
        **{**settings.__dict__, "policy": PolicySettings.of("agreement", max_per_class=None)}
    )
    outputs = []
    for run in ("first", "second"):
        job = PoolJob(
            model_paths=trained,
            pool_manifest_csv=store["test"],
            pool_csv=tmp_path / "pool.csv",
            classes_csv=store["classes"],
            out_dir=tmp_path / run,
            settings=settings,
            lock_dir=tmp_path / "locks",
        )
        (tmp_path / run).mkdir()
        decisions = pool_job(job)
        outputs.append({name: (tmp_path / run / name).read_text() for name in POOL_FILES.values()})
    assert outputs[0] == outputs[1]
    assert "correct" in decisions and "true_recall" in read_csv_str(
        tmp_path / "first" / POOL_FILES["per_class"]
    )
    posteriors = read_csv_str(tmp_path / "first" / POOL_FILES["posteriors"])
    assert list(posteriors["fname"]) == list(manifest["fname"])
    listed = read_csv_str(tmp_path / "first" / POOL_FILES["pool_list"])
    predicted = dict(zip(posteriors["fname"], posteriors["predicted_label"]))
    for fname, cell in zip(listed["fname"], listed["label"]):
        assert set(cell.split(",")) <= set(predicted[fname].split(","))


def test_trusted_pool_clips_join_training_never_validation(store, tmp_path):  # noqa: F811
    """A pool chain's fine-tuning: the pool list's clips train (from the pool's store, under
    their trusted sets) and are in no validation set; the fingerprint follows them; the job
    trains. Without the pool the training set and fingerprint are the plain job's."""
    folds = read_csv_str(store["folds"])
    write_csv(folds[["fname", "label"]].assign(manually_verified="1", weight=1.0), tmp_path / "list.csv")
    pool = read_csv_str(store["test"]).iloc[:3]
    write_csv(pool[["fname", "label"]].assign(weight=1.0), tmp_path / "pool_list.csv")
    plain = job_for(store, tmp_path / "plain", train_list_csv=tmp_path / "list.csv")
    job = job_for(
        store,
        tmp_path / "pool",
        train_list_csv=tmp_path / "list.csv",
        pool_list_csv=tmp_path / "pool_list.csv",
        pool_manifest_csv=store["test"],
    )
    train, valid = training_sets(job, ML_CLASSES)
    plain_train, plain_valid = training_sets(plain, ML_CLASSES)
    assert list(train["fname"]) == [*plain_train["fname"], *pool["fname"]]
    assert list(valid["fname"]) == list(plain_valid["fname"])
    assert not set(pool["fname"]) & set(valid["fname"])
    assert fingerprint(job, train, valid) != fingerprint(plain, plain_train, plain_valid)
    bank = training_bank(job, SpectrogramStore.open(store["train"]), train, "cpu")
    pool_store = SpectrogramStore.open(store["test"])
    last = bank.whole(torch.tensor([len(train) - 1]))[0, 0].numpy()
    expected = ClipBank.from_store(pool_store, [pool["fname"].iloc[-1]], job.frames).whole(torch.tensor([0]))
    np.testing.assert_array_equal(last, expected[0, 0].numpy())
    history = run_training_job(job)
    assert len(history) == job.fit.epochs and np.isfinite(history["train_loss"]).all()


# --------------------------------------------------------------- the DAG (dry runs)


def _repository_copy(where: Path) -> Path:
    """The workflow's files in ``where`` (config.yaml there is the default config, so a
    rewritten one is not a user setting)."""
    where.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, where / name)
    for name in ("rules", "workflow_lib", "schemas", "report", "envs"):
        shutil.copytree(REPO / name, where / name, ignore=shutil.ignore_patterns("__pycache__"))
    return where


def job_blocks(output: str) -> list[str]:
    """A dry run's jobs, one text block each: from a ``rule NAME:`` line to the next one (the
    job listing's blank lines and time stamps are not reliable separators)."""
    lines = output.split("\n")
    starts = [i for i, line in enumerate(lines) if re.match(r"^(local)?rule \w+:$", line)]
    ends = [*starts[1:], len(lines)]
    return ["\n".join(lines[a:b]) for a, b in zip(starts, ends)]


def _planned_jobs(repo: Path, root: Path, workdir: Path, *config: str) -> tuple[list[str], str]:
    """Every job of a dry run with its shell command, as sorted text blocks (time stamps and
    job ids and reasons (sets, in any order) left out), and the whole output."""
    done, _ = run_snakemake(
        "-n", "-p", "--cores", "4", "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(repo / "config.yaml"), "--config", "run_preset=paper",
        f"dataset_root={root}", *config, cwd=repo,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    blocks = [
        "\n".join(line for line in block.splitlines() if not re.match(r"^\s*(\[|jobid:|reason:)", line))
        for block in job_blocks(output)
    ]
    return sorted(blocks), output


def test_with_the_pool_off_the_dag_is_that_of_a_config_without_the_pool(tmp_path):
    """config.yaml as it was before the pool (its keys and the pseudo_labels chain removed) and
    today's plan the same jobs with the same commands and settings."""
    repo = _repository_copy(tmp_path / "repo")
    root = write_fsdkaggle_listing(tmp_path / "data", n_train=60, n_test=10, n_classes=5)
    now, _ = _planned_jobs(repo, root, tmp_path / "now")
    text = (repo / "config.yaml").read_text()
    old = yaml.safe_load(text)
    for key in POOL_KEYS:
        del old["dataset"][key]
    del old["chains"]["pseudo_labels"]
    (repo / "config.yaml").write_text(yaml.safe_dump(old))
    before, _ = _planned_jobs(repo, root, tmp_path / "before")
    assert now == before
    words = ("pool.csv", "pool_problems.csv", "pool_list.csv", "judge-pool", "validate-pool")
    assert not any(word in block for block in now for word in words)


def test_the_pool_is_planned_for_pool_chains_only(tmp_path):
    """With a pool and the chains self_verification and pseudo_labels: one pool validation
    (whose problems reach problems.csv), the pool's spectrograms, a judge_pool job per preset
    and judged iteration of pseudo_labels only, and only its fine-tuning reads the pool."""
    root = write_fsdkaggle_listing(tmp_path / "data", n_train=60, n_test=10, n_classes=5)
    for i in range(3):
        write_wav(root / "pool" / f"p{i}.wav", np.zeros(800, dtype=np.float32) + 0.1, 8000)
    done, _ = dry_run(
        root,
        tmp_path / "work",
        "dataset={'unlabelled_audio_dir': 'pool'}",
        "run_chains=[self_verification,pseudo_labels]",
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    counts = job_counts(output)
    presets, iterations = CONFIG["method"]["presets"], CONFIG["method"]["self_verification"]["iterations"]
    assert counts["validate_pool"] == 1 and counts["judge_pool"] == len(presets) * iterations
    assert "results/data/pool_problems.csv" in rule_inputs(output, "validate_test")
    jobs = job_blocks(output)
    judged = [block for block in jobs if block.startswith("rule judge_pool:")]
    assert len(judged) == len(presets) * iterations
    assert all("chain=pseudo_labels" in block for block in judged)
    tuned = [block for block in jobs if block.startswith("rule fine_tune:")]
    assert len(tuned) == 2 * len(presets) * CONFIG["method"]["folds"] * iterations
    assert sum("chain=pseudo_labels" in block for block in tuned) == len(tuned) // 2
    assert all(("pool_list.csv" in block) == ("chain=pseudo_labels" in block) for block in tuned)
    assert any("results/spectrograms/v1/pool.csv" in block for block in tuned)
    summaries = [block for block in jobs if block.startswith("rule summary:")]
    assert len(summaries) == 2
    assert all(("pool_per_class.csv" in block) == ("chains/pseudo_labels/" in block) for block in summaries)
    pool_tables = [path for path in rule_inputs(output, "systems") if path.endswith("pool_per_class.csv")]
    assert len(pool_tables) == len(presets) * iterations
    assert all(path.startswith("results/chains/pseudo_labels/") for path in pool_tables)


# --------------------------------------------------------------- transductive: the test audio as the pool


def _transductive(**dataset) -> dict:
    config = _config(unlabelled_test_audio=True, **dataset)
    config["run_chains"] = ["self_verification", "pseudo_labels"]
    return config


@pytest.mark.parametrize(
    ("dataset", "fragment"),
    [
        (
            {"unlabelled_audio_dir": "pool"},
            "dataset.unlabelled_audio_dir: not with dataset.unlabelled_test_audio",
        ),
        ({"unlabelled_true_labels_csv": "t.csv"}, "dataset.unlabelled_true_labels_csv: not with"),
        ({"test_audio_dir": ""}, "needs dataset.test_audio_dir"),
    ],
)
def test_config_refuses_test_labels_or_a_second_folder_for_a_transductive_pool(dataset, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_settings(_transductive(**dataset))
    unused = _transductive()
    unused["run_chains"] = ["self_verification"]
    with pytest.raises(ConfigError, match="dataset.unlabelled_test_audio: no chain of run_chains"):
        resolve_settings(unused)


def test_a_transductive_pool_is_the_test_folder_and_never_reads_the_test_csv(tmp_path):
    """The pool's validation settings name the test folder, not the test CSV; with the test
    CSV gone the pool is still every audio file of the test folder, without any label."""
    settings = resolve_settings(_transductive())
    pool_settings = pool_validation_settings(settings)
    assert pool_settings["test_audio_dir"] == "audio_test" and "test_csv" not in pool_settings
    root = tmp_path / "data"
    for name in ("t0.wav", "t1.wav"):
        write_wav(root / "audio_test" / name, np.zeros(800, dtype=np.float32) + 0.1, 8000)
    listing, _ = validate_pool(root, pool_settings, set())
    assert list(listing["fname"]) == ["t0.wav", "t1.wav"]
    assert (listing[["label", "verified", "true_label"]] == "").all().all()


def test_every_table_of_a_transductive_chain_says_so(tmp_path):
    """The evaluation's note, the summary's test_note and the submission status's note carry
    the transductive note; only the pool chains get it (job settings), others as before."""
    settings = resolve_settings(_transductive())
    assert chain_note(settings, "pseudo_labels") == TRANSDUCTIVE_NOTE
    assert chain_note(settings, "self_verification") == ""
    assert chain_fusion_settings(settings, "self_verification") == fusion_settings(settings)
    assert chain_fusion_settings(settings, "pseudo_labels")["note"] == TRANSDUCTIVE_NOTE
    assert chain_evaluation_arguments(settings, "pseudo_labels")[-2:] == ["--note", TRANSDUCTIVE_NOTE]
    names = [f"t{i}.wav" for i in range(4)]
    write_csv(
        pd.DataFrame({"fname": names, "label": ["a", "b", "b", "b"], "usage": "Public"}),
        tmp_path / "test.csv",
    )
    write_csv(pd.DataFrame({"index": [0, 1], "label": ["a", "b"]}), tmp_path / "classes.csv")
    probs = pd.DataFrame({"fname": names, "a": 0.8, "b": 0.2})
    write_csv(probs, tmp_path / "p1.csv")
    write_csv(probs, tmp_path / "fused.csv")
    systems = {"p1": tmp_path / "p1.csv", "fusion": tmp_path / "fused.csv"}
    scores = evaluate_job(
        tmp_path / "test.csv", tmp_path / "classes.csv", systems, tmp_path, note=TRANSDUCTIVE_NOTE
    )
    assert (scores["note"] == TRANSDUCTIVE_NOTE).all()
    assert summary_test_note(scores, None) == TRANSDUCTIVE_NOTE
    plain = evaluate_job(tmp_path / "test.csv", tmp_path / "classes.csv", systems, tmp_path / "plain")
    assert (plain["note"] == "").all() and summary_test_note(plain, None) == ""
    manifest = tmp_path / "manifest.csv"
    rows = [dict.fromkeys(MANIFEST_COLUMNS, "") | {"fname": name, "status": "clipped"} for name in names]
    write_csv(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), manifest)
    fuse_job(
        {"p1": tmp_path / "p1.csv"}, {}, tmp_path / "classes.csv", tmp_path / "f.csv", tmp_path / "w.csv",
        tmp_path / "submission.csv", manifest, tmp_path / "status.csv",
        settings=FusionSettings("mean", 0, 0.0, note=TRANSDUCTIVE_NOTE),
    )  # fmt: skip
    assert (read_csv_str(tmp_path / "status.csv")["note"] == TRANSDUCTIVE_NOTE).all()


def test_a_transductive_pools_jobs_read_no_test_listing(tmp_path):
    """Dry run with the test audio as the pool: the pool's validation and judging jobs read
    neither the test CSV, nor results/data/test.csv, nor the test manifest (all hold test
    labels); the pool chain's evaluation says transductive."""
    root = write_fsdkaggle_listing(tmp_path / "data", n_train=60, n_test=10, n_classes=5)
    for i in range(3):
        write_wav(root / "audio_test" / f"t{i:07x}.wav", np.zeros(800, dtype=np.float32) + 0.1, 8000)
    extra = tmp_path / "transductive.yaml"
    extra.write_text(
        "dataset: {unlabelled_test_audio: true}\nrun_chains: [self_verification, pseudo_labels]\n"
    )
    done, _ = run_snakemake(
        "-n", "-p", "--cores", "4", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(tmp_path / "work"),
        "--configfile", str(REPO / "config.yaml"), str(extra), "--config", "run_preset=paper",
        f"dataset_root={root}", cwd=tmp_path,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    pool_jobs = [b for b in job_blocks(output) if b.startswith(("rule validate_pool:", "rule judge_pool:"))]
    assert pool_jobs and job_counts(output)["judge_pool"] > 0
    for block in pool_jobs:
        for forbidden in ("test_post_competition.csv", "results/data/test.csv", "/test.csv"):
            assert forbidden not in block
    evaluations = [b for b in job_blocks(output) if b.startswith("rule evaluate:")]
    assert len(evaluations) == 2
    assert all(("--note 'transductive:" in b) == ("chain=pseudo_labels" in b) for b in evaluations)


# --------------------------------------------------------------- the study's pool: held-back training clips


def test_the_noisy_dataset_builder_holds_back_an_unlabelled_pool(tmp_path):
    """pool_fraction 0.25 of 40 training clips (4 classes x 2 speakers x 5 takes): 10 clips,
    within one of a quarter of each class, in audio_unlabelled/ only, their clean labels in
    unlabelled_true_labels.csv; the test split is the pool-less build's; the folder passes the
    pool validation with every clip usable and its true label attached."""
    corpus = _make_corpus(tmp_path / "wavs")
    plain, pooled = tmp_path / "plain", tmp_path / "pooled"
    info0 = _build(corpus, plain, test_groups=["carol"])
    info = _build(corpus, pooled, test_groups=["carol"], pool_fraction=0.25)
    assert "pool_fraction" not in info0["settings"] and "n_pool" not in info0
    assert not (plain / "audio_unlabelled").exists() and not (plain / "unlabelled_true_labels.csv").exists()
    truth = read_csv_str(pooled / "unlabelled_true_labels.csv")
    train = read_csv_str(pooled / "train.csv")
    assert info["n_pool"] == len(truth) == 10 and info["n_train"] == 30
    assert sorted(os.listdir(pooled / "audio_unlabelled")) == sorted(truth["fname"])
    assert not set(truth["fname"]) & set(train["fname"])
    assert (truth["true_label"] == truth["fname"].str.split("_").str[0]).all()
    assert all(abs(n - 2.5) <= 1 for n in truth["true_label"].value_counts())
    assert (pooled / "test_post_competition.csv").read_bytes() == (
        plain / "test_post_competition.csv"
    ).read_bytes()
    dataset = {
        "unlabelled_audio_dir": "audio_unlabelled",
        "unlabelled_true_labels_csv": "unlabelled_true_labels.csv",
    }
    listing, problems = validate_pool(pooled, dataset, set(train["fname"]))
    assert (listing["path"] != "").all() and not problems.rows
    assert dict(zip(listing["fname"], listing["true_label"])) == dict(
        zip(truth["fname"], truth["true_label"])
    )
    # a pool-less rebuild over it (overwrite) must not leave the old pool to be taken for its own
    build_noisy_dataset(
        corpus, pooled, NoisyDatasetSettings(test_groups=["carol"]), name_pattern=PATTERN, overwrite=True
    )
    assert not (pooled / "audio_unlabelled").exists() and not (pooled / "unlabelled_true_labels.csv").exists()


def test_the_chain_summary_counts_the_trusted_pool_clips_of_the_chosen_iteration(tmp_path):
    """Iteration 1 is chosen (lower validation loss), so the pool clips it was fine-tuned on are
    the iteration-0 pool decisions: 3 trusted, precision 2/3; a chain without pool tables keeps
    the summary's columns as they were."""
    histories = {
        (i, k): _history(tmp_path / f"h{i}{k}.csv", [1.0 - i / 10]) for i in range(2) for k in range(2)
    }
    write_csv(selection_table(histories), tmp_path / "selection.csv")
    trust = tmp_path / "trust" / "p" / "it0"
    trust.mkdir(parents=True)
    per_class = pd.DataFrame({"label": ["a", "__all__"], "n_unverified": [4, 4], "n_accepted": [1, 1]})
    write_csv(per_class, trust / "per_class.csv")
    plain = summary_job(["p"], [tmp_path / "selection.csv"], [trust], None, tmp_path / "plain.csv")
    assert not any(column.startswith("pool_") for column in plain.columns)
    pool = pd.DataFrame({"label": ["__all__"], "n_unverified": [5], "n_accepted": [3], "precision": [2 / 3]})
    write_csv(pool, trust / POOL_FILES["per_class"])
    table = summary_job(["p"], [tmp_path / "selection.csv"], [trust], None, tmp_path / "pool.csv")
    row = table.set_index("preset").loc["p"]
    assert row["chosen_iteration"] == 1 and row["self_verified_clips"] == 1
    assert row["pool_trusted_clips"] == 3 and row["pool_trusted_precision"] == pytest.approx(2 / 3)


def test_systems_csv_carries_a_pool_chains_pool_trust_per_iteration(tmp_path):
    """A pool chain's systems.csv row gains pool_trusted_by_it<k> with the pool decisions'
    precision and recall (what the pool study compares); a chain without a pool leaves the
    cells empty, and its own trust columns are as before."""
    from workflow_lib.systems import systems_tables

    histories = {
        (i, k): _history(tmp_path / f"h{i}{k}.csv", [1.0 - i / 10]) for i in range(2) for k in range(2)
    }
    write_csv(selection_table(histories), tmp_path / "selection.csv")
    write_csv(pd.DataFrame({"label": ["a", "b"], "index": [0, 1]}), tmp_path / "classes.csv")
    write_csv(
        pd.DataFrame({"fname": ["t1", "t2"], "label": ["a", "b"], "usage": "Public"}), tmp_path / "test.csv"
    )
    write_csv(pd.DataFrame({"fname": ["t1", "t2"], "a": [0.9, 0.2], "b": [0.1, 0.8]}), tmp_path / "probs.csv")
    trust = tmp_path / "trust"
    trust.mkdir()
    totals = {
        "label": ["__all__"],
        "n_unverified": [6],
        "n_accepted": [4],
        "precision": [1.0],
        "recall": [0.8],
    }
    write_csv(pd.DataFrame(totals), trust / "per_class.csv")
    pool = {
        "label": ["__all__"],
        "n_unverified": [5],
        "n_accepted": [3],
        "precision": [2 / 3],
        "recall": [0.5],
    }
    write_csv(pd.DataFrame(pool), trust / POOL_FILES["per_class"])
    item = {
        "preset": "p",
        "policy": "paper",
        "selection": str(tmp_path / "selection.csv"),
        "test": str(tmp_path / "probs.csv"),
        "self_verify": {"0": str(trust / "per_class.csv")},
    }
    spec = [
        {**item, "system": "self_verification"},
        {**item, "system": "pseudo_labels", "pool": {"0": str(trust / POOL_FILES["per_class"])}},
    ]
    systems, _ = systems_tables(spec, tmp_path / "test.csv", tmp_path / "classes.csv")
    rows = systems.set_index("system")
    assert rows.loc["pseudo_labels", "pool_trusted_by_it0"] == 3
    assert rows.loc["pseudo_labels", "pool_trusted_by_it0_precision"] == pytest.approx(2 / 3)
    assert rows.loc["pseudo_labels", "pool_trusted_by_it0_recall"] == pytest.approx(0.5)
    assert pd.isna(rows.loc["self_verification", "pool_trusted_by_it0"])
    assert (rows["trusted_by_it0"] == 4).all() and (rows["test_accuracy"] == 1.0).all()


def _fsdd_driver():
    """experiments/fsdd/run_experiment.py, imported by path (as experiments/drums does)."""
    spec = importlib.util.spec_from_file_location(
        "fsdd_driver_for_pool", REPO / "experiments/fsdd/run_experiment.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fsdd_driver_passes_a_pool_to_the_builder_and_the_run(tmp_path, capsys):
    """--pool-fraction reaches the builder and the repetition's overlay names the pool (so the
    run's config check then wants a pool chain); without it the builder's settings and the
    overlay are as before, so an earlier build is reused; with --multi-label it is refused."""
    driver = _fsdd_driver()
    plain = driver.parse_args(["--fsdd", str(tmp_path), "--chains", "self_verification"])
    assert "pool_fraction" not in driver.dataset_settings(plain).to_json()
    assert "dataset" not in yaml.safe_load(driver.write_overlay(plain, tmp_path / "plain", None).read_text())
    pooled = driver.parse_args(
        ["--fsdd", str(tmp_path), "--pool-fraction", "0.25", "--chains", "self_verification", "pseudo_labels"]
    )
    assert driver.dataset_settings(pooled).pool_fraction == 0.25
    overlay = yaml.safe_load(driver.write_overlay(pooled, tmp_path / "pooled", 7).read_text())
    assert overlay["dataset"] == {
        "unlabelled_audio_dir": "audio_unlabelled",
        "unlabelled_true_labels_csv": "unlabelled_true_labels.csv",
    }
    assert overlay["run_chains"] == ["self_verification", "pseudo_labels"]
    refused = [
        "--fsdd",
        str(tmp_path),
        "--pool-fraction",
        "0.25",
        "--multi-label",
        "--out",
        str(tmp_path / "o"),
    ]
    assert driver.main(refused) == 1
    unused = ["--fsdd", str(tmp_path), "--pool-fraction", "0.25", "--out", str(tmp_path / "u"), "--dry-run"]
    assert driver.main(unused) == 1  # refused by the config check, before any dataset is built
    assert "no chain of run_chains sets pool: true" in capsys.readouterr().err
    assert not (tmp_path / "u" / "dataset").exists()

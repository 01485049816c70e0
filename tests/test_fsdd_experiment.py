"""The FSDD noisy-label experiment (experiments/fsdd), small, end to end on real recordings.

300 FSDD clips (takes 0-4 of every digit and speaker), one speaker held out for test, 2 folds,
4-epoch nets of width 8, one self-verification iteration (iteration 0 judges, iteration 1
fine-tunes on what it trusted; the demo runs two): the noisy-dataset builder, the
real-audio preprocessing (8 kHz speech through SoX and spectrogram version 1) and the whole DAG
of the method and its rival chains, through experiments/fsdd/run_experiment.py. The checks
are about plumbing and invariants, never accuracy:

* no test clip (the held-out speaker) reaches training, folds or self-verification;
* every held-out unverified clip is judged exactly once per iteration, by its own fold's model
  (recomputed here with the fold models; swapping them changes the numbers);
* precision figures are those of the builder's true labels;
* the chains train on what they claim (verified clips only; every clip; per-clip weights;
  shared iteration 0) and the systems table is what the per-chain files say.

Skipped, with the reason, when the FSDD folder or the SoX binary is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_lib import __version__

from conftest import REPO, fsdd_dir_or_skip

DRIVER = REPO / "experiments/fsdd/run_experiment.py"
PRESET = "vgg_gap_spec1_1"
TEST_SPEAKER = "theo"
THRESHOLD = 0.2  # the 4-epoch nets are barely better than chance: a low threshold accepts some
CAP = 3  # small enough to bind (about 7 unverified clips per class and fold)
ITERATIONS = 1  # self-verification iterations: iterations 0 .. ITERATIONS - 1 judge
# The method first; weighted exercises per-clip loss weights (label spreading's embeddings:
# tests/test_policies.py on a real VGG-GAP net).
SYSTEMS = ["self_verification", "self_verification_no_threshold", "verified_only", "all_labels", "weighted"]

SMALL = f"""
# tests/test_fsdd_experiment.py: the experiment, small (merged after experiments/fsdd/config.yaml)
preprocessing: {{shards: 2}}
run_chains: [{", ".join(SYSTEMS)}]
run_presets:
  fsdd:
    method:
      folds: 2
      nets:
        {PRESET}: {{width: 8, batch_size: 16}}
      initial_training: {{epochs: 4, constant_epochs: 2}}
      self_verification:
        {{iterations: {ITERATIONS}, excerpts: 4, threshold: {THRESHOLD}, max_per_class: {CAP}}}
      fine_tuning: {{epochs: 1, constant_epochs: 0}}
"""


# A guard against a hung run, not a speed check; raise it on a loaded machine.
TIMEOUT_S = float(os.environ.get("FSDD_EXPERIMENT_TIMEOUT_S", "900"))


def _run_driver(out: Path, *extra: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    fsdd = fsdd_dir_or_skip("the experiment runs on its recordings")
    return subprocess.run(
        [
            sys.executable,
            str(DRIVER),
            "--out",
            str(out),
            "--fsdd",
            str(fsdd),
            "--takes",
            "5",
            "--test-speaker",
            TEST_SPEAKER,
            "--overlay",
            str(out / "small.yaml"),
            "--cores",
            "2",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    fsdd_dir_or_skip("the experiment runs on its recordings")
    if shutil.which("sox") is None:
        pytest.skip("the sox binary is not on PATH (apt-get install -y sox)")
    out = tmp_path_factory.mktemp("fsdd_experiment")
    (out / "small.yaml").write_text(SMALL)
    started = time.perf_counter()
    done = _run_driver(out)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    results = out / "work" / "results"
    return {
        "out": out,
        "results": results,
        "seconds": seconds,
        "log": done.stdout + done.stderr,
        "experiment": json.loads((out / "experiment.json").read_text()),
    }


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _speaker(fname: str) -> str:
    return fname.split("_")[1]


def _variants(results: Path) -> dict[str, Path]:
    """Trust folders (it0/, it1/ ...) of the method and of the threshold-off variant."""
    return {
        chain: _trust(results, chain) for chain in ("self_verification", "self_verification_no_threshold")
    }


def _trust(results: Path, chain: str) -> Path:
    return results / "chains" / chain / "trust" / PRESET


# --------------------------------------------------------------------------- settings (no audio)


def _merged(*files: Path) -> dict:
    """Config files merged as Snakemake merges several --configfile (recursively)."""
    import yaml

    from workflow_lib.config import deep_merge

    config: dict = {}
    for path in files:
        config = deep_merge(config, yaml.safe_load(path.read_text()))
    return config


def test_experiment_settings_resolve_and_default_run_is_unchanged():
    """config.yaml alone: the method's chain only; with the overlay: the fsdd preset, the former
    baselines as chains, and the paper's values under top-level `method` untouched."""
    from workflow_lib.config import resolve_settings
    from workflow_lib.job_settings import chain_policy

    base = resolve_settings(_merged(REPO / "config.yaml"))
    assert base["run_chains"] == ["self_verification"]
    assert chain_policy(base, "self_verification") == {
        "name": "paper",
        "threshold": base["method"]["self_verification"]["threshold"],
        "max_per_class": base["method"]["self_verification"]["max_per_class"],
        "max_fraction": None,
        "correct_labels": False,
        "min_trusted_share": 0.0,
    }
    config = _merged(REPO / "config.yaml", REPO / "experiments/fsdd/config.yaml")
    assert config["method"]["self_verification"]["threshold"] == 0.95
    s = resolve_settings({**config, "dataset_root": "/data"})
    assert s["run_preset"] == "fsdd" and s["run_chains"][0] == "self_verification"
    assert {"verified_only", "all_labels", "self_verification_no_threshold"} <= set(s["run_chains"])
    assert chain_policy(s, "self_verification_no_threshold")["threshold"] is None
    assert chain_policy(s, "self_verification")["threshold"] == 0.9
    assert s["method"]["presets"] == [PRESET] and s["method"]["folds"] == 4
    assert s["method"]["nets"][PRESET]["spectrogram"] == 1
    assert s["preprocessing"]["sox_effects"] == base["preprocessing"]["sox_effects"]


def test_experiment_dag_plans_every_chain(tmp_path):
    """The experiment's DAG on a listing without audio (planning reads none): a second
    --configfile merges nested keys over the first, and every chain's jobs are there, with
    one iteration 0 per start (all clips, verified clips), never one per chain."""
    from test_workflow_dryrun import job_counts, run_snakemake

    from workflow_lib.config import resolve_settings

    root = tmp_path / "data"
    (root / "audio_train").mkdir(parents=True)
    (root / "audio_test").mkdir()
    train = pd.DataFrame(
        {
            "fname": [f"{d}_x_{i}.wav" for d in range(10) for i in range(12)],
            "label": [str(d) for d in range(10) for _ in range(12)],
            "manually_verified": [int(i < 5) for _ in range(10) for i in range(12)],
        }
    )
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame({"fname": ["t.wav"], "label": ["3"], "usage": ["Public"]}).to_csv(
        root / "test_post_competition.csv", index=False
    )
    done, _ = run_snakemake(
        "-n",
        "--cores",
        "2",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config.yaml"),
        str(REPO / "experiments/fsdd/config.yaml"),
        "--config",
        f"dataset_root={root}",
        "--directory",
        str(tmp_path / "work"),
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    counts = job_counts(output)
    chains = len(
        resolve_settings(
            {**_merged(REPO / "config.yaml", REPO / "experiments/fsdd/config.yaml"), "dataset_root": "/d"}
        )["run_chains"]
    )
    folds, iterations = 4, 3
    assert counts["preprocess_shard"] == 2 * 4, counts  # shards: 4, the rest merged in
    assert counts["initial_list"] == 2 and counts["train_initial"] == 2 * folds, counts
    # Same budget: every chain fine-tunes as often as the method.
    assert counts["fine_tune"] == chains * folds * iterations, counts
    assert counts["self_verify"] == chains * iterations, counts
    assert counts["select_iteration"] == counts["predict"] == counts["summary"] == chains, counts
    assert counts["systems"] == 1, counts
    # The method's jobs come first: its fine-tuning has the highest priority.
    assert "priority: 7" in output and "priority: 1" in output


# --------------------------------------------------------------------------- outputs


def test_outputs_one_row_per_chain_and_a_plot(run):
    """One CSV, one row per chain, the columns asked for, a PNG; copied to --out."""
    out = run["out"]
    systems = pd.read_csv(out / "systems.csv")
    assert list(systems["system"]) == SYSTEMS
    assert (systems["preset"] == PRESET).all()
    for column in ("cv_accuracy", "cv_map3", "test_accuracy", "test_map3"):
        values = systems[column].to_numpy(dtype=float)
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all(), column
    assert np.isfinite(systems["cv_loss"]).all()
    for judge in range(ITERATIONS):  # the last iteration (ITERATIONS) judges nothing
        assert systems[f"trusted_by_it{judge}"].notna().all()
        for kind in ("precision", "recall"):
            assert f"trusted_by_it{judge}_{kind}" in systems
    assert f"trusted_by_it{ITERATIONS}" not in systems
    assert (systems["n_test"] == 50).all()
    assert (out / "systems.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    iterations = pd.read_csv(out / "systems_iterations.csv")
    assert sorted(map(tuple, iterations[["system", "iteration"]].to_numpy())) == sorted(
        (s, i) for s in SYSTEMS for i in range(ITERATIONS + 1)
    )
    judged = iterations.dropna(subset=["trusted"])
    assert set(judged["system"]) == set(SYSTEMS) and set(judged["iteration"]) == set(range(ITERATIONS))
    rows = systems.set_index("system")
    assert int(rows.loc["verified_only", "trusted_by_it0"]) == 0
    assert pd.isna(rows.loc["verified_only", "low_trust_iterations"])  # trusting none is its design
    assert int(rows.loc["all_labels", "trusted_by_it0"]) == 150
    assert run["experiment"]["dataset"]["n_test"] == 50
    code = run["experiment"]["code"]  # which code ran it; a clone of the repository has a commit
    assert (
        code["workflow_lib"] == __version__ and run["experiment"]["started"] <= run["experiment"]["finished"]
    )
    machine = run["experiment"]["machine"]  # and on what: the CPU and the load at both ends
    assert machine["cpu"] and {"cpus", "load_average", "load_average_at_end"} <= set(machine)


def test_out_of_fold_posteriors_are_kept(run):
    """posteriors.csv: every judged clip once, fname, fold, given label, one column per class
    summing to 1; the decisions' posteriors are read from it; identical for the chains that
    share iteration 0 (same models, same excerpt seed)."""
    from workflow_lib.dataset import read_classes

    results = run["results"]
    classes = read_classes(results / "data/classes.csv")
    first = None
    for chain in SYSTEMS:
        names = {"fname": str, "given_label": str}
        table = pd.read_csv(_trust(results, chain) / "it0/posteriors.csv", dtype=names)
        assert list(table.columns) == ["fname", "fold", "given_label", *classes]
        np.testing.assert_allclose(table[classes].sum(axis=1), 1.0, atol=1e-6)
        d = pd.read_csv(_trust(results, chain) / "it0/decisions.csv", dtype=names)
        probs = table.set_index("fname").loc[d["fname"]]
        given = probs[classes].to_numpy()[np.arange(len(d)), d["given_label"].map(classes.index)]
        np.testing.assert_allclose(d["p_given"], given, atol=1e-9)
        if chain != "verified_only":  # the chains that start from all clips share it0
            first = table if first is None else first
            np.testing.assert_allclose(table[classes], first[classes], atol=0)  # and its excerpts
        valid = pd.read_csv(_trust(results, chain) / "it0/valid_posteriors.csv", dtype={"fname": str})
        assert not set(valid["fname"]) & set(table["fname"])  # never a judged clip


def test_rerun_plans_nothing(run):
    """The driver reuses an identical dataset build; the finished workflow is up to date."""
    done = _run_driver(run["out"], "--dry-run", timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "reusing the dataset" in output
    assert "Nothing to be done" in output, output[-4000:]


# --------------------------------------------------------------------------- data


def test_builder_and_real_audio_preprocessing(run):
    """Item 1 + preprocessing: the builder's counts, and 8 kHz speech as usable spectrograms."""
    from workflow_lib.preprocess import SpectrogramStore

    dataset = run["out"] / "dataset"
    info = json.loads((dataset / "build_info.json").read_text())
    assert (info["n_train"], info["n_test"], info["n_verified"], info["n_corrupted"]) == (250, 50, 100, 45)
    train, truth = _csv(dataset / "train.csv"), _csv(dataset / "train_true_labels.csv")
    merged = train.merge(truth, on="fname")
    verified = merged[merged["manually_verified"] == "1"]
    assert (verified["label"] == verified["true_label"]).all()
    assert (merged["label"] != merged["true_label"]).sum() == 45
    for split in ("train", "test"):
        store = SpectrogramStore.open(run["results"] / f"spectrograms/v1/{split}.csv", usable_only=False)
        manifest = store.manifest
        assert len(manifest) == (250 if split == "train" else 50)
        assert manifest["status"].isin(["clipped", "unclipped"]).all(), manifest["status"].value_counts()
        for row in range(0, len(manifest), 37):
            spectrogram = store.get(row)
            assert spectrogram.shape[:2] == (1, 128) and spectrogram.shape[2] > 5
            assert np.isfinite(spectrogram).all()


def test_no_test_clip_reaches_training(run):
    """The held-out speaker is the test set, and none of its clips is in any training input."""
    results = run["results"]
    test = set(_csv(results / "data/test.csv")["fname"])
    assert len(test) == 50 and {_speaker(f) for f in test} == {TEST_SPEAKER}
    folds = _csv(results / "folds.csv")
    assert not test & set(folds["fname"])
    assert TEST_SPEAKER not in {_speaker(f) for f in folds["fname"]}
    assert not test & set(_csv(results / "spectrograms/v1/train.csv")["fname"])
    lists = [
        *results.glob("chains/*/trust/*/it*/train_list.csv"),
        results / "initial/verified/train_list.csv",
        results / "initial/all/train_list.csv",
    ]
    assert len(lists) == ITERATIONS * len(SYSTEMS) + 2
    for path in lists:
        assert not test & set(_csv(path)["fname"]), path
    for path in results.glob("**/decisions.csv"):
        assert not test & set(_csv(path)["fname"]), path


# --------------------------------------------------------------------------- self-verification


def test_each_unverified_clip_judged_once_by_its_own_fold(run):
    """Every held-out unverified clip, once per iteration, with its own fold; nothing else."""
    folds = _csv(run["results"] / "folds.csv")
    unverified = folds[folds["verified"] == "0"].set_index("fname")["fold"]
    for variant, folder in _variants(run["results"]).items():
        for it in range(ITERATIONS):
            decisions = _csv(folder / f"it{it}" / "decisions.csv")
            assert sorted(decisions["fname"]) == sorted(unverified.index), (variant, it)
            assert (decisions["fold"].to_numpy() == unverified.loc[decisions["fname"]].to_numpy()).all()


def test_decisions_come_from_the_own_fold_models(run):
    """Recompute iteration 0's judgement with the fold models: own folds reproduce the written
    posteriors exactly, swapped folds do not."""
    import torch

    from workflow_lib.data import ClipBank
    from workflow_lib.dataset import read_classes
    from workflow_lib.job_settings import derive_seed
    from workflow_lib.model import load_model
    from workflow_lib.policies import PolicySettings
    from workflow_lib.preprocess import SpectrogramStore
    from workflow_lib.self_verify import TrustSettings, self_verify

    torch.set_num_threads(1)
    results = run["results"]
    method = run["experiment"]["settings"]["method"]
    sv = method["self_verification"]
    settings = TrustSettings(
        excerpts=sv["excerpts"],
        policy=PolicySettings.of("paper", threshold=sv["threshold"], max_per_class=sv["max_per_class"]),
        excerpt_frames=method["excerpt_frames"],
        seed=derive_seed(method["seed"], "self_verify", PRESET, 0),
    )
    classes = read_classes(results / "data/classes.csv")
    folds = _csv(results / "folds.csv")
    store = SpectrogramStore.open(results / "spectrograms/v1/train.csv")
    unverified = {
        k: folds[(folds["fold"] == str(k)) & (folds["verified"] == "0")].reset_index(drop=True)
        for k in (0, 1)
    }
    banks = {
        k: ClipBank.from_store(store, list(part["fname"]), method["spectrogram_frames"])
        for k, part in unverified.items()
    }
    models = {k: load_model(results / f"initial/all/{PRESET}/fold{k}/best.pt")[0] for k in (0, 1)}
    assert all(load_model(results / f"initial/all/{PRESET}/fold{k}/best.pt")[1]["fold"] == k for k in (0, 1))
    written = pd.read_csv(_trust(results, "self_verification") / "it0/decisions.csv", dtype={"fname": str})
    written = written.set_index("fname")
    own = self_verify(models, banks, unverified, classes, settings).set_index("fname")
    np.testing.assert_allclose(own.loc[written.index, "p_given"], written["p_given"], atol=1e-4)
    assert (own.loc[written.index, "accepted"] == written["accepted"]).all()
    swapped = self_verify({0: models[1], 1: models[0]}, banks, unverified, classes, settings)
    swapped = swapped.set_index("fname").loc[written.index, "p_given"]
    assert np.abs(swapped.to_numpy() - written["p_given"].to_numpy()).max() > 1e-3


def test_acceptance_rules_and_shared_iteration_zero(run):
    """Accepted = given label is the argmax, (method only) posterior >= threshold, cap per class.
    Iteration 0 is shared: both variants see the same posteriors and differ by the threshold."""
    folders = _variants(run["results"])
    for variant, folder in folders.items():
        for it in range(ITERATIONS):
            d = pd.read_csv(
                folder / f"it{it}" / "decisions.csv",
                dtype={"fname": str, "given_label": str, "predicted_label": str},
            )
            accepted = d[d["accepted"]]
            assert (accepted["given_label"] == accepted["predicted_label"]).all()
            assert (accepted.groupby("given_label").size() <= CAP).all()
            if variant == "self_verification":
                assert (accepted["p_given"] >= THRESHOLD).all()
            else:
                assert not (d["reason"] == "below_threshold").any()
    method0 = pd.read_csv(folders["self_verification"] / "it0/decisions.csv", dtype={"fname": str})
    off0 = pd.read_csv(folders["self_verification_no_threshold"] / "it0/decisions.csv", dtype={"fname": str})
    np.testing.assert_array_equal(method0["fname"], off0["fname"])
    np.testing.assert_allclose(method0["p_given"], off0["p_given"], atol=0)
    assert off0["accepted"].sum() >= 1, "the threshold-off variant accepts the argmax matches"


def test_precision_and_recall_are_measured_against_the_true_labels(run):
    """per_class.csv, systems_iterations.csv and systems.csv precision = share of trusted clips
    whose trusted label is the builder's true label; recall = trusted correct / correctly
    labelled judged clips; given-label precision = 1 - 45/150."""
    truth = _csv(run["out"] / "dataset/train_true_labels.csv").set_index("fname")["true_label"]
    systems = pd.read_csv(run["out"] / "systems.csv").set_index("system")
    iterations = pd.read_csv(run["out"] / "systems_iterations.csv")
    for variant in SYSTEMS:
        folder = _trust(run["results"], variant)
        for it in range(ITERATIONS):
            d = _csv(folder / f"it{it}" / "decisions.csv")
            accepted = d[d["accepted"] == "True"]
            correct = int((accepted["trusted_label"] == truth.loc[accepted["fname"]].to_numpy()).sum())
            expected = correct / len(accepted) if len(accepted) else np.nan
            overall = pd.read_csv(folder / f"it{it}" / "per_class.csv", dtype={"label": str})
            overall = overall.set_index("label").loc["__all__"]
            assert int(overall["n_accepted"]) == len(accepted)
            assert int(overall["n_accepted_correct"]) == correct
            np.testing.assert_allclose(overall["precision"], expected, equal_nan=True)
            np.testing.assert_allclose(overall["unverified_precision"], 1 - 45 / 150)
            assert int(overall["n_correct"]) == 150 - 45
            np.testing.assert_allclose(overall["recall"], correct / 105)
            row = systems.loc[variant]
            assert int(row[f"trusted_by_it{it}"]) == len(accepted)
            np.testing.assert_allclose(row[f"trusted_by_it{it}_precision"], expected, equal_nan=True)
            np.testing.assert_allclose(row[f"trusted_by_it{it}_recall"], correct / 105)
            line = iterations[(iterations["system"] == variant) & (iterations["iteration"] == it)].iloc[0]
            assert int(line["trusted"]) == len(accepted)
            assert int(line["trusted_correct"]) == correct
        np.testing.assert_allclose(systems.loc[variant, "given_label_precision"], 1 - 45 / 150)


# --------------------------------------------------------------------------- chains


def _log(results: Path, owner: str, k: int, it: int) -> str:
    return (results / f"logs/train/{owner}/{PRESET}_fold{k}_it{it}.log").read_text()


def test_chains_train_on_what_they_claim(run):
    """verified_only: exactly the verified clips, at it0 (its own start) and after; all_labels
    and the others: it0 on every clip (one shared it0); all_labels fine-tunes on every clip;
    weighted keeps every clip with its posterior as weight."""
    results = run["results"]
    folds = _csv(results / "folds.csv")
    listing = _csv(results / "initial/verified/train_list.csv")
    assert (
        listing.set_index("fname")["manually_verified"]
        == folds.set_index("fname").loc[listing["fname"], "verified"].to_numpy()
    ).all()
    assert (_csv(results / "initial/all/train_list.csv")["manually_verified"] == "1").all()
    epochs = run["experiment"]["settings"]["method"]["initial_training"]["epochs"]
    for k in (0, 1):
        verified = int(((folds["fold"] != str(k)) & (folds["verified"] == "1")).sum())
        everything = int((folds["fold"] != str(k)).sum())
        assert f"{verified} training clips" in _log(results, "verified", k, 0)
        assert len(pd.read_csv(results / f"initial/verified/{PRESET}/fold{k}/history.csv")) == epochs
        assert f"{verified} training clips" in _log(results, "verified_only", k, 1)
        assert f"{everything} training clips" in _log(results, "all", k, 0)
        assert f"{everything} training clips" in _log(results, "all_labels", k, 1)
        assert f"{everything} training clips" in _log(results, "weighted", k, 1)
    assert not (results / "initial/verified" / PRESET / "fold0" / "it1").exists()
    weights = _csv(_trust(results, "weighted") / "it0/train_list.csv")
    decisions = _csv(_trust(results, "weighted") / "it0/decisions.csv").set_index("fname")
    unverified = weights[weights["fname"].isin(decisions.index)]
    np.testing.assert_allclose(
        unverified["weight"].astype(float),
        decisions.loc[unverified["fname"], "p_given"].astype(float),
        atol=1e-9,
    )
    assert (weights.loc[~weights["fname"].isin(decisions.index), "weight"].astype(float) == 1).all()
    assert unverified["weight"].astype(float).max() < 1


def test_systems_table_matches_its_sources(run):
    """Each row's CV figure is its selection row; test scores recomputed from its posteriors;
    chains with the same start share iteration 0."""
    from workflow_lib.dataset import read_classes
    from workflow_lib.metrics import accuracy, map_at_3

    results = run["results"]
    systems = pd.read_csv(run["out"] / "systems.csv").set_index("system")
    classes = read_classes(results / "data/classes.csv")
    test = _csv(results / "data/test.csv")
    method = pd.read_csv(results / f"chains/self_verification/selection/{PRESET}.csv")
    for system in SYSTEMS:
        table = pd.read_csv(results / f"chains/{system}/selection/{PRESET}.csv")
        row = table.loc[table["chosen"]]
        assert int(systems.loc[system, "iteration"]) == int(row["iteration"].iloc[0])
        np.testing.assert_allclose(systems.loc[system, "cv_accuracy"], row["mean_valid_acc"].iloc[0])
        probs_csv = results / f"chains/{system}/predictions/{PRESET}/test.csv"
        probs = pd.read_csv(probs_csv, dtype={"fname": str}).set_index("fname").loc[test["fname"], classes]
        targets = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        np.testing.assert_allclose(systems.loc[system, "test_accuracy"], accuracy(probs.to_numpy(), targets))
        np.testing.assert_allclose(systems.loc[system, "test_map3"], map_at_3(probs.to_numpy(), targets))
        if system != "verified_only":  # shared iteration 0
            np.testing.assert_allclose(
                table.loc[table["iteration"] == 0, "mean_valid_loss"],
                method.loc[method["iteration"] == 0, "mean_valid_loss"],
            )

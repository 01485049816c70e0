"""The FSDD noisy-label experiment (experiments/fsdd), small, end to end on real recordings.

300 FSDD clips (takes 0-4 of every digit and speaker), one speaker held out for test, 2 folds,
4-epoch nets of width 8, two self-verification iterations: the noisy-dataset builder, the
real-audio preprocessing (8 kHz speech through SoX and spectrogram version 1) and the whole DAG
of the method and its baselines, through experiments/fsdd/run_experiment.py. The checks are
about plumbing and invariants, never accuracy:

* no test clip (the held-out speaker) reaches training, folds or self-verification;
* every held-out unverified clip is judged exactly once per iteration, by its own fold's model
  (recomputed here with the fold models; swapping them changes the numbers);
* precision figures are those of the builder's true labels;
* the baselines train on what they claim (verified clips only; shared iteration 0) and the
  systems table is what the per-system files say.

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

from conftest import REPO, fsdd_dir_or_skip

DRIVER = REPO / "experiments/fsdd/run_experiment.py"
PRESET = "vgg_gap_spec1_1"
TEST_SPEAKER = "theo"
THRESHOLD = 0.2       # the 4-epoch nets are barely better than chance: a low threshold accepts some
CAP = 3               # small enough to bind (about 7 unverified clips per class and fold)
SYSTEMS = ["verified_only", "noisy_it0", "noisy_finetuned", "self_verification",
           "self_verification_no_threshold"]

SMALL = f"""
# tests/test_fsdd_experiment.py: the experiment, small (merged after experiments/fsdd/config.yaml)
preprocessing: {{shards: 2}}
run_presets:
  fsdd:
    method:
      folds: 2
      nets:
        {PRESET}: {{width: 8, batch_size: 16}}
      initial_training: {{epochs: 4, constant_epochs: 2}}
      self_verification: {{iterations: 2, excerpts: 4, threshold: {THRESHOLD}, max_per_class: {CAP}}}
      fine_tuning: {{epochs: 1, constant_epochs: 0}}
"""


def _run_driver(out: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    fsdd = fsdd_dir_or_skip("the experiment runs on its recordings")
    return subprocess.run([sys.executable, str(DRIVER), "--out", str(out), "--fsdd", str(fsdd), "--takes", "5",
                           "--test-speaker", TEST_SPEAKER, "--overlay", str(out / "small.yaml"),
                           "--cores", "2", *extra],
                          env=env, capture_output=True, text=True, timeout=timeout)


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
    return {"out": out, "results": results, "seconds": seconds, "log": done.stdout + done.stderr,
            "experiment": json.loads((out / "experiment.json").read_text())}


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _speaker(fname: str) -> str:
    return fname.split("_")[1]


def _variants(results: Path) -> dict[str, Path]:
    """Self-verification folders of the method and of the threshold-off variant."""
    return {"self_verification": results / "self_verify" / PRESET,
            "self_verification_no_threshold": results / "baselines" / PRESET / "no_threshold" / "self_verify"}


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
    """config.yaml alone: no baselines; with the overlay: the fsdd preset, baselines on, and the
    paper's values under top-level `method` untouched."""
    from workflow_lib.config import resolve_settings

    base = resolve_settings(_merged(REPO / "config.yaml"))
    assert base["baselines"] == {"enabled": False, "no_threshold": False}
    config = _merged(REPO / "config.yaml", REPO / "experiments/fsdd/config.yaml")
    assert config["method"]["self_verification"]["threshold"] == 0.95
    s = resolve_settings({**config, "dataset_root": "/data"})
    assert s["run_preset"] == "fsdd" and s["baselines"] == {"enabled": True, "no_threshold": True}
    assert s["method"]["presets"] == [PRESET] and s["method"]["folds"] == 4
    assert s["method"]["nets"][PRESET]["spectrogram"] == 1
    assert s["preprocessing"]["sox_effects"] == base["preprocessing"]["sox_effects"]


def test_experiment_dag_plans_the_baselines(tmp_path):
    """The experiment's DAG on a listing without audio (planning reads none): a second
    --configfile merges nested keys over the first, and the baseline jobs are all there."""
    from test_workflow_dryrun import job_counts, run_snakemake

    root = tmp_path / "data"
    (root / "audio_train").mkdir(parents=True)
    (root / "audio_test").mkdir()
    train = pd.DataFrame({"fname": [f"{d}_x_{i}.wav" for d in range(10) for i in range(12)],
                          "label": [str(d) for d in range(10) for _ in range(12)],
                          "manually_verified": [int(i < 5) for _ in range(10) for i in range(12)]})
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame({"fname": ["t.wav"], "label": ["3"], "usage": ["Public"]}).to_csv(
        root / "test_post_competition.csv", index=False)
    done, _ = run_snakemake("-n", "--cores", "2", "--snakefile", str(REPO / "Snakefile"),
                            "--configfile", str(REPO / "config.yaml"),
                            str(REPO / "experiments/fsdd/config.yaml"),
                            "--config", f"dataset_root={root}", "--directory", str(tmp_path / "work"),
                            cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    counts = job_counts(output)
    folds, iterations = 4, 3
    assert counts["preprocess_shard"] == 2 * 4, counts          # shards: 4, the rest merged in
    assert counts["train_initial"] == folds and counts["fine_tune"] == folds * iterations, counts
    assert counts["train_verified_only"] == folds, counts
    # Same budget: the verified-only, noisy and threshold-off chains fine-tune as often as the method.
    assert counts["fine_tune_chain"] == 3 * folds * iterations, counts
    assert counts["select_chain"] == 3 and counts["baseline_train_list"] == 2, counts
    assert counts["self_verify"] == counts["self_verify_no_threshold"] == iterations, counts
    assert counts["baseline_test_posteriors"] == 4 and counts["baseline_systems"] == 1, counts


# --------------------------------------------------------------------------- outputs


def test_outputs_one_row_per_system_and_a_plot(run):
    """Item 3: one CSV, one row per system, the columns asked for, a PNG; copied to --out."""
    out = run["out"]
    systems = pd.read_csv(out / "systems.csv")
    assert list(systems["system"]) == SYSTEMS
    assert (systems["preset"] == PRESET).all()
    for column in ("cv_accuracy", "test_accuracy", "test_map3"):
        values = systems[column].to_numpy(dtype=float)
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all(), column
    method = systems.set_index("system").loc[["self_verification", "self_verification_no_threshold"]]
    for judge in (0, 1):   # iterations 0 and 1 judge; iteration 2 is the last
        assert method[f"self_verified_by_it{judge}"].notna().all()
        assert f"self_verified_by_it{judge}_precision" in systems
    assert "self_verified_by_it2" not in systems
    assert (systems["n_test"] == 50).all()
    assert (out / "systems.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    iterations = pd.read_csv(out / "iterations.csv")
    chains = ("verified_only", "noisy_finetuned", "self_verification", "self_verification_no_threshold")
    assert sorted(map(tuple, iterations[["system", "iteration"]].to_numpy())) == sorted(
        (s, i) for s in chains for i in range(3))
    judged = iterations.dropna(subset=["self_verified"])
    assert set(judged["system"]) == {"self_verification", "self_verification_no_threshold"}
    assert run["experiment"]["dataset"]["n_test"] == 50


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
    lists = [*results.glob("self_verify/*/it*/train_self_verified.csv"),
             *results.glob("baselines/**/train_self_verified.csv"),
             results / "baselines/verified_only_list.csv", results / "baselines/all_clips_list.csv"]
    assert len(lists) == 2 + 2 + 2
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
        for it in (0, 1):
            decisions = _csv(folder / f"it{it}" / "decisions.csv")
            assert sorted(decisions["fname"]) == sorted(unverified.index), (variant, it)
            assert (decisions["fold"].to_numpy() == unverified.loc[decisions["fname"]].to_numpy()).all()


def test_decisions_come_from_the_own_fold_models(run):
    """Recompute iteration 0's judgement with the fold models: own folds reproduce the written
    posteriors exactly, swapped folds do not."""
    import torch

    from workflow_lib.config import derive_seed
    from workflow_lib.data import ClipBank
    from workflow_lib.preprocess import SpectrogramStore
    from workflow_lib.self_verify import SelfVerifySettings, self_verify
    from workflow_lib.stages import load_model, read_classes

    torch.set_num_threads(1)
    results = run["results"]
    method = run["experiment"]["settings"]["method"]
    sv = method["self_verification"]
    settings = SelfVerifySettings(excerpts=sv["excerpts"], threshold=sv["threshold"],
                                  max_per_class=sv["max_per_class"],
                                  excerpt_frames=method["excerpt_frames"],
                                  seed=derive_seed(method["seed"], "self_verify", PRESET, 0))
    classes = read_classes(results / "data/classes.csv")
    folds = _csv(results / "folds.csv")
    store = SpectrogramStore.open(results / "spectrograms/v1/train.csv")
    unverified = {k: folds[(folds["fold"] == str(k)) & (folds["verified"] == "0")].reset_index(drop=True)
                  for k in (0, 1)}
    banks = {k: ClipBank.from_store(store, list(part["fname"]), method["spectrogram_frames"])
             for k, part in unverified.items()}
    models = {k: load_model(results / f"models/{PRESET}/fold{k}/it0/best.pt")[0] for k in (0, 1)}
    assert all(load_model(results / f"models/{PRESET}/fold{k}/it0/best.pt")[1]["fold"] == k for k in (0, 1))
    written = pd.read_csv(results / f"self_verify/{PRESET}/it0/decisions.csv", dtype={"fname": str})
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
        for it in (0, 1):
            d = pd.read_csv(folder / f"it{it}" / "decisions.csv", dtype={"fname": str, "given_label": str,
                                                                        "predicted_label": str})
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


def test_precision_is_measured_against_the_true_labels(run):
    """per_class.csv, iterations.csv and systems.csv precision = share of accepted clips whose
    given label is the builder's true label; given-label precision = 1 - 45/150."""
    truth = _csv(run["out"] / "dataset/train_true_labels.csv").set_index("fname")["true_label"]
    systems = pd.read_csv(run["out"] / "systems.csv").set_index("system")
    iterations = pd.read_csv(run["out"] / "iterations.csv")
    for variant, folder in _variants(run["results"]).items():
        for it in (0, 1):
            d = _csv(folder / f"it{it}" / "decisions.csv")
            accepted = d[d["accepted"] == "True"]
            correct = int((accepted["given_label"] == truth.loc[accepted["fname"]].to_numpy()).sum())
            expected = correct / len(accepted) if len(accepted) else np.nan
            overall = pd.read_csv(folder / f"it{it}" / "per_class.csv", dtype={"label": str})
            overall = overall.set_index("label").loc["__all__"]
            assert int(overall["n_accepted"]) == len(accepted)
            assert int(overall["n_accepted_correct"]) == correct
            np.testing.assert_allclose(overall["precision"], expected, equal_nan=True)
            np.testing.assert_allclose(overall["unverified_precision"], 1 - 45 / 150)
            row = systems.loc[variant]
            assert int(row[f"self_verified_by_it{it}"]) == len(accepted)
            np.testing.assert_allclose(row[f"self_verified_by_it{it}_precision"], expected, equal_nan=True)
            line = iterations[(iterations["system"] == variant) & (iterations["iteration"] == it)].iloc[0]
            assert int(line["self_verified"]) == len(accepted)
            assert int(line["self_verified_correct"]) == correct
        np.testing.assert_allclose(systems.loc[variant, "given_label_precision"], 1 - 45 / 150)


# --------------------------------------------------------------------------- baselines


def test_verified_only_baseline_trains_on_verified_clips_only(run):
    """Baseline (a): the list trusts exactly the verified clips; each fold model saw exactly the
    verified clips of its training part (as its log says), with the initial-training schedule,
    then the method's fine-tuning iterations on the same clips (same budget)."""
    results = run["results"]
    folds = _csv(results / "folds.csv")
    listing = _csv(results / "baselines/verified_only_list.csv")
    assert (listing.set_index("fname")["manually_verified"]
            == folds.set_index("fname").loc[listing["fname"], "verified"].to_numpy()).all()
    epochs = run["experiment"]["settings"]["method"]["initial_training"]["epochs"]
    for k in (0, 1):
        expected = int(((folds["fold"] != str(k)) & (folds["verified"] == "1")).sum())
        log = (results / f"logs/baselines/train_verified_only/{PRESET}_fold{k}.log").read_text()
        assert f"{expected} training clips" in log, log[:2000]
        history = pd.read_csv(results / f"baselines/{PRESET}/verified_only/models/fold{k}/it0/history.csv")
        assert len(history) == epochs
        log = (results / f"logs/baselines/fine_tune_verified_only/{PRESET}_fold{k}_it1.log").read_text()
        assert f"{expected} training clips" in log, log[:2000]
        it0_log = (results / f"logs/train/{PRESET}_fold{k}_it0.log").read_text()
        assert f"{int((folds['fold'] != str(k)).sum())} training clips" in it0_log


def test_systems_table_matches_its_sources(run):
    """Each row's CV figure is its selection row; test scores recomputed from its posteriors."""
    from workflow_lib.metrics import accuracy, map_at_3
    from workflow_lib.stages import read_classes

    results = run["results"]
    systems = pd.read_csv(run["out"] / "systems.csv").set_index("system")
    classes = read_classes(results / "data/classes.csv")
    test = _csv(results / "data/test.csv")
    selection = pd.read_csv(results / f"selection/{PRESET}.csv")
    chosen = int(selection.loc[selection["chosen"], "iteration"].iloc[0])
    sources = {
        "verified_only": (results / f"baselines/{PRESET}/verified_only/selection.csv", None,
                          results / f"baselines/{PRESET}/verified_only/test.csv"),
        "noisy_it0": (results / f"selection/{PRESET}.csv", 0, results / f"baselines/{PRESET}/noisy_it0/test.csv"),
        "noisy_finetuned": (results / f"baselines/{PRESET}/noisy/selection.csv", None,
                            results / f"baselines/{PRESET}/noisy/test.csv"),
        "self_verification": (results / f"selection/{PRESET}.csv", chosen,
                              results / f"predictions/{PRESET}/test.csv"),
        "self_verification_no_threshold": (results / f"baselines/{PRESET}/no_threshold/selection.csv", None,
                                           results / f"baselines/{PRESET}/no_threshold/test.csv"),
    }
    for system, (selection_csv, iteration, probs_csv) in sources.items():
        table = pd.read_csv(selection_csv)
        row = table.loc[table["chosen"]] if iteration is None else table.loc[table["iteration"] == iteration]
        assert int(systems.loc[system, "iteration"]) == int(row["iteration"].iloc[0])
        np.testing.assert_allclose(systems.loc[system, "cv_accuracy"], row["mean_valid_acc"].iloc[0])
        probs = pd.read_csv(probs_csv, dtype={"fname": str}).set_index("fname").loc[test["fname"], classes]
        targets = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        np.testing.assert_allclose(systems.loc[system, "test_accuracy"], accuracy(probs.to_numpy(), targets))
        np.testing.assert_allclose(systems.loc[system, "test_map3"], map_at_3(probs.to_numpy(), targets))
    # The threshold-off and noisy chains fine-tune from the shared iteration-0 models.
    for chain in ("no_threshold", "noisy"):
        table = pd.read_csv(results / f"baselines/{PRESET}/{chain}/selection.csv")
        np.testing.assert_allclose(table.loc[table["iteration"] == 0, "mean_valid_loss"],
                                   selection.loc[selection["iteration"] == 0, "mean_valid_loss"])
    # The noisy chain fine-tunes on every training clip of the fold, as labelled.
    folds = _csv(results / "folds.csv")
    log = (results / f"logs/baselines/fine_tune_noisy/{PRESET}_fold0_it1.log").read_text()
    assert f"{int((folds['fold'] != '0').sum())} training clips" in log, log[:2000]
    assert run["seconds"] < 600, f"the small experiment took {run['seconds']:.0f} s"

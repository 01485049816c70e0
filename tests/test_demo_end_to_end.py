"""The default demo, end to end: one real `snakemake --cores 2` run per test session, then every
CSV it writes is read back and checked against its documented meaning (docs/method.md, config.yaml).

The ``demo`` fixture (tests/conftest.py, session scope) runs it; tests/test_tagger_demo.py
uses the same run. Slow (minutes): deselect with ``-m "not slow"``. To check an existing run
directory instead of starting a new one, set DEMO_E2E_DIR to it (it is run there first if
its summary.csv is missing).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import snakemake_command, snakemake_env

pytestmark = pytest.mark.slow

HISTORY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "valid_loss",
    "valid_acc",
    "valid_map3",
    "seconds",
]
DECISION_COLUMNS = [
    "fname",
    "given_label",
    "fold",
    "predicted_label",
    "p_given",
    "p_max",
    "score",
    "trusted_label",
    "weight",
    "accepted",
    "reason",
]
CHAIN = "chains/self_verification"  # the default run: the method's chain only (layout.py)
USABLE = {"clipped", "fallback_silent", "fallback_sox_failed", "fallback_clipped_all"}
REASONS = {"accepted", "label_mismatch", "below_threshold", "class_cap"}


def model_dir(preset: str, fold: int, it: int) -> str:
    """A fold model's folder under results/: iteration 0 is shared by the chains that start
    from all clips; fine-tuned models belong to the chain."""
    if it == 0:
        return f"initial/all/{preset}/fold{fold}"
    return f"{CHAIN}/models/{preset}/fold{fold}/it{it}"


# --- the data -------------------------------------------------------------------------------


def test_demo_dataset(demo):
    d = demo.settings["demo_data"]
    n_classes, per_class, per_test = d["n_classes"], d["train_clips_per_class"], d["test_clips_per_class"]
    train = demo.csv("demo_data/train.csv")
    truth = demo.csv("demo_data/train_true_labels.csv")
    test = demo.csv("demo_data/test_post_competition.csv")
    assert list(train.columns) == ["fname", "label", "manually_verified"]
    assert list(truth.columns) == ["fname", "true_label"]
    assert list(test.columns) == ["fname", "label", "usage"]

    assert len(train) == n_classes * per_class and train["fname"].is_unique
    assert set(train["manually_verified"]) == {"0", "1"}
    assert truth["fname"].tolist() == train["fname"].tolist()
    assert truth["true_label"].nunique() == n_classes
    assert (truth["true_label"].value_counts() == per_class).all()
    merged = train.merge(truth, on="fname")
    verified = merged["manually_verified"] == "1"
    # verified: round(fraction * n) per class, always correctly labelled
    assert verified.sum() == n_classes * round(d["verified_fraction"] * per_class)
    assert (merged.loc[verified, "label"] == merged.loc[verified, "true_label"]).all()
    # unverified: exactly round(noise_rate * n) wrong labels, each a known class
    unverified = merged[~verified]
    wrong = (unverified["label"] != unverified["true_label"]).sum()
    assert wrong == round(d["noise_rate"] * len(unverified))
    assert set(unverified["label"]) <= set(truth["true_label"])

    assert len(test) == n_classes * per_test and test["fname"].is_unique
    assert not set(test["fname"]) & set(train["fname"])
    assert (test["label"].value_counts() == per_test).all()
    assert set(test["usage"]) == {"Public", "Private"}
    assert (test["usage"] == "Public").sum() == n_classes * round(d["public_fraction"] * per_test)

    for folder, names in (("audio_train", train["fname"]), ("audio_test", test["fname"])):
        present = {p.name for p in (demo.results / "demo_data" / folder).glob("*.wav")}
        assert set(names) <= present, f"{folder}: missing audio files"


def test_validated_listings(demo):
    source = demo.csv("demo_data/train.csv")
    truth = demo.csv("demo_data/train_true_labels.csv").set_index("fname")["true_label"]
    train = demo.csv("data/train.csv")
    test = demo.csv("data/test.csv")
    classes = demo.csv("data/classes.csv")
    problems = demo.csv("data/problems.csv")

    assert {"fname", "label", "verified", "path", "true_label"} <= set(train.columns)
    assert train["fname"].tolist() == source["fname"].tolist()  # the demo has no bad files
    assert train["label"].tolist() == source["label"].tolist()
    assert train["verified"].tolist() == source["manually_verified"].tolist()
    assert (train["true_label"] == train["fname"].map(truth)).all()
    for path in train["path"]:
        assert (demo.workdir / path).is_file() or Path(path).is_file()

    source_test = demo.csv("demo_data/test_post_competition.csv")
    assert {"fname", "label", "usage", "path"} <= set(test.columns)
    assert test[["fname", "label", "usage"]].equals(source_test[["fname", "label", "usage"]])

    assert list(classes.columns) == ["index", "label", "n_train", "n_verified", "n_unverified"]
    assert classes["index"].astype(int).tolist() == list(range(len(classes)))
    assert classes["label"].tolist() == sorted(train["label"].unique())  # from the CSV
    counts = classes.set_index("label").astype(int)
    given = train.groupby("label")["verified"].agg(n_train="size", n_verified=lambda s: (s == "1").sum())
    assert (counts["n_train"] == given["n_train"]).all()
    assert (counts["n_verified"] == given["n_verified"]).all()
    assert (counts["n_unverified"] == counts["n_train"] - counts["n_verified"]).all()

    assert list(problems.columns) == ["file", "line", "fname", "problem", "outcome"]
    assert "error" not in set(problems["outcome"])


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("split", ["train", "test"])
def test_spectrogram_manifests(demo, version, split):
    if version not in {demo.method["nets"][p]["spectrogram"] for p in demo.presets}:
        pytest.skip(f"no preset uses spectrogram version {version}")
    manifest = demo.csv(f"spectrograms/v{version}/{split}.csv")
    listing = demo.csv(f"data/{split}.csv")
    assert list(manifest.columns)[:7] == [
        "fname",
        "label",
        "verified",
        "n_frames",
        "seconds_before_clipping",
        "seconds_after_clipping",
        "status",
    ]
    assert sorted(manifest["fname"]) == sorted(listing["fname"]) and manifest["fname"].is_unique
    by_name = listing.set_index("fname")
    assert (manifest["label"] == manifest["fname"].map(by_name["label"])).all()
    if split == "train":
        assert (manifest["verified"] == manifest["fname"].map(by_name["verified"])).all()
    assert set(manifest["status"]) <= USABLE, manifest["status"].value_counts().to_dict()
    frames = manifest["n_frames"].astype(int)
    before = manifest["seconds_before_clipping"].astype(float)
    after = manifest["seconds_after_clipping"].astype(float)
    assert (frames > 0).all()
    assert (after > 0).all() and (after <= before + 1e-6).all()
    # the demo pads every sound with digital silence: SoX cuts something from most clips
    assert (after < before - 0.01).mean() > 0.5
    # frames follow the clipped length: hop 192 (v1) / 128 (v2) samples at 32 kHz
    hop = {1: 192, 2: 128}[version]
    expected = after * demo.settings["preprocessing"]["sample_rate"] / hop
    assert (np.abs(frames - expected) <= 3).all()
    for other in {1, 2} - {version}:
        path = demo.results / f"spectrograms/v{other}/{split}.csv"
        if path.is_file():  # both versions clip each file once: identical lengths
            twin = demo.csv(f"spectrograms/v{other}/{split}.csv").set_index("fname")
            assert (
                manifest["seconds_after_clipping"] == manifest["fname"].map(twin["seconds_after_clipping"])
            ).all()


def test_folds(demo):
    folds = demo.csv("folds.csv")
    train = demo.csv("data/train.csv").set_index("fname")
    manifest = demo.csv(f"spectrograms/v{demo.method['nets'][demo.presets[0]]['spectrogram']}/train.csv")
    assert list(folds.columns) == ["fname", "label", "verified", "fold"]
    usable = manifest.loc[manifest["status"].isin(USABLE), "fname"]
    assert sorted(folds["fname"]) == sorted(usable) and folds["fname"].is_unique
    assert (folds["label"] == folds["fname"].map(train["label"])).all()
    assert (folds["verified"] == folds["fname"].map(train["verified"])).all()
    assert set(folds["fold"].astype(int)) == set(range(demo.n_folds)) == set(range(4))
    # verified and unverified split separately, stratified by label
    for flag in ("0", "1"):
        part = folds[folds["verified"] == flag]
        counts = part.groupby(["label", "fold"]).size().unstack(fill_value=0)
        counts = counts.reindex(columns=[str(k) for k in range(demo.n_folds)], fill_value=0)
        assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all(), counts
        sizes = part["fold"].value_counts()
        assert sizes.max() - sizes.min() <= len(counts), sizes


# --- training -------------------------------------------------------------------------------


def expected_lr(epoch: int, base: float, constant: int, total: int) -> float:
    """docs/method.md schedule by hand: constant, then linear to 0 at ``total`` (epoch from 1)."""
    e = epoch - 1
    return base if e < constant else base * (total - e) / (total - constant)


def test_training_histories_and_checkpoints(demo):
    import torch

    classes = demo.classes
    for preset in demo.presets:
        net = demo.method["nets"][preset]
        for k in range(demo.n_folds):
            for it in demo.iterations:
                stage = demo.method["initial_training" if it == 0 else "fine_tuning"]
                base = stage["lr"] if it == 0 else net["finetune_lr"]
                where = f"{preset} fold {k} it{it}"
                folder = demo.results / model_dir(preset, k, it)
                history = demo.numeric(f"{model_dir(preset, k, it)}/history.csv")
                assert list(history.columns) == HISTORY_COLUMNS, where
                assert history["epoch"].tolist() == list(range(1, stage["epochs"] + 1)), where
                lrs = [
                    expected_lr(e, base, stage["constant_epochs"], stage["epochs"]) for e in history["epoch"]
                ]
                np.testing.assert_allclose(history["lr"], lrs, rtol=1e-6, err_msg=where)
                assert np.isfinite(history[HISTORY_COLUMNS]).all().all(), where
                for column in ("train_acc", "valid_acc", "valid_map3"):
                    assert history[column].between(0, 1).all(), where
                assert (history["valid_map3"] >= history["valid_acc"] - 1e-9).all(), where
                assert (folder / "best.pt").is_file() and (folder / "last.pt").is_file(), where
                assert not (folder / "resume.pt").exists(), where
                best = torch.load(folder / "best.pt", map_location="cpu", weights_only=False)
                last = torch.load(folder / "last.pt", map_location="cpu", weights_only=False)
                kept = int(history.loc[history["valid_loss"].idxmin(), "epoch"])
                assert best["epoch"] == kept, where
                assert best["valid_loss"] == pytest.approx(history["valid_loss"].min(), rel=1e-5)
                assert last["epoch"] == stage["epochs"], where
                for saved in (best, last):
                    assert saved["classes"] == classes and saved["fold"] == k
                    assert saved["preset"] == preset and saved["width"] == net["width"]


def test_initial_models_learn(demo):
    chance = 1 / len(demo.classes)
    for preset in demo.presets:
        for k in range(demo.n_folds):
            history = demo.numeric(f"{model_dir(preset, k, 0)}/history.csv")
            kept = history.loc[history["valid_loss"].idxmin()]
            assert kept["valid_acc"] >= 3 * chance, (preset, k, kept.to_dict())
            assert history["valid_loss"].min() < history["valid_loss"].iloc[0], (preset, k)


def training_log_counts(demo, preset: str, fold: int, it: int) -> tuple[int, int] | None:
    owner = "all" if it == 0 else "self_verification"  # iteration 0 is per start
    log = demo.results / "logs" / "train" / owner / f"{preset}_fold{fold}_it{it}.log"
    if not log.is_file():
        return None
    found = re.search(r"(\d+) training clips, (\d+) verified validation clips", log.read_text())
    return (int(found.group(1)), int(found.group(2))) if found else None


def test_each_job_trains_on_the_documented_clips(demo):
    """it0: every clip outside the fold; it i+1: the verified clips outside the fold per
    iteration i's self-verified list; validation: the fold's originally verified clips."""
    folds = demo.csv("folds.csv")
    seen = 0
    for preset in demo.presets:
        for k in range(demo.n_folds):
            outside = folds[folds["fold"].astype(int) != k]
            n_valid = ((folds["fold"].astype(int) == k) & (folds["verified"] == "1")).sum()
            for it in demo.iterations:
                counts = training_log_counts(demo, preset, k, it)
                if counts is None:
                    continue
                seen += 1
                if it == 0:
                    expected = len(outside)
                else:
                    trusted = demo.csv(f"{CHAIN}/trust/{preset}/it{it - 1}/train_list.csv")
                    trusted = set(trusted.loc[trusted["manually_verified"] == "1", "fname"])
                    expected = outside["fname"].isin(trusted).sum()
                assert counts == (expected, n_valid), (preset, k, it)
    if not seen:
        pytest.skip("the training logs do not report the clip counts")


# --- self-verification ----------------------------------------------------------------------


def decisions_of(demo, preset: str, it: int) -> pd.DataFrame:
    table = demo.numeric(f"{CHAIN}/trust/{preset}/it{it}/decisions.csv")
    assert table["accepted"].dtype == bool
    return table


def test_self_verification_decisions(demo):
    sv = demo.method["self_verification"]
    threshold, cap = sv["threshold"], sv["max_per_class"]
    classes = set(demo.classes)
    folds = demo.csv("folds.csv")
    unverified = folds[folds["verified"] == "0"].set_index("fname")
    truth = demo.csv("demo_data/train_true_labels.csv").set_index("fname")["true_label"]
    for preset in demo.presets:
        for it in demo.iterations[:-1]:
            where = f"{preset} it{it}"
            d = decisions_of(demo, preset, it)
            assert list(d.columns[:11]) == DECISION_COLUMNS, where
            assert set(d.columns[11:]) <= {"true_label"}, where
            # the paper's policy trusts given labels at weight 1, ranked by their posterior
            assert (d["trusted_label"] == d["given_label"]).all(), where
            assert (d["weight"] == d["accepted"].astype(float)).all(), where
            np.testing.assert_allclose(d["score"], d["p_given"], rtol=1e-12)
            # every unverified clip judged exactly once, by its own fold's model
            assert d["fname"].is_unique and set(d["fname"]) == set(unverified.index), where
            assert (d["fold"].astype(int) == d["fname"].map(unverified["fold"]).astype(int)).all(), where
            assert (d["given_label"] == d["fname"].map(unverified["label"])).all(), where
            assert "true_label" in d.columns, where  # the demo knows the truth
            assert (d["true_label"] == d["fname"].map(truth)).all(), where
            assert set(d["predicted_label"]) <= classes
            assert d["p_given"].between(0, 1).all() and (d["p_max"] <= 1 + 1e-6).all()
            assert (d["p_max"] >= d["p_given"] - 1e-12).all(), where
            assert (d["p_max"] >= 1 / len(classes) - 1e-6).all(), where
            assert set(d["reason"]) <= REASONS, where
            assert ((d["reason"] == "accepted") == d["accepted"]).all(), where
            _check_the_paper_rule(d, threshold, cap, where)
            _check_per_class_counts(demo, preset, it, d)


def _check_the_paper_rule(d: pd.DataFrame, threshold: float | None, cap: int, where: str) -> None:
    """Accepted = the argmax is the given label, its posterior reaches the threshold, and the
    class cap keeps the highest posteriors; the reasons say which test refused a clip."""
    match = d["given_label"] == d["predicted_label"]
    # the argmax is the predicted label: on a match p_given is p_max
    np.testing.assert_allclose(d.loc[match, "p_given"], d.loc[match, "p_max"], rtol=1e-9)
    accepted = d[d["accepted"]]
    assert (accepted["given_label"] == accepted["predicted_label"]).all(), where
    if threshold is not None:
        assert (accepted["p_given"] >= threshold).all(), where
        low = d["reason"] == "below_threshold"
        assert (match[low] & (d.loc[low, "p_given"] < threshold)).all(), where
        passing = match & (d["p_given"] >= threshold)
    else:
        assert "below_threshold" not in set(d["reason"])
        passing = match
    assert (~match == (d["reason"] == "label_mismatch")).all(), where
    assert (passing == d["reason"].isin(["accepted", "class_cap"])).all(), where
    # the cap, per class, keeps the highest posteriors
    per_class = accepted.groupby("given_label").size()
    assert (per_class <= cap).all(), where
    for label, group in d[d["reason"] == "class_cap"].groupby("given_label"):
        assert per_class.get(label, 0) == cap, where
        assert group["p_given"].max() <= accepted.loc[accepted["given_label"] == label, "p_given"].min(), (
            where
        )


def _check_per_class_counts(demo, preset: str, it: int, d: pd.DataFrame) -> None:
    """per_class.csv counts the judged and accepted clips of the decisions, per class and in all."""
    accepted = d[d["accepted"]]
    table = demo.numeric(f"{CHAIN}/trust/{preset}/it{it}/per_class.csv").set_index("label")
    assert table.loc["__all__", "n_unverified"] == len(d)
    assert table.loc["__all__", "n_accepted"] == len(accepted)
    counts = d.groupby("given_label")["accepted"].agg(["size", "sum"])
    for label, row in counts.iterrows():
        assert table.loc[label, "n_unverified"] == row["size"]
        assert table.loc[label, "n_accepted"] == row["sum"]


def test_self_verified_labels_are_far_more_precise(demo):
    total = 0
    for preset in demo.presets:
        for it in demo.iterations[:-1]:
            d = decisions_of(demo, preset, it)
            correct = d["given_label"] == d["true_label"]
            baseline = correct.mean()
            accepted = d["accepted"]
            total += int(accepted.sum())
            print(
                f"{preset} it{it}: accepted {accepted.sum()} of {len(d)}, precision "
                f"{correct[accepted].mean() if accepted.any() else float('nan'):.3f} "
                f"(unverified labels {baseline:.3f})"
            )
            if accepted.any():
                precision = correct[accepted].mean()
                assert precision >= 0.9, (preset, it, precision)
                assert precision >= baseline + 0.15, (preset, it, precision, baseline)
                table = demo.numeric(f"{CHAIN}/trust/{preset}/it{it}/per_class.csv").set_index("label")
                assert table.loc["__all__", "precision"] == pytest.approx(precision)
                assert table.loc["__all__", "unverified_precision"] == pytest.approx(baseline)
    demo_noise = demo.settings["demo_data"]["noise_rate"]
    assert total > 0, "the demo self-verified nothing in any preset or iteration"
    assert 0 < demo_noise < 1


def test_self_verified_lists(demo):
    source = demo.csv("demo_data/train.csv")
    folds = demo.csv("folds.csv").set_index("fname")
    for preset in demo.presets:
        for it in demo.iterations[:-1]:
            where = f"{preset} it{it}"
            d = decisions_of(demo, preset, it)
            new = demo.csv(f"{CHAIN}/trust/{preset}/it{it}/train_list.csv")
            assert list(new.columns) == [*source.columns, "weight"], where  # train.csv layout
            assert new["fname"].is_unique and set(new["fname"]) == set(folds.index), where
            assert (new["label"] == new["fname"].map(folds["label"])).all(), where
            accepted = set(d.loc[d["accepted"], "fname"])
            expected = (new["fname"].map(folds["verified"]) == "1") | new["fname"].isin(accepted)
            assert (new["manually_verified"] == expected.astype(int).astype(str)).all(), where


# --- selection, prediction, fusion, evaluation -------------------------------------------------


def test_selection(demo):
    for preset in demo.presets:
        table = demo.numeric(f"{CHAIN}/selection/{preset}.csv")
        assert table["iteration"].tolist() == demo.iterations
        assert table["chosen"].dtype == bool and table["chosen"].sum() == 1
        losses = table["mean_valid_loss"].to_numpy()
        chosen = int(table.loc[table["chosen"], "iteration"].iloc[0])
        assert chosen == int(table["iteration"].iloc[int(np.argmin(losses))])
        for it in demo.iterations:
            best = [
                demo.numeric(f"{model_dir(preset, k, it)}/history.csv")["valid_loss"].min()
                for k in range(demo.n_folds)
            ]
            assert table.loc[it, "mean_valid_loss"] == pytest.approx(np.mean(best), rel=1e-9)


def probability_file(demo, relative: str) -> pd.DataFrame:
    frame = demo.numeric(relative)
    classes = demo.classes
    assert list(frame.columns)[-len(classes) :] == classes, relative
    probs = frame[classes].to_numpy(dtype=float)
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1 + 1e-6).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4, err_msg=relative)
    assert frame["fname"].is_unique
    return frame


def test_predictions(demo):
    test_fnames = set(demo.csv("data/test.csv")["fname"])
    folds = demo.csv("folds.csv")
    verified = folds[folds["verified"] == "1"].set_index("fname")
    stack = []
    for preset in demo.presets:
        version = demo.method["nets"][preset]["spectrogram"]
        manifest = demo.csv(f"spectrograms/v{version}/test.csv")
        usable = set(manifest.loc[manifest["status"].isin(USABLE), "fname"])
        test = probability_file(demo, f"{CHAIN}/predictions/{preset}/test.csv")
        assert list(test.columns) == ["fname", *demo.classes]
        assert set(test["fname"]) == usable == test_fnames
        stack.append(test.set_index("fname").loc[sorted(test_fnames), demo.classes].to_numpy())
        oof = probability_file(demo, f"{CHAIN}/predictions/{preset}/valid_oof.csv")
        assert list(oof.columns[:3]) == ["fname", "label", "fold"]
        assert set(oof["fname"]) == set(verified.index)
        assert (oof["fold"].astype(int) == oof["fname"].map(verified["fold"]).astype(int)).all()
        assert (oof["label"] == oof["fname"].map(verified["label"])).all()
    fused = probability_file(demo, f"{CHAIN}/predictions/fused_test.csv")
    assert set(fused["fname"]) == test_fnames
    if demo.method["fusion"]["method"] == "mean":
        np.testing.assert_allclose(
            fused.set_index("fname").loc[sorted(test_fnames), demo.classes], np.mean(stack, axis=0), atol=1e-6
        )


def test_submission(demo):
    sub = demo.csv(f"{CHAIN}/submission.csv")
    classes = demo.classes
    assert list(sub.columns) == ["fname", "label"]
    assert sub["fname"].is_unique
    assert set(sub["fname"]) == set(demo.csv("data/test.csv")["fname"])  # every test clip
    status = demo.csv(f"{CHAIN}/submission_status.csv")
    assert list(status.columns) == ["fname", "status", "detail"]
    assert list(status["fname"]) == list(sub["fname"]) and set(status["status"]) == {"predicted"}
    fused = demo.numeric(f"{CHAIN}/predictions/fused_test.csv").set_index("fname")
    for fname, labels in zip(sub["fname"], sub["label"]):
        top = labels.split(" ")
        assert len(top) == 3 and len(set(top)) == 3 and set(top) <= set(classes), labels
        probs = fused.loc[fname, top].to_numpy(dtype=float)
        assert (np.diff(probs) <= 1e-12).all(), (fname, labels)  # best first
        assert probs[0] == pytest.approx(fused.loc[fname, classes].to_numpy(dtype=float).max())
        assert probs[-1] >= np.sort(fused.loc[fname, classes].to_numpy(dtype=float))[-3] - 1e-12


def hand_scores(frame: pd.DataFrame, test: pd.DataFrame, classes: list[str]) -> tuple[float, float]:
    """Accuracy and MAP@3 written out: 1, 1/2, 1/3 for a hit at rank 1, 2, 3."""
    probs = frame.set_index("fname").loc[test["fname"], classes].to_numpy(dtype=float)
    ranks = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    truth = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    acc = float(np.mean(ranks[:, 0] == truth))
    ap = [next((1 / (r + 1) for r in range(3) if ranks[i, r] == truth[i]), 0.0) for i in range(len(truth))]
    return acc, float(np.mean(ap))


def test_evaluation(demo):
    classes = demo.classes
    test = demo.csv("data/test.csv")
    scored = test[test["usage"].isin(["Public", "Private"]) & test["label"].isin(classes)]
    sets = {
        "Public": scored[scored["usage"] == "Public"],
        "Private": scored[scored["usage"] == "Private"],
        "Public+Private": scored,
    }
    summary = demo.numeric(f"{CHAIN}/evaluation/summary.csv")
    assert list(summary.columns) == ["system", "set", "n", "accuracy", "map3", "n_unpredicted", "note"]
    assert (summary["n_unpredicted"] == 0).all() and summary["note"].isna().all()  # all predicted
    systems = [*demo.presets, "fusion"]
    assert sorted(summary["system"].unique()) == sorted(systems)
    table = summary.set_index(["system", "set"])
    assert len(table) == len(systems) * 3 and table.index.is_unique
    files = {p: f"{CHAIN}/predictions/{p}/test.csv" for p in demo.presets}
    files["fusion"] = f"{CHAIN}/predictions/fused_test.csv"
    for system in systems:
        frame = demo.numeric(files[system])
        for name, rows in sets.items():
            row = table.loc[(system, name)]
            assert row["n"] == len(rows), (system, name)
            acc, map3 = hand_scores(frame, rows, classes)
            assert row["accuracy"] == pytest.approx(acc), (system, name)
            assert row["map3"] == pytest.approx(map3), (system, name)
            assert row["map3"] >= row["accuracy"] - 1e-12
        assert table.loc[(system, "Public"), "n"] + table.loc[(system, "Private"), "n"] == len(scored)
    n_both = table.loc[("fusion", "Public+Private"), "n"]
    assert table.loc[("fusion", "Public+Private"), "accuracy"] >= 3 / len(classes)

    per_class = demo.numeric(f"{CHAIN}/evaluation/per_class.csv")
    assert list(per_class.columns) == ["system", "label", "precision", "recall", "f1", "support"]
    support = scored["label"].value_counts()
    for _system, group in per_class.groupby("system"):
        assert group["label"].tolist() == classes
        assert group["support"].sum() == n_both
        assert (group.set_index("label")["support"] == support.reindex(classes, fill_value=0)).all()
        for column in ("precision", "recall", "f1"):
            assert group[column].between(0, 1).all()
    assert set(per_class["system"]) <= set(systems) and "fusion" in set(per_class["system"])

    confusion = demo.numeric(f"{CHAIN}/evaluation/confusion.csv")
    assert list(confusion.columns) == ["true_label", *classes]
    assert confusion["true_label"].tolist() == classes
    matrix = confusion[classes].to_numpy()
    assert matrix.sum() == n_both  # Public + Private
    fusion_support = per_class[per_class["system"] == "fusion"].set_index("label")["support"]
    assert (matrix.sum(axis=1) == fusion_support.loc[classes].to_numpy()).all()
    assert np.trace(matrix) / matrix.sum() == pytest.approx(
        table.loc[("fusion", "Public+Private"), "accuracy"]
    )
    fused = demo.numeric(f"{CHAIN}/predictions/fused_test.csv").set_index("fname")
    fused = fused.loc[scored["fname"], classes]
    predicted = np.asarray(classes)[fused.to_numpy(dtype=float).argmax(axis=1)]
    hand = pd.crosstab(scored["label"].to_numpy(), predicted).reindex(
        index=classes, columns=classes, fill_value=0
    )
    np.testing.assert_array_equal(matrix, hand.to_numpy())


def test_run_summary(demo):
    summary = demo.numeric(f"{CHAIN}/summary.csv")
    assert summary["preset"].tolist() == [*demo.presets, "fusion"]
    scores = demo.numeric(f"{CHAIN}/evaluation/summary.csv").set_index(["system", "set"])
    for _, row in summary.iloc[:-1].iterrows():
        preset = row["preset"]
        selection = demo.numeric(f"{CHAIN}/selection/{preset}.csv").set_index("iteration")
        chosen = int(selection.index[selection["chosen"]][0])
        assert int(row["chosen_iteration"]) == chosen
        assert row["it0_cv_accuracy"] == pytest.approx(selection.loc[0, "mean_valid_acc"])
        assert row["it0_cv_map3"] == pytest.approx(selection.loc[0, "mean_valid_map3"])
        assert row["chosen_cv_accuracy"] == pytest.approx(selection.loc[chosen, "mean_valid_acc"])
        assert row["chosen_cv_map3"] == pytest.approx(selection.loc[chosen, "mean_valid_map3"])
        if chosen == 0:
            assert int(row["self_verified_clips"]) == 0
        else:  # the list the chosen iteration was fine-tuned on: iteration chosen - 1's
            d = decisions_of(demo, preset, chosen - 1)
            assert int(row["self_verified_clips"]) == int(d["accepted"].sum())
            if d["accepted"].any():
                precision = (d.loc[d["accepted"], "given_label"] == d.loc[d["accepted"], "true_label"]).mean()
                assert row["self_verified_precision"] == pytest.approx(precision)
        assert row["test_accuracy"] == pytest.approx(scores.loc[(preset, "Public+Private"), "accuracy"])
        assert row["test_map3"] == pytest.approx(scores.loc[(preset, "Public+Private"), "map3"])
    assert summary["test_note"].isna().all()  # labels known, every clip predicted
    fusion = summary.iloc[-1]
    assert fusion["test_accuracy"] == pytest.approx(scores.loc[("fusion", "Public+Private"), "accuracy"])
    assert fusion["test_map3"] == pytest.approx(scores.loc[("fusion", "Public+Private"), "map3"])


def test_no_partial_files_left(demo):
    leftovers = [p for p in demo.results.rglob("*") if p.name.endswith(".tmp") or p.name == "resume.pt"]
    assert not leftovers, leftovers[:5]


# --- reproducibility of the DAG: runs last ---------------------------------------------------


def test_rerun_has_nothing_to_do(demo):
    proc = subprocess.run(
        snakemake_command(demo.workdir, "-n"),
        cwd=demo.workdir,
        env=snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Nothing to be done" in proc.stdout, proc.stdout[-4000:]


def test_posteriors_and_systems_table(demo):
    """The out-of-fold posteriors behind each decision are kept, and the systems table of the
    default run (the method's chain only) agrees with the chain's own files."""
    classes = demo.classes
    systems = demo.numeric("systems.csv")
    assert systems["system"].tolist() == ["self_verification"] * len(demo.presets)
    iterations = demo.numeric("systems_iterations.csv")
    assert len(iterations) == len(demo.presets) * len(demo.iterations)
    assert (demo.results / "systems.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for preset in demo.presets:
        row = systems.set_index("preset").loc[preset]
        selection = demo.numeric(f"{CHAIN}/selection/{preset}.csv").set_index("iteration")
        chosen = int(selection.index[selection["chosen"]][0])
        assert int(row["iteration"]) == chosen
        assert row["cv_loss"] == pytest.approx(selection.loc[chosen, "mean_valid_loss"])
        for it in demo.iterations[:-1]:
            posteriors = demo.numeric(f"{CHAIN}/trust/{preset}/it{it}/posteriors.csv")
            assert list(posteriors.columns) == ["fname", "fold", "given_label", *classes]
            np.testing.assert_allclose(posteriors[classes].sum(axis=1), 1.0, atol=1e-6)
            d = decisions_of(demo, preset, it).set_index("fname").loc[posteriors["fname"]]
            given = posteriors[classes].to_numpy()[np.arange(len(d)), d["given_label"].map(classes.index)]
            np.testing.assert_allclose(d["p_given"], given, rtol=1e-9)
            table = demo.numeric(f"{CHAIN}/trust/{preset}/it{it}/per_class.csv").set_index("label")
            assert int(row[f"trusted_by_it{it}"]) == int(table.loc["__all__", "n_accepted"])
            correct = d["given_label"] == d["true_label"]
            kept = (correct & d["accepted"]).sum()
            assert table.loc["__all__", "recall"] == pytest.approx(kept / correct.sum())

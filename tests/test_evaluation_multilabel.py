"""Multi-label evaluation, fusion and submission (dataset.layout fsdkaggle2019; docs/method.md
"Multi-label mode (FSDKaggle2019)").

Small hand-made posterior tables: lwlrap and the scores at the 0.5 threshold are worked out
by hand below and cross-checked against scikit-learn; the single-label behaviour is covered,
unchanged, by tests/test_selection_fusion.py and tests/test_hostile_inputs.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_lib.evaluation import class_reports, evaluate_systems, preset_summary, scored_rows
from workflow_lib.fusion import apply_learned_fusion, fit_learned_fusion, fused_posteriors, submission
from workflow_lib.io import write_csv
from workflow_lib.labels import multi_hot
from workflow_lib.task import MULTI

CLASSES = ["a", "b", "c", "d"]

# fname: (label set, usage, posteriors of a, b, c, d)
CLIPS = {
    "p1": ("a,b", "Public", [0.9, 0.6, 0.2, 0.1]),  # predicts {a, b}: 2 hits
    "p2": ("c", "Public", [0.7, 0.1, 0.4, 0.2]),  # predicts {a}: 1 false, c missed (rank 2)
    "q1": ("b,d", "Private", [0.1, 0.8, 0.3, 0.55]),  # predicts {b, d}: 2 hits
    "q2": ("a", "Private", [0.3, 0.2, 0.1, 0.05]),  # predicts nothing: a missed (rank 1)
    "i1": ("a", "Ignored", [0.0, 1.0, 1.0, 1.0]),  # never scored
    "u1": ("", "Public", [0.0, 1.0, 1.0, 1.0]),  # no label: never scored
    "x1": ("a,zzz", "Public", [0.0, 1.0, 1.0, 1.0]),  # a label outside the classes: not scored
}
# lwlrap by hand: precision at each true label (p1: a 1/1, b 2/2; p2: c 1/2; q1: b 1/1,
# d 2/2; q2: a 1/1) averaged over the 6 true labels
LWLRAP = (1 + 1 + 0.5 + 1 + 1 + 1) / 6


@pytest.fixture
def listing() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "fname": list(CLIPS),
            "label": [v[0] for v in CLIPS.values()],
            "usage": [v[1] for v in CLIPS.values()],
        }
    )


def posteriors(values: dict[str, list[float]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_dict(values, orient="index", columns=CLASSES)
    return frame.rename_axis("fname").reset_index()


@pytest.fixture
def system() -> pd.DataFrame:
    return posteriors({fname: v[2] for fname, v in CLIPS.items()})


# --- scores ----------------------------------------------------------------------------------


def test_scored_rows_keep_known_non_empty_sets_of_scored_usages(listing):
    assert scored_rows(listing, CLASSES, task=MULTI)["fname"].tolist() == ["p1", "p2", "q1", "q2"]
    # the single-label reading of the same cells keeps only one-label cells
    assert scored_rows(listing, CLASSES)["fname"].tolist() == ["p2", "q2"]


def test_evaluate_systems_gives_lwlrap_and_micro_scores_at_one_half(listing, system):
    scores = evaluate_systems(listing, {"s": system}, CLASSES, task=MULTI)
    assert list(scores.columns) == ["system", "set", "n", "lwlrap", "precision", "recall", "f1"]
    table = scores.set_index("set")
    assert table["n"].to_dict() == {"Public": 2, "Private": 2, "Public+Private": 4}
    both = table.loc["Public+Private"]
    assert both["lwlrap"] == pytest.approx(LWLRAP)
    # 4 true labels predicted, 1 false (p2: a), 2 missed (p2: c, q2: a)
    assert both["precision"] == pytest.approx(4 / 5) and both["recall"] == pytest.approx(4 / 6)
    assert both["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert table.loc["Public", ["precision", "recall"]].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert table.loc["Private", ["precision", "recall"]].tolist() == pytest.approx([1.0, 2 / 3])
    assert table.loc["Public", "lwlrap"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert table.loc["Private", "lwlrap"] == pytest.approx(1.0)


def test_lwlrap_agrees_with_scikit_learn_weighted_by_labels_per_clip(listing):
    from sklearn.metrics import label_ranking_average_precision_score

    rng = np.random.default_rng(3)
    frame = posteriors({f: list(rng.random(len(CLASSES))) for f in CLIPS})
    got = evaluate_systems(listing, {"r": frame}, CLASSES, task=MULTI)
    rows = scored_rows(listing, CLASSES, task=MULTI)
    truth = multi_hot(rows["label"], CLASSES)
    probs = frame.set_index("fname").loc[rows["fname"], CLASSES].to_numpy()
    expected = label_ranking_average_precision_score(truth, probs, sample_weight=truth.sum(axis=1))
    assert got.set_index("set").loc["Public+Private", "lwlrap"] == pytest.approx(expected)


def test_per_class_table_has_lwlrap_and_weights_that_give_the_overall(listing, system):
    table, confusion = class_reports(listing, system, CLASSES, task=MULTI)
    assert confusion is None
    table = table.set_index("label")
    assert table["support"].tolist() == [2, 2, 1, 1]
    assert table["precision"].tolist() == pytest.approx([0.5, 1.0, 0.0, 1.0])
    assert table["recall"].tolist() == pytest.approx([0.5, 1.0, 0.0, 1.0])
    assert table["lwlrap"].tolist() == pytest.approx([1.0, 1.0, 0.5, 1.0])
    assert table["lwlrap_weight"].tolist() == pytest.approx([2 / 6, 2 / 6, 1 / 6, 1 / 6])
    assert (table["lwlrap"] * table["lwlrap_weight"]).sum() == pytest.approx(LWLRAP)


# --- fusion and submission -------------------------------------------------------------------


def sigmoid_stack(seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(stack of 2 models' sigmoid posteriors, multi-hot truth): model 0 is informative (its
    log-odds follow the truth), model 1 is noise."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, len(CLASSES))) < 0.35).astype(np.float32)
    good = 1 / (1 + np.exp(-(3.0 * (2 * truth - 1) + rng.normal(0, 1, truth.shape))))
    noise = rng.random(truth.shape)
    return np.stack([good, noise]), truth


def bce(probs: np.ndarray, truth: np.ndarray) -> float:
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-(truth * np.log(probs) + (1 - truth) * np.log(1 - probs)).mean())


def test_learned_fusion_with_bce_upweights_the_informative_model_and_lowers_the_loss():
    stack, truth = sigmoid_stack()
    weights, bias = fit_learned_fusion(stack, truth, steps=200, lr=0.05, task=MULTI)
    assert weights.shape == (2,) and bias.shape == (len(CLASSES),)
    assert weights[0] > 2 * abs(weights[1])
    fused = apply_learned_fusion(stack, weights, bias, task=MULTI)
    assert ((fused > 0) & (fused < 1)).all()
    assert not np.allclose(fused.sum(axis=1), 1.0)  # per-class sigmoids, not a softmax
    start = apply_learned_fusion(stack, np.full(2, 0.5), np.zeros(len(CLASSES)), task=MULTI)
    assert bce(fused, truth) < bce(start, truth)
    again = fit_learned_fusion(stack, truth, steps=200, lr=0.05, task=MULTI)
    np.testing.assert_array_equal(weights, again[0])
    np.testing.assert_array_equal(bias, again[1])


def test_multi_label_fusion_refuses_targets_of_the_wrong_shape():
    stack, truth = sigmoid_stack()
    with pytest.raises(ValueError, match="multi-hot"):
        fit_learned_fusion(stack, truth.argmax(axis=1), steps=1, lr=0.1, task=MULTI)


def test_torch_fusion_matches_the_multi_label_fusion():
    stack, _ = sigmoid_stack(seed=1)
    weights, bias = np.array([0.8, 0.3]), np.array([0.1, -0.2, 0.0, 0.4])
    as_torch = torch.as_tensor(stack)
    learned = fused_posteriors(as_torch, torch.as_tensor(weights), torch.as_tensor(bias), task=MULTI)
    np.testing.assert_allclose(learned.numpy(), apply_learned_fusion(stack, weights, bias, MULTI), atol=1e-12)
    mean = fused_posteriors(as_torch, torch.full((2,), 0.5, dtype=torch.float64), task=MULTI)
    np.testing.assert_allclose(mean.numpy(), stack.mean(axis=0), atol=1e-12)


def test_submission_in_the_2019_format_round_trips(tmp_path):
    probs = np.array([[0.9, 0.1, 0.7, 0.0], [0.2, 0.3, 0.4, 0.5]])
    frame = submission(["x.wav", "y.wav"], probs, CLASSES, task=MULTI)
    assert list(frame.columns) == ["fname", *CLASSES]
    write_csv(frame, tmp_path / "s.csv")
    back = pd.read_csv(tmp_path / "s.csv")
    assert back["fname"].tolist() == ["x.wav", "y.wav"]
    np.testing.assert_allclose(back[CLASSES].to_numpy(), probs)


def _classes(path: Path) -> Path:
    write_csv(pd.DataFrame({"index": range(len(CLASSES)), "label": CLASSES}), path)
    return path


def _fuse(tmp_path: Path, method: str) -> tuple[np.ndarray, np.ndarray]:
    from workflow_lib.stages import fuse_job

    stack, truth = sigmoid_stack(n=12)
    fnames = [f"c{i}.wav" for i in range(12)]
    tests, valids = {}, {}
    for m, preset in enumerate(("p0", "p1")):
        frame = posteriors(dict(zip(fnames, stack[m].tolist())))
        tests[preset] = tmp_path / f"{preset}_test.csv"
        write_csv(frame.iloc[:10], tests[preset])  # c10, c11 could not be predicted
        valids[preset] = tmp_path / f"{preset}_valid.csv"
        from workflow_lib.labels import label_sets

        write_csv(frame.assign(label=label_sets(truth, CLASSES), fold=0), valids[preset])
    manifest = pd.DataFrame(
        {"fname": fnames, "status": ["clipped"] * 10 + ["skipped_undecodable"] * 2, "detail": ""}
    )
    write_csv(manifest, tmp_path / "manifest.csv")
    from workflow_lib.fusion import FusionSettings

    fuse_job(
        tests,
        valids,
        _classes(tmp_path / "classes.csv"),
        tmp_path / "fused.csv",
        tmp_path / "weights.csv",
        tmp_path / "submission.csv",
        tmp_path / "manifest.csv",
        tmp_path / "status.csv",
        settings=FusionSettings(method, 50, 0.05, MULTI),
    )
    return stack, truth


def test_fuse_job_mean_writes_the_2019_submission_with_empty_rows_for_unpredicted(tmp_path):
    stack, _ = _fuse(tmp_path, "mean")
    fused = pd.read_csv(tmp_path / "fused.csv")
    np.testing.assert_allclose(fused[CLASSES].to_numpy(), stack[:, :10].mean(axis=0), atol=1e-9)
    answers = pd.read_csv(tmp_path / "submission.csv")
    assert list(answers.columns) == ["fname", *CLASSES] and len(answers) == 12
    np.testing.assert_allclose(answers[CLASSES].to_numpy()[:10], fused[CLASSES].to_numpy())
    assert answers[CLASSES].iloc[10:].isna().all().all()
    assert pd.read_csv(tmp_path / "weights.csv")["value"].tolist() == [0.5, 0.5]


def test_fuse_job_learned_fits_on_the_validation_label_sets(tmp_path):
    stack, truth = _fuse(tmp_path, "learned")
    weights = pd.read_csv(tmp_path / "weights.csv").set_index("parameter")["value"]
    assert list(weights.index) == ["weight:p0", "weight:p1", *(f"bias:{c}" for c in CLASSES)]
    assert weights["weight:p0"] > weights["weight:p1"]
    expected = apply_learned_fusion(stack[:, :10], weights.to_numpy()[:2], weights.to_numpy()[2:], MULTI)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "fused.csv")[CLASSES].to_numpy(), expected, atol=1e-9)


# --- the jobs ----------------------------------------------------------------------------------


def _evaluate(tmp_path: Path, listing: pd.DataFrame, system: pd.DataFrame) -> pd.DataFrame:
    from workflow_lib.stages import evaluate_job

    write_csv(listing.assign(path=""), tmp_path / "test.csv")
    # q2 not predicted (skipped in preprocessing): no system has a row for it (a system that
    # lacks rows the others have is a damaged file: tests/test_corrupt_intermediates.py)
    write_csv(system.drop(index=3), tmp_path / "s.csv")
    write_csv(system.drop(index=3), tmp_path / "fusion.csv")
    return evaluate_job(
        tmp_path / "test.csv",
        _classes(tmp_path / "classes.csv"),
        {"s": tmp_path / "s.csv", "fusion": tmp_path / "fusion.csv"},
        tmp_path / "eval",
        task=MULTI,
    )


def test_evaluate_job_writes_lwlrap_per_class_and_no_confusion(tmp_path, listing, system):
    scores = _evaluate(tmp_path, listing, system).set_index(["system", "set"])
    assert not (tmp_path / "eval" / "confusion.csv").exists()
    # q2 (Private) has no prediction: out of every system's scores, counted per set
    assert scores.loc[("s", "Private"), "n"] == 1 and scores.loc[("s", "Private"), "n_unpredicted"] == 1
    assert scores.loc[("s", "Public+Private"), "lwlrap"] == pytest.approx(4.5 / 5)
    written = pd.read_csv(tmp_path / "eval" / "summary.csv")
    assert list(written.columns) == [
        "system", "set", "n", "lwlrap", "precision", "recall", "f1", "n_unpredicted", "note"
    ]  # fmt: skip
    per_class = pd.read_csv(tmp_path / "eval" / "per_class.csv")
    assert list(per_class.columns) == [
        "system", "label", "precision", "recall", "f1", "support", "lwlrap", "lwlrap_weight"
    ]  # fmt: skip
    assert per_class["system"].tolist() == ["s"] * 4 + ["fusion"] * 4


def test_predict_only_multi_label_evaluation_says_no_test_labels(tmp_path, listing, system):
    from workflow_lib.plots import per_class_plot
    from workflow_lib.stages import evaluate_job

    write_csv(listing.assign(label="", path=""), tmp_path / "test.csv")
    write_csv(system, tmp_path / "s.csv")
    scores = evaluate_job(
        tmp_path / "test.csv",
        _classes(tmp_path / "c.csv"),
        {"fusion": tmp_path / "s.csv"},
        tmp_path / "e",
        task=MULTI,
    )
    assert set(scores["note"]) == {"no test labels"} and set(scores["n"]) == {0}
    assert scores["lwlrap"].isna().all()
    per_class = pd.read_csv(tmp_path / "e" / "per_class.csv")
    assert per_class.empty and "lwlrap" in per_class
    per_class_plot(per_class, "fusion", tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size


def selection(tmp_path: Path, chosen: int) -> Path:
    frame = pd.DataFrame(
        {
            "iteration": [0, 1],
            "mean_valid_loss": [0.3, 0.2],
            "mean_valid_acc": [0.7, 0.75],
            "mean_valid_map3": [0.8, 0.85],
            "mean_valid_lwlrap": [0.6, 0.65],
            "near_tie": [False, False],
            "chosen": [chosen == 0, chosen == 1],
        }
    )
    write_csv(frame, tmp_path / "selection.csv")
    return tmp_path / "selection.csv"


def trust_table(tmp_path: Path) -> Path:
    """A trust per_class.csv as self-verification writes it: one row per class and __all__."""
    folder = tmp_path / "s" / "it0"
    rows = [
        {"label": "a", "n_unverified": 10, "n_accepted": 4, "n_accepted_correct": 3, "precision": 0.75},
        {"label": "__all__", "n_unverified": 30, "n_accepted": 12, "n_accepted_correct": 9, "precision": 0.75,
         "recall": 0.6, "unverified_precision": 0.5},
    ]  # fmt: skip
    write_csv(pd.DataFrame(rows), folder / "per_class.csv")
    return folder


def test_summary_job_has_test_lwlrap_and_cv_lwlrap(tmp_path, listing, system):
    from workflow_lib.stages import summary_job

    _evaluate(tmp_path, listing, system)
    table = summary_job(
        ["s"], [selection(tmp_path, 1)], [trust_table(tmp_path)], tmp_path / "eval" / "summary.csv",
        tmp_path / "summary.csv", task=MULTI,
    ).set_index("preset")  # fmt: skip
    assert "test_accuracy" not in table and "test_map3" not in table
    assert table.loc["s", "test_lwlrap"] == pytest.approx(4.5 / 5)
    assert table.loc["fusion", "test_lwlrap"] == pytest.approx(4.5 / 5)  # q2 left out of both
    assert table.loc["s", ["it0_cv_lwlrap", "chosen_cv_lwlrap"]].tolist() == [0.6, 0.65]
    assert table.loc["s", "self_verified_clips"] == 12 and table.loc["s", "chosen_iteration"] == 1
    single = preset_summary("s", pd.read_csv(tmp_path / "selection.csv"), {}, None)
    assert "it0_cv_lwlrap" not in single  # single-label rows are unchanged


def test_systems_table_has_test_lwlrap_and_cv_lwlrap(tmp_path, listing, system):
    from workflow_lib.systems import systems_job

    write_csv(listing.assign(path=""), tmp_path / "test.csv")
    write_csv(system, tmp_path / "s.csv")
    spec = [
        {
            "system": "self_verification",
            "preset": "p",
            "policy": "paper",
            "description": "x",
            "selection": str(selection(tmp_path, 1)),
            "test": str(tmp_path / "s.csv"),
            "self_verify": {"0": str(trust_table(tmp_path) / "per_class.csv")},
        }
    ]
    table = systems_job(
        spec, tmp_path / "test.csv", _classes(tmp_path / "classes.csv"), tmp_path / "systems.csv",
        tmp_path / "iterations.csv", tmp_path / "systems.png", task=MULTI,
    )  # fmt: skip
    row = table.iloc[0]
    assert row["n_test"] == 4 and row["test_lwlrap"] == pytest.approx(LWLRAP)
    assert "test_accuracy" not in table and row["cv_lwlrap"] == 0.65
    assert row["trusted_clips"] == 12 and row["trusted_precision"] == 0.75
    iterations = pd.read_csv(tmp_path / "iterations.csv")
    columns = list(iterations.columns)
    assert columns[columns.index("cv_loss") + 1] == "cv_lwlrap"
    assert iterations["cv_lwlrap"].tolist() == [0.6, 0.65]
    assert (tmp_path / "systems.png").stat().st_size


def test_systems_table_marks_the_picked_chain(tmp_path, listing, system):
    """``picked``: the first chain by default (chain_choice: first), else the chain given
    (chain_choice: cv, from results/chosen/choice.csv)."""
    from workflow_lib.systems import systems_tables

    write_csv(listing.assign(path=""), tmp_path / "test.csv")
    write_csv(system, tmp_path / "s.csv")
    item = {
        "preset": "p",
        "policy": "paper",
        "selection": str(selection(tmp_path, 1)),
        "test": str(tmp_path / "s.csv"),
    }
    spec = [{**item, "system": "self_verification"}, {**item, "system": "agreement"}]
    classes = _classes(tmp_path / "classes.csv")
    first, _ = systems_tables(spec, tmp_path / "test.csv", classes, task=MULTI)
    assert first["picked"].tolist() == [True, False]
    by_cv, _ = systems_tables(spec, tmp_path / "test.csv", classes, task=MULTI, picked="agreement")
    assert by_cv["picked"].tolist() == [False, True]


def test_plot_evaluation_without_a_confusion_matrix(tmp_path, listing, system):
    from workflow_lib.cli import main

    _evaluate(tmp_path, listing, system)
    per_class = str(tmp_path / "eval" / "per_class.csv")
    assert (
        main(["plot-evaluation", "--per-class", per_class, "--out-per-class", str(tmp_path / "p.png")]) == 0
    )
    assert (tmp_path / "p.png").stat().st_size
    lone = ["--confusion", per_class, "--per-class", per_class, "--out-per-class", str(tmp_path / "q.png")]
    assert main(["plot-evaluation", *lone]) == 1  # --confusion without --out-confusion


def test_training_curves_add_a_lwlrap_panel_for_multi_label_histories(tmp_path, monkeypatch):
    import workflow_lib.plots as plots

    shown = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, out: shown.append(figure))
    base = {"epoch": [1, 2], "lr": 1e-3, "train_loss": 1.0, "train_acc": 0.5, "valid_loss": [0.5, 0.4]}
    base.update(valid_acc=[0.6, 0.7], valid_map3=[0.7, 0.8], seconds=1.0)
    write_csv(pd.DataFrame(base), tmp_path / "single.csv")
    write_csv(pd.DataFrame({**base, "valid_lwlrap": [0.55, 0.65]}), tmp_path / "multi.csv")
    plots.training_curves({0: [tmp_path / "single.csv"]}, "p", tmp_path / "s.png")
    plots.training_curves({0: [tmp_path / "multi.csv"], 1: [tmp_path / "multi.csv"]}, "p", tmp_path / "m.png")
    single, multi = shown
    assert len(single.axes) == 2 and len(multi.axes) == 3
    assert multi.axes[2].get_ylabel() == "validation lwlrap"
    assert multi.axes[2].lines[0].get_ydata().tolist() == [0.55, 0.65]

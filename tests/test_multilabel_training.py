"""Multi-label training (issue 15, dataset layout fsdkaggle2019): BCE on multi-hot targets,
mixup of label sets, the history's ``valid_lwlrap``, lwlrap model selection, the model flag,
sigmoid posteriors at prediction, and the warm-up start (``start: noisy``).

Inputs are tiny and synthetic (a band-pattern spectrogram store, a folds.csv with label sets
written here), independent of the multi-label dataset reader. Single-label behaviour is pinned
by the existing tests (test_training.py, test_resume.py, test_selection_fusion.py) and by the
fingerprint and settings checks below.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_lib.config import resolve_settings
from workflow_lib.data import ClipBank
from workflow_lib.errors import UserError
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.job_settings import fit_settings
from workflow_lib.labels import multi_hot
from workflow_lib.metrics import lwlrap, map_at_3
from workflow_lib.model import build_model, load_model
from workflow_lib.preprocess import MANIFEST_COLUMNS, merge_manifests, write_shard
from workflow_lib.selection import best_epoch_row, selection_table
from workflow_lib.stages import (
    TrainingJob,
    fingerprint,
    initial_list_job,
    load_fold_models,
    predict_job,
    run_training_job,
    training_sets,
)
from workflow_lib.task import MULTI, SINGLE, Task
from workflow_lib.training import (
    HISTORY_COLUMNS,
    DeviceSampler,
    FitSettings,
    binary_cross_entropy,
    evaluate,
    first_true_rank_score,
    fit,
    mixup,
    predict_whole,
    top1_in_target,
)

from conftest import REPO

CLASSES = ["Bark", "Cowbell", "Drill"]
ML_COLUMNS = list(MULTI.history_columns)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- loss, mixup, metrics


def test_bce_is_the_mean_binary_cross_entropy_and_weights_of_one_change_nothing():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    targets = torch.tensor(np.random.default_rng(0).integers(0, 2, (6, 4)), dtype=torch.float32)
    plain = binary_cross_entropy(logits, targets)
    by_hand = -(
        targets * torch.log(torch.sigmoid(logits)) + (1 - targets) * torch.log(1 - torch.sigmoid(logits))
    )
    assert plain == pytest.approx(float(by_hand.mean()), rel=1e-5)
    assert binary_cross_entropy(logits, targets, torch.ones(6)) == pytest.approx(float(plain), rel=1e-6)
    weights = torch.tensor([0.0, 1.0, 0.5, 2.0, 1.0, 0.0])
    expected = (by_hand.mean(dim=1) * weights).sum() / 6
    assert binary_cross_entropy(logits, targets, weights) == pytest.approx(float(expected), rel=1e-5)


def test_mixup_mixes_multi_hot_targets_with_the_reversed_batch():
    inputs = torch.randn(5, 1, 4, 3)
    targets = torch.from_numpy(
        multi_hot(["Bark", "Bark,Drill", "Cowbell", "Cowbell,Drill", "Drill"], CLASSES)
    )
    _, mixed = mixup(inputs, targets, 0.4, DeviceSampler(7, "cpu"))
    lam = DeviceSampler(7, "cpu").beta(0.4, 5)[:, None]
    assert torch.allclose(mixed, lam * targets + (1 - lam) * targets.flip(0), atol=1e-6)
    # a label both clips carry keeps weight 1; every label of either clip is > 0
    assert mixed[1, 2] == pytest.approx(float(lam[1] + (1 - lam[1])), abs=1e-6)  # Drill in clip 1 and 3
    assert ((mixed > 0) == ((targets + targets.flip(0)) > 0)).all()


def test_top1_in_target_and_first_true_rank_reduce_to_the_single_label_metrics():
    rng = np.random.default_rng(3)
    scores = rng.random((40, 5))
    labels = rng.integers(0, 5, 40)
    one_hot = np.eye(5, dtype=np.float32)[labels]
    assert first_true_rank_score(scores, one_hot) == pytest.approx(map_at_3(scores, labels))
    in_target = top1_in_target(torch.from_numpy(scores), torch.from_numpy(one_hot))
    assert in_target.numpy().tolist() == (scores.argmax(1) == labels).tolist()
    # sets: a hit on any true label counts, the first one gives the rank
    sets = np.array([[1, 0, 1, 0, 0]], dtype=np.float32)
    assert first_true_rank_score(np.array([[0.1, 0.9, 0.5, 0.0, 0.2]]), sets) == pytest.approx(0.5)
    assert top1_in_target(torch.tensor([[0.1, 0.2, 0.9, 0.0, 0.0]]), torch.from_numpy(sets)).item()


# ---------------------------------------------------------------- fit on label sets


def band_clip(labels: list[int], rng: np.random.Generator) -> np.ndarray:
    """Class c present: energy in bins [10 + 40c, 30 + 40c) over noise; random length."""
    clip = rng.normal(0, 0.3, (128, int(rng.integers(20, 90)))).astype(np.float32)
    for c in labels:
        clip[10 + 40 * c : 30 + 40 * c] += 2.0
    return clip


SETS = [[0], [1], [2], [0, 1], [1, 2], [0, 2]]


def set_bank(per_set: int, frames: int, rng: np.random.Generator) -> tuple[ClipBank, np.ndarray]:
    parts, targets = [], []
    for labels in SETS:
        for _ in range(per_set):
            parts.append(band_clip(labels, rng))
            targets.append(np.isin(np.arange(3), labels).astype(np.float32))
    lengths = np.array([p.shape[1] for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    frames_major = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1).T))
    return ClipBank(frames_major, torch.from_numpy(offsets), torch.from_numpy(lengths), frames), np.array(
        targets
    )


def test_fit_learns_label_sets_and_keeps_the_highest_lwlrap_epoch(tmp_path):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train_bank, train_targets = set_bank(4, 256, rng)
    valid_bank, valid_targets = set_bank(2, 256, rng)
    model = build_model(6, 3, dropout=(0.0, 0.0))
    settings = FitSettings(
        epochs=6, lr=3e-3, constant_epochs=3, batch_size=8, excerpt_frames=192, mixup_alpha=0.2, seed=0
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
        "fp",
        on_epoch=seen.append,
        task=MULTI,
    )
    history = pd.DataFrame(state.history, columns=ML_COLUMNS)
    assert list(seen[-1].columns) == ML_COLUMNS == [*HISTORY_COLUMNS, "valid_lwlrap"]
    best = best_epoch_row(history)
    assert best["valid_lwlrap"] == history["valid_lwlrap"].max()
    assert best["valid_lwlrap"] >= 0.9, history.to_string()
    assert history["valid_lwlrap"].iloc[0] < best["valid_lwlrap"] or best["epoch"] == 1
    assert (
        ((history[["train_acc", "valid_acc"]] >= 0) & (history[["train_acc", "valid_acc"]] <= 1)).all().all()
    )

    rebuilt = build_model(6, 3, dropout=(0.0, 0.0))
    rebuilt.load_state_dict(state.best_state)
    scores = evaluate(rebuilt, valid_bank, valid_targets, batch_size=5, amp=False, task=MULTI)
    assert scores["valid_lwlrap"] == pytest.approx(best["valid_lwlrap"], rel=1e-6)
    assert scores["valid_loss"] == pytest.approx(best["valid_loss"], rel=1e-5)
    assert state.best_loss == pytest.approx(best["valid_loss"], rel=1e-6)
    probs = predict_whole(rebuilt, valid_bank, 5, amp=False, task=MULTI)
    assert lwlrap(valid_targets, probs) == pytest.approx(scores["valid_lwlrap"])
    assert not np.allclose(probs.sum(axis=1), 1.0)  # sigmoids, not a softmax


# ---------------------------------------------------------------- jobs on a tiny store


def clip_sets(n: int) -> list[list[int]]:
    return [SETS[i % len(SETS)] for i in range(n)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Path]:
    """A train and a test spectrogram store, folds.csv with label sets, classes.csv."""
    root = tmp_path_factory.mktemp("multilabel_store")
    rng = np.random.default_rng(19)
    paths = {}
    folds = []
    for split, n in (("train", 48), ("test", 6)):
        rows, parts, offset = [], [], 0
        for i, labels in enumerate(clip_sets(n)):
            clip = band_clip(labels, rng)[None]
            parts.append(clip)
            cell = ",".join(CLASSES[c] for c in labels)
            verified = str(int(i % 4 != 3))  # a quarter noisy
            rows.append(
                {
                    "fname": f"{split}_{i:02d}.wav",
                    "label": cell,
                    "verified": verified,
                    "n_frames": clip.shape[-1],
                    "seconds_before_clipping": 1.0,
                    "seconds_after_clipping": 1.0,
                    "status": "clipped",
                    "shard": 0,
                    "offset": offset,
                    "detail": "",
                }
            )
            offset += clip.shape[-1]
            if split == "train":
                folds.append(
                    {"fname": rows[-1]["fname"], "label": cell, "verified": verified, "fold": (i // 6) % 2}
                )
        folder = root / split
        write_shard(
            {1: np.concatenate(parts, axis=-1)},
            {1: pd.DataFrame(rows, columns=MANIFEST_COLUMNS)},
            {1: folder / "shard0.npy"},
            {1: folder / "shard0.csv"},
        )
        merge_manifests([folder / "shard0.csv"], root / f"{split}.csv")
        paths[split] = root / f"{split}.csv"
    write_csv(pd.DataFrame(folds), root / "folds.csv")
    write_csv(pd.DataFrame({"index": range(3), "label": CLASSES}), root / "classes.csv")
    return {**paths, "folds": root / "folds.csv", "classes": root / "classes.csv", "root": root}


def job_for(store: dict[str, Path], out_dir: Path, task: Task = MULTI, **changes) -> TrainingJob:
    job = TrainingJob(
        manifest_csv=store["train"],
        folds_csv=store["folds"],
        classes_csv=store["classes"],
        fold=0,
        out_dir=out_dir,
        preset="tiny",
        net={"width": 4, "dropout": [0.0, 0.0], "spectrogram": "v1"},
        fit=FitSettings(
            epochs=2, lr=3e-3, constant_epochs=1, batch_size=8, excerpt_frames=192, mixup_alpha=0.2, seed=1
        ),
        frames=256,
        device="cpu",
        lock_dir=out_dir / "locks",
        task=task,
    )
    return replace(job, **changes)


def test_training_sets_keep_label_sets_and_a_lists_trusted_subsets(store, tmp_path):
    listing = read_csv_str(store["folds"])[["fname", "label"]].assign(manually_verified="1")
    listing.loc[listing["fname"] == "train_09.wav", "label"] = "Bark"  # trusted subset of Bark,Cowbell
    listing.loc[listing["fname"] == "train_10.wav", "manually_verified"] = "0"
    write_csv(listing, tmp_path / "train_list.csv")
    job = job_for(store, tmp_path, train_list_csv=tmp_path / "train_list.csv")
    train, valid = training_sets(job, CLASSES)
    assert "train_10.wav" not in set(train["fname"]) and "train_11.wav" in set(train["fname"])
    assert train.set_index("fname").loc["train_09.wav", "label"] == "Bark"
    assert set(valid["verified"]) == {"1"} and set(valid["fname"]).isdisjoint(train["fname"])
    assert "Bark,Drill" in set(valid["label"])  # sets, not indices

    listing.loc[listing["fname"] == "train_09.wav", "label"] = "Bark,Unicorn"
    write_csv(listing, tmp_path / "train_list.csv")
    with pytest.raises(UserError, match="train_09.wav.*Unicorn"):
        training_sets(job, CLASSES)


def single_label_fingerprint(job: TrainingJob, train: pd.DataFrame, valid: pd.DataFrame) -> str:
    """The fingerprint as it was before multi-label mode (what single-label runs must keep)."""
    payload = {
        # FitSettings as it was then: without the optional fields added later, off here
        "fit": {
            k: v
            for k, v in asdict(job.fit).items()
            if k not in ("augment", "consistency", "soft_relabel", "mixup_partners")
        },
        "net": job.net,
        "frames": job.frames,
        "train": list(zip(train["fname"], train["target"].astype(int).tolist())),
        "valid": list(zip(valid["fname"], valid["target"].astype(int).tolist())),
        "init": "",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def test_fingerprint_single_label_unchanged_multi_label_follows_the_sets(store, tmp_path):
    folds = read_csv_str(store["folds"])
    single = folds.assign(label=folds["label"].str.split(",").str[0])
    write_csv(single, tmp_path / "single.csv")
    job = job_for(store, tmp_path, task=SINGLE, folds_csv=tmp_path / "single.csv")
    sets = training_sets(job, CLASSES)
    assert fingerprint(job, *sets) == single_label_fingerprint(job, *sets)

    multi = job_for(store, tmp_path)
    train, valid = training_sets(multi, CLASSES)
    base = fingerprint(multi, train, valid)
    changed = train.assign(label=train["label"].where(train.index != 0, "Drill"))
    assert fingerprint(multi, changed, valid) != base
    assert base != fingerprint(replace(multi, task=SINGLE), train.assign(target=0), valid.assign(target=0))


def test_fit_settings_name_the_task_only_for_label_sets():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    single = fit_settings(resolve_settings(config), "vgg_gap_spec1_1", 0)
    assert "task" not in single  # the recorded settings of single-label jobs stay as they were
    config["dataset"]["layout"] = "fsdkaggle2019"
    multi = fit_settings(resolve_settings(config), "vgg_gap_spec1_1", 0)
    assert multi.pop("task") == "multi-label" and multi == single


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> dict[int, Path]:
    """Fold models of one iteration, trained by run_training_job in multi-label mode."""
    out = tmp_path_factory.mktemp("multilabel_models")
    models = {}
    for fold in (0, 1):
        job = job_for(store, out / f"fold{fold}", fold=fold)
        history = run_training_job(job)
        assert list(history.columns) == ML_COLUMNS
        assert list(pd.read_csv(job.out_dir / "history.csv").columns) == ML_COLUMNS
        models[fold] = job.out_dir / "best.pt"
    return models


def test_saved_models_are_flagged_and_kept_at_the_best_lwlrap(trained):
    for path in trained.values():
        _, saved = load_model(path)
        history = pd.read_csv(path.parent / "history.csv")
        assert saved["multi_label"] is True
        assert saved["epoch"] == int(best_epoch_row(history)["epoch"])
        assert saved["valid_lwlrap"] == pytest.approx(history["valid_lwlrap"].max())
    models, task = load_fold_models(trained, "cpu")
    assert task is MULTI and sorted(models) == [0, 1]


def test_predict_writes_sigmoid_posteriors_of_the_chosen_iteration(store, trained, tmp_path):
    selection = selection_table({(0, k): p.parent / "history.csv" for k, p in trained.items()})
    assert "mean_valid_lwlrap" in selection and selection["chosen"].tolist() == [True]
    write_csv(selection, tmp_path / "selection.csv")
    iteration = predict_job(
        tmp_path / "selection.csv",
        {(0, k): p for k, p in trained.items()},
        store["train"],
        store["test"],
        store["folds"],
        store["classes"],
        tmp_path / "test.csv",
        tmp_path / "valid.csv",
        frames=256,
        batch_size=4,
        device="cpu",
        lock_dir=tmp_path / "locks",
    )
    assert iteration == 0
    test = pd.read_csv(tmp_path / "test.csv")
    assert list(test.columns) == ["fname", *CLASSES] and len(test) == 6
    models, _ = load_fold_models(trained, "cpu")
    manifest = read_csv_str(store["test"])
    from workflow_lib.preprocess import SpectrogramStore

    bank = ClipBank.from_store(SpectrogramStore.open(store["test"]), list(manifest["fname"]), 256, "cpu")
    with torch.no_grad():
        expected = np.mean(
            [torch.sigmoid(m(bank.whole(torch.arange(6)))).numpy() for m in models.values()], 0
        )
    assert np.allclose(test[CLASSES].to_numpy(), expected, atol=1e-5)
    valid = pd.read_csv(tmp_path / "valid.csv", dtype={"label": str})
    assert list(valid.columns[:3]) == ["fname", "label", "fold"]
    assert valid["label"].str.contains(",").any()  # the sets, as given


def test_train_and_select_commands_run_multi_label_from_the_rules_settings(store, tmp_path):
    """The settings JSON of job_settings.fit_settings (task: multi-label) reaches the training job."""
    from workflow_lib.cli import main

    job = job_for(store, tmp_path)
    settings = {
        "preset": job.preset,
        "net": job.net,
        "fit": {**asdict(job.fit), "epochs": 1},
        "frames": job.frames,
        "device": "cpu",
        "run": {"checkpoint_every": None, "compile": False},
        "task": "multi-label",
    }
    out = tmp_path / "fold0"
    common = [
        "--manifest",
        str(store["train"]),
        "--folds",
        str(store["folds"]),
        "--classes",
        str(store["classes"]),
    ]
    code = main(
        ["train", *common, "--fold", "0", "--out-dir", str(out), "--lock-dir", str(tmp_path / "locks"),
         "--settings", json.dumps(settings)]
    )  # fmt: skip
    assert code == 0
    assert list(pd.read_csv(out / "history.csv").columns) == ML_COLUMNS
    assert load_model(out / "best.pt")[1]["multi_label"] is True
    code = main(
        ["select", "--histories", f"0:0={out / 'history.csv'}", "--out", str(tmp_path / "selection.csv")]
    )
    assert code == 0 and "mean_valid_lwlrap" in pd.read_csv(tmp_path / "selection.csv")


# ---------------------------------------------------------------- selection by lwlrap


def ml_history(path: Path, lwlraps: list[float], losses: list[float] | None = None) -> Path:
    n = len(lwlraps)
    losses = losses or [0.5] * n
    frame = pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "lr": 1e-3,
            "train_loss": 0.3,
            "train_acc": 0.5,
            "valid_loss": losses,
            "valid_acc": 0.5,
            "valid_map3": 0.6,
            "seconds": 1.0,
            "valid_lwlrap": lwlraps,
        }
    )
    write_csv(frame, path)
    return path


def test_selection_by_highest_mean_lwlrap_earliest_on_ties(tmp_path):
    histories = {  # binary fractions: the means tie exactly
        (0, 0): ml_history(tmp_path / "a", [0.5, 0.625, 0.5625], losses=[0.1, 0.9, 0.2]),
        (0, 1): ml_history(tmp_path / "b", [0.75, 0.625]),
        (1, 0): ml_history(tmp_path / "c", [0.875, 0.875]),
        (1, 1): ml_history(tmp_path / "d", [0.5]),
        (2, 0): ml_history(tmp_path / "e", [0.625]),
        (2, 1): ml_history(tmp_path / "f", [0.75]),
    }
    table = selection_table(histories)
    assert table["fold0_best_epoch"].tolist() == [2, 1, 1]  # highest lwlrap, not lowest loss; first on ties
    assert table["mean_valid_lwlrap"].tolist() == [0.6875] * 3
    assert table["chosen"].tolist() == [True, False, False]  # a three-way tie: the earliest
    histories[(2, 1)] = ml_history(tmp_path / "g", [0.8125])
    assert selection_table(histories)["chosen"].tolist() == [False, False, True]
    # within the tolerance: the higher accuracy wins (all equal here): the earliest
    assert selection_table(histories, tolerance=0.05)["chosen"].tolist() == [True, False, False]


def test_selection_refuses_mixed_single_and_multi_label_histories(tmp_path):
    single = tmp_path / "single.csv"
    ml_history(single, [0.5]).read_text()
    pd.read_csv(single).drop(columns="valid_lwlrap").to_csv(single, index=False)
    with pytest.raises(UserError, match="mix"):
        selection_table({(0, 0): single, (0, 1): ml_history(tmp_path / "m", [0.5])})


# ---------------------------------------------------------------- warm-up start


def test_noisy_start_trains_iteration_zero_on_the_unverified_clips(store, tmp_path):
    table = initial_list_job(store["folds"], tmp_path / "list.csv", "noisy")
    folds = read_csv_str(store["folds"])
    assert (table["manually_verified"] == 1 - folds["verified"].astype(int)).all()
    assert read_csv_str(tmp_path / "list.csv")["label"].tolist() == folds["label"].tolist()
    job = job_for(store, tmp_path, train_list_csv=tmp_path / "list.csv")
    train, valid = training_sets(job, CLASSES)
    assert set(train["verified"]) == {"0"} and set(valid["verified"]) == {"1"}
    curated_only = folds.assign(verified="1")
    write_csv(curated_only, tmp_path / "curated.csv")
    with pytest.raises(UserError, match="no"):
        initial_list_job(tmp_path / "curated.csv", tmp_path / "x.csv", "noisy")


# ---------------------------------------------------------------- tagger and export


def multi_label_tagger() -> tuple:
    from workflow_lib.export import FusedTagger
    from workflow_lib.tagger import TaggerSpec

    torch.manual_seed(5)
    members = [[build_model(2, 3, (0.0, 0.0)) for _ in range(2)]]
    tagger = FusedTagger(members, [0], np.array([1.0]), None, MULTI).eval()
    spec = TaggerSpec(
        classes=CLASSES,
        sample_rate=32000,
        sox_effects=["norm", "-0.1"],  # a bundle's chain is never empty (the config's neither)
        frames=200,
        versions=[1],
        fusion="mean",
        presets=[{"name": "p0", "spectrogram": 1, "width": 2, "iteration": 0, "folds": 2, "weight": 1.0}],
        task=MULTI,
    )
    return spec, tagger


def test_fused_multi_label_tagger_averages_sigmoids_and_its_bundle_says_so(tmp_path):
    from workflow_lib.export import example_inputs, write_bundle
    from workflow_lib.tagger import TaggerSpec

    spec, tagger = multi_label_tagger()
    (x,) = example_inputs(spec, batch=3)
    with torch.no_grad():
        expected = np.mean([torch.sigmoid(m(x)).numpy() for m in tagger.members[0]], axis=0)
        got = tagger(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    write_bundle(tagger, spec, tmp_path, "# multi-label test tagger\n")  # checks TorchScript and ONNX
    assert json.loads((tmp_path / "preprocessing.json").read_text())["multi_label"] is True
    assert TaggerSpec.from_bundle(tmp_path) == spec
    single = replace(spec, task=SINGLE)
    assert "multi_label" not in single.settings_json()  # single-label bundles as before


def test_multi_label_learned_fusion_in_the_tagger_is_the_runs_and_exports(tmp_path):
    """Learned fusion of sigmoid posteriors (log-odds, fusion.apply_learned_fusion) in the
    fused tagger, and its TorchScript / ONNX files within write_bundle's tolerance."""
    from workflow_lib.export import FusedTagger, example_inputs, write_bundle
    from workflow_lib.fusion import apply_learned_fusion

    spec, _ = multi_label_tagger()
    torch.manual_seed(6)
    members = [[build_model(2, 3, (0.0, 0.0))], [build_model(2, 3, (0.0, 0.0))]]
    weights, bias = np.array([0.8, 0.4]), np.array([0.1, -0.3, 0.2])
    tagger = FusedTagger(members, [0, 0], weights, bias, MULTI).eval()
    spec = replace(spec, fusion="learned")
    (x,) = example_inputs(spec, batch=3)
    with torch.no_grad():
        stack = np.stack([torch.sigmoid(m[0](x)).numpy() for m in members])
        got = tagger(x).numpy()
    np.testing.assert_allclose(got, apply_learned_fusion(stack, weights, bias, MULTI), atol=1e-5)
    assert write_bundle(tagger, spec, tmp_path, "# learned\n") <= 1e-4


def test_multi_label_rows_list_every_class_at_or_above_the_threshold():
    from workflow_lib.tagger import Item, Prepared, result_frame, tagged_set

    probs = np.array([[0.2, 0.9, 0.5], [0.1, 0.3, 0.4], [np.nan] * 3])
    assert tagged_set(probs[0], CLASSES, 0.5) == ("Cowbell,Drill", "0.9000,0.5000")
    assert tagged_set(probs[1], CLASSES, 0.5) == ("", "")
    items = [Prepared(Item(Path(f"{n}.wav")), "ok", "", "") for n in "ab"]
    items.append(Prepared(Item(Path("c.wav")), "missing", "missing", "no such file"))
    frame = result_frame(items, probs, CLASSES, 1, False, False, threshold=0.3)
    assert frame["labels"].tolist() == ["Cowbell,Drill", "Drill,Cowbell", ""]
    assert frame["scores"].tolist() == ["0.9000,0.5000", "0.4000,0.3000", ""]
    assert frame["label_1"].tolist() == ["Cowbell", "Drill", ""]
    assert "labels" not in result_frame(items, probs, CLASSES, 1, False, False).columns


def test_threshold_option_is_for_multi_label_taggers_only():
    from workflow_lib.tagger import (
        DEFAULT_THRESHOLD,
        TaggingError,
        TagOptions,
        check_options,
        label_threshold,
    )

    spec, _ = multi_label_tagger()
    options = TagOptions(inputs=[Path("x.wav")], out=Path("o.csv"), bundle=Path("b"))
    assert label_threshold(options, spec) == DEFAULT_THRESHOLD == 0.5
    assert label_threshold(replace(options, threshold=0.8), spec) == 0.8
    assert label_threshold(options, replace(spec, task=SINGLE)) is None
    with pytest.raises(TaggingError, match="--threshold applies to multi-label"):
        label_threshold(replace(options, threshold=0.8), replace(spec, task=SINGLE))
    with pytest.raises(TaggingError, match="--threshold must lie"):
        check_options(replace(options, threshold=1.5))


def test_export_refuses_models_of_the_other_mode():
    from workflow_lib.export import _checked_task
    from workflow_lib.job_settings import tagger_settings
    from workflow_lib.tagger import TaggingError

    assert _checked_task({MULTI.name}, {"task": MULTI.name}, Path("results")) is MULTI
    assert _checked_task({SINGLE.name}, {}, Path("results")) is SINGLE
    with pytest.raises(TaggingError, match="are multi-label, the settings say single-label"):
        _checked_task({MULTI.name}, {}, Path("results"))
    with pytest.raises(TaggingError, match="a mix"):
        _checked_task({MULTI.name, SINGLE.name}, {"task": MULTI.name}, Path("results"))
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert "task" not in tagger_settings(resolve_settings(config))
    config["dataset"]["layout"] = "fsdkaggle2019"
    assert tagger_settings(resolve_settings(config))["task"] == MULTI.name


def test_sv_tag_prints_the_label_set_of_a_multi_label_bundle(tmp_path, sox_binary):
    from workflow_lib.export import write_bundle

    from conftest import run_cli, tone, write_wav

    spec, tagger = multi_label_tagger()
    write_bundle(tagger, spec, tmp_path / "bundle", "# multi-label test tagger\n")
    clip = write_wav(tmp_path / "clip.wav", tone(2.0, 16000, 440.0), 16000)
    out = tmp_path / "tags.csv"
    done = run_cli(
        "tag", str(clip), "--bundle", str(tmp_path / "bundle"), "--threshold", "0.01",
        "--all-classes", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    probs = np.array([row[c] for c in CLASSES], dtype=float)
    assert row["labels"] == ",".join(np.asarray(CLASSES)[np.argsort(-probs, kind="stable")])  # all >= 0.01
    assert [float(v) for v in row["scores"].split(",")] == pytest.approx(
        sorted(probs, reverse=True), abs=1e-4
    )


def _warm_up(store, tmp_path: Path) -> tuple[dict, dict]:
    """Iteration 0 of a ``start: noisy`` chain on folds 0 and 1: (checkpoints, histories)."""
    initial_list_job(store["folds"], tmp_path / "it0_list.csv", "noisy")
    it0, histories = {}, {}
    for fold in (0, 1):
        job = job_for(
            store, tmp_path / f"it0/fold{fold}", fold=fold, train_list_csv=tmp_path / "it0_list.csv"
        )
        run_training_job(job)
        it0[fold] = job.out_dir / "best.pt"
        histories[(0, fold)] = job.out_dir / "history.csv"
    return it0, histories


def _judge_per_label(store, tmp_path: Path, it0: dict) -> pd.DataFrame:
    """Per-label self-verification (paper policy, threshold 0.3, cap 2) by the warm-up models."""
    from workflow_lib.policies import PolicySettings
    from workflow_lib.self_verify import TrustSettings
    from workflow_lib.stages import TrustJob, self_verify_job
    from workflow_lib.task import MULTI

    folds = read_csv_str(store["folds"])
    write_csv(folds[["fname", "label", "verified"]], tmp_path / "train.csv")
    settings = TrustSettings(
        task=MULTI,
        excerpts=2,
        excerpt_frames=192,
        seed=0,
        amp=False,
        policy=PolicySettings.of("paper", threshold=0.3, max_per_class=2),
        frames=256,
        device="cpu",
    )
    job = TrustJob(
        model_paths=it0,
        manifest_csv=store["train"],
        folds_csv=store["folds"],
        classes_csv=store["classes"],
        train_csv=tmp_path / "train.csv",
        out_dir=tmp_path / "trust",
        settings=settings,
        lock_dir=tmp_path / "locks",
    )
    return self_verify_job(job)


def _fine_tune_on_curated_and_trusted(store, tmp_path: Path, it0: dict, trusted, histories: dict) -> dict:
    """Fine-tuning of folds 0 and 1 from the warm-up parameters; checks that each trains on the
    curated clips and the trusted label subsets of its training part only. Returns checkpoints."""
    folds = read_csv_str(store["folds"])
    it1 = {}
    for fold in (0, 1):
        job = job_for(
            store,
            tmp_path / f"it1/fold{fold}",
            fold=fold,
            train_list_csv=tmp_path / "trust" / "train_list.csv",
            init_checkpoint=it0[fold],
            fit=replace(job_for(store, tmp_path).fit, mixup_alpha=None),
        )
        train, _ = training_sets(job, CLASSES)
        in_fold = set(folds.loc[folds["fold"] != str(fold), "fname"])
        expected = set(folds.loc[folds["verified"] == "1", "fname"]) | set(trusted["fname"])
        assert set(train["fname"]) == expected & in_fold  # curated + trusted, warm-up clips dropped
        subsets = train.set_index("fname")["label"].reindex(trusted["fname"]).dropna()
        assert (subsets == trusted.set_index("fname")["label"].reindex(subsets.index)).all()
        run_training_job(job)
        it1[fold] = job.out_dir / "best.pt"
        histories[(1, fold)] = job.out_dir / "history.csv"
    return it1


def test_warm_up_chain_trains_noisy_then_fine_tunes_on_curated_and_trusted_labels(store, tmp_path):
    """start: noisy -> per-label self-verification (paper policy) -> fine-tuning from the
    warm-up parameters on the curated clips and the trusted label subsets -> lwlrap selection
    and sigmoid prediction: the multi-label chain through the job functions."""
    it0, histories = _warm_up(store, tmp_path)
    decisions = _judge_per_label(store, tmp_path, it0)
    folds = read_csv_str(store["folds"])
    noisy = folds[folds["verified"] == "0"]
    assert len(decisions) == noisy["label"].str.split(",").str.len().sum()  # one row per (clip, label)
    listing = read_csv_str(tmp_path / "trust" / "train_list.csv")
    trusted = listing[(listing["manually_verified"] == "1") & listing["fname"].isin(noisy["fname"])]
    given = noisy.set_index("fname")["label"].str.split(",")
    assert 0 < int(decisions["accepted"].astype(int).sum()) <= 2 * len(CLASSES)  # the cap per class
    assert all(set(cell.split(",")) <= set(given[f]) for f, cell in zip(trusted["fname"], trusted["label"]))
    it1 = _fine_tune_on_curated_and_trusted(store, tmp_path, it0, trusted, histories)
    selection = selection_table(histories)
    write_csv(selection, tmp_path / "selection.csv")
    models = {(0, k): p for k, p in it0.items()} | {(1, k): p for k, p in it1.items()}
    iteration = predict_job(
        tmp_path / "selection.csv",
        models,
        store["train"],
        store["test"],
        store["folds"],
        store["classes"],
        tmp_path / "test.csv",
        tmp_path / "valid.csv",
        frames=256,
        batch_size=4,
        device="cpu",
        lock_dir=tmp_path / "locks",
    )
    assert iteration == int(selection["iteration"][selection["mean_valid_lwlrap"].idxmax()])
    probs = pd.read_csv(tmp_path / "test.csv")[CLASSES].to_numpy()
    assert ((probs > 0) & (probs < 1)).all() and not np.allclose(probs.sum(axis=1), 1.0)

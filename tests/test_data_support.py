"""Data that cannot support a figure of the results (issue 24, item 8), on tiny hand-made lists.

No verified clip at all, a class without a verified clip, a label only among the noisy clips
(multi-label): validation logs a warning and writes a ``warning`` row to problems.csv, and
results/summary.csv says in ``cv_note`` which CV figures are missing and why.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_lib import cli
from workflow_lib.io import read_csv_str, write_csv
from workflow_lib.selection import NO_VALIDATION, selection_table
from workflow_lib.stages import summary_job

from conftest import REPO

DATASET = yaml.safe_load((REPO / "config.yaml").read_text())["dataset"]
FOLDS = 2


def _listing(root: Path, csv: str, folder: str, header: str, rows: list[str]) -> None:
    """A CSV and its (empty) audio files: validation checks that files exist, not their sound."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / csv).write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        (root / folder / row.split(",")[0]).write_bytes(b"")


def validate(root: Path, dataset: dict, caplog) -> pd.DataFrame:
    """Run the validate command as the workflow does; return its problems (train_problems.csv,
    which problems.csv joins with the test split's; the log in caplog)."""
    out = root / "out"
    argv = ["validate", "--root", str(root), "--folds", str(FOLDS), "--out-dir", str(out)]
    with caplog.at_level(logging.INFO):
        assert cli.main([*argv, "--settings", json.dumps(dataset)]) == 0
    return read_csv_str(out / "train_problems.csv")


def single_label(root: Path, verified: dict[str, int]) -> Path:
    """Three clips per class; ``verified[label]`` of them flagged manually_verified=1."""
    rows = [f"{label}{i}.wav,{label},{int(i < n)}" for label, n in verified.items() for i in range(3)]
    _listing(root, "train.csv", "audio_train", "fname,label,manually_verified", rows)
    _listing(root, "test_post_competition.csv", "audio_test", "fname,label,usage", ["t0.wav,dog,Public"])
    return root


def warnings_of(problems: pd.DataFrame) -> list[str]:
    return list(problems.loc[problems["outcome"] == "warning", "problem"])


def test_no_verified_clips_is_a_warning(tmp_path: Path, caplog) -> None:
    problems = validate(single_label(tmp_path, {"cat": 0, "dog": 0}), DATASET, caplog)
    [warning] = warnings_of(problems)
    assert "no manually verified clips" in warning and "CV scores are empty" in warning
    assert warning in caplog.text


def test_class_without_verified_clips_is_a_warning(tmp_path: Path, caplog) -> None:
    problems = validate(single_label(tmp_path, {"cat": 2, "dog": 0, "owl": 1}), DATASET, caplog)
    [warning] = warnings_of(problems)
    assert "class 'dog'" in warning and "only on unverified clips" in warning
    assert warning in caplog.text


def test_label_only_among_noisy_clips_is_a_warning_and_the_log_counts_classes(tmp_path: Path, caplog) -> None:
    """Three classes in six distinct label sets: the log says 3 classes; Owl is noisy-only."""
    curated = ['c0.wav,"Bark,Dog"', "c1.wav,Bark", "c2.wav,Dog", 'c3.wav,"Dog,Bark"', "c4.wav,Bark"]
    noisy = ['n0.wav,"Owl,Bark"', "n1.wav,Owl", 'n2.wav,"Owl,Dog"', 'n3.wav,"Bark,Dog,Owl"']
    _listing(tmp_path, "train_curated.csv", "train_curated", "fname,labels", curated)
    _listing(tmp_path, "train_noisy.csv", "train_noisy", "fname,labels", noisy)
    _listing(tmp_path, "test_post_competition.csv", "audio_test", "fname,labels,usage", ["t.wav,Dog,Public"])
    problems = validate(tmp_path, {**DATASET, "layout": "fsdkaggle2019"}, caplog)
    [warning] = warnings_of(problems)
    assert "class 'Owl'" in warning and "only among the noisy clips" in warning
    assert warning in caplog.text
    assert "9 training clips, 3 classes, 1 problems" in caplog.text


def _history(path: Path, losses: list[float]) -> Path:
    frame = pd.DataFrame(
        {
            "epoch": range(1, len(losses) + 1),
            "valid_loss": losses,
            "valid_acc": [np.nan if np.isnan(x) else 0.5 for x in losses],
            "valid_map3": [np.nan if np.isnan(x) else 0.6 for x in losses],
        }
    )
    write_csv(frame, path)
    return path


def test_summary_says_why_cv_figures_are_missing(tmp_path: Path) -> None:
    """No validation score anywhere: the last iteration is chosen and cv_note says why; a class
    without verified clips is named in cv_note when there are scores."""
    nan = float("nan")
    unvalidated = {
        (i, k): _history(tmp_path / f"u{i}{k}.csv", [nan, nan]) for i in range(3) for k in range(2)
    }
    table = selection_table(unvalidated)
    assert table["chosen"].tolist() == [False, False, True]  # defined: the last iteration
    write_csv(table, tmp_path / "sel_none.csv")
    scored = {(i, k): _history(tmp_path / f"s{i}{k}.csv", [1.0 - i / 10]) for i in range(2) for k in range(2)}
    write_csv(selection_table(scored), tmp_path / "sel_ok.csv")
    classes = tmp_path / "classes.csv"
    write_csv(pd.DataFrame({"index": [0, 1], "label": ["cat", "dog"], "n_verified": [2, 0]}), classes)
    summary = summary_job(
        ["none", "ok"],
        [tmp_path / "sel_none.csv", tmp_path / "sel_ok.csv"],
        [],
        None,
        tmp_path / "summary.csv",
        classes_csv=classes,
    )
    notes = dict(zip(summary["preset"], summary["cv_note"]))
    assert notes["none"] == NO_VALIDATION
    assert notes["ok"] == "1 class(es) without verified clips are not in the CV scores: dog"
    assert pd.isna(summary.set_index("preset").loc["none", "chosen_cv_accuracy"])


@pytest.mark.parametrize("losses", [[float("nan")], [0.9]])
def test_select_command_warns_only_without_validation_scores(tmp_path: Path, caplog, losses) -> None:
    history = _history(tmp_path / "h.csv", losses)
    with caplog.at_level(logging.INFO):
        assert cli.main(["select", "--histories", f"0:0={history}", "--out", str(tmp_path / "s.csv")]) == 0
    assert (NO_VALIDATION in caplog.text) == bool(np.isnan(losses[0]))


def test_model_card_prints_a_note_column_with_blanks(tmp_path: Path) -> None:
    """summary.csv's cv_note is blank for most rows: the export's model card still renders it."""
    from workflow_lib.export import _markdown_table

    table = pd.DataFrame({"preset": ["p", "fusion"], "test_accuracy": [0.5, 0.6], "cv_note": ["", "why"]})
    write_csv(table, tmp_path / "summary.csv")
    card = _markdown_table(pd.read_csv(tmp_path / "summary.csv"))
    assert "| p | 0.5000 |  |" in card and "| fusion | 0.6000 | why |" in card

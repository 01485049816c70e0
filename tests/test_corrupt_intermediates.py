"""Damaged intermediates and incomplete predictions (issue 24, item 5), on tiny hand-made files.

A truncated spectrogram shard or ``best.pt`` is an error naming the file and the fix (delete it,
or ``--forcerun`` the rule that writes it); a truncated ``resume.pt`` is set aside and the job
starts afresh; a parameter file whose unpickling would run code (from a copied results tree) is
refused the same way, the code unrun; a predictions CSV that lacks rows is an error, never a
smaller test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_lib.errors import UserError
from workflow_lib.fusion import FusionSettings
from workflow_lib.io import write_csv, write_npy
from workflow_lib.model import build_model, load_model
from workflow_lib.preprocess import MANIFEST_COLUMNS, SpectrogramStore
from workflow_lib.stages import evaluate_job, fuse_job
from workflow_lib.training import load_checkpoint

CLASSES = ["a", "b"]


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a share of its bytes, as a killed copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_shard_names_the_file_and_the_fix(tmp_path: Path) -> None:
    manifest = tmp_path / "test.csv"
    row = dict.fromkeys(MANIFEST_COLUMNS, "")
    row.update(fname="x.wav", label="a", verified="1", n_frames="20", status="clipped", shard="0", offset="0")
    write_csv(pd.DataFrame([row], columns=MANIFEST_COLUMNS), manifest)
    shard = tmp_path / "test" / "shard0.npy"
    write_npy(np.zeros((20, 128), np.float32), shard)
    truncate(shard)
    with pytest.raises(UserError) as caught:
        SpectrogramStore.open(manifest)
    message = str(caught.value)
    assert str(shard) in message and "Delete it" in message and "--forcerun preprocess_shard" in message


@pytest.mark.parametrize(("folder", "rule"), [("fold0", "train_initial"), ("fold0/it2", "fine_tune")])
def test_truncated_best_pt_names_the_file_and_the_rule(tmp_path: Path, folder: str, rule: str) -> None:
    path = tmp_path / folder / "best.pt"
    path.parent.mkdir(parents=True)
    model = build_model(4, len(CLASSES), (0.0, 0.0))
    torch.save({"state_dict": model.state_dict(), "width": 4, "classes": CLASSES, "dropout": (0, 0)}, path)
    assert load_model(path)[1]["classes"] == CLASSES  # the intact file loads
    truncate(path)
    with pytest.raises(UserError) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and f"--forcerun {rule}" in str(caught.value)


def test_truncated_resume_pt_is_set_aside_and_training_starts_afresh(tmp_path: Path, caplog) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    checkpoint = tmp_path / "resume.pt"
    torch.save({"format": 0, "model": model.state_dict()}, checkpoint)
    truncate(checkpoint, 0.3)
    assert load_checkpoint(checkpoint, "fingerprint", model, optimizer) is None  # start afresh
    assert not checkpoint.exists()
    aside = list(tmp_path.glob("resume.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0  # kept for inspection
    assert "set aside" in caplog.text and aside[0].name in caplog.text


class _RunsCodeWhenUnpickled:
    """What a hostile parameter file holds: an object whose unpickling calls a function (here
    one that creates a file, so that the test can see whether it ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_file_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "the_code_ran"
    path = tmp_path / "fold0" / "best.pt"
    path.parent.mkdir()
    model = build_model(4, len(CLASSES), (0.0, 0.0))
    payload = _RunsCodeWhenUnpickled(marker)
    torch.save({"state_dict": model.state_dict(), "width": 4, "classes": CLASSES, "payload": payload}, path)
    with pytest.raises(UserError) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "--forcerun train_initial" in str(caught.value)
    assert not marker.exists()


def test_a_checkpoint_that_would_run_code_is_set_aside_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "the_code_ran"
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    checkpoint = tmp_path / "resume.pt"
    payload = _RunsCodeWhenUnpickled(marker)
    torch.save({"format": 0, "model": model.state_dict(), "payload": payload}, checkpoint)
    assert load_checkpoint(checkpoint, "fingerprint", model, optimizer) is None
    assert not marker.exists() and len(list(tmp_path.glob("resume.pt.corrupt-*"))) == 1


def _posteriors(fnames: list[str], path: Path) -> Path:
    probs = np.tile([0.8, 0.2], (len(fnames), 1))
    write_csv(pd.DataFrame({"fname": fnames, "a": probs[:, 0], "b": probs[:, 1]}), path)
    return path


def _fuse(tmp_path: Path, test_csvs: dict[str, Path]) -> None:
    classes = tmp_path / "classes.csv"
    write_csv(pd.DataFrame({"index": [0, 1], "label": CLASSES}), classes)
    manifest = tmp_path / "manifest.csv"
    rows = [
        dict.fromkeys(MANIFEST_COLUMNS, "") | {"fname": f"t{i}.wav", "status": "clipped"} for i in range(4)
    ]
    write_csv(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), manifest)
    fuse_job(
        test_csvs, {}, classes, tmp_path / "fused.csv", tmp_path / "weights.csv",
        tmp_path / "submission.csv", manifest, tmp_path / "status.csv",
        settings=FusionSettings("mean", 0, 0.0),
    )  # fmt: skip


def test_fusion_refuses_predictions_missing_rows(tmp_path: Path) -> None:
    full = _posteriors([f"t{i}.wav" for i in range(4)], tmp_path / "p1.csv")
    short = _posteriors(["t0.wav", "t1.wav"], tmp_path / "p2.csv")
    _fuse(tmp_path, {"p1": full, "p2": full})  # complete predictions fuse
    for order in ({"p2": short, "p1": full}, {"p1": full, "p2": short}):
        with pytest.raises(UserError) as caught:
            _fuse(tmp_path, order)
        assert str(short) in str(caught.value) and "t2.wav" in str(caught.value)


def test_evaluation_refuses_a_system_missing_rows(tmp_path: Path) -> None:
    names = [f"t{i}.wav" for i in range(4)]
    test = tmp_path / "test.csv"
    write_csv(pd.DataFrame({"fname": names, "label": ["a", "b", "b", "b"], "usage": "Public"}), test)
    classes = tmp_path / "classes.csv"
    write_csv(pd.DataFrame({"index": [0, 1], "label": CLASSES}), classes)
    full = _posteriors(names, tmp_path / "p1.csv")
    short = _posteriors(names[:1], tmp_path / "fused.csv")
    with pytest.raises(UserError) as caught:
        evaluate_job(test, classes, {"p1": full, "fusion": short}, tmp_path)
    assert str(short) in str(caught.value) and "3 of 4" in str(caught.value)

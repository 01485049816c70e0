"""Hostile inputs and faults (issue 13): one test per row of the issue's table, on tiny data.

Each test fails on the code before the fix: a crash after hours of training, a silent loss
of test clips, a config value reaching a shell unquoted, a user setting silently overridden.
The outcomes are documented in workflow_lib/dataset.py's table and README "When things go
wrong".
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from workflow_lib import io as wio
from workflow_lib.audio import (
    SKIPPED_NONFINITE,
    SoxEffectsError,
    check_sox_effects,
    load_clipped,
)
from workflow_lib.config import (
    ConfigError,
    check_dataset_root,
    check_run_identity,
    preset_shadowed,
    resolve_settings,
    run_identity,
    user_settings,
)
from workflow_lib.dataset import (
    RESERVED_LABELS,
    TOTAL_ROW,
    DatasetError,
    validate_dataset,
)
from workflow_lib.io import DiskFullError, write_csv

from conftest import REPO, tone, write_wav

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
DATASET = CONFIG["dataset"]
FOLDS = 2


def write_listing(
    root: Path,
    labels: list[str],
    test_rows: list[str] | None = None,
    header: str = "fname,label,manually_verified",
) -> Path:
    """train.csv (3 clips per label) with empty audio files: validation reads no audio."""
    (root / "audio_train").mkdir(parents=True, exist_ok=True)
    (root / "audio_test").mkdir(parents=True, exist_ok=True)
    rows = [f"c{i}_{k}.wav,{label},{int(k == 0)}" for i, label in enumerate(labels) for k in range(3)]
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        (root / "audio_train" / row.split(",")[0]).write_bytes(b"")
    if test_rows is not None:
        (root / "test_post_competition.csv").write_text("\n".join(["fname,label,usage", *test_rows]) + "\n")
        for row in test_rows:
            (root / "audio_test" / row.split(",")[0]).write_bytes(b"")
    return root


def refusal(root: Path, dataset: dict = DATASET) -> str:
    with pytest.raises(DatasetError) as raised:
        validate_dataset(root, dataset, FOLDS)
    return str(raised.value)


# --------------------------------------------------------------------------- dataset rows


@pytest.mark.parametrize("name", ["fname", "label", "fold", TOTAL_ROW])
def test_reserved_class_name_is_refused_at_validation(tmp_path, name):
    """Row 'a class named fname, label or fold': refused naming file, line and value (before
    it was accepted and `predict` died after every training job)."""
    message = refusal(write_listing(tmp_path, ["dog", name]))
    assert str(tmp_path / "train.csv") in message and "line 5" in message
    assert f"label {name!r} is a reserved name" in message


def test_label_with_spaces_is_refused_and_all_is_an_ordinary_class(tmp_path):
    """Row 'labels with spaces, a class named ALL': a label with a space could not be split
    back from the space-separated submission, so it is refused; 'ALL' is an ordinary class
    now that the totals row is called __all__ (reserved)."""
    message = refusal(write_listing(tmp_path, ["dog", "digit zero"]))
    assert "'digit zero' contains whitespace" in message and "line 5" in message
    train, _, _ = validate_dataset(write_listing(tmp_path / "ok", ["dog", "ALL"]), DATASET, FOLDS)
    assert sorted(train["label"].unique()) == ["ALL", "dog"]
    assert TOTAL_ROW in RESERVED_LABELS and TOTAL_ROW != "ALL"


def test_per_class_table_keeps_class_all_apart_from_the_totals_row():
    from workflow_lib.self_verify import precision_table

    decisions = pd.DataFrame(
        {"fname": ["a", "b", "c"], "given_label": ["ALL", "ALL", "dog"], "accepted": [True, False, True]}
    )
    table = precision_table(decisions, ["ALL", "dog"]).set_index("label")
    assert list(table.index) == ["ALL", "dog", TOTAL_ROW]
    assert table.loc["ALL", "n_unverified"] == 2 and table.loc[TOTAL_ROW, "n_unverified"] == 3


def test_header_only_train_csv_is_one_clear_error(tmp_path):
    """Row 'train.csv with only its header': one line naming the file (was KeyError)."""
    write_listing(tmp_path, [])
    message = refusal(tmp_path)
    assert f"{tmp_path / 'train.csv'}, line 2: the CSV has a header but no rows" in message


def test_unlisted_decodable_test_audio_is_refused(tmp_path):
    """Row 'a .flac in audio_test/ without a CSV listing': with a test CSV, decodable audio it
    does not list is an error naming the file; without a CSV it is predicted."""
    root = write_listing(tmp_path, ["dog", "cat"], ["t0.wav,dog,Public"])
    sf.write(str(root / "audio_test" / "extra.flac"), tone(0.2, 8000), 8000, format="FLAC")
    (root / "audio_test" / "README.txt").write_text("not audio")  # not decodable: no error
    message = refusal(root)
    assert "extra.flac is decodable audio but not listed in test_post_competition.csv" in message
    assert "README.txt" not in message
    (root / "test_post_competition.csv").unlink()
    _, test, problems = validate_dataset(root, DATASET, FOLDS)
    assert list(test["fname"]) == ["extra.flac", "t0.wav"]  # t0.wav: undecodable, kept
    ignored = problems.frame().set_index("fname")
    assert ignored.loc["README.txt", "outcome"] == "ignored"


def test_symlink_leaving_the_dataset_is_skipped_unless_allowed(tmp_path):
    """Row 'symlinks in audio_train/ pointing outside the dataset': skipped and listed by
    default; dataset.follow_external_symlinks: true reads them. Links inside stay usable."""
    root = write_listing(tmp_path / "data", ["dog", "cat"], ["t0.wav,dog,Public"])
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"")
    (root / "audio_train" / "c0_1.wav").unlink()
    (root / "audio_train" / "c0_1.wav").symlink_to(outside)
    (root / "audio_train" / "c0_2.wav").unlink()
    (root / "audio_train" / "c0_2.wav").symlink_to(root / "audio_train" / "c0_0.wav")
    (root / "audio_test" / "t0.wav").unlink()
    (root / "audio_test" / "t0.wav").symlink_to("/etc/passwd")
    train, test, problems = validate_dataset(root, DATASET, FOLDS)
    assert "c0_1.wav" not in set(train["fname"]) and "c0_2.wav" in set(train["fname"])
    assert test.set_index("fname").loc["t0.wav", "path"] == ""  # kept, answered empty
    frame = problems.frame().set_index("fname")
    assert frame.loc["c0_1.wav", "outcome"] == "skipped"
    assert "leads outside the dataset root" in frame.loc["c0_1.wav", "problem"]
    assert "/etc/passwd" in frame.loc["t0.wav", "problem"]
    train, test, _ = validate_dataset(root, {**DATASET, "follow_external_symlinks": True}, FOLDS)
    assert "c0_1.wav" in set(train["fname"]) and test["path"].iloc[0] != ""
    assert resolve_settings({**CONFIG, "dataset": {**DATASET, "follow_external_symlinks": True}})


# --------------------------------------------------------------------------- audio rows


def test_float_wav_with_nan_samples_is_skipped(tmp_path, sox_binary):
    """Row 'float WAV with NaN samples': a listed skip status instead of -1.0 spikes or an
    all-NaN file trained as a constant clip with status `clipped`."""
    samples = tone(0.5, 16000)
    samples[100:110] = np.nan
    samples[200] = np.inf
    some = write_wav(tmp_path / "some.wav", samples, 16000, subtype="FLOAT")
    every = write_wav(tmp_path / "all.wav", np.full(8000, np.nan), 16000, subtype="FLOAT")
    for path, count in ((some, 11), (every, 8000)):
        clip = load_clipped(path, 16000)
        assert clip.status == SKIPPED_NONFINITE and not clip.usable and clip.samples is None
        assert clip.detail.startswith(f"{count} of ")
    assert load_clipped(write_wav(tmp_path / "fine.wav", tone(0.5, 16000), 16000, "FLOAT"), 16000).usable


def test_sox_effects_typo_fails_at_start_with_soxs_message(tmp_path, sox_binary):
    """Row '`preprocessing.sox_effects` with a typo': the preprocessing job stops before any
    file with SoX's own message (was: every clip silently fell back to unclipped audio)."""
    from workflow_lib.preprocess import gather_shard, shard_clips

    typo = ("norm", "-0.1", "silense", "1", "0.025", "0.15%")
    with pytest.raises(SoxEffectsError) as raised:
        check_sox_effects(typo)
    assert "preprocessing.sox_effects" in str(raised.value) and "silense" in str(raised.value)
    listing = pd.DataFrame(
        {
            "fname": ["a.wav"],
            "label": ["x"],
            "verified": ["1"],
            "path": [str(write_wav(tmp_path / "a.wav", tone(0.5, 16000), 16000))],
        }
    )
    with pytest.raises(SoxEffectsError):
        gather_shard(shard_clips(listing, 0, 1, [1], 32000, typo), [1])
    check_sox_effects(tuple(CONFIG["preprocessing"]["sox_effects"]))  # the real chain passes


# --------------------------------------------------------------------------- disk full


def test_disk_full_in_a_csv_write_names_the_path(tmp_path, monkeypatch):
    """Row 'disk full': a clear message naming the file (OSError ENOSPC from the write)."""

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    target = tmp_path / "results" / "x.csv"
    with pytest.raises(DiskFullError) as raised:
        write_csv(pd.DataFrame({"a": [1]}), target)
    assert "No space left on device while writing" in str(raised.value)
    assert str(target) in str(raised.value)
    assert not list(target.parent.iterdir())  # no temporary file left behind


def test_disk_full_while_a_shard_streams_names_the_path(tmp_path, monkeypatch):
    """The disk fills half-way through a streamed shard array (the second block's write
    fails): the message names the file and no partial array or temporary file is left."""
    import io as std_io

    class FillingFile(std_io.FileIO):
        def write(self, data):
            if self.tell() > wio.NPY_HEADER_BYTES:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(wio, "open", lambda path, mode: FillingFile(path, mode), raising=False)
    target = tmp_path / "spectrograms" / "shard0.npy"
    with pytest.raises(DiskFullError) as raised, wio.npy_row_writer(target, 128) as append:
        append(np.ones((10, 128), np.float32))
        append(np.ones((10, 128), np.float32))
    assert str(target) in str(raised.value)
    assert not list(target.parent.iterdir())


def test_disk_full_in_torch_save_is_named(tmp_path, monkeypatch):
    """torch.save reports a full disk as 'RuntimeError: [enforce fail at inline_container.cc]
    . unexpected pos': with no free space left it becomes the same clear message, and the
    command-line entry point prints one line (no traceback)."""
    import torch

    from workflow_lib.training import (  # the per-epoch resume.pt
        TrainState,
        save_checkpoint,
    )

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(wio.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    model = torch.nn.Linear(2, 2)
    state = TrainState(1, [], float("inf"), None, {}, torch.zeros(1), None, "x")
    target = tmp_path / "resume.pt"
    with pytest.raises(DiskFullError) as raised:
        save_checkpoint(target, model, torch.optim.SGD(model.parameters(), lr=0.1), state)
    assert "No space left on device while writing" in str(raised.value) and str(target) in str(raised.value)


def test_unrelated_runtime_error_is_not_called_disk_full(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), wio.atomic_path(tmp_path / "y.bin"):
        raise RuntimeError("boom")


# --------------------------------------------------------------------------- outputs rows


def _posteriors(path: Path, fnames: list[str], classes: list[str]) -> Path:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), size=len(fnames))
    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "fname", fnames)
    write_csv(frame, path)
    return path


def _classes(path: Path, classes: list[str]) -> Path:
    write_csv(pd.DataFrame({"index": range(len(classes)), "label": classes}), path)
    return path


def test_every_test_clip_is_in_the_submission(tmp_path):
    """Row 'test clips that cannot be decoded': every listed clip gets a submission row (empty
    when not predicted), its status is in submission_status.csv and the summary counts it."""
    from workflow_lib.fusion import FusionSettings
    from workflow_lib.stages import fuse_job, summary_job

    classes = ["cat", "dog"]
    manifest = pd.DataFrame(
        {
            "fname": ["a.wav", "b.wav", "c.wav", "d.wav"],
            "status": ["clipped", "skipped_undecodable", "fallback_silent", "skipped_empty"],
            "detail": ["", "cannot decode: x", "", "no samples"],
        }
    )
    write_csv(manifest, tmp_path / "manifest.csv")
    test = _posteriors(tmp_path / "p.csv", ["a.wav", "c.wav"], classes)
    fuse_job(
        {"p": test},
        {"p": test},
        _classes(tmp_path / "classes.csv", classes),
        tmp_path / "fused.csv",
        tmp_path / "w.csv",
        tmp_path / "submission.csv",
        tmp_path / "manifest.csv",
        tmp_path / "status.csv",
        settings=FusionSettings("mean", 1, 0.1),
    )
    submission = pd.read_csv(tmp_path / "submission.csv", dtype=str, keep_default_na=False)
    assert list(submission["fname"]) == ["a.wav", "b.wav", "c.wav", "d.wav"]
    assert [bool(x) for x in submission["label"]] == [True, False, True, False]
    status = pd.read_csv(tmp_path / "status.csv", dtype=str, keep_default_na=False)
    assert list(status["status"]) == ["predicted", "skipped_undecodable", "predicted", "skipped_empty"]
    selection = pd.DataFrame(
        {"iteration": [0], "chosen": [True], "mean_valid_acc": [0.5], "mean_valid_map3": [0.6]}
    )
    write_csv(selection, tmp_path / "selection.csv")
    table = summary_job(
        ["p"], [tmp_path / "selection.csv"], [], None, tmp_path / "summary.csv", tmp_path / "status.csv"
    )
    assert table["test_note"].iloc[0] == (
        "no test labels; 2 of 4 test clips not predicted "
        "(empty rows in submission.csv; reasons in status.csv)"
    )


def test_predict_only_evaluation_says_no_test_labels(tmp_path):
    """Row 'no test_post_competition.csv': evaluation and summary complete and say 'no test
    labels' (evaluate died with 'Found empty input array')."""
    from workflow_lib.plots import confusion_matrix_plot, per_class_plot
    from workflow_lib.stages import evaluate_job

    classes = ["cat", "dog"]
    write_csv(
        pd.DataFrame({"fname": ["a.wav", "b.wav"], "label": "", "usage": "", "path": ["x", ""]}),
        tmp_path / "test.csv",
    )
    scores = evaluate_job(
        tmp_path / "test.csv",
        _classes(tmp_path / "classes.csv", classes),
        {"fusion": _posteriors(tmp_path / "f.csv", ["a.wav"], classes)},
        tmp_path / "eval",
    )
    assert set(scores["note"]) == {"no test labels"} and set(scores["n"]) == {0}
    per_class = pd.read_csv(tmp_path / "eval" / "per_class.csv")
    confusion = pd.read_csv(tmp_path / "eval" / "confusion.csv")
    assert per_class.empty and confusion.empty and list(confusion.columns) == ["true_label", *classes]
    confusion_matrix_plot(confusion, tmp_path / "c.png")
    per_class_plot(per_class, "fusion", tmp_path / "p.png")
    assert (tmp_path / "c.png").stat().st_size and (tmp_path / "p.png").stat().st_size


def test_unpredicted_scored_clips_are_counted(tmp_path):
    from workflow_lib.stages import evaluate_job

    classes = ["cat", "dog"]
    write_csv(
        pd.DataFrame(
            {
                "fname": ["a.wav", "b.wav", "c.wav"],
                "label": ["cat", "dog", "dog"],
                "usage": ["Public", "Private", "Private"],
            }
        ),
        tmp_path / "test.csv",
    )
    scores = evaluate_job(
        tmp_path / "test.csv",
        _classes(tmp_path / "classes.csv", classes),
        {"fusion": _posteriors(tmp_path / "f.csv", ["a.wav", "b.wav"], classes)},
        tmp_path / "eval",
    ).set_index("set")
    assert scores.loc["Private", "n"] == 1 and scores.loc["Private", "n_unpredicted"] == 1
    assert scores.loc["Public", "n_unpredicted"] == 0 and set(scores["note"].fillna("")) == {""}


# --------------------------------------------------------------------------- settings rows


def test_user_setting_wins_over_the_run_preset():
    """Row 'a method.* setting given with --config or an extra config file under the default
    run preset': the user's value wins (was: silently replaced by the demo preset's), the key
    is named, and an invalid value is refused."""
    user = {"method": {"self_verification": {"threshold": 0.9}, "initial_training": {"epochs": 3}}}
    config = {
        **CONFIG,
        "method": {
            **CONFIG["method"],
            "self_verification": {**CONFIG["method"]["self_verification"], "threshold": 0.9},
            "initial_training": {**CONFIG["method"]["initial_training"], "epochs": 3},
        },
    }
    settings = resolve_settings(config, user)
    assert settings["method"]["self_verification"]["threshold"] == 0.9
    assert settings["method"]["initial_training"]["epochs"] == 3
    assert settings["method"]["initial_training"]["constant_epochs"] == 3  # the demo's
    assert preset_shadowed(CONFIG["run_presets"]["demo"], user) == [
        "method.initial_training.epochs",
        "method.self_verification.threshold",
    ]
    with pytest.raises(ConfigError, match="threshold"):
        resolve_settings(config, {"method": {"self_verification": {"threshold": 2}}})


def test_user_settings_come_from_extra_files_and_the_command_line(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("method: {fine_tuning: {epochs: 7}}\n")
    given = user_settings([REPO / "config.yaml", extra], {"method": {"seed": 3}}, REPO / "config.yaml")
    assert given == {"method": {"fine_tuning": {"epochs": 7}, "seed": 3}}


def test_results_folder_belongs_to_one_dataset_and_preset(tmp_path):
    """Rows 'run_preset=paper started in a directory holding the demo's results' and 'a
    mistyped dataset_root in a directory that already holds results': both refused."""
    demo = resolve_settings(CONFIG)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text(json.dumps(run_identity(demo)))
    check_run_identity(tmp_path / "results", run_identity(demo))  # same run: fine
    root = write_listing(tmp_path / "data", ["dog", "cat"])
    paper = resolve_settings({**CONFIG, "run_preset": "paper", "dataset_root": str(root)})
    with pytest.raises(ConfigError, match=r"holds the results of another run.*--directory"):
        check_run_identity(tmp_path / "results", run_identity(paper))
    with pytest.raises(ConfigError, match="config key dataset_root: .*does not exist"):
        check_dataset_root({**paper, "dataset_root": str(tmp_path / "dtaa")})


# --------------------------------------------------------------------------- rule files


# Placeholders that may stay unquoted: Snakemake's own, and outputs/inputs/logs under results/
# (their paths are built from RESULTS and constrained wildcards, never from config values).
# Wildcards are safe where constrained to digits or a fixed set (preset names are not: :q).
# {params.cli} is the command itself (several shell words, never :q; see rules/common.smk).
SAFE = re.compile(
    r"^\{(threads|log|output(\.\w+)?|input(\.\w+)?|resources\.\w+|params\.cli"
    r"|wildcards\.(fold|it|shard|split|version))\}$"
)


def unquoted_placeholders(text: str) -> list[str]:
    """`{name}` placeholders in shell strings that carry a value and are not quoted with :q."""
    found = []
    for shell in re.findall(r"shell:\s*\n((?:\s+\".*\"\s*\n)+)", text):
        for placeholder in re.findall(r"(?<!\{)\{[^{}]+\}(?!\})", shell):
            if not placeholder.endswith(":q}") and not SAFE.match(placeholder):
                found.append(placeholder)
    return found


def test_rule_files_quote_every_value_placeholder():
    """Row '`compute.gpu_lock_dir` containing $(touch ...) or spaces': every {params.*}
    placeholder in a shell command is quoted with :q (the lock dir and preset names were not)."""
    assert unquoted_placeholders('shell:\n    "run {params.x} {params.y:q} {threads} {log}"\n') == [
        "{params.x}"
    ]
    texts = {p.name: p.read_text() for p in (REPO / "rules").glob("*.smk")}
    shells = sum(len(re.findall(r"shell:\s*\n((?:\s+\".*\"\s*\n)+)", t)) for t in texts.values())
    assert shells == sum(t.count("shell:") for t in texts.values())  # every command is read
    offenders = {name: unquoted_placeholders(text) for name, text in texts.items()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_preset_names_that_could_reach_a_shell_are_refused():
    nets = dict(CONFIG["method"]["nets"])
    nets["x$(touch y)"] = nets["vgg_gap_spec2"]
    with pytest.raises(ConfigError, match="method.nets"):
        resolve_settings({**CONFIG, "method": {**CONFIG["method"], "nets": nets}})


def test_streamed_npy_file_is_the_concatenation_and_memory_maps(tmp_path):
    """npy_row_writer: blocks of any length (zero included) make one aligned, mappable array."""
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((n, 128)).astype(np.float32) for n in (3, 0, 1000, 7)]
    path = tmp_path / "shard.npy"
    with wio.npy_row_writer(path, 128) as append:
        for block in blocks:
            append(block)
    mapped = np.load(path, mmap_mode="r")
    assert mapped.shape == (1010, 128) and mapped.dtype == np.float32
    assert mapped.offset == wio.NPY_HEADER_BYTES and wio.NPY_HEADER_BYTES % 64 == 0
    np.testing.assert_array_equal(mapped, np.concatenate(blocks))
    with wio.npy_row_writer(tmp_path / "empty.npy", 128):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0, 128)


def test_streamed_npy_file_refuses_a_wrong_block_and_leaves_nothing(tmp_path):
    """A block of the wrong width is an error, and the half-written file is removed."""
    path = tmp_path / "shard.npy"
    with pytest.raises(ValueError, match=r"\(rows, 128\)"), wio.npy_row_writer(path, 128) as append:
        append(np.zeros((4, 128), np.float32))
        append(np.zeros((4, 64), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_a_killed_shard_writers_temporary_file_is_removed_by_the_rerun(tmp_path):
    """SIGKILL leaves the streamed array's temporary file (no cleanup runs); the job's rerun
    deletes it, so killed jobs do not pile up gigabytes of hidden files. Other files stay."""
    target = tmp_path / "v1" / "shard0.npy"
    target.parent.mkdir()
    stale = target.parent / ".shard0.npy.k1ll3d.tmp"
    stale.write_bytes(b"\x93NUMPY half a shard")
    other = target.parent / ".shard1.npy.r2nn1ng.tmp"  # another shard's writer: not ours
    other.write_bytes(b"x")
    with wio.npy_row_writer(target, 128) as append:
        append(np.zeros((3, 128), np.float32))
    assert not stale.exists() and other.exists()
    assert np.load(target).shape == (3, 128)

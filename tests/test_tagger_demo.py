"""The tagger on the trained demo run (the session's ``demo`` fixture, tests/conftest.py):
tagging the demo's test audio gives the run's own fused labels, from ``results/`` and from the
exported bundle (TorchScript, and ONNX without torch), and a long recording of three classes
separated by silence is tagged over time in the right order.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from workflow_lib.cli import main

from conftest import REPO, Demo, run_cli

CHAIN = "chains/self_verification"  # the default run: the method's chain (workflow_lib/layout.py)

pytestmark = pytest.mark.slow


def fused_test(demo: Demo) -> pd.DataFrame:
    return demo.numeric(f"{CHAIN}/predictions/fused_test.csv").set_index("fname")


def tagged(path, demo: Demo) -> pd.DataFrame:
    """A tag CSV indexed by the clip's file name, in fused_test.csv's order."""
    table = pd.read_csv(path, dtype={"fname": str, "label_1": str}, keep_default_na=False)
    table.index = table["fname"].map(lambda f: f.rsplit("/", 1)[-1])
    return table.loc[fused_test(demo).index]


@pytest.fixture(scope="module")
def run_tags(demo, tmp_path_factory):
    """Tags of the demo's test clips straight from results/ (the fold checkpoints)."""
    out = tmp_path_factory.mktemp("tags") / "run.csv"
    code = main(
        [
            "tag",
            str(demo.results / "demo_data" / "audio_test"),
            "--results",
            str(demo.results),
            "--configfile",
            str(REPO / "config.yaml"),
            "--all-classes",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return tagged(out, demo)


def agreement(table: pd.DataFrame, demo: Demo) -> float:
    reference = fused_test(demo)
    expected = reference[demo.classes].to_numpy().argmax(axis=1)
    return float((table["label_1"].to_numpy() == np.array(demo.classes)[expected]).mean())


def test_tag_gives_the_runs_fused_labels(demo, run_tags):
    assert (run_tags["status"] == "ok").all()
    assert agreement(run_tags, demo) >= 0.99
    # same models, same preprocessing: the posteriors themselves agree
    difference = run_tags[demo.classes].to_numpy() - fused_test(demo)[demo.classes].to_numpy()
    assert np.abs(difference).max() < 1e-4


def test_tag_refuses_settings_the_run_was_not_trained_with(demo, tmp_path, caplog):
    code = main(
        [
            "tag",
            str(demo.results / "demo_data" / "audio_test"),
            "--results",
            str(demo.results),
            "--configfile",
            str(REPO / "config.yaml"),
            "--config",
            "run_preset=paper",
            "--out",
            str(tmp_path / "tags.csv"),
        ]
    )
    assert code == 1 and not (tmp_path / "tags.csv").exists()
    assert "was trained with" in caplog.text


def test_export_bundle_describes_the_run(demo):
    export = demo.results / "export"
    settings = json.loads((export / "preprocessing.json").read_text())
    assert settings["frames"] == demo.method["spectrogram_frames"]
    assert settings["sample_rate"] == demo.settings["preprocessing"]["sample_rate"]
    chosen = {
        p: int(demo.numeric(f"{CHAIN}/selection/{p}.csv").query("chosen")["iteration"].iloc[0])
        for p in demo.presets
    }
    assert {p["name"]: p["iteration"] for p in settings["presets"]} == chosen
    assert pd.read_csv(export / "classes.csv")["label"].tolist() == demo.classes
    card = (export / "model_card.md").read_text()
    fusion = demo.numeric(f"{CHAIN}/summary.csv").set_index("preset").loc["fusion", "test_accuracy"]
    assert f"{fusion:.4f}" in card and all(c in card for c in demo.classes)


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_bundle_tags_like_the_run(demo, run_tags, backend, tmp_path):
    out = tmp_path / f"{backend}.csv"
    done = run_cli(
        "tag",
        str(demo.results / "demo_data" / "audio_test"),
        "--bundle",
        str(demo.results / "export"),
        "--backend",
        backend,
        "--all-classes",
        "--out",
        str(out),
        cwd=tmp_path,
        no_torch=backend == "onnx",
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    table = tagged(out, demo)
    assert agreement(table, demo) >= 0.99
    difference = table[demo.classes].to_numpy() - run_tags[demo.classes].to_numpy()
    assert np.abs(difference).max() <= 1e-4


def three_clips(demo: Demo) -> pd.DataFrame:
    """Three long test clips of different classes that the run tagged right, surest first."""
    test = demo.csv("data/test.csv").set_index("fname")
    fused = fused_test(demo)
    frame = pd.DataFrame(
        {
            "label": test.loc[fused.index, "label"],
            "predicted": np.array(demo.classes)[fused[demo.classes].to_numpy().argmax(1)],
            "p": fused[demo.classes].to_numpy().max(1),
            "path": test.loc[fused.index, "path"],
        }
    )
    frame["seconds"] = [sf.info(str(demo.workdir / p)).duration for p in frame["path"]]
    right = frame[(frame["label"] == frame["predicted"]) & (frame["seconds"] >= 3.0)]
    best = right.sort_values("p", ascending=False).drop_duplicates("label").head(3)
    assert len(best) == 3, "the demo run has fewer than three long, rightly tagged classes"
    return best


def test_timeline_shows_three_classes_in_order(demo, tmp_path):
    clips = three_clips(demo)
    rate = sf.info(str(demo.workdir / clips["path"].iloc[0])).samplerate
    gap = np.zeros(int(1.5 * rate))
    parts, spans, now = [gap], [], len(gap) / rate
    for path in clips["path"]:
        samples, clip_rate = sf.read(str(demo.workdir / path))
        assert clip_rate == rate
        parts += [samples, gap]
        spans.append((now, now + len(samples) / rate))
        now += (len(samples) + len(gap)) / rate
    long_file = tmp_path / "three classes.wav"
    sf.write(str(long_file), np.concatenate(parts), rate)
    out = tmp_path / "timeline.csv"
    done = run_cli(
        "tag",
        str(long_file),
        "--timeline",
        "--window",
        "2",
        "--hop",
        "0.5",
        "--bundle",
        str(demo.results / "export"),
        "--backend",
        "onnx",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    table = pd.read_csv(out, keep_default_na=False)
    centres = (table["start"] + table["end"]) / 2
    majority = []
    for start, end in spans:
        inside = table[(centres > start + 1.0) & (centres < end - 1.0)]
        majority.append(inside["label_1"].mode().iloc[0])
    assert majority == clips["label"].tolist()
    assert (tmp_path / "timeline.png").stat().st_size > 0

"""The tagger without a trained run: a tiny bundle of random networks (two spectrogram
versions, learned fusion) built by the export code, then tagged through the command line.

What the trained demo adds (same labels as the run, the timeline of real classes) is in
tests/test_tagger_demo.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_lib.export import FusedTagger, example_inputs, write_bundle
from workflow_lib.fusion import apply_learned_fusion, fused_posteriors, mean_fusion
from workflow_lib.model import build_model
from workflow_lib.tagger import (
    BUNDLE_FILES,
    Item,
    TaggerSpec,
    TaggingError,
    TagOptions,
    check_options,
    discover,
    prepare,
    window_bounds,
)

from conftest import SPEC_SOX_EFFECTS, run_cli, tone, write_wav

CLASSES = ["a", "b", "c"]
FRAMES = 200  # the smallest length the VGG-GAP head takes is 192 frames


def tiny_tagger(seed: int = 0) -> tuple[TaggerSpec, FusedTagger]:
    """Preset 0: two folds on version 1; preset 1: one fold on version 2; learned fusion."""
    torch.manual_seed(seed)
    members = [[build_model(2, 3, (0.0, 0.0)) for _ in range(2)], [build_model(2, 3, (0.0, 0.0))]]
    tagger = FusedTagger(members, [0, 1], np.array([0.7, 1.3]), np.array([0.1, -0.2, 0.05]))
    spec = TaggerSpec(
        classes=CLASSES,
        sample_rate=32000,
        sox_effects=list(SPEC_SOX_EFFECTS),
        frames=FRAMES,
        versions=[1, 2],
        fusion="learned",
        presets=[
            {"name": "p0", "spectrogram": 1, "width": 2, "iteration": 0, "folds": 2, "weight": 0.7},
            {"name": "p1", "spectrogram": 2, "width": 2, "iteration": 1, "folds": 1, "weight": 1.3},
        ],
    )
    return spec, tagger.eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    spec, tagger = tiny_tagger()
    folder = tmp_path_factory.mktemp("bundle")
    write_bundle(tagger, spec, folder, "# tiny test tagger\n")
    return folder


# --------------------------------------------------------------------------- the network


def test_fused_posteriors_match_the_runs_fusion():
    rng = np.random.default_rng(0)
    stack = rng.dirichlet(np.ones(5), size=(3, 4))  # 3 models, 4 clips, 5 classes
    weights, bias = rng.normal(size=3), rng.normal(size=5)
    as_torch = torch.as_tensor(stack)
    mean = fused_posteriors(as_torch, torch.full((3,), 1 / 3, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(mean, mean_fusion(stack), atol=1e-12)
    learned = fused_posteriors(as_torch, torch.as_tensor(weights), torch.as_tensor(bias)).numpy()
    np.testing.assert_allclose(learned, apply_learned_fusion(stack, weights, bias), atol=1e-12)


def test_fused_tagger_averages_folds_then_fuses_presets():
    spec, tagger = tiny_tagger()
    x1, x2 = example_inputs(spec, batch=3)
    with torch.no_grad():
        got = tagger(x1, x2).numpy()
        p0 = np.mean([torch.softmax(m(x1), 1).numpy() for m in tagger.members[0]], axis=0)
        p1 = torch.softmax(tagger.members[1][0](x2), 1).numpy()
    expected = apply_learned_fusion(np.stack([p0, p1]), np.array([0.7, 1.3]), np.array([0.1, -0.2, 0.05]))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_bundle_files_and_exported_networks_match(bundle):
    """TorchScript and ONNX equal the eager tagger on another batch size and time length."""
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES.values())
    spec, tagger = tiny_tagger()
    assert TaggerSpec.from_bundle(bundle) == spec
    settings = json.loads((bundle / BUNDLE_FILES["settings"]).read_text())
    assert [i["name"] for i in settings["inputs"]] == ["spec_v1", "spec_v2"]
    import onnxruntime

    inputs = example_inputs(spec, batch=5, frames=FRAMES * 2 + 11, seed=3)
    with torch.no_grad():
        expected = tagger(*inputs).numpy()
        scripted = torch.jit.load(str(bundle / "tagger.pt"))(*inputs).numpy()
    session = onnxruntime.InferenceSession(str(bundle / "tagger.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"spec_v1": inputs[0].numpy(), "spec_v2": inputs[1].numpy()})[0]
    assert onnx_out.shape == (5, 3)
    assert np.abs(scripted - expected).max() <= 1e-5
    assert np.abs(onnx_out - expected).max() <= 1e-4


def test_fusion_parameters_are_read_as_fuse_job_writes_them(tmp_path):
    from workflow_lib.export import _fusion_parameters

    weights_csv = tmp_path / "fusion_weights.csv"
    pd.DataFrame(
        {
            "parameter": ["weight:p0", "weight:p1", "bias:a", "bias:b", "bias:c"],
            "value": [0.7, 1.3, 0.1, -0.2, 0.05],
        }
    ).to_csv(weights_csv, index=False)
    weights, bias = _fusion_parameters(weights_csv, ["p1", "p0"], CLASSES, "learned")
    assert weights.tolist() == [1.3, 0.7] and bias.tolist() == [0.1, -0.2, 0.05]
    with pytest.raises(TaggingError, match="learned fusion"):
        _fusion_parameters(weights_csv, ["p0", "p1"], CLASSES, "mean")


# --------------------------------------------------------------------------- inputs and options


def test_window_bounds():
    assert window_bounds(5.0, 2.0, 1.0) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert window_bounds(5.5, 2.0, 1.0)[-1] == (4.0, 5.5)  # the last window reaches the end
    assert window_bounds(0.7, 2.0, 1.0) == [(0.0, 0.7)]  # shorter than a window: one
    with pytest.raises(TaggingError):
        window_bounds(3.0, 2.0, 0.0)


def test_discover_folders_and_list_files(tmp_path):
    for name in ("b/x.wav", "a.FLAC", "notes.txt", "b/c/y.ogg"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text("# a comment\n../in/notes.txt\n\n/nowhere/z.wav\n")
    found = discover([tmp_path / "in"], listing)
    assert found == [
        tmp_path / "in" / "a.FLAC",
        tmp_path / "in" / "b/c/y.ogg",
        tmp_path / "in" / "b/x.wav",
        tmp_path / "lists/../in/notes.txt",
        Path("/nowhere/z.wav"),
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"window": 2.0}, "belong to --timeline"),
        ({"backend": "onnx"}, "needs --bundle"),
        ({"bundle": Path("b"), "config": ["run_preset=paper"]}, "leave them out"),
        ({"bundle": Path("b"), "backend": "torch"}, "a bundle has"),
        ({"raw_rate": 8000}, "name '-'"),
        ({"top_k": 0}, "at least 1"),
    ],
)
def test_options_that_would_be_ignored_are_refused(options, message):
    with pytest.raises(TaggingError, match=message):
        check_options(TagOptions(inputs=[Path("x.wav")], out=Path("o.csv"), **options))


def test_prepare_applies_the_training_preprocessing(tmp_path, sox_binary):
    """Whole file and window: SoX clipping, both versions, length-fixed to the spec's frames."""
    from workflow_lib.audio import load_clipped
    from workflow_lib.spectrograms import compute_spectrogram, fix_length

    spec, _ = tiny_tagger()
    samples = np.concatenate([np.zeros(8000), tone(1.0, 16000, 660.0), np.zeros(8000)])
    path = write_wav(tmp_path / "t.wav", samples, 16000)
    whole = prepare(Item(path), spec)
    assert whole.status == "ok" and whole.audio == "clipped"
    clip = load_clipped(path, 32000, tuple(spec.sox_effects))
    for version, array in zip(spec.versions, whole.inputs):
        np.testing.assert_array_equal(
            array, fix_length(compute_spectrogram(version, clip.samples, 32000), FRAMES)
        )
    silent = prepare(Item(path, 0.0, 0.4), spec)  # only the leading silence
    assert silent.status == "ok" and silent.audio == "fallback_silent"
    assert [a.shape for a in silent.inputs] == [(1, 128, FRAMES)] * 2
    # A run made with preprocessing.spectrograms: reference is tagged with the reference path.
    reference = prepare(Item(path), dataclasses.replace(spec, spectrograms="reference"))
    for version, array in zip(spec.versions, reference.inputs):
        np.testing.assert_array_equal(
            array,
            fix_length(compute_spectrogram(version, clip.samples, 32000, "reference"), FRAMES),
        )


# --------------------------------------------------------------------------- the command


def test_hostile_inputs_get_a_status_each_and_the_rest_is_tagged(bundle, tmp_path, sox_binary):
    good = write_wav(tmp_path / 'it\'s a "quoted" name, with spaces.wav', tone(1.5, 16000, 440.0), 16000)
    empty_file = tmp_path / "empty.wav"
    empty_file.write_bytes(b"")
    no_frames = write_wav(tmp_path / "no_frames.wav", np.zeros(0), 16000)
    text = tmp_path / "text.wav"
    text.write_text("this is not audio\n")
    broken_link = tmp_path / "broken.wav"
    broken_link.symlink_to(tmp_path / "gone.wav")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good.name}\nmissing.wav\n")
    out = tmp_path / "tags.csv"
    done = run_cli(
        "tag",
        str(empty_file),
        str(no_frames),
        str(text),
        str(broken_link),
        str(good),
        "--list",
        str(listing),
        "--bundle",
        str(bundle),
        "--backend",
        "onnx",
        "--out",
        str(out),
        "--all-classes",
        "--jobs",
        "2",
        "--batch-size",
        "2",
        cwd=tmp_path,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr  # some files failed
    assert "Traceback" not in stderr
    table = pd.read_csv(out, dtype={"fname": str}, keep_default_na=False)
    status = dict(zip(table["fname"].map(lambda f: Path(f).name), table["status"]))
    assert status == {
        "empty.wav": "undecodable",
        "no_frames.wav": "empty",
        "text.wav": "undecodable",
        "broken.wav": "missing",
        good.name: "ok",
        "missing.wav": "missing",
    }
    assert len(table) == 7 and (table["fname"].map(lambda f: Path(f).name) == good.name).sum() == 2
    tagged = table[table["status"] == "ok"]
    assert set(tagged["label_1"]) <= set(CLASSES) and (tagged["detail"] == "").all()
    np.testing.assert_allclose(tagged[CLASSES].astype(float).sum(axis=1), 1.0, atol=1e-5)
    failed = table[table["status"] != "ok"]
    assert (failed["label_1"] == "").all() and (failed["detail"] != "").all()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, bundle):
    spec, _ = tiny_tagger()
    path = write_wav(tmp_path / "locked.wav", tone(1.0, 16000), 16000)
    path.chmod(0)
    assert prepare(Item(path), spec).status == "unreadable"


def test_onnx_bundle_tags_without_torch_and_matches_torchscript(bundle, tmp_path, sox_binary):
    clip = write_wav(tmp_path / "clip.wav", tone(2.0, 22050, 300.0) + tone(2.0, 22050, 2000.0), 22050)
    outs = {}
    for backend in ("onnx", "torchscript"):
        outs[backend] = tmp_path / f"{backend}.csv"
        done = run_cli(
            "tag",
            str(clip),
            "--bundle",
            str(bundle),
            "--backend",
            backend,
            "--all-classes",
            "--out",
            str(outs[backend]),
            cwd=tmp_path,
            no_torch=backend == "onnx",
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    onnx_table, script_table = (pd.read_csv(outs[b]) for b in ("onnx", "torchscript"))
    assert np.abs(onnx_table[CLASSES].to_numpy() - script_table[CLASSES].to_numpy()).max() <= 1e-4
    assert onnx_table["label_1"].tolist() == script_table["label_1"].tolist()


def test_timeline_from_raw_pcm_on_stdin(bundle, tmp_path, sox_binary):
    rate = 8000
    samples = np.concatenate([tone(3.0, rate, 500.0), np.zeros(rate * 2)])
    pcm = (samples * 20000).astype("<i2").tobytes()
    out = tmp_path / "timeline.csv"
    done = run_cli(
        "tag",
        "-",
        "--raw-rate",
        str(rate),
        "--timeline",
        "--window",
        "2",
        "--hop",
        "1",
        "--bundle",
        str(bundle),
        "--backend",
        "onnx",
        "--top-k",
        "2",
        "--out",
        str(out),
        cwd=tmp_path,
        stdin=pcm,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == [
        "fname",
        "start",
        "end",
        "label_1",
        "p_1",
        "label_2",
        "p_2",
        "status",
        "audio",
        "detail",
    ]
    assert (table["fname"] == "-").all()
    assert table[["start", "end"]].to_numpy().tolist() == [[0, 2], [1, 3], [2, 4], [3, 5]]
    assert table["audio"].tolist()[-1] == "fallback_silent"  # the last window is silence
    assert (table["p_1"] >= table["p_2"]).all()
    assert (tmp_path / "timeline.png").stat().st_size > 0

"""The tagger without a trained run: a tiny bundle of random networks (two spectrogram
versions, learned fusion) built by the export code, then tagged through the command line.

What the trained demo adds (same labels as the run, the timeline of real classes) is in
tests/test_tagger_demo.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from workflow_lib.bundle import write_manifest
from workflow_lib.errors import UserError
from workflow_lib.export import FusedTagger, example_inputs, write_bundle
from workflow_lib.export_formats import refuse_external_data
from workflow_lib.fusion import apply_learned_fusion, fused_posteriors, mean_fusion
from workflow_lib.model import build_model
from workflow_lib.tagger import (
    BUNDLE_FILES,
    Item,
    TaggerSpec,
    TaggingError,
    TagOptions,
    _checked_outputs,
    check_options,
    discover,
    excerpt_seconds,
    output_paths,
    pool_excerpts,
    prepare,
    stdin_to_wav,
    tag_items,
    whole_file_items,
    window_bounds,
)

from conftest import REPO, SPEC_SOX_EFFECTS, run_cli, tone, write_wav

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
    # the last window reaches the end, a whole window long
    assert window_bounds(5.5, 2.0, 1.0)[-2:] == [(3.0, 5.0), (3.5, 5.5)]
    assert window_bounds(0.7, 2.0, 1.0) == [(0.0, 0.7)]  # shorter than a window: one
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(TaggingError):
            window_bounds(3.0, 2.0, bad)


def test_window_bounds_are_never_empty_when_the_hop_exceeds_the_window():
    """Row '--timeline --window 2 --hop 5 on a 10 s file': was an extra (10.0, 10.0) window."""
    assert window_bounds(10.0, 2.0, 5.0) == [(0, 2), (5, 7), (8, 10)]
    for duration, window, hop in [(10.0, 2.0, 5.0), (10.001, 2.0, 5.0), (7.3, 0.5, 0.7), (3.0, 1.0, 3.0)]:
        bounds = window_bounds(duration, window, hop)
        assert all(end - start == pytest.approx(min(window, duration)) for start, end in bounds)
        assert bounds[-1][1] == pytest.approx(duration) and all(s < duration for s, _ in bounds)


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
        # was: 0 silently became the default, NaN a traceback
        ({"timeline": True, "window": 0.0}, "--window must be"),
        ({"timeline": True, "window": math.nan}, "--window must be"),
        ({"timeline": True, "window": -2.0}, "--window must be"),
        ({"timeline": True, "hop": 0.0}, "--hop must be"),
        ({"timeline": True, "hop": math.inf}, "--hop must be"),
        ({"inputs": [Path("-")], "raw_rate": 0}, "--raw-rate must be"),
        ({"inputs": [Path("-")], "raw_rate": -5}, "--raw-rate must be"),
    ],
)
def test_options_that_would_be_ignored_are_refused(options, message):
    with pytest.raises(TaggingError, match=message):
        check_options(TagOptions(**({"inputs": [Path("x.wav")], "out": Path("o.csv")} | options)))


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
    assert set(tagged["label_1"]) <= set(CLASSES)
    # 1.5 s of tone is longer than the 200 frames (0.8 s of version 2) of the length fix
    assert tagged["detail"].str.startswith("only the first 200 spectrogram frames").all()
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
    pcm = (samples * 20000).astype("<i2").tobytes() + b"\x01"  # odd: the last byte is dropped
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
    assert "last byte is dropped" in done.stderr.decode()
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


# --------------------------------------------------------------------------- hostile bundles
# A bundle is copied and shared: every file of it is untrusted (workflow_lib/bundle.py).


def tampered(bundle: Path, tmp_path: Path, resign: bool = True, **settings) -> Path:
    """A copy of ``bundle`` with preprocessing.json fields replaced; ``resign``: its checksum
    manifest rewritten, as someone who edits a bundle on purpose would do."""
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    path = copy / BUNDLE_FILES["settings"]
    if settings:
        path.write_text(json.dumps(json.loads(path.read_text()) | settings))
    if resign:
        write_manifest(copy)
    return copy


def refused_onnx_tagging(bundle: Path, tmp_path: Path) -> str:
    """Tag a tone with ``bundle``'s ONNX file (torch unimportable, as on a torch-free host);
    checks the tagger refused with exit 1 and a message, not a traceback; returns stderr."""
    clip = write_wav(tmp_path / "clip.wav", tone(1.0, 16000), 16000)
    done = run_cli(
        "tag", str(clip), "--bundle", str(bundle), "--backend", "onnx", "--out", str(tmp_path / "t.csv"),
        cwd=tmp_path, no_torch=True,
    )  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in stderr
    return stderr


def test_bundle_sox_effects_cannot_write_a_file(bundle, tmp_path, sox_binary):
    """Row 'sox_effects: ["noiseprof", "/some/file"]': was the file overwritten, exit 0."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    attack = tampered(bundle, tmp_path, sox_effects=["noiseprof", str(target)])
    stderr = refused_onnx_tagging(attack, tmp_path)
    assert "'noiseprof') is not an allowed SoX effect" in stderr and "preprocessing.json" in stderr
    assert target.read_text() == "keep me\n" and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize(
    "effects, message",
    [
        (["frobnicate"], "'frobnicate') is not an allowed SoX effect"),  # was: every file ok, untrimmed
        (["norm", "/etc/passwd"], "neither an allowed SoX effect nor a number"),
        (["norm", "-0.1", "noisered", "profile", "0.2"], "'noisered') is neither"),
        (["silence", "1", "0.025", "0.15%", "newfile"], "'newfile') is neither"),
    ],
)
def test_bundle_sox_effects_outside_the_allowlist_are_refused(bundle, tmp_path, effects, message):
    with pytest.raises(UserError, match=re.escape(message)):
        TaggerSpec.from_bundle(tampered(bundle, tmp_path, sox_effects=effects))


def test_config_sox_effects_go_through_the_same_allowlist():
    from workflow_lib.config import ConfigError, resolve_settings

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["preprocessing"]["sox_effects"] = ["noiseprof", "/tmp/x"]
    with pytest.raises(ConfigError, match=r"preprocessing.sox_effects: item 0 \('noiseprof'\)"):
        resolve_settings(config)


def test_run_sox_never_runs_a_chain_outside_the_allowlist(tmp_path, sox_binary):
    """The last line behind the checks above: the chain is returned as SoX's failure."""
    from workflow_lib.audio import run_sox

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    clip = write_wav(tmp_path / "clip.wav", tone(0.5, 16000), 16000)
    error = run_sox(clip, tmp_path / "out.wav", ("noiseprof", str(target)))
    assert error.startswith("SoX effects refused") and target.read_text() == "keep me\n"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"frames": 0}, "field frames: 0 is less than the minimum of 192"),
        ({"fusion": "median"}, "field fusion: 'median' is not one of"),
        ({"n_bins": 64}, "field n_bins: 128 was expected"),
        ({"sample_rate": "32000"}, "field sample_rate: '32000' is not of type 'integer'"),
        ({"versions": [2, 1]}, "field versions: [2, 1] must be in ascending order"),
        ({"surprise": 1}, "Additional properties are not allowed ('surprise'"),
        ({"output": {"name": "posteriors", "shape": ["batch", 0]}}, "field output.shape.1"),
    ],
)
def test_bundle_settings_are_checked_field_by_field(bundle, tmp_path, settings, message):
    """Rows 'frames: 0' (was a library traceback) and 'unknown fusion, n_bins' (were ignored)."""
    with pytest.raises(UserError, match=re.escape(message)) as raised:
        TaggerSpec.from_bundle(tampered(bundle, tmp_path, **settings))
    assert "preprocessing.json" in str(raised.value)


def test_bundle_settings_broken_or_nan_json_is_refused(bundle, tmp_path):
    copy = tampered(bundle, tmp_path)
    path = copy / BUNDLE_FILES["settings"]
    text = path.read_text()
    for broken, message in [
        (text[: len(text) // 2], "is not valid JSON"),
        (text.replace("0.7", "NaN"), "NaN"),
    ]:
        path.write_text(broken)
        write_manifest(copy)
        with pytest.raises(UserError, match=message) as raised:
            TaggerSpec.from_bundle(copy)
        assert "preprocessing.json" in str(raised.value)


def test_bundle_edited_after_export_is_detected_by_its_checksums(bundle, tmp_path):
    """Rows 'classes.csv with two labels swapped' and 'sample_rate: 8000' (were silently wrong
    tags): shape checks cannot see a swap, the manifest written at export does."""
    changed = tampered(bundle, tmp_path, resign=False, sample_rate=8000)
    with pytest.raises(UserError, match=r"preprocessing.json differs from the file the export wrote"):
        TaggerSpec.from_bundle(changed)
    shutil.rmtree(changed)
    swapped = tampered(bundle, tmp_path, resign=False)
    classes = swapped / BUNDLE_FILES["classes"]
    classes.write_text(classes.read_text().replace("0,a", "0,X").replace("1,b", "1,a").replace("0,X", "0,b"))
    with pytest.raises(UserError, match=r"classes.csv differs from the file the export wrote"):
        TaggerSpec.from_bundle(swapped)
    shutil.copy(bundle / BUNDLE_FILES["classes"], classes)
    (swapped / BUNDLE_FILES["torchscript"]).unlink()  # a partial copy
    with pytest.raises(UserError, match=r"tagger.pt is missing"):
        TaggerSpec.from_bundle(swapped)
    (swapped / BUNDLE_FILES["manifest"]).unlink()
    with pytest.raises(UserError, match=r"checksums.sha256 is missing"):
        TaggerSpec.from_bundle(swapped)


@pytest.mark.parametrize(
    "rows, message",
    [
        ("index,label\n0,a\n1,b\n", "lists 2 classes"),  # a dropped row: was a shape traceback
        ("index,label\n0,a\n1,a\n2,c\n", "duplicate label 'a'"),
        ("index,label\n0,a\n1,\n2,c\n", "an empty label"),
        ("label\na\nb\nc\n", "expected the columns index,label"),
    ],
)
def test_bundle_classes_must_match_the_outputs(bundle, tmp_path, rows, message):
    copy = tampered(bundle, tmp_path)
    (copy / BUNDLE_FILES["classes"]).write_text(rows)
    write_manifest(copy)
    with pytest.raises(UserError, match=message) as raised:
        TaggerSpec.from_bundle(copy)
    assert "classes.csv" in str(raised.value)


def test_truncated_onnx_file_is_named_not_a_traceback(bundle, tmp_path, sox_binary):
    copy = tampered(bundle, tmp_path)
    onnx_file = copy / BUNDLE_FILES["onnx"]
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    with pytest.raises(UserError, match="tagger.onnx differs from the file the export wrote"):
        TaggerSpec.from_bundle(copy)
    write_manifest(copy)  # checksums made to match: the loader itself must say it
    stderr = refused_onnx_tagging(copy, tmp_path)
    assert "tagger.onnx cannot be loaded as an ONNX model" in stderr


def test_onnx_weights_kept_in_another_file_are_refused(bundle, tmp_path, sox_binary):
    """A tagger.onnx whose weights live in an extra file of the bundle folder (ONNX external
    data, which the manifest does not cover) is refused before onnxruntime reads that file."""
    import onnx

    copy = tampered(bundle, tmp_path)
    onnx_file = copy / BUNDLE_FILES["onnx"]
    onnx.save_model(
        onnx.load(str(onnx_file)), str(onnx_file), save_as_external_data=True,
        location="weights.bin", size_threshold=0,
    )  # fmt: skip
    write_manifest(copy)  # the checksums match: only the external-data check can refuse it
    assert (copy / "weights.bin").stat().st_size > 0
    stderr = refused_onnx_tagging(copy, tmp_path)
    assert "tagger.onnx keeps tensors" in stderr and "external data files" in stderr
    assert not (tmp_path / "t.csv").exists()


def test_external_data_is_found_inside_subgraphs(tmp_path):
    """A constant in the branch of an If node, stored externally, is found like an initialiser."""
    from onnx import TensorProto, helper

    hidden = helper.make_tensor("hidden", TensorProto.FLOAT, [1], [1.0])
    hidden.data_location = TensorProto.EXTERNAL
    hidden.ClearField("float_data")
    hidden.external_data.add(key="location", value="elsewhere.bin")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=hidden)], "b", [], [out])
    plain = helper.make_graph([helper.make_node("Constant", [], ["y"], value_float=0.0)], "p", [], [out])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=plain)], "g", [cond], [out]
    )
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(TaggingError, match=re.escape("keeps tensors ['hidden']")):
        refuse_external_data(path)
    then_branch = next(a.g for a in graph.node[0].attribute if a.name == "then_branch")
    then_branch.node[0].attribute[0].t.data_location = TensorProto.DEFAULT
    path.write_bytes(helper.make_model(graph).SerializeToString())
    refuse_external_data(path)  # the same graph with the constant inside: accepted


def test_network_output_size_is_checked_against_the_classes():
    spec, _ = tiny_tagger()
    with pytest.raises(TaggingError, match="lists 3 classes"):
        _checked_outputs(np.zeros((2, 2)), 2, spec)
    assert _checked_outputs(np.zeros((2, 3)), 2, spec).shape == (2, 3)


# --------------------------------------------------------------------------- outputs


def test_outputs_never_replace_an_input_or_each_other(tmp_path):
    """Row 'sv-tag x.wav --out x.wav, or --plot x.wav': the recording was overwritten."""
    clip = write_wav(tmp_path / "x.wav", tone(0.5, 16000), 16000)
    link = tmp_path / "link.csv"
    link.symlink_to(clip)
    hard = tmp_path / "hard.csv"
    os.link(clip, hard)
    files = [clip]
    for options, message in [
        ({"out": clip}, "--out"),
        ({"out": tmp_path / "sub" / ".." / "x.wav"}, "--out"),
        ({"out": link}, "--out"),
        ({"out": hard}, "--out"),
        ({"timeline": True, "plot": clip}, "--plot"),
        ({"timeline": True, "plot": tmp_path / "o.csv"}, "--out and --plot both name"),
        ({"timeline": True, "out": tmp_path / "o.png"}, "--out and --plot both name"),
        ({"out": tmp_path}, "is a folder"),
    ]:
        o = TagOptions(**({"inputs": files, "out": tmp_path / "o.csv"} | options))
        with pytest.raises(TaggingError, match=message):
            output_paths(o, files)
    (tmp_path / "b").mkdir()
    with pytest.raises(TaggingError, match="is an input"):
        output_paths(
            TagOptions(inputs=files, out=tmp_path / "b" / "classes.csv", bundle=tmp_path / "b"), files
        )
    assert output_paths(TagOptions(inputs=files, out=tmp_path / "o.csv", timeline=True), files) == (
        tmp_path / "o.csv",
        tmp_path / "o.png",
    )


def test_out_equal_to_the_recording_leaves_it_untouched(bundle, tmp_path):
    clip = write_wav(tmp_path / "x.wav", tone(0.5, 16000), 16000)
    before = clip.read_bytes()
    done = run_cli(
        "tag",
        str(clip),
        "--bundle",
        str(bundle),
        "--backend",
        "onnx",
        "--out",
        str(clip),
        cwd=tmp_path,
        no_torch=True,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr.decode()
    assert "--out" in done.stderr.decode() and clip.read_bytes() == before


# --------------------------------------------------------------------------- standard input


def test_stdin_is_copied_in_blocks_and_an_odd_last_byte_is_dropped(tmp_path, caplog):
    samples = np.arange(-500, 501, dtype="<i2")
    stream = io.BytesIO(samples.tobytes() + b"\x7f")
    path = stdin_to_wav(8000, tmp_path, stream, block=7)  # odd blocks: samples cross them
    read, rate = sf.read(str(path), dtype="int16")
    assert rate == 8000 and read.tolist() == samples.tolist()
    assert "last byte is dropped" in caplog.text


# --------------------------------------------------------------------------- long files


def test_long_file_is_tagged_in_bounded_excerpts_covering_it(tmp_path, sox_binary, monkeypatch):
    """Row 'whole-file tagging of a 1-hour recording': 2.6 GB and only the first frames
    decided. A file longer than the limit (here 5 s instead of 60) becomes excerpts that
    cover it; each is read on its own (never more than one excerpt of samples at once), and
    the file's row pools them."""
    from workflow_lib import tagger

    spec, _ = tiny_tagger()
    rate = 8000
    sound = np.concatenate([tone(6.0, rate, 440.0), np.zeros(3 * rate), tone(6.0, rate, 3000.0)])
    long_file = write_wav(tmp_path / "long.wav", sound, rate)
    short = write_wav(tmp_path / "short.wav", tone(1.0, rate), rate)
    items, groups = whole_file_items([short, long_file], spec, long_seconds=5.0)

    def backend(inputs: list[np.ndarray]) -> np.ndarray:  # high bins against low bins: per excerpt
        low, high = inputs[0][:, 0, :64].mean(axis=(1, 2)), inputs[0][:, 0, 64:].mean(axis=(1, 2))
        logits = np.stack([low, high, np.zeros_like(low)], axis=1) / 10
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    seconds = excerpt_seconds(spec)
    assert seconds == pytest.approx(200 * 128 / 32000)
    assert items[0] == Item(short) and groups[0] == range(0, 1)
    excerpts = items[groups[1].start : groups[1].stop]
    assert excerpts[0].start == 0 and excerpts[-1].end == pytest.approx(15.0)
    assert all(e.end - e.start == pytest.approx(seconds) for e in excerpts)
    prepared, probs = tag_items(items[:1], spec, backend, batch_size=8)  # the short file: whole
    largest = []
    real_read = tagger.sf.read
    monkeypatch.setattr(
        tagger.sf, "read", lambda *a, **k: (lambda r: largest.append(len(r[0])) or r)(real_read(*a, **k))
    )

    excerpt_rows, excerpt_probs = tag_items(items[1:], spec, backend, batch_size=8)
    prepared, probs = prepared + excerpt_rows, np.concatenate([probs, excerpt_probs])
    assert max(largest) <= round(seconds * rate) + 1  # one excerpt at most, never the file
    rows, pooled = pool_excerpts(prepared, probs, groups)
    assert [r.item for r in rows] == [Item(short), Item(long_file)] and rows[1].status == "ok"
    sounding = [i for i in groups[1] if prepared[i].audio != "fallback_silent"]
    assert len(sounding) < len(groups[1])  # the silent middle is left out
    np.testing.assert_allclose(pooled[1], probs[sounding].mean(axis=0))
    assert "mean posterior of" in rows[1].detail and "without sound left out" in rows[1].detail
    assert not np.allclose(pooled[1], probs[groups[1].start])  # more than the first excerpt decides
    np.testing.assert_array_equal(pooled[0], probs[0])


# --------------------------------------------------------------------------- export formats


def test_every_export_format_is_a_bundle_file_and_a_tag_backend():
    """The registry decides the bundle's network files and the tagger's --backend choices."""
    from workflow_lib.cli import build_parser
    from workflow_lib.export_formats import EXPORT_FORMATS

    assert list(EXPORT_FORMATS) == ["torchscript", "onnx"]
    assert all(name in BUNDLE_FILES and form.name == name for name, form in EXPORT_FORMATS.items())
    parser = build_parser()
    for name in ["auto", "torch", *EXPORT_FORMATS]:
        assert parser.parse_args(["tag", "--backend", name, "x.wav"]).backend == name
    with pytest.raises(SystemExit):
        parser.parse_args(["tag", "--backend", "tflite", "x.wav"])


def test_a_registered_export_format_is_written_checked_and_listed(tmp_path, monkeypatch):
    """Adding a format is one registry entry (plus its BUNDLE_FILES name): the export writes
    it, checks it against the eager network, and the checksum manifest covers it."""
    from workflow_lib import export_formats

    spec, tagger = tiny_tagger()
    extra = export_formats.ExportFormat(
        "torchscript_copy", export_formats.save_torchscript, export_formats.load_torchscript
    )
    monkeypatch.setitem(BUNDLE_FILES, "torchscript_copy", "tagger_copy.pt")
    monkeypatch.setitem(export_formats.EXPORT_FORMATS, "torchscript_copy", extra)
    assert write_bundle(tagger, spec, tmp_path, "# tiny\n") <= 1e-4
    assert (tmp_path / "tagger_copy.pt").stat().st_size
    assert "tagger_copy.pt" in (tmp_path / BUNDLE_FILES["manifest"]).read_text()

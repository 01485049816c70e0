"""The fusion registry (workflow_lib/fusion.py FUSIONS): the schema's method.fusion.method enum
equals it; geometric and per_class against hand computations for both tasks; fuse_job writes
each method's parameters so that the exported tagger reads them back and fuses the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from workflow_lib.fusion import (
    FUSIONS,
    FusionSettings,
    apply_per_class_fusion,
    fused_posteriors,
    fusion_named,
    per_class_scores,
    per_class_weights,
    read_parameter_table,
)
from workflow_lib.io import write_csv
from workflow_lib.task import MULTI, SINGLE

from conftest import REPO

CLASSES = ["a", "b", "c"]


def test_the_schema_enum_is_the_registry():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    fusion = schema["properties"]["method"]["properties"]["fusion"]["properties"]["method"]
    assert fusion["enum"] == list(FUSIONS)
    bundle = yaml.safe_load((REPO / "schemas" / "bundle_preprocessing.schema.yaml").read_text())
    assert bundle["properties"]["fusion"]["enum"] == list(FUSIONS)
    assert yaml.safe_load((REPO / "config.yaml").read_text())["method"]["fusion"]["method"] == "mean"
    with pytest.raises(ValueError, match="unknown fusion method 'median'"):
        fusion_named("median")


def fuse(name: str, stack: np.ndarray, task=SINGLE, fitted=None) -> np.ndarray:
    fusion = FUSIONS[name]
    fitted = fitted or fusion.fit(None, len(stack), CLASSES, FusionSettings(name, task=task))
    return fusion.apply(np.asarray(stack, dtype=np.float64), fitted, task)


# --- geometric ------------------------------------------------------------------------------------


def test_geometric_single_label_is_the_renormalised_geometric_mean():
    stack = [[[0.8, 0.1, 0.1], [0.5, 0.25, 0.25]], [[0.2, 0.4, 0.4], [0.2, 0.4, 0.4]]]
    # clip 0: sqrt(0.16), sqrt(0.04), sqrt(0.04) = 0.4, 0.2, 0.2 -> 0.5, 0.25, 0.25
    # clip 1: sqrt(0.1) for every class -> uniform
    np.testing.assert_allclose(fuse("geometric", stack), [[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    weights = FUSIONS["geometric"].fit(None, 2, CLASSES, FusionSettings("geometric")).weights
    assert weights.tolist() == [0.5, 0.5]


def test_geometric_multi_label_normalises_p_against_1_minus_p_per_class():
    stack = [[[0.9, 0.5, 0.2]], [[0.5, 0.5, 0.8]]]
    # class a: sqrt(0.45) / (sqrt(0.45) + sqrt(0.05)) = 3 / 4 = sigmoid((ln 9 + 0) / 2)
    # class b: 0.5; class c: sqrt(0.16) / (sqrt(0.16) + sqrt(0.16)) = 0.5
    np.testing.assert_allclose(fuse("geometric", stack, MULTI), [[0.75, 0.5, 0.5]], atol=1e-9)


def test_geometric_survives_a_zero_posterior():
    fused = fuse("geometric", [[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert np.isfinite(fused).all() and fused.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(fused[0, :2], [0.5, 0.5], atol=1e-6)  # c: 1e-12 vs 1e-6 (the floor)


# --- per_class --------------------------------------------------------------------------------------


def single_validation() -> tuple[np.ndarray, np.ndarray]:
    """Two presets, three validation clips labelled a, a, b (class c: no clip)."""
    stack = np.array(
        [
            [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]],  # a first twice, b second
            [[0.3, 0.6, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1]],  # a second then first, b first
        ]
    )
    return stack, np.eye(3)[[0, 0, 1]]


def test_per_class_scores_and_weights_by_hand():
    stack, truth = single_validation()
    scores = per_class_scores(stack, truth)
    # reciprocal ranks: preset 0: a 1, 1 -> 1; b 1/2. Preset 1: a 1/2, 1 -> 3/4; b 1. c: no clip
    np.testing.assert_allclose(scores[:, :2], [[1.0, 0.5], [0.75, 1.0]])
    assert np.isnan(scores[:, 2]).all()
    weights = per_class_weights(scores)
    np.testing.assert_allclose(weights, [[4 / 7, 1 / 3, 0.5], [3 / 7, 2 / 3, 0.5]])


def test_per_class_weights_fall_back_to_equal_weights():
    np.testing.assert_allclose(per_class_weights([[0.0, 0.4], [0.0, 0.4]]), [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(per_class_weights(np.full((4, 2), np.nan)), np.full((4, 2), 0.25))


def test_per_class_fusion_by_hand_both_tasks():
    weights = np.array([[4 / 7, 1 / 3, 0.5], [3 / 7, 2 / 3, 0.5]])
    stack = np.array([[[0.7, 0.2, 0.1]], [[0.0, 0.5, 0.5]]])
    raw = np.array([0.4, 0.2 / 3 + 1 / 3, 0.3])  # sum_m w_mc p_mc
    np.testing.assert_allclose(apply_per_class_fusion(stack, weights, SINGLE), [raw / raw.sum()])
    np.testing.assert_allclose(apply_per_class_fusion(stack, weights, MULTI), [raw])


def test_per_class_fit_reads_the_validation_labels_of_either_task():
    from workflow_lib.fusion import Validation

    stack, _ = single_validation()
    labels = pd.Series(["a", "a", "b"])
    single = FUSIONS["per_class"].fit(Validation(stack, labels), 2, CLASSES, FusionSettings("per_class"))
    np.testing.assert_allclose(single.weights[:, 0], [4 / 7, 3 / 7])
    sets = pd.Series(["a,c", "a", "b"])  # c: preset 0 ranks it 3rd (1/3 -> 2/3 precision), preset 1 3rd too
    multi = FUSIONS["per_class"].fit(
        Validation(stack, sets), 2, CLASSES, FusionSettings("per_class", task=MULTI)
    )
    # clip 0, preset 0: a rank 1 (1/1), c rank 3 (2/3); preset 1: a rank 2 (1/2), c rank 3 (2/3)
    np.testing.assert_allclose(multi.weights[:, 0], [1 / 1.75, 0.75 / 1.75])
    np.testing.assert_allclose(multi.weights[:, 2], [0.5, 0.5])


# --- fuse_job, the weights file and the exported tagger -----------------------------------------


def _fuse_job(tmp_path: Path, method: str, task=SINGLE) -> Path:
    from workflow_lib.stages import fuse_job

    stack, _ = single_validation()
    tests, valids = {}, {}
    for m, preset in enumerate(("p0", "p1")):
        frame = pd.DataFrame(stack[m], columns=CLASSES)
        frame.insert(0, "fname", [f"v{i}.wav" for i in range(3)])
        write_csv(frame, tmp_path / f"{preset}_test.csv")
        write_csv(frame.assign(label=["a", "a", "b"], fold=0), tmp_path / f"{preset}_valid.csv")
        tests[preset], valids[preset] = tmp_path / f"{preset}_test.csv", tmp_path / f"{preset}_valid.csv"
    write_csv(pd.DataFrame({"index": range(3), "label": CLASSES}), tmp_path / "classes.csv")
    out = tmp_path / method
    out.mkdir()
    fuse_job(
        tests, valids, tmp_path / "classes.csv", out / "fused.csv", out / "weights.csv",
        out / "submission.csv", settings=FusionSettings(method, 20, 0.05, task),
    )  # fmt: skip
    return out


@pytest.mark.parametrize("method", list(FUSIONS))
def test_fuse_job_writes_parameters_the_tagger_reads_back_and_fuses_alike(tmp_path, method):
    out = _fuse_job(tmp_path, method)
    table = pd.read_csv(out / "weights.csv")
    found, fitted = read_parameter_table(table, ["p0", "p1"], CLASSES)
    assert found == method
    stack, _ = single_validation()
    fused = pd.read_csv(out / "fused.csv")[CLASSES].to_numpy()
    np.testing.assert_allclose(FUSIONS[method].apply(stack, fitted, SINGLE), fused, atol=1e-12)
    bias = None if fitted.bias is None else torch.as_tensor(fitted.bias)
    in_torch = fused_posteriors(torch.as_tensor(stack), torch.as_tensor(fitted.weights), bias, SINGLE, method)
    np.testing.assert_allclose(in_torch.numpy(), fused, atol=1e-9)


def test_per_class_weights_file_names_preset_and_class(tmp_path):
    table = pd.read_csv(_fuse_job(tmp_path, "per_class") / "weights.csv").set_index("parameter")["value"]
    assert list(table.index) == [f"weight:{p}:{c}" for p in ("p0", "p1") for c in CLASSES]
    assert table["weight:p0:a"] == pytest.approx(4 / 7) and table["weight:p1:c"] == 0.5


@pytest.mark.parametrize("method", ["geometric", "per_class"])
def test_torch_fusion_matches_numpy_for_label_sets(method):
    rng = np.random.default_rng(3)
    stack = rng.uniform(0.01, 0.99, size=(2, 5, 3))
    weights = rng.uniform(0.1, 1.0, size=(2, 3)) if method == "per_class" else np.full(2, 0.5)
    from workflow_lib.fusion import FusionParameters

    expected = FUSIONS[method].apply(stack, FusionParameters(weights), MULTI)
    got = fused_posteriors(torch.as_tensor(stack), torch.as_tensor(weights), None, MULTI, method)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


def test_the_tagger_refuses_a_weights_file_of_another_fusion(tmp_path):
    from workflow_lib.export import _fusion_parameters
    from workflow_lib.tagger_spec import TaggingError

    out = _fuse_job(tmp_path, "geometric")
    with pytest.raises(TaggingError, match="holds a geometric fusion, the settings say 'mean'"):
        _fusion_parameters(out / "weights.csv", ["p0", "p1"], CLASSES, "mean")
    weights, bias = _fusion_parameters(out / "weights.csv", ["p0", "p1"], CLASSES, "geometric")
    assert weights.tolist() == [0.5, 0.5] and bias is None


@pytest.mark.parametrize("method", ["geometric", "per_class"])
def test_an_exported_bundle_fuses_as_the_eager_tagger(tmp_path, method):
    """TorchScript and ONNX of a tagger with the new fusions equal the eager network, and the
    eager network equals the numpy fusion of its presets' fold-averaged posteriors."""
    import dataclasses

    import onnxruntime
    from test_tagger import tiny_tagger

    from workflow_lib.export import FusedTagger, example_inputs, write_bundle
    from workflow_lib.fusion import FusionParameters

    spec, learned = tiny_tagger()
    weights = np.array([[0.2, 0.5, 0.9], [0.8, 0.5, 0.1]]) if method == "per_class" else np.full(2, 0.5)
    tagger = FusedTagger([list(f) for f in learned.members], [0, 1], weights, None, SINGLE, method).eval()
    spec = dataclasses.replace(spec, fusion=method)
    write_bundle(tagger, spec, tmp_path, "# test\n")
    inputs = example_inputs(spec, batch=3)
    with torch.no_grad():
        eager = tagger(*inputs).numpy()
        per_preset = [
            np.mean([torch.softmax(m(inputs[i]), 1).numpy() for m in folds], axis=0)
            for i, folds in zip([0, 1], tagger.members)
        ]
        scripted = torch.jit.load(str(tmp_path / "tagger.pt"))(*inputs).numpy()
    expected = FUSIONS[method].apply(
        np.stack(per_preset).astype(np.float64), FusionParameters(weights), SINGLE
    )
    np.testing.assert_allclose(eager, expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(tmp_path / "tagger.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"spec_v1": inputs[0].numpy(), "spec_v2": inputs[1].numpy()})[0]
    assert np.abs(scripted - eager).max() <= 1e-5 and np.abs(onnx_out - eager).max() <= 1e-4

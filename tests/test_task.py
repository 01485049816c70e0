"""The task object (workflow_lib/task.py) and the network registry (workflow_lib/model.py):
what every module asks instead of a flag, and how a saved network is rebuilt by name."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_lib.errors import UserError
from workflow_lib.model import (
    NETWORKS,
    VggGap,
    architecture_metadata,
    build_model,
    build_network,
    load_model,
    posteriors,
)
from workflow_lib.task import (
    HISTORY_COLUMNS,
    MULTI,
    SAVED_KEY,
    SINGLE,
    TASKS,
    task_named,
    task_of_layout,
    task_of_saved,
    task_of_settings,
)

CLASSES = ["Bark", "Cowbell", "Drill"]

# ---------------------------------------------------------------- the task


def test_activation_is_torchs_softmax_or_sigmoid_in_float32():
    logits = torch.randn(5, 3, dtype=torch.float64)
    assert SINGLE.activation(logits).dtype == torch.float32
    assert torch.equal(SINGLE.activation(logits), torch.softmax(logits.float(), dim=1))
    assert torch.equal(MULTI.activation(logits), torch.sigmoid(logits.float()))
    half = logits.to(torch.bfloat16)
    assert torch.equal(MULTI.activation(half), torch.sigmoid(half.float()))


def test_posteriors_ask_the_task():
    torch.manual_seed(0)
    model = build_model(4, 3, (0.0, 0.0)).eval()
    x = torch.randn(2, 1, 128, 192)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(posteriors(model, x), torch.softmax(logits, 1))
    assert torch.equal(posteriors(model, x, MULTI), torch.sigmoid(logits))


def test_targets_are_class_indices_or_multi_hot_rows():
    clips = pd.DataFrame({"label": ["Bark", "Cowbell,Drill"], "target": [0, 1]})
    np.testing.assert_array_equal(SINGLE.targets(clips, CLASSES), [0, 1])
    hot = MULTI.targets(clips, CLASSES)
    assert hot.dtype == np.float32
    np.testing.assert_array_equal(hot, [[1, 0, 0], [0, 1, 1]])
    assert SINGLE.target_tensor(SINGLE.targets(clips, CLASSES), "cpu").dtype == torch.int64
    assert MULTI.target_tensor(hot, "cpu").dtype == torch.float32
    soft = SINGLE.soft_targets(torch.tensor([2, 0]), 3)
    assert torch.equal(soft, torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    rows = torch.tensor(hot)
    assert MULTI.soft_targets(rows, 3) is rows


def test_labels_of_and_known():
    assert SINGLE.labels_of("Cowbell,Drill") == ["Cowbell,Drill"]  # one class name, as given
    assert MULTI.labels_of("Cowbell,Drill") == ["Cowbell", "Drill"]
    cells = pd.Series(["Bark", "Bark,Unicorn", ""])
    assert SINGLE.known(cells, CLASSES).tolist() == [True, False, False]
    assert MULTI.known(cells, CLASSES).tolist() == [True, False, False]


def test_saved_marker_round_trips_and_single_label_carries_nothing():
    assert SINGLE.saved_marker() == {}
    assert MULTI.saved_marker() == {SAVED_KEY: True}
    for task in TASKS.values():
        assert task_of_saved({"width": 4, **task.saved_marker()}) is task
    assert task_of_saved({SAVED_KEY: False}) is SINGLE


def test_improves_on_hand_made_histories():
    row = {"valid_loss": 0.5, "valid_lwlrap": 0.7}
    assert SINGLE.improves([], row, best_loss=0.6)
    assert not SINGLE.improves([], row, best_loss=0.5)  # ties keep the earlier epoch
    assert not SINGLE.improves([], row, best_loss=0.4)
    earlier = [{"valid_lwlrap": 0.6}, {"valid_lwlrap": math.nan}]
    assert MULTI.improves(earlier, row, best_loss=0.1)  # lwlrap decides, not the loss
    assert not MULTI.improves([*earlier, {"valid_lwlrap": 0.7}], row, best_loss=9.0)
    assert MULTI.improves([], row, best_loss=0.1)  # the first epoch
    assert MULTI.improves([{"valid_lwlrap": math.nan}], row, best_loss=0.1)


def test_history_columns_and_selection():
    assert SINGLE.history_columns == HISTORY_COLUMNS
    assert MULTI.history_columns == (*HISTORY_COLUMNS, "valid_lwlrap")
    assert (SINGLE.selection_metric, SINGLE.higher_is_better) == ("valid_loss", False)
    assert (MULTI.selection_metric, MULTI.higher_is_better) == ("valid_lwlrap", True)


def test_tasks_by_name_layout_and_settings():
    assert task_named("single-label") is SINGLE and task_named("multi-label") is MULTI
    with pytest.raises(ValueError, match=r"unknown task 'multi_label'.*multi-label"):
        task_named("multi_label")
    assert task_of_layout("fsdkaggle2019") is MULTI
    with pytest.raises(ValueError, match="unknown dataset layout"):
        task_of_layout("fsdkaggle2020")
    assert task_of_settings({}) is SINGLE
    assert task_of_settings({"dataset": {"layout": "fsdkaggle2019"}}) is MULTI


# ---------------------------------------------------------------- the network registry


def saved_model(path, model: torch.nn.Module, **meta) -> None:
    torch.save({"state_dict": model.state_dict(), "classes": CLASSES, **meta}, path)


def test_a_saved_model_names_its_architecture_and_loads_by_name(tmp_path):
    net = {"width": 4, "dropout": [0.0, 0.0], "spectrogram": "v1", "batch_size": 8}
    assert architecture_metadata(net) == {
        "architecture": "vgg_gap",
        "architecture_args": {"width": 4, "dropout": [0.0, 0.0]},
    }
    torch.manual_seed(0)
    model = build_network(net, len(CLASSES))
    assert isinstance(model, VggGap) and (model.width, model.n_classes) == (4, 3)
    saved_model(tmp_path / "best.pt", model, **architecture_metadata(net))
    loaded, meta = load_model(tmp_path / "best.pt")
    x = torch.randn(2, 1, 128, 192)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert meta["architecture"] == "vgg_gap" and set(NETWORKS) == {"vgg_gap"}


def test_an_old_checkpoint_with_only_width_and_dropout_loads(tmp_path):
    torch.manual_seed(1)
    model = build_model(4, len(CLASSES), (0.0, 0.0))
    saved_model(tmp_path / "best.pt", model, width=4, dropout=[0.0, 0.0])
    loaded, meta = load_model(tmp_path / "best.pt")
    assert "architecture" not in meta
    x = torch.randn(2, 1, 128, 192)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_an_unknown_architecture_is_refused_with_its_name(tmp_path):
    model = build_model(4, len(CLASSES), (0.0, 0.0))
    saved_model(tmp_path / "best.pt", model, architecture="resnet9", architecture_args={"width": 4}, width=4)
    with pytest.raises(UserError, match=r"best.pt: unknown network architecture 'resnet9'.*vgg_gap"):
        load_model(tmp_path / "best.pt")
    with pytest.raises(UserError, match="unknown network architecture 'resnet9'"):
        build_network({"architecture": "resnet9", "width": 4}, 3)


def test_forward_with_embedding_gives_forwards_logits_and_the_pooled_features():
    """The embedding is what self-verification used to cut out of the layers (the pooled input
    of the last 1x1 convolution), bit for bit."""
    torch.manual_seed(2)
    model = build_model(4, 3, (0.0, 0.0)).eval()
    x = torch.randn(3, 1, 128, 192)
    with torch.no_grad():
        logits, embedding = model.forward_with_embedding(x)
        assert torch.equal(logits, model(x))
        hidden = model.features[:-2](x)
        assert torch.equal(embedding, hidden.float().mean(dim=(2, 3)))
        assert torch.equal(logits, model.features[-2:](hidden).mean(dim=(2, 3)))
    assert embedding.shape == (3, model.embedding_size) == (3, 32)


def test_every_task_has_a_training_objective_and_a_way_to_prepare_its_clips():
    """The dicts keyed by task.name that pick a task's functions name every task."""
    from workflow_lib.stages import _PREPARED
    from workflow_lib.training import OBJECTIVES, binary_cross_entropy, evaluate_label_sets

    assert set(OBJECTIVES) == set(TASKS) == set(_PREPARED)
    assert OBJECTIVES[MULTI.name].loss is binary_cross_entropy
    assert OBJECTIVES[MULTI.name].evaluate is evaluate_label_sets


def test_predict_whole_applies_the_tasks_activation():
    from workflow_lib.data import ClipBank
    from workflow_lib.training import predict_whole, whole_logits

    torch.manual_seed(3)
    model = build_model(4, 3, (0.0, 0.0)).eval()
    frames, n = 192, 3
    bank = ClipBank(torch.randn(n * frames, 128), torch.arange(n) * frames, torch.full((n,), frames), frames)
    logits = whole_logits(model, bank, 2, amp=False)
    for task in TASKS.values():
        np.testing.assert_array_equal(
            predict_whole(model, bank, 2, amp=False, task=task), task.activation(logits)
        )


def test_the_schema_offers_exactly_the_registered_networks():
    """A preset names its network (``method.nets.<preset>.architecture``): the config schema's
    choice is the registry's, so a registered network is selectable and nothing else is."""
    import yaml

    from conftest import REPO

    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    assert sorted(schema["$defs"]["net"]["properties"]["architecture"]["enum"]) == sorted(NETWORKS)


def test_a_preset_naming_its_network_resolves_and_builds_it():
    import copy

    import yaml

    from workflow_lib.config import resolve_settings
    from workflow_lib.job_settings import fit_settings
    from workflow_lib.model import build_network

    from conftest import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    preset = config["method"]["presets"][0]
    config = copy.deepcopy(config)
    config["method"]["nets"][preset]["architecture"] = "vgg_gap"
    job = fit_settings(resolve_settings(config), preset, 0)
    assert job["net"]["architecture"] == "vgg_gap"
    assert build_network(job["net"], 5).n_classes == 5

"""The VGG-GAP network (workflow_lib.model) against docs/method.md "Network".

The layer list of docs/method.md is written out again below by hand (not imported from the library
under test), and the parameter count is checked against the original's published figure.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workflow_lib.model import PAPER_DROPOUT, build_model, count_parameters, posteriors

# docs/method.md "Network", top to bottom. ("conv", kernel, stride, padding, out channels as a multiple
# of nf or "classes"), ("pool", (freq, time)), ("dropout", "conv" | "head").
SPEC_LAYERS = [
    ("conv", 5, 2, 2, 1),
    ("conv", 3, 1, 1, 1),
    ("pool", (2, 2)),
    ("dropout", "conv"),
    ("conv", 3, 1, 1, 2),
    ("conv", 3, 1, 1, 2),
    ("pool", (2, 2)),
    ("dropout", "conv"),
    ("conv", 3, 1, 1, 4),
    ("dropout", "conv"),
    ("conv", 3, 1, 1, 4),
    ("dropout", "conv"),
    ("conv", 3, 1, 1, 6),
    ("dropout", "conv"),
    ("conv", 3, 1, 1, 6),
    ("pool", (2, 2)),
    ("dropout", "conv"),
    ("conv", 3, 1, 1, 8),
    ("conv", 3, 1, 1, 8),
    ("pool", (1, 2)),
    ("dropout", "conv"),
    ("conv", 3, 1, 1, 8),
    ("conv", 3, 1, 1, 8),
    ("pool", (1, 2)),
    ("dropout", "conv"),
    ("conv", 3, 1, 0, 8),
    ("dropout", "head"),
    ("conv", 1, 1, 0, 8),
    ("dropout", "head"),
    ("conv", 1, 1, 0, "classes"),
]
SPEC_DROPOUT = {"conv": 0.3, "head": 0.5}


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def expected_sequence(nf: int, n_classes: int, dropout: dict[str, float]) -> list[tuple]:
    out = []
    for layer in SPEC_LAYERS:
        if layer[0] == "conv":
            _, k, s, p, mult = layer
            out.append(("conv", (k, k), (s, s), (p, p), n_classes if mult == "classes" else mult * nf))
        elif layer[0] == "pool":
            out.append(("pool", layer[1]))
        else:
            out.append(("dropout", dropout[layer[1]]))
    return out


def actual_sequence(model: nn.Module) -> list[tuple]:
    """Convolutions, pools and dropouts of the model in order (batch norm/ReLU checked apart)."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            out.append(
                (
                    "conv",
                    _pair(module.kernel_size),
                    _pair(module.stride),
                    _pair(module.padding),
                    module.out_channels,
                )
            )
        elif isinstance(module, nn.MaxPool2d):
            assert _pair(module.stride) == _pair(module.kernel_size), "pools do not overlap"
            out.append(("pool", _pair(module.kernel_size)))
        elif isinstance(module, nn.Dropout):
            out.append(("dropout", module.p))
        elif isinstance(module, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
            raise AssertionError(f"docs/method.md's dropout is plain dropout, found {module}")
    return out


def spec_parameter_count(nf: int, n_classes: int) -> int:
    """Conv weights + batch-norm scale, shift, running mean and variance, from SPEC_LAYERS."""
    total, channels = 0, 1
    for layer in SPEC_LAYERS:
        if layer[0] == "conv":
            _, k, _, _, mult = layer
            out = n_classes if mult == "classes" else mult * nf
            total += channels * out * k * k + 4 * out
            channels = out
    return total


@pytest.fixture(scope="module")
def paper_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(64, 41)


def test_parameter_count_matches_the_original(paper_model):
    """docs/method.md "Network", exact check: nf 64, 41 classes -> 14,865,124 (params + BN stats)."""
    assert spec_parameter_count(64, 41) == 14_865_124  # the hand-written list is right
    assert count_parameters(paper_model) == 14_865_124
    for nf, n_classes in [(4, 3), (48, 41), (10, 7)]:
        assert count_parameters(build_model(nf, n_classes)) == spec_parameter_count(nf, n_classes)


@pytest.mark.parametrize("frames, batch", [(3000, 2), (384, 3)])
def test_excerpts_and_whole_clips_give_posteriors(frames, batch):
    """docs/method.md: fully convolutional; trains on 384-frame excerpts, predicts on 3,000 frames."""
    torch.manual_seed(1)
    model = build_model(4, 5).eval()
    inputs = torch.randn(batch, 1, 128, frames)
    probs = posteriors(model, inputs)
    assert probs.shape == (batch, 5)
    assert probs.dtype == torch.float32
    assert torch.all(probs >= 0)
    assert torch.allclose(probs.sum(dim=1), torch.ones(batch), atol=1e-5)
    model.train()
    assert model(inputs).shape == (batch, 5)


def test_global_average_pooling_of_the_last_batch_norm():
    """docs/method.md: ... conv 1x1 -> n_classes ; batch norm (no ReLU) ; global average pool ; softmax."""
    torch.manual_seed(2)
    model = build_model(4, 6).eval()
    inputs = torch.randn(2, 1, 128, 200)
    with torch.no_grad():
        maps = model.features(inputs)
        assert maps.shape[:2] == (2, 6)
        assert (maps < 0).any(), "no ReLU after the last batch norm"
        assert torch.allclose(model(inputs), maps.mean(dim=(2, 3)), atol=1e-6)
        assert torch.allclose(posteriors(model, inputs), torch.softmax(model(inputs), 1))


def test_every_conv_has_no_bias_and_is_followed_by_batch_norm(paper_model):
    """docs/method.md: every conv has no bias and is followed by batch norm (momentum 0.1) and ReLU."""
    layers = list(paper_model.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 15
    for position, i in enumerate(convs):
        conv = layers[i]
        assert conv.bias is None
        bn = layers[i + 1]
        assert isinstance(bn, nn.BatchNorm2d), f"conv {position} is followed by {bn}"
        assert bn.num_features == conv.out_channels
        assert bn.momentum == pytest.approx(0.1)
        assert bn.affine and bn.track_running_stats
        follower = layers[i + 2] if i + 2 < len(layers) else None
        if position < len(convs) - 1:
            assert isinstance(follower, nn.ReLU), f"conv {position}: no ReLU after batch norm"
        else:
            assert follower is None, "the last batch norm has no ReLU and nothing after it"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in paper_model.modules()) == 15
    assert sum(isinstance(m, nn.ReLU) for m in paper_model.modules()) == 14


def test_layer_sequence_matches_spec_with_paper_dropout(paper_model):
    """docs/method.md's layer list: kernels, strides, paddings, pools and dropout 0.3 / 0.5."""
    assert PAPER_DROPOUT == (0.3, 0.5)
    assert actual_sequence(paper_model) == expected_sequence(64, 41, SPEC_DROPOUT)


def test_layer_sequence_with_custom_dropout():
    """Narrow nets take other dropout rates (conv blocks, head); the layers stay docs/method.md's."""
    model = build_model(6, 9, dropout=(0.05, 0.1))
    assert actual_sequence(model) == expected_sequence(6, 9, {"conv": 0.05, "head": 0.1})
    model = build_model(6, 9, dropout=(0.0, 0.0))
    assert actual_sequence(model) == expected_sequence(6, 9, {"conv": 0.0, "head": 0.0})


def test_he_normal_initialisation(paper_model):
    """docs/method.md: He-normal init, std sqrt(2 / fan_in), fan_in = in channels x kernel area."""
    convs = [m for m in paper_model.modules() if isinstance(m, nn.Conv2d)]
    checked = 0
    for conv in convs:
        weight = conv.weight.detach()
        if weight.numel() < 20_000:
            continue
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
        expected = math.sqrt(2.0 / fan_in)
        assert weight.std().item() == pytest.approx(expected, rel=0.03), conv
        assert abs(weight.mean().item()) < 0.05 * expected
        # Normal, not uniform: about 68.3 % within one std (uniform: 57.7 %).
        inside = (weight.abs() < expected).float().mean().item()
        assert inside == pytest.approx(0.6827, abs=0.02)
        checked += 1
    assert checked >= 12
    # fan_in, not fan_out: the 1x1 classifier conv (512 -> 41) tells them apart clearly.
    last = convs[-1].weight.detach()
    assert last.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    # Batch norm starts as identity.
    for bn in (m for m in paper_model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)

"""The VGG-style fully convolutional network with global average pooling (docs/method.md "Network").

Fully convolutional: it trains on short excerpts and predicts on whole spectrograms. The
network returns logits (after the last batch norm and the pooling); softmax is applied by the
loss and by :func:`posteriors`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .io import load_torch
from .layout import Layout

BN_MOMENTUM = 0.1  # docs/method.md; PyTorch's momentum has the same meaning as Lasagne's alpha
BN_EPS = 1e-4  # Lasagne's BatchNormLayer default, which the original network used


def conv_bn_relu(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int | None = None, relu: bool = True
) -> list[nn.Module]:
    """A bias-free convolution followed by batch norm and (optionally) ReLU."""
    padding = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


#: docs/method.md's dropout rates: after the convolutional blocks, and in the classifier head.
PAPER_DROPOUT = (0.3, 0.5)


def _layers(width: int, n_classes: int, dropout: tuple[float, float]) -> list[nn.Module]:
    """The layer list of docs/method.md, top to bottom."""
    nf, (conv_p, head_p) = width, dropout
    return [
        *conv_bn_relu(1, nf, 5, stride=2, padding=2),
        *conv_bn_relu(nf, nf, 3),
        nn.MaxPool2d(2),
        nn.Dropout(conv_p),
        *conv_bn_relu(nf, 2 * nf, 3),
        *conv_bn_relu(2 * nf, 2 * nf, 3),
        nn.MaxPool2d(2),
        nn.Dropout(conv_p),
        *conv_bn_relu(2 * nf, 4 * nf, 3),
        nn.Dropout(conv_p),
        *conv_bn_relu(4 * nf, 4 * nf, 3),
        nn.Dropout(conv_p),
        *conv_bn_relu(4 * nf, 6 * nf, 3),
        nn.Dropout(conv_p),
        *conv_bn_relu(6 * nf, 6 * nf, 3),
        nn.MaxPool2d(2),
        nn.Dropout(conv_p),
        *conv_bn_relu(6 * nf, 8 * nf, 3),
        *conv_bn_relu(8 * nf, 8 * nf, 3),
        nn.MaxPool2d((1, 2)),
        nn.Dropout(conv_p),
        *conv_bn_relu(8 * nf, 8 * nf, 3),
        *conv_bn_relu(8 * nf, 8 * nf, 3),
        nn.MaxPool2d((1, 2)),
        nn.Dropout(conv_p),
        *conv_bn_relu(8 * nf, 8 * nf, 3, padding=0),
        nn.Dropout(head_p),
        *conv_bn_relu(8 * nf, 8 * nf, 1),
        nn.Dropout(head_p),
        *conv_bn_relu(8 * nf, n_classes, 1, relu=False),
    ]


class VggGap(nn.Module):
    """VGG-GAP: input (batch, 1, 128, time) -> class logits (batch, n_classes)."""

    def __init__(self, width: int, n_classes: int, dropout: tuple[float, float] = PAPER_DROPOUT) -> None:
        super().__init__()
        self.width, self.n_classes = width, n_classes
        self.features = nn.Sequential(*_layers(width, n_classes, tuple(dropout)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal initialisation of every convolution (docs/method.md)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        return self.features(spectrograms).mean(dim=(2, 3))


def build_model(width: int, n_classes: int, dropout: tuple[float, float] = PAPER_DROPOUT) -> VggGap:
    """The one builder for every preset: the presets differ in width only.

    ``dropout`` = (conv blocks, head). Narrow networks need lower rates than docs/method.md's: with
    8-16 channels, dropout inflates the batch-norm running variances so much that the network
    predicts near-uniform posteriors in evaluation mode (measured on the demo: chance level at
    (0.3, 0.5), 100 % at (0.06, 0.1)).
    """
    return VggGap(width, n_classes, dropout)


def count_parameters(model: nn.Module) -> int:
    """Parameters plus batch-norm running statistics, as the original's figure counts them."""
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))
    return params + stats


def probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Class probabilities from logits, as float32: softmax over the classes (single-label: one
    class per clip) or an independent sigmoid per class (multi-label: any set of classes)."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


@torch.no_grad()
def posteriors(model: nn.Module, spectrograms: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Class posteriors (:func:`probabilities` of the logits) in evaluation mode."""
    model.eval()
    return probabilities(model(spectrograms), multi_label)


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved network in evaluation mode; returns (model, metadata). Its outputs are
    turned into probabilities with ``metadata.get("multi_label", False)``."""
    saved = load_torch(path, rule=Layout.model_rule(path))
    model = build_model(saved["width"], len(saved["classes"]), tuple(saved["dropout"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved

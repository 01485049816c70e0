"""The VGG-style fully convolutional network with global average pooling (docs/method.md "Network").

Fully convolutional: it trains on short excerpts and predicts on whole spectrograms. The
network returns logits (after the last batch norm and the pooling); the task's activation
(``Task.activation``: a softmax, or a sigmoid per class) is applied by the loss and by
:func:`posteriors`.

Networks are built by name from :data:`NETWORKS` (today one, ``vgg_gap``). A saved model names
its architecture and the arguments it was built with (:func:`architecture_metadata`), so
:func:`load_model` rebuilds it without knowing which network a preset uses; models saved before
the registry (only ``width`` and ``dropout``) load as ``vgg_gap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .io import load_torch
from .layout import Layout
from .task import SINGLE, Task

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
        """Class logits; the plain form TorchScript and ONNX export trace."""
        return self.features(spectrograms).mean(dim=(2, 3))

    def forward_with_embedding(self, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding): the embedding is the float32 global average of the last feature
        layer's output, the input of the classifying 1x1 convolution and its batch norm (trust
        policies that compare clips use it). The logits are :meth:`forward`'s."""
        hidden = self.features[:-2](spectrograms)
        logits = self.features[-2:](hidden).mean(dim=(2, 3))
        return logits, hidden.float().mean(dim=(2, 3))

    @property
    def embedding_size(self) -> int:
        """Length of :meth:`forward_with_embedding`'s embedding."""
        return 8 * self.width


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


def probabilities(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Class probabilities from logits, as float32: a softmax over the classes, or (``sigmoid``)
    an independent sigmoid per class. The TorchScript-able form of ``Task.activation``, for
    modules that are scripted and so cannot hold a Task; elsewhere ask the task."""
    logits = logits.float()
    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)


@torch.no_grad()
def posteriors(model: nn.Module, spectrograms: torch.Tensor, task: Task = SINGLE) -> torch.Tensor:
    """Class posteriors (``task.activation`` of the logits) in evaluation mode."""
    model.eval()
    return task.activation(model(spectrograms))


@dataclass(frozen=True)
class NetworkSpec:
    """One network of the registry: how to build it, and which of a preset's settings
    (config ``method.nets.<preset>``, plus the job's dropout) are its arguments.

    build: (n_classes, **arguments) -> the network, freshly initialised.
    arguments: the names of ``build``'s keyword arguments, as saved with a model.
    """

    build: Callable[..., nn.Module]
    arguments: tuple[str, ...]


def _vgg_gap(n_classes: int, width: int, dropout: tuple[float, float] = PAPER_DROPOUT) -> VggGap:
    """:class:`VggGap` from its saved arguments (``dropout`` a JSON list or a tuple)."""
    return build_model(width, n_classes, tuple(dropout))


#: Every network a preset can use, by name (a saved model's ``architecture``).
NETWORKS: dict[str, NetworkSpec] = {"vgg_gap": NetworkSpec(_vgg_gap, ("width", "dropout"))}

#: The network of presets that name none (config ``method.nets.<preset>.architecture``
#: absent, as in every config so far).
DEFAULT_NETWORK = "vgg_gap"


def network_spec(name: str) -> NetworkSpec:
    """The registered network ``name``, or a clear error naming the known ones."""
    if name not in NETWORKS:
        raise UserError(f"unknown network architecture {name!r}: use one of {sorted(NETWORKS)}")
    return NETWORKS[name]


def architecture_metadata(net: Mapping[str, Any]) -> dict[str, Any]:
    """The keys a saved model carries to be rebuilt: ``architecture`` (a name of
    :data:`NETWORKS`) and ``architecture_args``, taken from a job's ``net`` settings."""
    name = net.get("architecture", DEFAULT_NETWORK)
    return {
        "architecture": name,
        "architecture_args": {key: net[key] for key in network_spec(name).arguments},
    }


def build_network(net: Mapping[str, Any], n_classes: int) -> nn.Module:
    """A fresh network for a job's ``net`` settings (:func:`architecture_metadata`)."""
    meta = architecture_metadata(net)
    return network_spec(meta["architecture"]).build(n_classes, **meta["architecture_args"])


def saved_architecture(saved: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of a saved model; one saved before the registry is a VGG-GAP of its
    ``width`` and ``dropout``."""
    if "architecture" in saved:
        return saved["architecture"], dict(saved["architecture_args"])
    return "vgg_gap", {"width": saved["width"], "dropout": saved["dropout"]}


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a saved network in evaluation mode; returns (model, metadata). The task its
    outputs are probabilities of is ``task_of_saved(metadata)`` (workflow_lib.task)."""
    saved = load_torch(path, rule=Layout.model_rule(path))
    name, arguments = saved_architecture(saved)
    try:
        spec = network_spec(name)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    model = spec.build(len(saved["classes"]), **arguments)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved

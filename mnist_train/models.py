"""The classifiers (softmax regression of seed 001, the MLP of seed 000, a CNN), optimizers and
learning-rate schedules."""

from __future__ import annotations

import torch
from torch import nn

from .config import RunConfig

ACTIVATION_LAYERS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
INPUTS, CLASSES = 28 * 28, 10


def build_model(config: RunConfig) -> nn.Sequential:
    """A network from (N, 784) inputs to (N, 10) logits.

    Layers are created in order, so for a given seed the initial weights are the ones the seed
    notebooks drew (`nn.Linear(784, 10)` for softmax; Linear, activation, Linear for the MLP).
    """
    if config.model == "softmax":
        return nn.Sequential(nn.Linear(INPUTS, CLASSES))
    layers: list[nn.Module] = []
    width = INPUTS
    if config.model == "cnn":
        layers, width = _conv_layers(config)
    for hidden in config.hidden_sizes:
        layers += [nn.Linear(width, hidden), ACTIVATION_LAYERS[config.activation]()]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = hidden
    layers.append(nn.Linear(width, CLASSES))
    model = nn.Sequential(*layers)
    if config.model == "cnn" and config.channels_last:
        # NHWC is oneDNN's own layout: the convolutions skip a reorder each way and the max-pool
        # takes its vectorised path (cnn_fast.yaml: 1.7x less CPU per epoch, measured). Only the
        # 4-d weights change layout; activations follow them, and Flatten restores NCHW order,
        # so the dense layers see what they see without it: the same function.
        model = model.to(memory_format=torch.channels_last)
    return model


def _conv_layers(config: RunConfig) -> tuple[list[nn.Module], int]:
    """The CNN's feature extractor from (N, 784) pixels, and the width it flattens to.

    Each entry of `conv_channels` is a 3x3 convolution (padding 1, so only pooling shrinks the
    image), the configured activation and a 2x2 max-pool: 28 -> 14 -> 7 -> 3 pixels a side.
    The input stays the contract's float32 (N, 784), so logged models, `--predict`, sweeps and
    reports take a CNN as they take an MLP.

    With `batch_norm` a block is convolution (no bias: the normalisation's shift replaces it),
    max-pool, BatchNorm2d, activation: the normalisation and the activation then run on the
    pooled map, a quarter of the values.
    """
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 28, 28))]
    channels, side = 1, 28
    for out in config.conv_channels:
        conv = nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not config.batch_norm)
        activation = ACTIVATION_LAYERS[config.activation]()
        if config.batch_norm:
            layers += [conv, nn.MaxPool2d(2), nn.BatchNorm2d(out), activation]
        else:
            layers += [conv, activation, nn.MaxPool2d(2)]
        channels, side = out, side // 2
    layers.append(nn.Flatten())
    return layers, channels * side * side


class Standardize(nn.Module):
    """(x - mean) / std with fixed statistics, so a logged model takes plain [0, 1] pixels."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def with_preprocessing(model: nn.Module, mean: float, std: float) -> nn.Sequential:
    """The model as users load it from MLflow: float32 (N, 784) pixels in [0, 1] -> logits."""
    return nn.Sequential(Standardize(mean, std), model)


def parameter_summary(model: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape, count) of every trainable parameter tensor, in order."""
    return [
        (name, tuple(p.shape), p.numel()) for name, p in model.named_parameters() if p.requires_grad
    ]


def summary_text(model: nn.Module) -> str:
    """The per-layer parameter table seed 000 prints, plus the total."""
    rows = parameter_summary(model)
    width = max([len(name) for name, _, _ in rows] + [len("total")])
    lines = [str(model), "", f"{'parameter':<{width}}  {'shape':<12} {'count':>9}"]
    for name, shape, count in rows:
        lines.append(f"{name:<{width}}  {str(list(shape)):<12} {count:>9,}")
    lines.append(f"{'total':<{width}}  {'':<12} {sum(c for _, _, c in rows):>9,}")
    return "\n".join(lines) + "\n"


def count_parameters(model: nn.Module) -> int:
    return sum(count for _, _, count in parameter_summary(model))


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay = config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=decay
        )
    # fused: one kernel for the whole update instead of a dozen small ops per tensor; measured
    # 17% faster per epoch for the seed MLP on CPU; the same update rule
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.lr, weight_decay=decay, fused=True)


def build_scheduler(
    config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, or None. `step` and `cosine` step once per epoch; `onecycle`
    steps after every batch (`train()` knows which from `steps_every_batch(config)`)."""
    schedules = torch.optim.lr_scheduler
    if config.scheduler == "step":
        return schedules.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.scheduler == "cosine":
        return schedules.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.min_lr)
    if config.scheduler == "onecycle":
        return schedules.OneCycleLR(
            optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch
        )
    return None


def steps_every_batch(config: RunConfig) -> bool:
    """True when the schedule advances after every batch rather than every epoch."""
    return config.scheduler == "onecycle"

"""MACs and parameter counts of a PyTorch module, measured with forward hooks.

Counts follow the project's cost model (DESIGN.md): a Conv costs Cout·Cin/groups·kh·kw·Hout·Wout
multiply-accumulates per sample, a Linear in·out; everything else (BN, activations, pooling, adds)
is free. Parameters are the module's trainable parameters (BN affine included, running stats not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelStats:
    macs: int  # per sample
    params: int


def count_macs_params(module: nn.Module, input_shape: tuple[int, ...]) -> ModelStats:
    """MACs per sample for an input of `input_shape` (batch dimension included), and params."""
    macs = 0  # the hooks read per-sample sizes (output H, W), so the batch never enters the count

    def conv_hook(layer: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = layer.kernel_size
        cin_per_group = layer.in_channels // layer.groups
        macs += layer.out_channels * cin_per_group * kh * kw * output.shape[2] * output.shape[3]

    def linear_hook(layer: nn.Linear, _inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        nonlocal macs
        macs += layer.in_features * layer.out_features

    handles = []
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(linear_hook))
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return ModelStats(macs=macs, params=params)

"""How big a student is: parameters and multiply-accumulates (MACs) of one forward pass.

MACs are counted with forward hooks on the layers that do the arithmetic (convolutions,
transposed convolutions, linear layers), the convention of thop and fvcore: batch norm,
activations, additions and resizes are left out (they are a few percent of a convolution net
and batch norm disappears into the convolutions on export anyway). No MAC counter library is
in the environment, and the hook rule is short enough to read in full below.
"""

import torch
from torch import nn

from portraitseg.resize import InputSize


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def layer_macs(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """MACs of one call of `layer` for a batch of one (the batch dimension is divided out)."""
    batch = output.shape[0]
    if isinstance(layer, nn.ConvTranspose2d):
        # Every input pixel is scattered through a (C_out / groups) x kh x kw kernel.
        kernel = layer.out_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        return inputs[0].numel() // batch * kernel
    if isinstance(layer, nn.Conv2d):
        # Every output value is a dot product over (C_in / groups) x kh x kw inputs.
        kernel = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        return output.numel() // batch * kernel
    if isinstance(layer, nn.Linear):
        return output.numel() // batch * layer.in_features
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, size: InputSize) -> int:
    """MACs of `model` on one (1, C, height, width) input (convolutions and linear layers)."""
    total = 0

    def add(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += layer_macs(layer, inputs, output)

    counted = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [layer.register_forward_hook(add) for layer in model.modules() if isinstance(layer, counted)]
    try:
        was_training = model.training
        model.eval()
        model(torch.zeros(1, getattr(model, "in_channels", 3), *size))  # 4 channels for a prior model
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return total

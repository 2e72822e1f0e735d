"""The inference graph every artefact holds: preprocessing and the sigmoid live inside it.

    (1, H, W, C) float32 RGB, 0..255  ->  ImageNet normalisation, NHWC -> NCHW
                                       ->  student (batch norm folded)  ->  sigmoid
                                       ->  (1, H, W) float32 person probability

(H, W) is the artefact's input size: S x S, or e.g. a landscape 144 x 256.

C is the student's `in_channels`: 3, or 4 for a student that also takes the previous frame's
mask (`model_options.prior`). That fourth channel is a probability given as 0..255 like the
image, and the graph scales it by 1 / 255: every runtime then feeds one 0..255 tensor, and int8
input quantization (scale 1 over 0..255) stays exact for all four channels.

Why inside the graph: every runtime then takes the same input (the resized photo as it comes
from the decoder, just cast to float) and gives the same output, so runners stay a few lines and
cannot disagree on preprocessing; int8 input quantization of 0..255 values is exact (scale 1);
and LiteRT's layout pass cancels our NHWC -> NCHW transpose against its own.

The normalisation is a per-channel multiply-add over the whole input. In LiteRT it is slow: the
`selfie_segmenter` graph at 224 x 224 runs in 0.76x the time without it (README "Where the time
goes"). So when the model's stem can take it (`fold_normalisation`: a stem that pads with black,
whose weights then absorb scale and shift exactly), the graph folds it there and has no
multiply-add at all; other students keep it.
"""

import copy

import torch
from torch import nn

from portraitseg.resize import InputSize, as_input_size
from trainer.data import input_normalisation
from trainer.models.base import fuse_conv_batch_norm, input_convolutions


class InferenceGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.in_channels = int(getattr(model, "in_channels", 3))
        scale, shift = input_normalisation(self.in_channels)  # (x / 255 - mean) / std  ==  x * scale + shift
        stems = input_convolutions(model)
        self.normalises = not (len(stems) == 1 and hasattr(stems[0], "fold_normalisation"))
        if self.normalises:
            self.register_buffer("scale", scale)
            self.register_buffer("shift", shift)
        else:
            replace_module(model, stems[0], stems[0].fold_normalisation(scale, shift))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)  # (N, C, H, W)
        if self.normalises:
            x = x * self.scale + self.shift
        logits = self.model(x)  # (N, 1, H, W)
        return torch.sigmoid(logits)[:, 0]  # (N, H, W)


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` where `old` sits in `model` (in place)."""
    name = next(name for name, module in model.named_modules() if module is old)
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, new)


def build_inference_graph(model: nn.Module) -> InferenceGraph:
    """A copy of `model` in eval mode with batch norm folded, wrapped with pre- and postprocessing."""
    folded = fuse_conv_batch_norm(copy.deepcopy(model).eval())
    return InferenceGraph(folded).eval()


def example_input(size: "InputSize | int", channels: int = 3) -> torch.Tensor:
    """A (1, H, W, channels) float32 sample in the graph's input range, for tracing; `size` is S or (H, W)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, *as_input_size(size), channels), generator=generator).float()

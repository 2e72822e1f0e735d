"""The inference graph every artefact holds: preprocessing and the sigmoid live inside it.

    (1, S, S, 3) float32 RGB, 0..255  ->  ImageNet normalisation, NHWC -> NCHW
                                       ->  student (batch norm folded)  ->  sigmoid
                                       ->  (1, S, S) float32 person probability

Why inside the graph: every runtime then takes the same input (the resized photo as it comes
from the decoder, just cast to float) and gives the same output, so runners stay a few lines and
cannot disagree on preprocessing; the normalisation is a per-channel multiply-add that costs
nothing next to the first convolution; int8 input quantization of 0..255 values is exact
(scale 1); and LiteRT's layout pass cancels our NHWC -> NCHW transpose against its own.
"""

import copy

import torch
from torch import nn

from trainer.data import IMAGENET_MEAN, IMAGENET_STD
from trainer.models.base import fuse_conv_batch_norm


class InferenceGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) * self.scale + self.shift  # (N, 3, S, S) normalised
        logits = self.model(x)  # (N, 1, S, S)
        return torch.sigmoid(logits)[:, 0]  # (N, S, S)


def build_inference_graph(model: nn.Module) -> InferenceGraph:
    """A copy of `model` in eval mode with batch norm folded, wrapped with pre- and postprocessing."""
    folded = fuse_conv_batch_norm(copy.deepcopy(model).eval())
    return InferenceGraph(folded).eval()


def example_input(size: int) -> torch.Tensor:
    """A (1, S, S, 3) float32 sample in the graph's input range, for tracing."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, size, size, 3), generator=generator).float()

"""BlazeSeg: a BlazeFace-style encoder-decoder for 128 x 128 selfie segmentation.

The seed notes' design (after MediaPipe's BlazeFace blocks, arXiv:1907.05047): an encoder of
5 x 5 depthwise convolutions followed by 1 x 1 pointwise convolutions with residual
connections, downsampling by 16; a decoder whose blocks upsample bilinearly, project channels
with a 1 x 1 convolution, concatenate the encoder skip, then apply a depthwise and a pointwise
convolution. About 0.16 M parameters with one output channel. 5 x 5 depthwise kernels widen the
receptive field almost for free: on a phone the depthwise part costs little next to the
pointwise part.
"""

import torch
from torch import nn

from trainer.models import register_model
from trainer.models.base import ConvBNAct, SegmentationModel, upsample_to
from trainer.models.pretrained import refuse_pretrained


class BlazeBlock(nn.Module):
    """Depthwise 5 x 5 (strided when downsampling) + pointwise 1 x 1, added to a shortcut, then ReLU.

    The shortcut max-pools when the block downsamples (BlazeFace) and projects with a 1 x 1
    convolution when the channel count changes (BlazeFace pads with zeros; a projection
    exports to every runtime as a plain convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(
            ConvBNAct(in_channels, in_channels, 5, stride, groups=in_channels, activation=None),
            ConvBNAct(in_channels, out_channels, 1, activation=None),
        )
        shortcut: list[nn.Module] = []
        if stride == 2:
            shortcut.append(nn.MaxPool2d(2))
        if in_channels != out_channels:
            shortcut.append(ConvBNAct(in_channels, out_channels, 1, activation=None))
        self.shortcut = nn.Sequential(*shortcut)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.branch(x) + self.shortcut(x))


class BlazeDecoderBlock(nn.Module):
    """Upsample x2 (bilinear), project to the skip's width, concatenate the skip, depthwise + pointwise."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.project = ConvBNAct(in_channels, skip_channels, 1)
        self.fuse = nn.Sequential(
            ConvBNAct(2 * skip_channels, 2 * skip_channels, 3, groups=2 * skip_channels),
            ConvBNAct(2 * skip_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.project(upsample_to(x, skip))  # (N, skip_channels, H_skip, W_skip)
        return self.fuse(torch.cat([x, skip], dim=1))


class BlazeSeg(SegmentationModel):
    output_stride = 16

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 160),
        depths: tuple[int, ...] = (1, 2, 2, 4),
        num_classes: int = 1,
    ):
        super().__init__()
        if len(widths) != len(depths) or len(widths) != 4:
            raise ValueError(f"BlazeSeg has 4 stages (/2 /4 /8 /16): got widths {widths} and depths {depths}")
        self.stem = ConvBNAct(3, widths[0], 3, stride=2)  # (N, w0, H/2, W/2)
        stages = []
        in_channels = widths[0]
        for index, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if index == 0 else 2
            blocks = [BlazeBlock(in_channels, width, stride)]
            blocks += [BlazeBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)  # outputs at /2 /4 /8 /16
        # Decoder from /16 back to /2; each block ends at its skip's width.
        self.decoder = nn.ModuleList(
            BlazeDecoderBlock(widths[index + 1], widths[index], widths[index])
            for index in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            features.append(y)  # finest first: /2 /4 /8 /16
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
        return upsample_to(self.head(y), x)  # (N, num_classes, H, W): logits at /2 resized bilinearly


@register_model
def blazeseg(pretrained: bool = False, **options) -> BlazeSeg:
    """BlazeSeg, ~0.16 M parameters, designed for 128 x 128 input."""
    refuse_pretrained("blazeseg", pretrained)
    return BlazeSeg(**options)

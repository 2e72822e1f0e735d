"""EfficientNet-Lite0 encoder with a light segmentation head.

EfficientNet-Lite (TensorFlow's edge variant of Tan & Le, 2019) keeps EfficientNet-B0's MBConv
stages but removes what quantises or runs badly on mobile hardware: no squeeze-and-excitation,
ReLU6 instead of swish, and a fixed stem and head width. Built here from plain modules (no
torchvision EfficientNet weights fit: those have SE and SiLU). The head is a light FPN: 1 x 1
projections of the /4 /8 /16 /32 features, bilinear upsample-and-add, one separable 3 x 3
convolution, a 1 x 1 classifier at /4.
"""

import torch
from torch import nn

from trainer.models import register_model
from trainer.models.base import (
    ConvBNAct,
    SegmentationModel,
    SeparableConv,
    StagedEncoder,
    upsample_to,
)
from trainer.models.pretrained import refuse_pretrained

# EfficientNet-B0/Lite0 stages: (expand ratio, kernel, stride, out channels, repeats).
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
LITE0_STEM = 32


class MBConv(nn.Module):
    """Inverted residual without squeeze-excite: 1 x 1 expand, k x k depthwise, 1 x 1 project (linear)."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, activation=nn.ReLU6),
            ConvBNAct(hidden, out_channels, 1, activation=None),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


def efficientnet_lite0_features() -> nn.Sequential:
    """The Lite0 feature stack (stem + MBConv stages), without the 1280-channel classifier head."""
    layers: list[nn.Module] = [ConvBNAct(3, LITE0_STEM, 3, stride=2, activation=nn.ReLU6)]
    in_channels = LITE0_STEM
    for expand_ratio, kernel_size, stride, out_channels, repeats in LITE0_STAGES:
        for index in range(repeats):
            layers.append(MBConv(in_channels, out_channels, expand_ratio, kernel_size, stride if index == 0 else 1))
            in_channels = out_channels
    return nn.Sequential(*layers)


class EfficientNetLiteSeg(SegmentationModel):
    def __init__(self, head_channels: int = 64, num_classes: int = 1):
        super().__init__()
        self.encoder = StagedEncoder(efficientnet_lite0_features())
        # The /2 map (16 channels) adds little over /4 and costs the most memory; the head starts at /4.
        self.lateral = nn.ModuleList(
            ConvBNAct(c, head_channels, 1, activation=nn.ReLU6) for c in self.encoder.out_channels[1:]
        )
        self.smooth = SeparableConv(head_channels, head_channels, activation=nn.ReLU6)
        self.head = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[1:]  # strides /4 /8 /16 /32
        y = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            y = upsample_to(y, feature) + lateral(feature)
        return upsample_to(self.head(self.smooth(y)), x)  # (N, num_classes, H, W)


@register_model
def efficientnet_lite(pretrained: bool = False, **options) -> EfficientNetLiteSeg:
    """EfficientNet-Lite0 encoder (no SE, ReLU6) + light FPN head."""
    refuse_pretrained(
        "efficientnet_lite", pretrained, "torchvision ships no EfficientNet-Lite weights (its B0 has SE and SiLU)"
    )
    return EfficientNetLiteSeg(**options)

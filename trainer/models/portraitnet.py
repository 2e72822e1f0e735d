"""PortraitNet: a MobileNetV2 encoder, a residual decoder with additive skips, and a boundary head.

After "PortraitNet: Real-time portrait segmentation network for mobile device" (Zhang et al.,
Computers & Graphics 2019). Each decoder stage is a residual block of two depthwise-separable
convolutions (the paper's D-Block) whose output, upsampled x2, is *added* to the encoder
feature at that stride (cheaper than concatenation). The auxiliary boundary head shares the
last decoder map; it trains the features to be sharp at the person's outline (with the boundary
focal loss) and is not part of the inference graph: `forward` returns only the mask.
"""

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from trainer.models import register_model
from trainer.models.base import ConvBNAct, SegmentationModel, StagedEncoder, upsample_to
from trainer.models.pretrained import torchvision_weights


class ResidualDecoderBlock(nn.Module):
    """PortraitNet's D-Block: two separable 3 x 3 convs on the main path, a 1 x 1 conv on the shortcut, add, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.branch = nn.Sequential(
            ConvBNAct(in_channels, in_channels, 3, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
            ConvBNAct(out_channels, out_channels, 3, groups=out_channels),
            ConvBNAct(out_channels, out_channels, 1, activation=None),
        )
        self.shortcut = ConvBNAct(in_channels, out_channels, 1, activation=None)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.branch(x) + self.shortcut(x))


class PortraitNet(SegmentationModel):
    def __init__(self, features: nn.Sequential, final_channels: int = 8, num_classes: int = 1):
        super().__init__()
        self.encoder = StagedEncoder(features)
        channels = self.encoder.out_channels  # finest first, e.g. [16, 24, 32, 96, 320] for MobileNetV2
        # Block i maps the coarser map to the width of the next finer skip, so the skip can be added.
        targets = [*reversed(channels[:-1]), final_channels]
        sources = [channels[-1], *reversed(channels[:-1])]
        self.decoder = nn.ModuleList(ResidualDecoderBlock(cin, cout) for cin, cout in zip(sources, targets))
        self.mask_head = nn.Conv2d(final_channels, num_classes, 1)
        self.edge_head = nn.Conv2d(final_channels, 1, 1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # strides /2 ... /32
        y = features[-1]
        for block, skip in zip(self.decoder[:-1], reversed(features[:-1])):
            y = upsample_to(block(y), skip) + skip  # additive skip at the finer stride
        return self.decoder[-1](y)  # (N, final_channels, H/2, W/2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.mask_head(self.decode(x)), x)

    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.decode(x)
        return {"mask": upsample_to(self.mask_head(y), x), "edge": upsample_to(self.edge_head(y), x)}


@register_model
def portraitnet(width_mult: float = 1.0, pretrained: bool = False, **options) -> PortraitNet:
    """PortraitNet with a MobileNetV2 encoder (width 1.0 as in the paper) and a training-only boundary head."""
    if pretrained and width_mult != 1.0:
        raise ValueError(f"torchvision has ImageNet weights for MobileNetV2 width 1.0 only, not {width_mult}")
    backbone = mobilenet_v2(weights=torchvision_weights(MobileNet_V2_Weights, pretrained), width_mult=width_mult)
    return PortraitNet(backbone.features[:-1], **options)

"""Mobile-UNet: a MobileNetV2 or MobileNetV3 encoder with U-Net skip connections.

The encoder is torchvision's `features` stack without its final 1 x 1 expansion convolution
(1280 or 576/960 channels that only a classifier needs), cut into one stage per stride: skips at
/2 /4 /8 /16 and the bottleneck at /32. The decoder climbs back one stride per block: upsample x2
(bilinear, or a learned transposed convolution), concatenate the skip, two 3 x 3 convolutions
(the first depthwise-separable to stay cheap) — then a 1 x 1 head at /2 and a bilinear resize of
the logits to the input size.
"""

import torch
from torch import nn
from torchvision.models import (
    MobileNet_V2_Weights,
    MobileNet_V3_Large_Weights,
    MobileNet_V3_Small_Weights,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)

from trainer.models import register_model
from trainer.models.base import (
    ConvBNAct,
    SegmentationModel,
    SeparableConv,
    StagedEncoder,
    upsample_to,
)
from trainer.models.pretrained import torchvision_weights

DECODERS = ("upsample", "transpose")


class UNetDecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip, separable 3 x 3 then pointwise conv to `out_channels`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, decoder: str = "upsample"):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        # A stride-2 transposed conv doubles the size exactly, so it matches the skip for inputs divisible by 32.
        self.upsample = (
            nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2, groups=in_channels, bias=False)
            if decoder == "transpose"
            else None
        )
        self.fuse = nn.Sequential(
            SeparableConv(in_channels + skip_channels, out_channels),
            ConvBNAct(out_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x) if self.upsample is not None else upsample_to(x, skip)  # (N, C_in, H_skip, W_skip)
        return self.fuse(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Fuses encoder features (finest first, each stride twice the previous) into one map at the finest stride."""

    def __init__(self, encoder_channels: list[int], decoder_channels: tuple[int, ...], decoder: str = "upsample"):
        super().__init__()
        if len(decoder_channels) != len(encoder_channels) - 1:
            raise ValueError(
                f"need one decoder width per skip: {len(encoder_channels) - 1} for encoder channels {encoder_channels}, "
                f"got {decoder_channels}"
            )
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        skip_channels = list(reversed(encoder_channels[:-1]))
        self.blocks = nn.ModuleList(
            UNetDecoderBlock(cin, cskip, cout, decoder)
            for cin, cskip, cout in zip(in_channels, skip_channels, decoder_channels)
        )
        self.out_channels = decoder_channels[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = block(x, skip)
        return x


class MobileUNet(SegmentationModel):
    """Any `features` stack that halves the resolution five times + U-Net decoder + 1 x 1 head."""

    def __init__(
        self,
        features: nn.Sequential,
        decoder_channels: tuple[int, ...] = (64, 32, 24, 16),
        decoder: str = "upsample",
        num_classes: int = 1,
    ):
        super().__init__()
        self.encoder = StagedEncoder(features)
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels, decoder)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # [(N, C_i, H / 2**(i+1), W / 2**(i+1)) for i in 0..4]
        return upsample_to(self.head(self.decoder(features)), x)  # (N, num_classes, H, W)


def mobilenet_v2_features(width_mult: float, pretrained: bool) -> nn.Sequential:
    """torchvision's MobileNetV2 `features` without the final 1 x 1 expansion; ImageNet weights for width 1.0 only."""
    if pretrained and width_mult != 1.0:
        raise ValueError(f"torchvision has ImageNet weights for MobileNetV2 width 1.0 only, not {width_mult}")
    return mobilenet_v2(weights=torchvision_weights(MobileNet_V2_Weights, pretrained), width_mult=width_mult).features[:-1]


def mobilenet_v3_features(variant: str, pretrained: bool) -> nn.Sequential:
    """torchvision's MobileNetV3 ("small" or "large") `features` without the final 1 x 1 expansion."""
    builders = {
        "small": (mobilenet_v3_small, MobileNet_V3_Small_Weights),
        "large": (mobilenet_v3_large, MobileNet_V3_Large_Weights),
    }
    if variant not in builders:
        raise ValueError(f"unknown MobileNetV3 variant {variant!r}; choose one of {', '.join(builders)}")
    build, weights = builders[variant]
    return build(weights=torchvision_weights(weights, pretrained)).features[:-1]


@register_model
def mobile_unet(width_mult: float = 0.5, pretrained: bool = False, **options) -> MobileUNet:
    """MobileNetV2 (width 0.5 by default) encoder + U-Net decoder; ImageNet weights exist for width 1.0 only."""
    return MobileUNet(mobilenet_v2_features(width_mult, pretrained), **options)


@register_model
def mobile_unet_v3(variant: str = "small", pretrained: bool = False, **options) -> MobileUNet:
    """MobileNetV3 ("small" or "large") encoder + U-Net decoder."""
    return MobileUNet(mobilenet_v3_features(variant, pretrained), **options)

"""LR-ASPP: a MobileNet encoder at output stride 16 (or 32) and the Lite R-ASPP head, a student for CPU runtimes.

The head is the one of "Searching for MobileNetV3" (Howard et al. 2019), the design family of
MediaPipe's selfie segmenter and of torchvision's `lraspp_mobilenet_v3_large`: the stride-16
features pass a 1 x 1 convolution gated by their own global average (a squeeze-excite style
attention), are upsampled to the low-level features at stride 8 (or 4), and each branch gets a
1 x 1 classifier; the sum is resized to the input. Compared with `mobile_unet`'s four decoder
blocks, which run separable convolutions up to stride 2, it spends almost nothing after the
encoder: the time goes where the pretrained weights are.

The encoder is `mobile_unet`'s (torchvision `features` without the final expansion, cut into
stages by `StagedEncoder`, so its tensors have the same names and a `trainer import-encoder`
file loads into either), with the last stage dilated instead of strided: the stride-2
depthwise convolution that opens it runs at stride 1 and every depthwise convolution of the
stage at dilation 2. DeepLab ran the MobileNetV2 whose weights `trainer import-encoder` reads
the same way at output stride 16 (it keeps the stage's first depthwise convolution at dilation
1), so imported weights see about the receptive field they were trained with.
"""

import torch
from torch import nn

from trainer.models import register_model
from trainer.models.base import ConvBNAct, SegmentationModel, StagedEncoder, upsample_to
from trainer.models.mobile_unet import mobilenet_v2_features, mobilenet_v3_features

LOW_STRIDES = {4: 1, 8: 2}  # stride of the low-level branch -> its index among the encoder's stages


def dilate_last_stage(encoder: StagedEncoder) -> None:
    """Run the encoder's last stage at the previous stage's stride: stride 1 and dilation 2 in its depthwise convs."""
    for conv in encoder.stages[-1].modules():
        if isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels and conv.kernel_size[0] > 1:
            conv.stride = (1, 1)
            conv.dilation = (2, 2)
            conv.padding = (conv.kernel_size[0] - 1, conv.kernel_size[1] - 1)  # "same" at dilation 2


class LRASPPHead(nn.Module):
    """Lite R-ASPP: gated 1 x 1 features at stride 16 upsampled onto a 1 x 1 classifier of low-level features."""

    def __init__(self, low_channels: int, high_channels: int, inter_channels: int = 128, num_classes: int = 1):
        super().__init__()
        self.features = ConvBNAct(high_channels, inter_channels, 1)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.Sigmoid()
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = upsample_to(self.features(high) * self.gate(high), low)  # (N, inter, H_low, W_low)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(SegmentationModel):
    """Staged MobileNet encoder (last stage dilated to output stride 16, or strided to 32) + LR-ASPP head."""

    def __init__(
        self,
        features: nn.Sequential,
        low_stride: int = 8,
        inter_channels: int = 128,
        dilated: bool = True,
        num_classes: int = 1,
    ):
        super().__init__()
        if low_stride not in LOW_STRIDES:
            raise ValueError(f"low_stride must be one of {', '.join(map(str, LOW_STRIDES))}, got {low_stride}")
        self.encoder = StagedEncoder(features)
        if dilated:  # else the last stage stays at stride 32: a quarter of its cost, a coarser view
            dilate_last_stage(self.encoder)
        self.output_stride = 16 if dilated else 32
        self.low_index = LOW_STRIDES[low_stride]
        channels = self.encoder.out_channels
        self.head = LRASPPHead(channels[self.low_index], channels[-1], inter_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # strides 2, 4, 8, 16 and 16 (dilated) or 32
        return upsample_to(self.head(features[self.low_index], features[-1]), x)  # (N, num_classes, H, W)


@register_model
def lraspp_mnv2(width_mult: float = 0.5, pretrained: bool = False, **options) -> LRASPP:
    """MobileNetV2 encoder (width 0.5 by default; `trainer import-encoder` files fit) + LR-ASPP head."""
    return LRASPP(mobilenet_v2_features(width_mult, pretrained), **options)


@register_model
def lraspp_mnv3(variant: str = "large", pretrained: bool = False, **options) -> LRASPP:
    """MobileNetV3 ("large" or "small") encoder + LR-ASPP head: torchvision's `lraspp_mobilenet_v3_*` layout."""
    return LRASPP(mobilenet_v3_features(variant, pretrained), **options)

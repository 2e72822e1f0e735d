"""FFNet-mobile: a slim basic-block ResNet backbone with a small up-head.

After "Simple and Efficient Architectures for Semantic Segmentation" (Mehta et al., CVPR-W
2022, FFNet): a plain ResNet of 3 x 3 basic blocks is as accurate as fancier backbones when
paired with a simple FPN-like head, and it runs well on mobile accelerators because it has only
dense 3 x 3 and 1 x 1 convolutions. The mobile variants use a stem that reaches /4 quickly,
three stages (/8 /16 /32), and an "up-head" that projects every stage with a 1 x 1 convolution,
upsamples with nearest-neighbour resizing (cheapest on every runtime) and adds — here sized to
about 1 M parameters.
"""

import torch
from torch import nn

from trainer.models import register_model
from trainer.models.base import ConvBNAct, SegmentationModel, upsample_to
from trainer.models.pretrained import refuse_pretrained


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3 x 3 convs plus a shortcut (1 x 1 strided conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(
            ConvBNAct(in_channels, out_channels, 3, stride),
            ConvBNAct(out_channels, out_channels, 3, activation=None),
        )
        self.shortcut = (
            ConvBNAct(in_channels, out_channels, 1, stride, activation=None)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.branch(x) + self.shortcut(x))


class FFNetMobile(SegmentationModel):
    def __init__(
        self,
        stem_channels: tuple[int, int] = (16, 32),
        widths: tuple[int, ...] = (48, 96, 128),
        depths: tuple[int, ...] = (2, 2, 2),
        head_channels: int = 48,
        num_classes: int = 1,
    ):
        super().__init__()
        if len(widths) != 3 or len(depths) != 3:
            raise ValueError(f"FFNet-mobile has 3 stages (/8 /16 /32): got widths {widths} and depths {depths}")
        # Two strided 3 x 3 convs reach /4 cheaply; the first stage then works at /8 as in FFNet's mobile models.
        self.stem = nn.Sequential(
            ConvBNAct(3, stem_channels[0], 3, stride=2),
            ConvBNAct(stem_channels[0], stem_channels[1], 3, stride=2),
        )
        stages = []
        in_channels = stem_channels[1]
        for width, depth in zip(widths, depths):
            blocks = [BasicBlock(in_channels, width, stride=2)] + [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        # Up-head: one 1 x 1 projection per feature map (/4 stem, /8, /16, /32), summed coarse to fine.
        self.lateral = nn.ModuleList(ConvBNAct(c, head_channels, 1) for c in (stem_channels[1], *widths))
        self.smooth = ConvBNAct(head_channels, head_channels, 3)
        self.head = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]  # (N, C_stem, H/4, W/4)
        for stage in self.stages:
            features.append(stage(features[-1]))  # /8, /16, /32
        y = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            y = upsample_to(y, feature, mode="nearest") + lateral(feature)
        y = self.smooth(y)  # (N, head_channels, H/4, W/4)
        return upsample_to(self.head(y), x)  # logits resized bilinearly, as FFNet does for its outputs


@register_model
def ffnet_mobile(pretrained: bool = False, **options) -> FFNetMobile:
    """FFNet-style slim ResNet (3 stages) + nearest-upsampling up-head, ~1 M parameters."""
    refuse_pretrained("ffnet_mobile", pretrained)
    return FFNetMobile(**options)

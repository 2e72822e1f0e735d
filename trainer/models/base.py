"""The contract every student follows, and the pieces several families share.

`SegmentationModel` is segmentation_models.pytorch's contract narrowed to one class: an encoder
gives a list of feature maps (finest first), a decoder fuses them into one map, a head maps it to
logits. Families build their own encoder and decoder; the base class only fixes the interface.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """Person segmentation: normalised (N, 3, H, W) float32 -> mask logits (N, 1, H, W).

    `forward` returns only the mask so that export sees the inference graph;
    `forward_with_aux` returns every training output by name ("mask", plus "edge" for models
    with an auxiliary boundary head). Constructors never download or load weights unless the
    `pretrained` option asks for them.

    A model built with the `prior` option (`add_prior_channel`) takes (N, 4, H, W): the normalised
    RGB, then the previous frame's person probability in [0, 1]; `in_channels` says which.
    """

    # Input sides must be a multiple of this (the coarsest feature map's stride).
    output_stride: int = 32
    in_channels: int = 3  # 4 for a model that also takes the previous frame's mask (`add_prior_channel`)

    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self(x)}


class ConvBNAct(nn.Sequential):
    """Convolution, batch norm and an optional activation; `groups=channels` makes it depthwise."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True) if activation in (nn.ReLU, nn.ReLU6, nn.Hardswish) else activation())
        super().__init__(*layers)


class SeparableConv(nn.Sequential):
    """Depthwise k x k then pointwise 1 x 1, each with batch norm and activation (MobileNet's unit)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, activation: type[nn.Module] = nn.ReLU
    ):
        super().__init__(
            ConvBNAct(in_channels, in_channels, kernel_size, groups=in_channels, activation=activation),
            ConvBNAct(in_channels, out_channels, 1, activation=activation),
        )


def upsample_to(x: torch.Tensor, reference: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resize `x` to `reference`'s height and width (a static size once traced for export)."""
    if mode == "nearest":
        return F.interpolate(x, size=reference.shape[-2:], mode="nearest")
    return F.interpolate(x, size=reference.shape[-2:], mode=mode, align_corners=False)


class StagedEncoder(nn.Module):
    """A torchvision `features` stack cut into stages that each end at a new stride.

    The stage boundaries are found once with a dry run (the last layer before each stride
    change), so the same wrapper serves MobileNetV2/V3 and EfficientNet-Lite without per-model
    index tables. Returns one feature map per stride (/2, /4, ... finest first).
    """

    def __init__(self, features: nn.Sequential, probe_size: int = 64):
        super().__init__()
        stage_ends: list[int] = []
        channels: list[int] = []
        was_training = features.training
        features.eval()
        with torch.no_grad():
            x = torch.zeros(1, 3, probe_size, probe_size)
            stride = 1
            for index, layer in enumerate(features):
                x = layer(x)
                layer_stride = probe_size // x.shape[-1]
                if layer_stride != stride:
                    stride = layer_stride
                    stage_ends.append(index)
                    channels.append(x.shape[1])
                else:
                    stage_ends[-1] = index
                    channels[-1] = x.shape[1]
        features.train(was_training)
        starts = [0, *[end + 1 for end in stage_ends[:-1]]]
        self.stages = nn.ModuleList(nn.Sequential(*features[start : end + 1]) for start, end in zip(starts, stage_ends))
        self.out_channels: list[int] = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def input_convolutions(model: nn.Module) -> list[nn.Conv2d]:
    """The convolutions that read `model`'s input tensor itself, found with a dry forward (module
    order alone would not say which they are); one, the stem, for every model here."""
    channels = int(getattr(model, "in_channels", 3))
    probe_side = max(64, 2 * int(getattr(model, "output_stride", 32)))
    probe = torch.zeros(1, channels, probe_side, probe_side)
    stems: list[nn.Conv2d] = []

    def record_stem(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if inputs[0] is probe:
            stems.append(layer)

    hooks = [layer.register_forward_pre_hook(record_stem) for layer in model.modules() if isinstance(layer, nn.Conv2d)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return stems


def add_prior_channel(model: SegmentationModel) -> SegmentationModel:
    """Widen `model`'s stem to a fourth input channel, the previous frame's mask; returns `model`.

    The stem is the one convolution that reads the input itself (`input_convolutions`). It keeps
    its RGB weights and the prior's weights start at zero, so the widened model computes exactly
    what the RGB model does at step 0 (a pretrained start stays pretrained) and training decides
    how much to trust the prior. A second dry forward checks that the model now takes (N, 4, H, W).
    """
    stems = input_convolutions(model)
    if len(stems) != 1 or stems[0].groups != 1:
        raise ValueError(f"cannot add a prior channel to {type(model).__name__}: it needs exactly one ordinary "
                         f"convolution that reads the input, found {len(stems)}")  # fmt: skip
    stem = stems[0]
    rgb_weight = stem.weight.detach()  # (C, 3, k, k)
    stem.weight = nn.Parameter(torch.cat([rgb_weight, torch.zeros_like(rgb_weight[:, :1])], dim=1))  # (C, 4, k, k)
    stem.in_channels = 4
    model.in_channels = 4
    probe_side = max(64, 2 * model.output_stride)
    was_training = model.training
    with torch.no_grad():
        logits = model.eval()(torch.zeros(1, 4, probe_side, probe_side))
    model.train(was_training)
    if logits.shape != (1, 1, probe_side, probe_side):
        raise ValueError(f"{type(model).__name__} with a prior channel gives {tuple(logits.shape)} for a 4-channel input")
    return model


def fuse_conv_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution in a `nn.Sequential` into that convolution.

    For inference only (the model must be in eval mode): the batch norm becomes a per-channel
    scale and shift of the convolution's weights, which saves one pass over every feature map.
    Works in place on `ConvBNAct` and torchvision's `Conv2dNormActivation`; returns `model`.
    """
    if model.training:
        raise ValueError("fuse batch norm only in eval mode: training needs the batch statistics")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[index] = nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
    return model

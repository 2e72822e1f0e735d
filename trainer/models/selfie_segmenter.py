"""The network of MediaPipe's selfie segmenter, as a student that `trainer import-encoder` can
start from MediaPipe's own weights (`selfie_segmentation.tflite`, the `mediapipe-selfie` teacher file).

The layout is read off the model file (243 operators; `trainer profile mediapipe-selfie` lists them):
- an encoder that is MobileNetV3-Small cut at stride 16 (Howard et al. 2019): a 3 x 3 stem with
  hard-swish, then eight inverted-residual blocks, squeeze-excite where MobileNetV3 has it, 5 x 5
  depthwise convolutions in the stride-16 stage;
- the Lite R-ASPP head of the same paper on the stride-16 features (a 1 x 1 branch gated by their
  global average);
- three decoder steps (stride 8, 4, 2), each a bilinear x2 upsampling, a 1 x 1 projection to the
  skip's width, a squeeze-excite gate on the skip, and a pointwise + depthwise refinement with a
  residual;
- a 2 x 2 stride-2 transposed convolution to one channel at the input's resolution (the file's
  custom `Convolution2DTransposeBias`), computed as a 1 x 1 convolution to 4 channels and a pixel
  shuffle (`SubpixelHead`): the same function, and faster in LiteRT.

The file has no batch norms (they are folded into the convolutions' biases), so neither has this
model: every convolution has a bias, which fine-tuning from the file's weights keeps as they are.
Stride-2 convolutions pad the way TensorFlow's SAME does (nothing before, the rest after, on even
sides), so the imported weights see the pixels they were trained on.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from trainer.data import input_normalisation
from trainer.models import register_model
from trainer.models.base import SegmentationModel


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's SAME padding: ceil(side / stride) outputs, the odd pixel padded after.

    PyTorch's symmetric padding shifts a stride-2 convolution's grid by one pixel against the
    one TensorFlow trained the weights on; this pads inside `forward`, so a forward hook on the
    layer still sees the layer's own input (`add_prior_channel` finds the stem that way).

    The explicit pad converts to LiteRT fp32 / fp16 and ONNX, but litert-torch's int8 conversion
    cannot lay it out ("Attempting to convert non-NHWC compatible node to NHWC"): `trainer
    export` says so. Zeros concatenated to the input instead convert to int8, but made the fp16
    network 1.22x slower, and post-training int8 lost 0.027 IoU on the val photos (README).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=True)

    def same_padding(self, x: torch.Tensor) -> list[int]:
        padding = []
        for side, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-side // stride) - 1) * stride + kernel - side, 0)
            padding += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.same_padding(x)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class BlackPaddedStem(SameConv2d):
    """The stem: a SAME convolution on the normalised input that pads with black (a 0 pixel,
    normalised), as MediaPipe's file pads its [0, 1] input with 0.

    Padding with black rather than with 0 (the mean colour, once normalised) makes the
    normalisation fold into this layer's weights exactly: `fold_normalisation` gives the
    convolution that reads 0..255 pixels and pads them with 0, which the inference graph uses
    instead of a multiply-add over the whole input (the graph then runs in 0.76x the LiteRT time
    at 224 x 224; README "Where the time goes"). It also makes MediaPipe's imported weights compute
    the file's own probabilities on the trainer's normalised input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        black = normalised_black(self.in_channels).to(x)
        padded = F.pad(x - black, self.same_padding(x)) + black
        return F.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def fold_normalisation(self, scale: torch.Tensor, shift: torch.Tensor) -> SameConv2d:
        """The SAME convolution of `pixels` (zero-padded) equal to this one of `pixels * scale + shift`."""
        folded = SameConv2d(self.in_channels, self.out_channels, self.kernel_size[0], self.stride[0], self.groups)
        folded.load_state_dict(self.state_dict())
        fold_input_affine(folded, scale, shift)
        return folded


@functools.cache
def normalised_black(channels: int) -> torch.Tensor:
    """(1, channels, 1, 1): a 0 pixel after the trainer's normalisation (shared; read only)."""
    return input_normalisation(channels)[1]


def fold_input_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """In place: `conv` of x becomes what it was of `x * scale + shift` (per input channel). Exact
    where the window sees no padding; at the border only if the padding changes with it (black)."""
    with torch.no_grad():
        conv.bias += (conv.weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        conv.weight *= scale.view(1, -1, 1, 1)


class SqueezeExcite(nn.Module):
    """Channel gate from the global average: 1 x 1 down, ReLU, 1 x 1 up, sigmoid (MobileNetV3's, with a plain sigmoid)."""

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.down = nn.Conv2d(channels, squeezed, 1)
        self.up = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(F.relu(self.down(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """1 x 1 expansion, k x k depthwise (stride 1 or 2), optional squeeze-excite, 1 x 1 projection; residual at stride 1."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, kernel_size: int, stride: int,
                 squeezed: int | None, activation: type[nn.Module], expand: bool = True):  # fmt: skip
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(in_channels, expanded, 1), activation()) if expand else nn.Identity()
        self.depthwise = nn.Sequential(SameConv2d(expanded, expanded, kernel_size, stride, groups=expanded), activation())
        self.excite = SqueezeExcite(expanded, squeezed) if squeezed else None
        self.project = nn.Conv2d(expanded, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand(x))
        if self.excite is not None:
            y = y * self.excite(y)
        y = self.project(y)
        return x + y if self.residual else y


class DecoderStep(nn.Module):
    """Upsample x2, project to the skip's width, gate the skip by squeeze-excite of their sum, refine."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, 1)
        self.excite = SqueezeExcite(out_channels, out_channels)
        self.pointwise = nn.Conv2d(out_channels, out_channels, 1)
        self.depthwise = SameConv2d(out_channels, out_channels, 3, groups=out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.project(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        fused = skip * self.excite(skip + up) + up
        refined = F.relu(self.pointwise(fused))
        return refined + F.relu(self.depthwise(refined))


class SubpixelHead(nn.Module):
    """A 2 x 2 stride-2 transposed convolution, computed as a 1 x 1 convolution to 4 x `out_channels` and a pixel shuffle.

    With kernel = stride = 2 each input pixel writes its own 2 x 2 output block, so the two forms
    are one function: channel 2 i + j of the 1 x 1 convolution is tap (i, j) of the transposed
    kernel (`trainer.models.selfie_import` maps one onto the other). LiteRT converts
    ConvTranspose2d to TRANSPOSE_CONV, which made the whole network slower than MediaPipe's own
    file at 256 x 256; in this form it is faster (the A/B numbers: README "Where the time goes").
    """

    def __init__(self, in_channels: int, out_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class SelfieSegmenter(SegmentationModel):
    """MediaPipe's selfie segmenter network: normalised (N, 3, H, W) -> logits (N, 1, H, W); sides multiples of 16."""

    output_stride = 16

    def __init__(self):
        super().__init__()
        relu, hswish = nn.ReLU, nn.Hardswish
        self.stem = nn.Sequential(BlackPaddedStem(3, 16, 3, 2), hswish())  # stride 2
        self.blocks = nn.ModuleList([
            InvertedResidual(16, 16, 16, 3, 2, 8, relu),        # stride 4 (the file's "expansion" is a 1 x 1 conv 16 -> 16)
            InvertedResidual(16, 72, 24, 3, 2, None, relu),     # stride 8
            InvertedResidual(24, 88, 24, 3, 1, None, relu),
            InvertedResidual(24, 96, 32, 5, 2, 24, hswish),     # stride 16
            InvertedResidual(32, 128, 32, 5, 1, 32, hswish),
            InvertedResidual(32, 128, 32, 5, 1, 32, hswish),
            InvertedResidual(32, 96, 32, 5, 1, 24, hswish),
            InvertedResidual(32, 96, 32, 5, 1, 24, hswish),
        ])  # fmt: skip
        self.skip_blocks = (0, 2)  # the blocks whose outputs the decoder also reads: strides 4 and 8
        self.head = nn.Conv2d(32, 128, 1)  # Lite R-ASPP: ReLU(1 x 1) gated by sigmoid(1 x 1 of the global average)
        self.head_gate = nn.Conv2d(32, 128, 1)
        self.decoder = nn.ModuleList([DecoderStep(128, 24), DecoderStep(24, 16), DecoderStep(16, 16)])
        self.classifier = SubpixelHead(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride2 = self.stem(x)
        skips = [stride2]
        y = stride2
        for index, block in enumerate(self.blocks):
            y = block(y)
            if index in self.skip_blocks:
                skips.append(y)
        y = F.relu(self.head(y)) * torch.sigmoid(self.head_gate(F.adaptive_avg_pool2d(y, 1)))
        for step, skip in zip(self.decoder, reversed(skips)):  # stride 8, 4, 2
            y = step(y, skip)
        return self.classifier(y)


@register_model
def selfie_segmenter(pretrained: bool = False) -> SelfieSegmenter:
    """MediaPipe's selfie segmenter network (0.1 M parameters); `trainer import-encoder --tflite mediapipe-selfie` gives its weights."""
    if pretrained:  # not `refuse_pretrained`: its advice, "train it from scratch", is the wrong one here
        raise ValueError("selfie_segmenter cannot be built with pretrained=True: its weights come from "
                         "`trainer import-encoder --tflite mediapipe-selfie` (MediaPipe's model file) as train.init_weights")  # fmt: skip
    return SelfieSegmenter()

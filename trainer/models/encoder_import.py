"""A pretrained MobileNetV2 encoder for `mobile_unet`, read out of a quantized TFLite file.

Without internet there are no ImageNet weights, and students trained from scratch on a few
hundred photos confuse clutter (shop windows, railings) with people. Three TFLite files in
`../shared/weights` hold a whole TensorFlow-slim MobileNetV2 (scopes `MobilenetV2/Conv`,
`MobilenetV2/expanded_conv[_K]/{expand,depthwise,project}`): 51 convolutions that are exactly
torchvision's `mobilenet_v2(width_mult=w).features[:-1]`, which is `mobile_unet(width_mult=w)`'s
encoder. The file itself says what it is:
- the source kind, by the head on top of the body: DeepLabV3's ASPP (`aspp0/`, PASCAL VOC
  segmentation: `deeplabv3_mnv2_pascal_quant.tflite`, `deeplabv3_mnv2_dm05_pascal_quant.tflite`)
  or the classifier's `MobilenetV2/Logits/` (ImageNet, `mobilenet_v2_1.0_224_quant.tflite`,
  whose `MobilenetV2/Conv_1` 1280-channel expansion only the classifier needs and is skipped);
- the width, by the first convolution's output channels: 32 x width (32 -> 1.0, 16 -> 0.5).

Channel rounding differs at width 0.5: torchvision rounds every width to a multiple of 8
(`_make_divisible(24 * 0.5, 8) = 16`), DeepLab's half-width MobileNetV2 does not (divisible_by=1
for depth multipliers other than 1: 12 channels). Seven convolutions around stride 4 are narrower
in the file (expanded_conv_1/project 12 vs 16, expanded_conv_2 and _3 72 vs 96 hidden channels).
They are embedded, not refused: the file's weights fill the first channels, the weights of kept
channels that read an extra channel are zero, and the extra channels keep their random
initialisation (Net2Net-style widening, Chen et al. 2016), so the encoder computes the file's
features exactly and the extra channels learn from the first step. Any other shape difference
is refused.

The files are fully quantized (uint8 weights, int32 biases, BatchNorm folded into the
convolutions, ReLU6 fused). Importing one:
1. dequantizes every body convolution and maps it by its TensorFlow scope
   (`expanded_conv_K/expand` -> `features[K+1].conv[0]`, ...), transposing TFLite's OHWI / 1HWC
   layouts to OIHW;
2. folds the file's input scaling (its uint8 input's quantization, pixels to about [-1, 1]) into
   the first convolution, because the trainer feeds ImageNet-normalised images;
3. turns each folded bias back into a BatchNorm that reproduces it: BatchNorm running statistics
   are measured on calibration photos and gamma/beta set so that eval-mode output is exactly
   conv + bias, and train-mode output (batch statistics) starts close to it;
4. checks itself: the stride-16 features (expanded_conv_10, before DeepLab's dilated stage) of
   the imported encoder must correlate >= 0.99 with the TFLite interpreter's own intermediate
   tensor on a calibration photo (the rest is uint8 rounding), else it writes nothing. The check
   pads stride-2 convolutions the way TensorFlow's SAME padding does (one pixel after, none
   before, on even sides such as the classifier's 224 input), so it tests the weights alone.

DeepLab runs the last stage dilated at stride 16; `mobile_unet` runs it at stride 32 with the
same weights, which fine-tuning adapts. The result is an `init_weights` file for `trainer train`.
"""

import copy
import hashlib
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2

from portraitseg.imagefiles import IMAGE_SUFFIXES, read_rgb
from portraitseg.litert import TfliteFileError, open_tflite
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, build_photometric
from trainer.models import create_model

MODEL_NAME = "mobile_unet"
# Source kind -> the scope of the head that sits on the MobileNetV2 body (how the file is recognised).
HEAD_SCOPES = {
    "deeplabv3-pascal": "aspp0/",  # DeepLabV3's atrous spatial pyramid pooling, PASCAL VOC (class 15 = person)
    "imagenet-classifier": "MobilenetV2/Logits/",  # global pooling + 1001-way ImageNet logits
}
KNOWN_FILES = (
    "DeepLabV3-MobileNetV2 on PASCAL VOC (deeplabv3_mnv2_pascal_quant.tflite, width 1.0; "
    "deeplabv3_mnv2_dm05_pascal_quant.tflite, width 0.5) or the MobileNetV2 ImageNet classifier "
    "(mobilenet_v2_1.0_224_quant.tflite)"
)
STEM_CHANNELS = 32  # MobileNetV2's first convolution at width 1.0: its width in the file gives the width multiplier
# "MobilenetV2/expanded_conv_3/depthwise/depthwise_Fold;..." -> block "expanded_conv_3", index "3", part "depthwise".
# `MobilenetV2/Conv_1` (the classifier's 1280-channel expansion) and `MobilenetV2/Logits` do not match.
SCOPE = re.compile(r"^MobilenetV2/(Conv|expanded_conv(?:_(\d+))?)/(?:(expand|depthwise|project)/)?")
# The 51 convolutions, named by TensorFlow scope: the stem, block 0 (no expansion), blocks 1-16.
SCOPES = (
    "Conv",
    "expanded_conv/depthwise",
    "expanded_conv/project",
    *(f"expanded_conv_{k}/{part}" for k in range(1, 17) for part in ("expand", "depthwise", "project")),
)
CHECK_LAYER = 11  # features[11] = expanded_conv_10: stride 16 (before DeepLab's dilated stage), no residual add
CHECK_SCOPE = "expanded_conv_10/project"
CHECK_STRIDE = 16
CHECK_MIN_CORRELATION = 0.99


class EncoderImportError(RuntimeError):
    """The TFLite file is not a MobileNetV2 file the importer understands, or the check failed."""


@dataclass
class FoldedConv:
    """One dequantized TFLite convolution: torch-layout weight, folded bias, and its output tensor."""

    weight: torch.Tensor  # (C_out, C_in / groups, kH, kW)
    bias: torch.Tensor  # (C_out,)
    output_index: int  # the interpreter's tensor index of the op's output (for the self-check)


@dataclass(frozen=True)
class Source:
    """What a TFLite file holds: the kind of network around its MobileNetV2 body and the body's width."""

    kind: str  # a HEAD_SCOPES key
    width_mult: float


def _dequantize(interpreter, detail: dict[str, Any]) -> np.ndarray:
    values = interpreter.get_tensor(detail["index"]).astype(np.float64)
    quantization = detail["quantization_parameters"]
    scales, zero_points = quantization["scales"], quantization["zero_points"]
    if len(scales) == 0:
        return values
    shape = [1] * values.ndim
    if len(scales) > 1:  # per-channel
        shape[quantization["quantized_dimension"]] = -1
    return (values - zero_points.reshape(shape)) * scales.reshape(shape)


def open_interpreter(tflite_path: Path):
    """The reference interpreter, without XNNPACK, so that every intermediate tensor stays readable."""
    try:
        return open_tflite(tflite_path, inspectable=True)
    except TfliteFileError as error:
        try:  # custom ops (MediaPipe's Convolution2DTransposeBias) load only with the default delegate
            interpreter = open_tflite(tflite_path, threads=1)
        except TfliteFileError:
            raise EncoderImportError(str(error)) from error
        detect_source(interpreter, read_convolutions(interpreter), tflite_path)  # raises, naming what the file holds
        raise EncoderImportError(f"{tflite_path}: LiteRT cannot run it with readable intermediate tensors ({error})") from error


def read_convolutions(interpreter) -> dict[str, FoldedConv]:
    """Every MobilenetV2 body convolution of the file, keyed by its scope ("expanded_conv_3/expand")."""
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    convolutions: dict[str, FoldedConv] = {}
    for op in interpreter._get_ops_details():  # the public API lists tensors, not ops (which tie weights to outputs)
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        _, weight_index, bias_index = op["inputs"][:3]
        match = SCOPE.match(details[weight_index]["name"])
        if match is None:  # the head: DeepLab's ASPP and logits, the classifier's Conv_1 and logits
            continue
        block, _, part = match.groups()
        scope = "Conv" if block == "Conv" else f"{block}/{part}"
        weight = _dequantize(interpreter, details[weight_index])
        # TFLite: CONV_2D (O, kH, kW, I), DEPTHWISE_CONV_2D (1, kH, kW, C); torch: (O, I / groups, kH, kW)
        weight = weight.transpose(3, 0, 1, 2) if op["op_name"] == "DEPTHWISE_CONV_2D" else weight.transpose(0, 3, 1, 2)
        convolutions[scope] = FoldedConv(
            torch.tensor(weight, dtype=torch.float32),
            torch.tensor(_dequantize(interpreter, details[bias_index]), dtype=torch.float32),
            op["outputs"][0],
        )
    return convolutions


def describe_file(interpreter) -> str:
    """What a file holds, in a few words, for an error message: input, outputs, convolutions, first scope."""
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    convolutions = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    first = ""
    if convolutions:
        weight = details[convolutions[0]["inputs"][1]]
        first = f", the first {weight['name'].split(';')[0]!r} with {int(weight['shape'][0])} output channels"
    input_detail = interpreter.get_input_details()[0]
    outputs = ", ".join(f"{d['name']} {d['shape'].tolist()}" for d in interpreter.get_output_details())
    return (
        f"input {input_detail['shape'].tolist()} {np.dtype(input_detail['dtype']).name}, outputs {outputs}, "
        f"{len(convolutions)} convolutions{first}"
    )


def detect_source(interpreter, convolutions: dict[str, FoldedConv], tflite_path: Path) -> Source:
    """The source kind (by its head's scope) and width (by the first convolution's channels) of a file."""
    scopes = {part for detail in interpreter.get_tensor_details() for part in detail["name"].split(";")}
    kinds = [kind for kind, prefix in HEAD_SCOPES.items() if any(scope.startswith(prefix) for scope in scopes)]
    if "Conv" not in convolutions or len(kinds) != 1:
        found = f"{len(convolutions)} MobilenetV2 body convolutions, heads {kinds or 'none known'}"
        raise EncoderImportError(
            f"{tflite_path} is none of the files the importer reads ({KNOWN_FILES}): found {found}; "
            f"{describe_file(interpreter)}"
        )
    missing = [scope for scope in SCOPES if scope not in convolutions]
    if missing:
        raise EncoderImportError(
            f"{tflite_path} has a {kinds[0]} head but not a whole MobileNetV2: {len(missing)} of its {len(SCOPES)} "
            f"body convolutions are missing (first: {missing[0]})"
        )
    return Source(kinds[0], convolutions["Conv"].weight.shape[0] / STEM_CHANNELS)


def conv_and_norm(features: nn.Sequential, scope: str) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """torchvision MobileNetV2's (conv, BatchNorm) pair for a TensorFlow scope."""
    if scope == "Conv":
        return features[0][0], features[0][1]
    block, part = scope.split("/")
    index = 1 if block == "expanded_conv" else int(block.rsplit("_", 1)[1]) + 1
    layers = features[index].conv
    if index == 1:  # expansion ratio 1: no expand convolution
        pairs = {"depthwise": (layers[0][0], layers[0][1]), "project": (layers[1], layers[2])}
    else:
        pairs = {
            "expand": (layers[0][0], layers[0][1]),
            "depthwise": (layers[1][0], layers[1][1]),
            "project": (layers[2], layers[3]),
        }
    return pairs[part]


def check_shape(scope: str, theirs: torch.Size, ours: torch.Size, base: torch.Size, width_mult: float) -> bool:
    """Whether the file's weight fits ours; True if it is narrower and gets embedded, raises if it cannot fit.

    Each channel count (out, in) must be ours, or TensorFlow's unrounded base x width where
    torchvision rounded up to a multiple of 8 (DeepLab's half-width MobileNetV2: 12 vs 16).
    """
    fits = theirs[2:] == ours[2:] and all(
        t == o or (t < o and t == base[d] * width_mult) for d, (t, o) in enumerate(zip(theirs[:2], ours[:2]))
    )
    if not fits:
        raise EncoderImportError(
            f"{scope}: the file's weight is {tuple(theirs)}, mobile_unet(width_mult={width_mult}) has {tuple(ours)}; "
            f"channel counts must be the same, or TensorFlow's unrounded {tuple(base[:2])} x {width_mult}"
        )
    return theirs != ours


@torch.no_grad()
def copy_convolution(conv: nn.Conv2d, norm: nn.BatchNorm2d, folded: FoldedConv) -> None:
    """The file's conv into the first channels of ours, its folded bias into the BatchNorm (identity + bias).

    A narrower file weight leaves our extra output channels as initialised; the file's channels
    read none of our extra input channels (zero weights), so they compute the file's features.
    """
    out_channels, in_channels = folded.weight.shape[:2]
    conv.weight[:out_channels] = 0
    conv.weight[:out_channels, :in_channels] = folded.weight
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
    norm.weight.fill_(1.0)
    norm.bias.zero_()
    norm.bias[:out_channels] = folded.bias


def calibration_images(folder: Path, count: int) -> tuple[list[Path], list[np.ndarray], list[dict[str, str]]]:
    """Up to `count` readable photos of `folder` (RGB), their paths, and every unreadable one with its reason."""
    paths, images, skipped = [], [], []
    for path in sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES):
        if len(images) == count:
            break
        try:
            images.append(read_rgb(path))
            paths.append(path)
        except OSError as error:
            skipped.append({"file": str(path), "reason": str(error)})
    if not images:
        raise EncoderImportError(
            f"no readable images in {folder} ({len(skipped)} unreadable): pass --images with a folder of photos"
        )
    return paths, images, skipped


def trainer_input(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) float32: RGB photos resized to (width, height) and normalised as the trainer does."""
    normalise = build_photometric(augment=False)  # the trainer's own ImageNet normalisation
    batch = [normalise(image=cv2.resize(image, size, interpolation=cv2.INTER_AREA))["image"] for image in images]
    return torch.from_numpy(np.stack(batch).transpose(0, 3, 1, 2).copy())


@torch.no_grad()
def calibrate_batch_norms(features: nn.Sequential, images: torch.Tensor) -> None:
    """Give every BatchNorm the statistics of its input on `images`, keeping eval output = conv + bias.

    Each BatchNorm starts as the identity plus the folded bias (beta). With the measured mean m and
    variance v as running statistics, gamma = sqrt(v + eps) and beta = m + bias, eval mode still
    computes conv + bias exactly, and train mode (which normalises by the batch's own statistics)
    starts near it instead of rescaling every channel to unit variance.
    """
    norms = [module for module in features.modules() if isinstance(module, nn.BatchNorm2d)]
    statistics: dict[nn.BatchNorm2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def measure(norm: nn.BatchNorm2d, args: tuple[torch.Tensor, ...]) -> None:
        statistics[norm] = (args[0].mean(dim=(0, 2, 3)), args[0].var(dim=(0, 2, 3), unbiased=False))

    hooks = [norm.register_forward_pre_hook(measure) for norm in norms]
    features.eval()(images)  # eval: every norm still computes conv + bias while its input is measured
    for hook in hooks:
        hook.remove()
    for norm in norms:
        mean, variance = statistics[norm]
        folded_bias = norm.bias.clone()
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance)
        norm.weight.copy_(torch.sqrt(variance + norm.eps))
        norm.bias.copy_(mean + folded_bias)


def with_tensorflow_padding(features: nn.Sequential) -> nn.Sequential:
    """A copy whose stride-2 convolutions pad like TensorFlow's SAME (the extra pixel after, none before).

    torchvision pads 1 on every side; on an even side (224 -> 112) TensorFlow pads 0 before and 1
    after, a half-pixel shift per stride-2 layer that the check should not blame on the weights.
    On odd sides (DeepLab's 513) both pad 1 and 1, and this changes nothing.
    """
    features = copy.deepcopy(features)

    def pad_same(conv: nn.Conv2d, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        pads = []
        for size, kernel, stride in zip(reversed(args[0].shape[2:]), reversed(conv.kernel_size), reversed(conv.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad order: last dimension first, (before, after)
        return (F.pad(args[0], pads),)

    for conv in features.modules():
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            conv.padding = (0, 0)
            conv.register_forward_pre_hook(pad_same)
    return features


@torch.no_grad()
def check_against_tflite(interpreter, features: nn.Sequential, output_index: int, image: np.ndarray) -> float:
    """Correlation of the imported encoder's stride-16 features with the interpreter's on one photo."""
    input_detail = interpreter.get_input_details()[0]
    height, width = int(input_detail["shape"][1]), int(input_detail["shape"][2])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    interpreter.set_tensor(input_detail["index"], resized[None].astype(input_detail["dtype"]))
    interpreter.invoke()
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    reference = _dequantize(interpreter, details[output_index]).transpose(0, 3, 1, 2)  # (1, C, H / 16, W / 16)
    expected = (1, reference.shape[1], math.ceil(height / CHECK_STRIDE), math.ceil(width / CHECK_STRIDE))
    if reference.shape != expected:
        raise EncoderImportError(f"{CHECK_SCOPE} of the file is {reference.shape}, not at stride {CHECK_STRIDE} {expected}")
    checked = with_tensorflow_padding(features[: CHECK_LAYER + 1]).eval()
    ours = checked(trainer_input([resized], (width, height))).numpy()
    if ours.shape != reference.shape:
        raise EncoderImportError(f"stride-16 features differ in shape: {ours.shape} vs the file's {reference.shape}")
    return float(np.corrcoef(ours.ravel(), reference.ravel())[0, 1])


def import_mobilenet_encoder(
    tflite_path: Path, images_dir: Path, output: Path, calibration_count: int = 16, calibration_size: int = 256
) -> dict[str, Any]:
    """Write `mobile_unet(width_mult=<the file's>)` encoder weights from the TFLite file; returns the summary."""
    started = time.perf_counter()
    tflite_path = Path(tflite_path)
    if not tflite_path.is_file():
        raise EncoderImportError(f"{tflite_path} not found (one of the MobileNetV2 files in ../shared/weights: {KNOWN_FILES})")
    interpreter = open_interpreter(tflite_path)
    convolutions = read_convolutions(interpreter)
    source = detect_source(interpreter, convolutions, tflite_path)
    model_options = {"width_mult": source.width_mult}
    model = create_model(MODEL_NAME, **model_options)
    # The encoder's stages hold torchvision's features[0..17] in order; a flat view maps TF scopes by index.
    features = nn.Sequential(*[layer for stage in model.encoder.stages for layer in stage])
    base = mobilenet_v2(width_mult=1.0).features[:-1]  # the channel counts TensorFlow multiplies by the width
    widened = []
    for scope in SCOPES:
        conv, norm = conv_and_norm(features, scope)
        folded = convolutions[scope]
        if check_shape(scope, folded.weight.shape, conv.weight.shape, conv_and_norm(base, scope)[0].weight.shape,
                       source.width_mult):  # fmt: skip
            widened.append(f"{scope} {tuple(folded.weight.shape[:2])} -> {tuple(conv.weight.shape[:2])}")
        copy_convolution(conv, norm, folded)

    # The file sees (pixel - zero_point) * scale (its uint8 input's quantization, about [-1, 1]);
    # the trainer feeds x = (pixel / 255 - mean) / std, so pixel = 255 * (std * x + mean) and
    # the file's input is 255 * scale * std * x + scale * (255 * mean - zero_point): an affine map
    # of x, folded into the first convolution's weights and bias.
    scale, zero_point = interpreter.get_input_details()[0]["quantization"]
    if scale == 0:
        raise EncoderImportError(f"{tflite_path} has a float input; the importer expects a quantized uint8 input")
    first_conv, first_norm = conv_and_norm(features, "Conv")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    first_norm.bias.data += (first_conv.weight.data * scale * (255 * mean - zero_point)).sum(dim=(1, 2, 3))
    first_conv.weight.data *= 255 * scale * std

    paths, images, skipped = calibration_images(Path(images_dir), calibration_count)
    calibrate_batch_norms(features, trainer_input(images, (calibration_size, calibration_size)))
    # After calibration, so that the check covers the BatchNorm rewrite too (eval output is unchanged).
    first_photo = paths[0]
    correlation = check_against_tflite(interpreter, features, convolutions[CHECK_SCOPE].output_index, images[0])
    if not correlation >= CHECK_MIN_CORRELATION:
        raise EncoderImportError(
            f"the imported encoder does not reproduce {tflite_path.name}: stride-16 feature correlation "
            f"{correlation:.4f} < {CHECK_MIN_CORRELATION} on {first_photo.name}; nothing written"
        )

    state = {f"encoder.{key}": value for key, value in model.encoder.state_dict().items()}
    summary = {
        "model": MODEL_NAME,
        "model_options": model_options,
        "source": tflite_path.name,
        "source_kind": source.kind,
        "source_sha256": hashlib.sha256(tflite_path.read_bytes()).hexdigest(),
        "convolutions": len(SCOPES),
        "widened": widened,
        "tensors": len(state),
        "check_layer": CHECK_SCOPE,
        "check_correlation": round(correlation, 5),
        "check_image": first_photo.name,
        "calibration_images": len(images),
        "skipped_images": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, **summary}, output)
    return summary

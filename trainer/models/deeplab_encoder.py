"""A pretrained MobileNetV2 encoder for `mobile_unet`, read out of a DeepLabV3-MobileNetV2 TFLite file.

Without internet there are no ImageNet weights, and students trained from scratch on a few
hundred photos confuse clutter (shop windows, railings) with people. The DeepLab teacher file
(`deeplabv3_mnv2_pascal_quant.tflite`, TensorFlow's DeepLabV3 on PASCAL VOC, person = class 15)
holds a whole MobileNetV2 (width 1.0) trained for segmentation: its 51 convolutions are exactly
torchvision's `mobilenet_v2().features[:-1]`, which is `mobile_unet(width_mult=1.0)`'s encoder.

The file is fully quantized (uint8 weights, int32 biases, BatchNorm folded into the convolutions,
ReLU6 fused). Importing it:
1. dequantizes every convolution and maps it by its TensorFlow scope (`expanded_conv_K/expand`
   -> `features[K+1].conv[0]`, ...), transposing TFLite's OHWI / 1HWC layouts to OIHW;
2. folds DeepLab's input scaling (its uint8 input's quantization, pixels to about [-1, 1]) into
   the first convolution, because the trainer feeds ImageNet-normalised images;
3. turns each folded bias back into a BatchNorm that reproduces it: BatchNorm running statistics
   are measured on calibration photos and gamma/beta set so that eval-mode output is exactly
   conv + bias, and train-mode output (batch statistics) starts close to it;
4. checks itself: the stride-16 features of the imported encoder must correlate >= 0.99 with
   the TFLite interpreter's own intermediate tensor on a calibration photo (measured 0.997:
   the rest is uint8 rounding), else it refuses to write anything.

DeepLab runs the last stage dilated at stride 16; `mobile_unet` runs it at stride 32 with the
same weights, which fine-tuning adapts. The result is an `init_weights` file for `trainer train`.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from portraitseg.imagefiles import IMAGE_SUFFIXES, read_rgb
from portraitseg.litert import TfliteFileError, open_tflite
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, build_photometric
from trainer.models import create_model

MODEL_NAME = "mobile_unet"
MODEL_OPTIONS: dict[str, Any] = {"width_mult": 1.0}
# "MobilenetV2/expanded_conv_3/depthwise/depthwise_Fold;..." -> block "expanded_conv_3", index "3", part "depthwise"
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
CHECK_MIN_CORRELATION = 0.99


class EncoderImportError(RuntimeError):
    """The TFLite file is not a DeepLabV3-MobileNetV2 the importer understands, or the check failed."""


@dataclass
class FoldedConv:
    """One dequantized TFLite convolution: torch-layout weight, folded bias, and its output tensor."""

    weight: torch.Tensor  # (C_out, C_in / groups, kH, kW)
    bias: torch.Tensor  # (C_out,)
    output_index: int  # the interpreter's tensor index of the op's output (for the self-check)


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
        raise EncoderImportError(str(error)) from error


def read_convolutions(interpreter) -> dict[str, FoldedConv]:
    """Every MobilenetV2 convolution of the file, keyed by its scope ("expanded_conv_3/expand")."""
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    convolutions: dict[str, FoldedConv] = {}
    for op in interpreter._get_ops_details():  # the public API lists tensors, not ops (which tie weights to outputs)
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        _, weight_index, bias_index = op["inputs"][:3]
        match = SCOPE.match(details[weight_index]["name"])
        if match is None:  # DeepLab's ASPP and logits convolutions
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


@torch.no_grad()
def check_against_tflite(interpreter, features: nn.Sequential, output_index: int, image: np.ndarray) -> float:
    """Correlation of the imported encoder's stride-16 features with the interpreter's on one photo."""
    input_detail = interpreter.get_input_details()[0]
    height, width = int(input_detail["shape"][1]), int(input_detail["shape"][2])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    interpreter.set_tensor(input_detail["index"], resized[None].astype(input_detail["dtype"]))
    interpreter.invoke()
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    reference = _dequantize(interpreter, details[output_index]).transpose(0, 3, 1, 2)
    ours = features[: CHECK_LAYER + 1].eval()(trainer_input([resized], (width, height))).numpy()
    if ours.shape != reference.shape:
        raise EncoderImportError(f"stride-16 features differ in shape: {ours.shape} vs the file's {reference.shape}")
    return float(np.corrcoef(ours.ravel(), reference.ravel())[0, 1])


def import_deeplab_encoder(
    tflite_path: Path, images_dir: Path, output: Path, calibration_count: int = 16, calibration_size: int = 256
) -> dict[str, Any]:
    """Write `mobile_unet(width_mult=1.0)` encoder weights from the TFLite file; returns the summary."""
    tflite_path = Path(tflite_path)
    if not tflite_path.is_file():
        raise EncoderImportError(f"{tflite_path} not found (the DeepLab teacher file, e.g. deeplabv3_mnv2_pascal_quant.tflite)")
    interpreter = open_interpreter(tflite_path)
    convolutions = read_convolutions(interpreter)
    model = create_model(MODEL_NAME, **MODEL_OPTIONS)
    # The encoder's stages hold torchvision's features[0..17] in order; a flat view maps TF scopes by index.
    features = nn.Sequential(*[layer for stage in model.encoder.stages for layer in stage])
    missing = [scope for scope in SCOPES if scope not in convolutions]
    if missing:
        raise EncoderImportError(
            f"{tflite_path} is not a DeepLabV3-MobileNetV2 (width 1.0) file: {len(missing)} of its {len(SCOPES)} "
            f"MobilenetV2 convolutions are missing (first: {missing[0]})"
        )
    for scope in SCOPES:
        conv, norm = conv_and_norm(features, scope)
        folded = convolutions[scope]
        if conv.weight.shape != folded.weight.shape:
            raise EncoderImportError(f"{scope}: the file's weight is {tuple(folded.weight.shape)}, MobileNetV2 expects {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(folded.weight)
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
        norm.weight.data.fill_(1.0)
        norm.bias.data.copy_(folded.bias)

    # DeepLab sees (pixel - zero_point) * scale (its uint8 input's quantization, about [-1, 1]);
    # the trainer feeds x = (pixel / 255 - mean) / std, so pixel = 255 * (std * x + mean) and
    # DeepLab's input is 255 * scale * std * x + scale * (255 * mean - zero_point): an affine map
    # of x, folded into the first convolution's weights and bias.
    scale, zero_point = interpreter.get_input_details()[0]["quantization"]
    if scale == 0:
        raise EncoderImportError(f"{tflite_path} has a float input; the importer expects DeepLab's uint8 input")
    first_conv, first_norm = conv_and_norm(features, "Conv")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    first_norm.bias.data += (first_conv.weight.data * scale * (255 * mean - zero_point)).sum(dim=(1, 2, 3))
    first_conv.weight.data *= 255 * scale * std

    paths, images, skipped = calibration_images(Path(images_dir), calibration_count)
    calibrate_batch_norms(features, trainer_input(images, (calibration_size, calibration_size)))
    # After calibration, so that the check covers the BatchNorm rewrite too (eval output is unchanged).
    first_photo = paths[0]
    check_output = convolutions[CHECK_SCOPE].output_index
    correlation = check_against_tflite(interpreter, features, check_output, images[0])
    if not correlation >= CHECK_MIN_CORRELATION:
        raise EncoderImportError(
            f"the imported encoder does not reproduce {tflite_path.name}: stride-16 feature correlation "
            f"{correlation:.4f} < {CHECK_MIN_CORRELATION} on {first_photo.name}; nothing written"
        )

    state = {f"encoder.{key}": value for key, value in model.encoder.state_dict().items()}
    summary = {
        "model": MODEL_NAME,
        "model_options": dict(MODEL_OPTIONS),
        "source": tflite_path.name,
        "source_sha256": hashlib.sha256(tflite_path.read_bytes()).hexdigest(),
        "convolutions": len(SCOPES),
        "tensors": len(state),
        "check_correlation": round(correlation, 5),
        "check_image": first_photo.name,
        "calibration_images": len(images),
        "skipped_images": skipped,
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, **summary}, output)
    return summary

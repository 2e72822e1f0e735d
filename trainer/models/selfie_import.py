"""A `selfie_segmenter` student started from MediaPipe's own weights, read out of its model file.

MediaPipe's selfie segmenter (`selfie_segmentation.tflite`, the `mediapipe-selfie` teacher file;
`selfie_segmentation_landscape.tflite` is the same network at 144x256) is the model users compare
a student with. Its weights are a better start than any encoder alone: fine-tuned on the user's
photos, the student begins where MediaPipe is and learns what their labels call a person.

The file keeps its weights as float16 constants (each behind a DEQUANTIZE op), BatchNorm folded
into the biases. Importing it:
1. reads its 55 convolutions in execution order (43 CONV_2D, 11 DEPTHWISE_CONV_2D and the custom
   `Convolution2DTransposeBias`) and copies each into the `selfie_segmenter` layer that runs at
   the same place of a forward pass, transposing TFLite's OHWI / 1HWC layouts (the transposed
   convolution becomes the 1 x 1 convolution of `SubpixelHead`); any count or shape difference
   is refused;
2. folds the file's input scaling (RGB / 255, MediaPipe's `output_tensor_float_range [0, 1]`)
   into the stem, because the trainer feeds ImageNet-normalised images. The stem pads with
   black (`BlackPaddedStem`), as the file pads its [0, 1] input with 0, so the fold is exact;
3. checks itself: on calibration photos, at the file's input size, the imported model's
   probabilities on the trainer's normalised input must match the LiteRT interpreter's on the
   file's own input to `CHECK_MAX_DIFFERENCE`, else nothing is written.
"""

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from portraitseg.litert import TfliteFileError, open_tflite
from portraitseg.resize import stretch
from portraitseg.teachers.mediapipe_selfie import input_probability
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, build_photometric
from trainer.models import create_model
from trainer.models.encoder_import import EncoderImportError, calibration_images
from trainer.models.selfie_segmenter import fold_input_affine

MODEL_NAME = "selfie_segmenter"
TRANSPOSE_OP = "Convolution2DTransposeBias"  # MediaPipe's custom op: the file's last convolution
CONVOLUTION_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", TRANSPOSE_OP)
CHECK_MAX_DIFFERENCE = 1e-3  # probabilities; float16 weights computed in float32 on both sides
CHECK_IMAGES = 4


class NotSelfieFileError(EncoderImportError):
    """The file is not MediaPipe's selfie segmenter (or not a readable TFLite file): try the MobileNetV2 importer."""


def is_selfie_file(interpreter) -> bool:
    """Whether an opened TFLite file is MediaPipe's selfie segmenter (it ends in MediaPipe's transposed convolution)."""
    return any(op["op_name"] == TRANSPOSE_OP for op in interpreter._get_ops_details())


def read_convolutions(interpreter) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(weight tensor name, torch-layout weight, bias) of every convolution, in the file's execution order."""
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the public API lists tensors, not ops (which tie weights to layers)
    dequantized_from = {op["outputs"][0]: op["inputs"][0] for op in ops if op["op_name"] == "DEQUANTIZE"}

    def constant(index: int) -> np.ndarray:  # a float16 constant behind its DEQUANTIZE, as float32
        return interpreter.get_tensor(dequantized_from.get(index, index)).astype(np.float32)

    convolutions = []
    for op in ops:
        if op["op_name"] not in CONVOLUTION_OPS:
            continue
        _, weight_index, bias_index = op["inputs"][:3]
        weight, bias = constant(weight_index), constant(bias_index)
        # CONV_2D (O, kH, kW, I) -> (O, I, kH, kW); DEPTHWISE_CONV_2D (1, kH, kW, C) -> (C, 1, kH, kW);
        # Convolution2DTransposeBias (O, 2, 2, I) -> the 1 x 1 convolution of `SubpixelHead`, whose
        # output channel 4 o + 2 i + j is tap (i, j) of output o: (4 O, I, 1, 1), each bias repeated 4 times.
        if op["op_name"] == "CONV_2D":
            weight = weight.transpose(0, 3, 1, 2)
        elif op["op_name"] == "DEPTHWISE_CONV_2D":
            weight = weight.transpose(3, 0, 1, 2)
        else:
            weight, bias = weight.reshape(-1, weight.shape[-1])[:, :, None, None], np.repeat(bias, 4)
        name = details[weight_index]["name"].split(";")[0]
        convolutions.append((name, torch.from_numpy(weight.copy()), torch.from_numpy(bias.copy())))
    return convolutions


def layers_in_execution_order(model: nn.Module, size: tuple[int, int]) -> list[nn.Conv2d]:
    """The model's convolutions in the order a forward pass runs them (module order differs in the head)."""
    order: list[nn.Module] = []
    hooks = [
        layer.register_forward_hook(lambda layer, inputs, output: order.append(layer))
        for layer in model.modules()
        if isinstance(layer, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *size))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def model_probabilities(model: nn.Module, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The model's person probability for one RGB photo stretched to `size` as MediaPipe stretches it,
    normalised as the trainer normalises it."""
    resized = stretch(image, size[1], size[0])[0]
    pixels = build_photometric(augment=False)(image=resized)["image"]
    with torch.no_grad():
        return torch.sigmoid(model.eval()(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]))[0, 0].numpy()


def fold_input_scaling(stem: nn.Conv2d) -> None:
    """Make a stem that reads RGB in [0, 1] read ImageNet-normalised RGB: x01 = std * x + mean, folded into W and b."""
    fold_input_affine(stem, torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN))


def import_selfie_segmenter(tflite_path: Path, images_dir: Path, output: Path) -> dict[str, Any]:
    """Write a whole `selfie_segmenter` init file from MediaPipe's selfie segmenter file; returns the summary."""
    started = time.perf_counter()
    tflite_path = Path(tflite_path)
    try:
        interpreter = open_tflite(tflite_path, threads=1)  # its custom op runs only with the default delegate
    except TfliteFileError as error:
        raise NotSelfieFileError(str(error)) from error
    if not is_selfie_file(interpreter):
        raise NotSelfieFileError(f"{tflite_path} is not MediaPipe's selfie segmenter (no {TRANSPOSE_OP} op)")
    size = tuple(int(side) for side in interpreter.get_input_details()[0]["shape"][1:3])  # (height, width)
    convolutions = read_convolutions(interpreter)
    model = create_model(MODEL_NAME)
    layers = layers_in_execution_order(model, size)
    if len(layers) != len(convolutions):
        raise EncoderImportError(
            f"{tflite_path} has {len(convolutions)} convolutions where {MODEL_NAME} runs {len(layers)}: "
            "another version of the network than the one this importer reads"
        )
    for layer, (name, weight, bias) in zip(layers, convolutions):
        if layer.weight.shape != weight.shape or layer.bias.shape != bias.shape:
            raise EncoderImportError(
                f"{tflite_path}: {name} has weight {tuple(weight.shape)} where {MODEL_NAME}'s layer at that place "
                f"has {tuple(layer.weight.shape)}; nothing written"
            )
        layer.weight.data.copy_(weight)
        layer.bias.data.copy_(bias)

    fold_input_scaling(model.stem[0])
    paths, images, skipped = calibration_images(Path(images_dir), CHECK_IMAGES)
    references = [input_probability(interpreter, image) for image in images]
    probabilities = [model_probabilities(model, image, size) for image in images]
    difference = max(float(np.abs(mine - reference).max()) for mine, reference in zip(probabilities, references))
    if not difference <= CHECK_MAX_DIFFERENCE:
        raise EncoderImportError(
            f"the imported {MODEL_NAME} does not reproduce {tflite_path.name}: its probabilities differ by up to "
            f"{difference:.4f} (> {CHECK_MAX_DIFFERENCE}) on {len(images)} photos of {images_dir}; nothing written"
        )
    summary = {
        "model": MODEL_NAME,
        "model_options": {},
        "source": tflite_path.name,
        "source_kind": "mediapipe-selfie",
        "source_sha256": hashlib.sha256(tflite_path.read_bytes()).hexdigest(),
        "input_size": list(size),
        "convolutions": len(convolutions),
        "tensors": len(model.state_dict()),
        "check_max_difference": round(difference, 7),
        "check_images": len(images),
        "skipped_images": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), **summary}, output)
    return summary

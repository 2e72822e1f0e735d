"""Moving between a photo's size and a model's input size, in both directions.

Every teacher shrinks the photo to the model's input *before* any float conversion, so a
6000x8000 photo costs one uint8 resize, and only the final probability map (float32, H x W)
exists at full size.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

InputSize = tuple[int, int]  # a model input's (height, width) in px


def as_input_size(size: "int | Sequence[int] | str") -> InputSize:
    """A model input size as (height, width): S (a square), [H, W] or "HxW" (e.g. 144x256, landscape).

    `train.size`, the `--size` options and every artefact report speak one of these; the rest of
    the code only sees (height, width).
    """
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        try:
            values = [int(part) for part in parts]
        except ValueError:
            raise ValueError(f"input size {size!r} is not S or HxW (e.g. 192 or 144x256)") from None
    elif isinstance(size, int | np.integer):
        values = [int(size)]
    else:
        values = [int(value) for value in size]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"input size {size!r} is not S or [H, W] with positive sides (e.g. 192 or [144, 256])")
    return values[0], values[1]


def format_input_size(size: "InputSize | None") -> str:
    """(144, 256) -> "144x256"; None (a model that takes photos of any shape) -> "photo size"."""
    return f"{size[0]}x{size[1]}" if size else "photo size"


@dataclass(frozen=True)
class Placement:
    """Where the photo's content lies inside the model input (letterboxing leaves a border)."""

    height: int  # content size in model-input pixels
    width: int
    input_height: int  # the whole model input
    input_width: int

    def crop(self, output: np.ndarray) -> np.ndarray:
        """The content part of a model output (H', W', ...) whose size may differ from the input's."""
        rows = max(1, round(self.height * output.shape[0] / self.input_height))
        cols = max(1, round(self.width * output.shape[1] / self.input_width))
        return output[:rows, :cols]


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a uint8 image; area averaging when both sides shrink, bilinear otherwise.

    Area averaging is the antialiased choice for shrinking; when a side grows it degrades to
    near nearest-neighbour in OpenCV, and on people-dev it cost the DeepLab tflite teacher
    0.012 IoU against bilinear when one side of a stretched photo grew (0.855 vs 0.867).
    """
    source_height, source_width = image.shape[:2]
    if (source_width, source_height) == (width, height):
        return image
    shrinking = width <= source_width and height <= source_height
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def stretch(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Placement]:
    """The whole photo resized to the model input, aspect ratio not kept."""
    return resize_image(image, width, height), Placement(height, width, height, width)


def letterbox(image: np.ndarray, width: int, height: int, pad_value: int) -> tuple[np.ndarray, Placement]:
    """The photo scaled to fit the model input with its aspect ratio kept, at the top-left corner.

    The rest is filled with `pad_value`; DeepLab's own inference code pads at the bottom and
    right the same way, so the content starts at pixel (0, 0) of the output too.
    """
    source_height, source_width = image.shape[:2]
    scale = min(width / source_width, height / source_height)
    content_width = min(width, max(1, round(source_width * scale)))
    content_height = min(height, max(1, round(source_height * scale)))
    canvas = np.full((height, width, image.shape[2]), pad_value, np.uint8)
    canvas[:content_height, :content_width] = resize_image(image, content_width, content_height)
    return canvas, Placement(content_height, content_width, height, width)


def resize_probability(probability: np.ndarray, height: int, width: int) -> np.ndarray:
    """A model-resolution probability map (h, w) brought to the photo's size: float32 in [0, 1].

    Bilinear for every output kind, hard 0/1 argmax maps included: the 0.5 level of a
    bilinearly enlarged 0/1 map runs straight between the model's pixel centres instead of
    along a staircase of model pixels, and the in-between values mark the band where the
    model's coarse grid cannot place the edge (on people-dev the DeepLab tflite teacher scores
    0.8672 this way, 0.8667 with nearest-neighbour).
    """
    probability = np.ascontiguousarray(probability, dtype=np.float32)
    if probability.shape != (height, width):
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(probability, 0.0, 1.0, out=probability)

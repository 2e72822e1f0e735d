"""One interface for whatever segments photos: a student in any runtime, or a teacher.

    probabilities = predictor.predict([photo, ...])   # each (H, W, 3) uint8 RGB, any size
    # -> [(H, W) float32 in [0, 1], ...] at each photo's own size, 1 = person

`input_size` is the side S of the square input the model sees (the photo is resized to S x S
inside `predict`), or None for a model that takes photos of other shapes. Teachers
(`portraitseg.teachers.base.Teacher`) implement it themselves. A model that takes batches of
photos already at S x S (a `trainer.runtime.Runner`: a checkpoint or an exported file) becomes
one through `SquareInputPredictor`, which resizes as every teacher does (`portraitseg.resize`).
Scoring and timing (`trainer.harness`) take any Predictor, so `trainer evaluate`'s reference
teacher, its students and the export parity check are all measured the same way.
"""

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from portraitseg.resize import letterbox, resize_probability, stretch


@runtime_checkable
class Predictor(Protocol):
    input_size: int | None  # side of the square model input; None = the model takes other shapes

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Person probability maps, (H, W) float32 in [0, 1], one per (H, W, 3) uint8 RGB photo."""
        ...


class SquareInputPredictor:
    """A model of (N, S, S, 3) uint8 batches -> (N, S, S) probabilities, as a Predictor of photos.

    The photos of one `predict` call go through the model as one batch. `fit="stretch"` resizes
    each photo to S x S (area when shrinking, bilinear otherwise), as the students are trained;
    `fit="letterbox"` scales it to fit with its aspect kept and fills the rest with `pad_rgb`
    (the output is cropped back to the content). The S x S probabilities are resized bilinearly to
    each photo's size. A photo already at S x S goes through both resizes untouched, which is how
    latency is timed.
    """

    def __init__(
        self,
        predict_batch: Callable[[np.ndarray], np.ndarray],
        input_size: int,
        fit: str = "stretch",
        pad_rgb: tuple[int, int, int] = (0, 0, 0),
    ):
        if fit not in ("letterbox", "stretch"):
            raise ValueError(f"fit must be letterbox or stretch, got {fit!r}")
        self.predict_batch = predict_batch
        self.input_size = int(input_size)
        self.fit = fit
        self.pad_rgb = pad_rgb

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        size = self.input_size
        fitted = [letterbox(image, size, size, 0) if self.fit == "letterbox" else stretch(image, size, size) for image in images]
        if self.fit == "letterbox":
            for canvas, placement in fitted:
                canvas[placement.height :] = self.pad_rgb
                canvas[:, placement.width :] = self.pad_rgb
        outputs = np.asarray(self.predict_batch(np.stack([canvas for canvas, _ in fitted])))  # (N, S, S)
        return [
            resize_probability(placement.crop(output), *image.shape[:2])
            for output, (_, placement), image in zip(outputs, fitted, images, strict=True)
        ]

"""One interface for whatever segments photos: a student in any runtime, or a teacher.

    probabilities = predictor.predict([photo, ...])   # each (H, W, 3) uint8 RGB, any size
    # -> [(H, W) float32 in [0, 1], ...] at each photo's own size, 1 = person

`input_size` is the (height, width) of the input the model sees (the photo is resized to it
inside `predict`; (256, 256) for MediaPipe's general model, (144, 256) for its landscape one), or
None for a model that takes photos of other shapes. Teachers (`portraitseg.teachers.base.Teacher`)
implement it themselves. A model that takes batches of photos already at that size (a
`trainer.runtime.Runner`: a checkpoint or an exported file) becomes one through
`FixedInputPredictor`, which resizes as every teacher does (`portraitseg.resize`).
Scoring and timing (`trainer.harness`) take any Predictor, so `trainer evaluate`'s reference
teacher, its students and the export parity check are all measured the same way.
"""

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from portraitseg.resize import InputSize, Placement, as_input_size, letterbox, resize_image, resize_probability, stretch


@runtime_checkable
class Predictor(Protocol):
    input_size: InputSize | None  # (height, width) of the model input; None = the model takes other shapes

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Person probability maps, (H, W) float32 in [0, 1], one per (H, W, 3) uint8 RGB photo."""
        ...


class FixedInputPredictor:
    """A model of (N, H, W, C) batches -> (N, H, W) probabilities, as a Predictor of photos.

    (H, W) is the model's fixed input size: a square S x S, or e.g. a landscape 144 x 256. Below,
    S x S stands for it. The photos of one `predict` call go through the model as one batch.
    `fit="stretch"` resizes each photo to S x S (area when shrinking, bilinear otherwise), as the
    students are trained;
    `fit="letterbox"` scales it to fit with its aspect kept and fills the rest with `pad_rgb`
    (the output is cropped back to the content). The S x S probabilities are resized bilinearly to
    each photo's size. A photo already at S x S goes through both resizes untouched, which is how
    latency is timed.

    C is 3 (uint8 RGB), or 4 with `takes_prior` (a student trained with `model_options.prior`):
    then `predict(images, priors)` also takes the previous frame's probability for each photo, at
    the photo's size ((H, W) float32 in [0, 1], or None for none), fitted to S x S as the photo is
    and appended as a fourth channel in 0..255 (float32). A photo without a prior gets an empty one,
    so on single photos a prior student is its first-frame self; `FrameStream` feeds it its own
    previous output on video.
    """

    def __init__(
        self,
        predict_batch: Callable[[np.ndarray], np.ndarray],
        input_size: "InputSize | int",
        fit: str = "stretch",
        pad_rgb: tuple[int, int, int] = (0, 0, 0),
        takes_prior: bool = False,
    ):
        if fit not in ("letterbox", "stretch"):
            raise ValueError(f"fit must be letterbox or stretch, got {fit!r}")
        self.predict_batch = predict_batch
        self.input_size = as_input_size(input_size)
        self.fit = fit
        self.pad_rgb = pad_rgb
        self.takes_prior = takes_prior

    def predict(self, images: list[np.ndarray], priors: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        height, width = self.input_size
        if priors is not None and not self.takes_prior:
            raise ValueError("this model takes no prior (it was not trained with model_options.prior)")
        fitted = [
            letterbox(image, width, height, 0) if self.fit == "letterbox" else stretch(image, width, height)
            for image in images
        ]
        if self.fit == "letterbox":
            for canvas, placement in fitted:
                canvas[placement.height :] = self.pad_rgb
                canvas[:, placement.width :] = self.pad_rgb
        batch = np.stack([canvas for canvas, _ in fitted])  # (N, H, W, 3) uint8
        if self.takes_prior:
            priors = priors if priors is not None else [None] * len(images)
            prior_channel = [fit_prior(prior, placement) for prior, (_, placement) in zip(priors, fitted, strict=True)]
            batch = np.concatenate([batch.astype(np.float32), np.stack(prior_channel)[..., None]], axis=-1)  # (N, H, W, 4)
        outputs = np.asarray(self.predict_batch(batch))  # (N, H, W)
        return [
            resize_probability(placement.crop(output), *image.shape[:2])
            for output, (_, placement), image in zip(outputs, fitted, images, strict=True)
        ]


def fit_prior(prior: np.ndarray | None, placement: Placement) -> np.ndarray:
    """A photo-sized prior probability (or None: empty) -> the model input's (H, W) float32 0..255, where the photo's content lies."""
    canvas = np.zeros((placement.input_height, placement.input_width), np.float32)
    if prior is not None:
        content = resize_image(np.asarray(prior, np.float32), placement.width, placement.height)
        canvas[: placement.height, : placement.width] = np.clip(content, 0.0, 1.0) * 255.0
    return canvas


# ---------------------------------------------------------------------------------------------
# Video: frames in order


def smooth_temporal(current: np.ndarray, previous: np.ndarray | None, ratio: float) -> np.ndarray:
    """MediaPipe's SegmentationSmoothingCalculator (mediapipe/calculators/image/segmentation_smoothing_calculator.cc).

    Each new probability p moves towards the previous frame's (smoothed) value by
    `ratio * uncertainty(p)`; uncertainty is 1 - min(1, x (c1 + x (c2 + x (c3 + x (c4 + x c5)))))
    with x = (p - 0.5)^2, MediaPipe's polynomial fit of 1 - (1 - H(p))^2 (H the binary entropy in
    bits): 1 at p = 0.5, 0 for confident pixels. So confident pixels follow the new frame and
    uncertain ones (edges, flicker) keep the past. No previous frame: the current passes through.
    """
    if previous is None or ratio <= 0:
        return current
    c1, c2, c3, c4, c5 = 5.68842, -0.748699, -57.8051, 291.309, -624.717
    t = current - np.float32(0.5)
    x = t * t
    uncertainty = 1.0 - np.minimum(1.0, x * (c1 + x * (c2 + x * (c3 + x * (c4 + x * c5)))))
    return (current + (previous - current) * (uncertainty * np.float32(ratio))).astype(np.float32)


class FrameStream:
    """A Predictor run over the frames of one video at a time, in order: what `trainer predict` does
    to a video and `trainer evaluate` to a clip.

    - A predictor with `takes_prior` (a student trained with `model_options.prior`) gets its own
      output for the previous frame as its prior; the first frame of a clip gets none (an empty
      prior), as in training. Such frames run one at a time; others run as one batch.
    - `smooth` > 0 applies `smooth_temporal` (MediaPipe's smoothing) to each output. The prior fed
      back is the model's own output, before smoothing.

    `start_clip()` forgets the previous frame: call it between videos or clips.
    """

    def __init__(self, predictor: Predictor, smooth: float = 0.0):
        if not 0 <= smooth < 1:
            raise ValueError(f"smooth must be in [0, 1), got {smooth}")
        self.predictor = predictor
        self.smooth = smooth
        self.takes_prior = bool(getattr(predictor, "takes_prior", False))
        self.start_clip()

    @property
    def input_size(self) -> InputSize | None:
        return self.predictor.input_size

    def start_clip(self) -> None:
        self.previous: np.ndarray | None = None  # the model's last output (the next prior)
        self.smoothed: np.ndarray | None = None  # the last smoothed output

    def predict(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The probabilities of the next `frames` of the clip, in order, each at its frame's size."""
        if self.takes_prior:
            raw = []
            for frame in frames:
                self.previous = self.predictor.predict([frame], priors=[self.previous])[0]  # type: ignore[call-arg]
                raw.append(self.previous)
        else:
            raw = list(self.predictor.predict(list(frames))) if frames else []
        if not self.smooth:
            return raw
        out = []
        for probability in raw:
            self.smoothed = smooth_temporal(probability, self.smoothed, self.smooth)
            out.append(self.smoothed)
        return out

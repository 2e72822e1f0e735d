"""The one scoring harness: quality and latency of predictors, for `trainer evaluate` and the export parity check.

Whatever is measured is a `portraitseg.predictor.Predictor` (a student in any runtime through
`Runner.as_predictor()`, or a teacher), so every figure portraitseg prints about a model's
quality or speed comes from here:

- `score`: quality at **ground-truth resolution**. Each photo goes through `predictor.predict`
  (resized to the model's (H, W) input, area when shrinking and bilinear when growing; the
  probabilities resized bilinearly back to the mask's size) and is compared with its mask by
  the one person rule of `portraitseg.scoring` (p >= 0.5, mask >= 128). The headline IoU (and
  the two-class mIoU, and the boundary F-score of `trainer.metrics.boundary_f_scores`) is the
  mean over photos of each photo's figure; `pooled_iou` is the IoU over the pooled pixels of all
  photos (it weighs large people by their pixels). Pixel accuracy and alpha MAE (the mean of
  |probability - mask / 255|) are over every pixel.
- `time_predictors`: batch-1 latency, median and p90 of `repeats` calls of `predictor.predict`
  on one photo already at the model's input size (so the resizes are no-ops and only the
  model's own pre- and post-processing is timed), after `warmup` untimed calls; predictors take
  turns in blocks (`measure_latencies`). Call `use_threads` first: it fixes the thread count of
  the libraries every runtime shares.
- `score_clips`: the same per-frame quality on video clips, frame by frame in order through a
  `portraitseg.predictor.FrameStream` (a prior student gets its own previous output), plus the
  temporal instability of `trainer.metrics.TemporalMetrics` (dtSSD, flip rate), each predictor
  per frame and smoothed as `trainer predict --smooth` smooths.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from portraitseg.imagefiles import read_mask, read_rgb
from portraitseg.predictor import FrameStream, Predictor, smooth_temporal
from portraitseg.progress import progress
from portraitseg.records import resolve
from portraitseg.resize import resize_image
from portraitseg.scoring import iou, mean_iou, person
from trainer.metrics import TemporalMetrics, boundary_f_scores

WARMUP_CALLS = 10  # untimed calls first: allocations, XNNPACK weight packing, caches
LATENCY_ROUNDS = 5  # timing blocks per predictor (see measure_latencies)
BLOCK_WARMUP = 2  # untimed calls at the start of each block
SETTLE_SECONDS = 0.05  # pause before each block

# Called for each photo with its index, the photo, its mask and every predictor's probabilities.
Observer = Callable[[int, np.ndarray, np.ndarray, list[np.ndarray]], None]


# ---------------------------------------------------------------------------------------------
# Photos


def read_sample(split_dir: Path, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB photo of a split row and its (H, W) uint8 mask; OSError naming the file."""
    try:
        image = read_rgb(resolve(split_dir, row, "image"))
    except OSError as error:
        raise OSError(f"{error}; re-run `datatool split` or restore the file") from error
    mask_path = resolve(split_dir, row, "mask")
    try:
        mask = read_mask(mask_path)
    except OSError as error:
        raise OSError(f"{error}; re-run `datatool split`") from error
    if mask.shape != image.shape[:2]:
        raise OSError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}")
    return image, mask


def read_samples(split_dir: Path, rows: Iterable[dict[str, Any]]):
    """(photo, mask) of each row, read one at a time (a test set of large photos never sits in memory)."""
    for row in rows:
        yield read_sample(split_dir, row)


# ---------------------------------------------------------------------------------------------
# Quality


class QualityMetrics:
    """Person IoU (per photo and pooled), two-class mIoU, pixel accuracy, alpha MAE and boundary F over photos.

    Photos of different sizes cannot share a batch, so each `update` is one photo at its own
    resolution. `iou` and `miou` are means over photos of each photo's IoU (`portraitseg.scoring`),
    as portrait-segmentation papers report them: a small person counts as much as a large one.
    `pooled_iou` sums intersections and unions over every pixel of every photo. Pixel accuracy
    and alpha MAE are over every pixel. `boundary_width` None leaves the boundary F-score out
    (the costly one at full resolution).
    """

    def __init__(self, boundary_width: int | None = 2):
        self.boundary_width = boundary_width
        self.person_ious: list[float] = []
        self.two_class_ious: list[float] = []
        self.boundary_fs: list[float] = []
        self.sums = dict.fromkeys(("person_inter", "person_union", "correct", "pixels", "abs_error"), 0.0)

    def update(self, probability: np.ndarray, mask: np.ndarray) -> None:
        """One photo: probability (H, W) float in [0, 1]; mask (H, W) uint8, 255 = person (soft values allowed)."""
        if probability.shape != mask.shape:
            raise ValueError(f"prediction {probability.shape} and mask {mask.shape} differ in size")
        predicted, truth = person(probability), person(mask)  # one rule: portraitseg.scoring
        person_iou = iou(predicted, truth)
        self.person_ious.append(person_iou)
        self.two_class_ious.append((person_iou + iou(~predicted, ~truth)) / 2)
        sums = self.sums
        sums["person_inter"] += float(np.count_nonzero(predicted & truth))
        sums["person_union"] += float(np.count_nonzero(predicted | truth))
        sums["correct"] += float(np.count_nonzero(predicted == truth))
        sums["pixels"] += float(mask.size)
        sums["abs_error"] += float(np.abs(probability.astype(np.float64) - mask / 255.0).sum())
        if self.boundary_width is not None:
            self.boundary_fs.append(float(boundary_f_scores(as_batch(predicted), as_batch(truth), self.boundary_width)[0]))

    def compute(self) -> dict[str, float]:
        """{"iou", "pooled_iou", "miou", "boundary_f", "pixel_accuracy", "alpha_mae"}; an empty union counts as IoU 1."""
        s = self.sums
        result = {
            "iou": mean_iou(self.person_ious),
            "pooled_iou": s["person_inter"] / s["person_union"] if s["person_union"] else 1.0,
            "miou": mean_iou(self.two_class_ious),
            "boundary_f": float(np.mean(self.boundary_fs)) if self.boundary_fs else 0.0,
            "pixel_accuracy": s["correct"] / s["pixels"] if s["pixels"] else 0.0,
            "alpha_mae": s["abs_error"] / s["pixels"] if s["pixels"] else 0.0,
        }
        if self.boundary_width is None:
            del result["boundary_f"]
        return result


def as_batch(mask: np.ndarray) -> torch.Tensor:
    """(H, W) bool array -> (1, 1, H, W) tensor, the layout of `trainer.metrics`."""
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def score(
    predictors: Sequence[Predictor],
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    boundary_width: int | None = 2,
    observe: Observer | None = None,
) -> list[dict[str, float]]:
    """The quality (`QualityMetrics.compute`) of each predictor on the same (photo, mask) pairs, in order.

    Photos are read and predicted one at a time; `observe` sees each photo with every
    predictor's probabilities (for overlays, or to compare two predictors pixel by pixel).
    """
    metrics = [QualityMetrics(boundary_width) for _ in predictors]
    for index, (image, mask) in enumerate(samples):
        probabilities = [predictor.predict([image])[0] for predictor in predictors]
        for accumulator, probability in zip(metrics, probabilities, strict=True):
            accumulator.update(probability, mask)
        if observe is not None:
            observe(index, image, mask, probabilities)
    return [accumulator.compute() for accumulator in metrics]


def score_clips(
    predictors: Sequence[Predictor],
    clips: Iterable[Iterable[tuple[np.ndarray, np.ndarray]]],
    smooth: float,
    boundary_width: int | None = 2,
) -> list[dict[str, dict[str, float | int | None]]]:
    """Per-frame quality and temporal stability of each predictor on the same clips, frames in order.

    Returns, per predictor, {"per-frame": metrics, "smoothed": metrics}: `QualityMetrics` over all
    frames (IoU the mean over frames) with `TemporalMetrics` (dtSSD, flip rate) and the frame and
    clip counts. "smoothed" applies `smooth_temporal` with ratio `smooth` to the per-frame outputs,
    as `trainer predict --smooth` does; a prior student is fed its own unsmoothed output either way,
    so one run of the model serves both.
    """
    streams = [FrameStream(predictor) for predictor in predictors]
    variants = ("per-frame", "smoothed")
    quality = [{variant: QualityMetrics(boundary_width) for variant in variants} for _ in predictors]
    temporal = [{variant: TemporalMetrics() for variant in variants} for _ in predictors]
    frames = clip_count = 0
    for clip in clips:
        clip_count += 1
        smoothed: list[np.ndarray | None] = [None] * len(predictors)
        for stream, metrics in zip(streams, temporal, strict=True):
            stream.start_clip()
            for accumulator in metrics.values():
                accumulator.start_clip()
        for image, mask in clip:
            frames += 1
            truth = torch.from_numpy(mask.astype(np.float32) / 255.0)
            for index, stream in enumerate(streams):
                raw = stream.predict([image])[0]
                smoothed[index] = smooth_temporal(raw, smoothed[index], smooth)
                for variant, probability in zip(variants, (raw, smoothed[index]), strict=True):
                    quality[index][variant].update(probability, mask)
                    temporal[index][variant].update(torch.from_numpy(probability), truth)
    return [
        {
            variant: {**quality[index][variant].compute(), **temporal[index][variant].compute(), "frames": frames, "clips": clip_count}
            for variant in variants
        }
        for index in range(len(predictors))
    ]


# ---------------------------------------------------------------------------------------------
# Speed


def use_threads(threads: int) -> None:
    """The thread count of PyTorch and OpenCV for this process (each runtime gets its own at opening)."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def time_predictors(
    predictors: Sequence[Predictor], photo: np.ndarray, warmup: int = WARMUP_CALLS, repeats: int = 100
) -> list[dict[str, float]]:
    """{"latency_ms", "latency_p90_ms"} of each predictor's batch-1 `predict`, in order.

    Each is called on `photo` resized to its input size (the photo as it is for a predictor
    without one), so the resizes in `predict` are no-ops and not timed.
    """
    calls = {}
    for index, predictor in enumerate(predictors):
        size = predictor.input_size  # (height, width)
        sample = photo if size is None else resize_image(photo, size[1], size[0])
        calls[str(index)] = lambda predictor=predictor, sample=sample: predictor.predict([sample])
    latencies = measure_latencies(calls, warmup, repeats)
    return [latencies[str(index)] for index in range(len(predictors))]


def measure_latencies(calls: Mapping[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median and p90 (ms) of each call: `repeats` timed calls each, in `LATENCY_ROUNDS` blocks.

    The candidates take turns block by block, so a burst of load from another process on a
    shared machine falls on several of them instead of on one candidate's whole run. Turns are
    blocks, not single calls: PyTorch (OpenMP), ONNX Runtime and LiteRT each keep a thread pool
    whose idle threads spin for a while after a call, and alternating call by call made the
    pools fight (PyTorch 400 ms instead of 15 ms here). Each block therefore starts after a
    pause and a few untimed calls.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    rounds = min(LATENCY_ROUNDS, repeats)
    for round_index in progress(range(rounds), desc="latency", unit="round"):
        block = repeats // rounds + (1 if round_index < repeats % rounds else 0)
        for name, call in calls.items():
            time.sleep(SETTLE_SECONDS)  # let the previous runtime's spinning threads go idle
            for _ in range(min(warmup, BLOCK_WARMUP)):
                call()
            for _ in range(block):
                start = time.perf_counter_ns()
                call()
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: summarise_times(values) for name, values in times.items()}


def summarise_times(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"latency_ms": statistics.median(ordered), "latency_p90_ms": p90}

"""The parity guard: run an artefact on validation photos and compare it with fp32 PyTorch.

For each artefact: the largest and the mean absolute difference of its probabilities from the
checkpoint's (the same `InferenceGraph` run in PyTorch), the IoU of each against the ground
truth (dataset-level, as `trainer.metrics` computes it, at threshold 0.5, at the model's
input size) and the drop `reference IoU - artefact IoU`. A drop above `max_iou_drop` fails
the artefact. Latency is the median wall time of one batch-1 `predict` after warm-up runs.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from portraitseg.imagefiles import read_rgb
from portraitseg.records import read_split, resolve
from portraitseg.scoring import iou, person
from trainer.export.calibration import resize_image
from trainer.runtime import Runner

WARMUP_RUNS = 3


@dataclass(frozen=True)
class ValidationSet:
    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    masks: np.ndarray  # (N, S, S) bool, person
    ids: list[str]
    split_dir: Path


def load_validation(split_dir: Path, size: int, limit: int = 32) -> ValidationSet:
    """The first `limit` rows of `<split_dir>/val.jsonl` (manifest order) at `size` x `size`."""
    rows = read_split(split_dir, "val")[: max(limit, 1)]
    images, masks = [], []
    for row in rows:
        image = read_rgb(resolve(split_dir, row))
        mask = cv2.imread(str(resolve(split_dir, row, "mask")), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise OSError(f"cannot read mask {resolve(split_dir, row, 'mask')} (missing, truncated or not an image)")
        images.append(resize_image(image, size))
        # Binary masks keep their labels (nearest, as training validates); soft ones are
        # thresholded after a linear resize.
        binary = row.get("mask_kind", "binary") == "binary"
        resized = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST if binary else cv2.INTER_LINEAR)
        masks.append(resized >= 128)
    ids = [str(row.get("id", index)) for index, row in enumerate(rows)]
    return ValidationSet(np.stack(images), np.stack(masks), ids, Path(split_dir))


def median_latency_ms(runner: Runner, image: np.ndarray, runs: int) -> float | None:
    """Median batch-1 `predict` time in ms over `runs` (None for runs 0)."""
    if runs <= 0:
        return None
    for _ in range(WARMUP_RUNS):
        runner.predict(image[None])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.predict(image[None])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def compare(
    runner: Runner,
    reference: np.ndarray,
    validation: ValidationSet,
    max_iou_drop: float,
    latency_runs: int = 20,
) -> dict:
    """The parity numbers of `runner` against `reference` probabilities (N, S, S) on `validation`."""
    predicted = runner.predict(validation.images)
    difference = np.abs(predicted - reference)
    reference_iou = iou(reference, validation.masks)
    artefact_iou = iou(predicted, validation.masks)
    drop = reference_iou - artefact_iou
    return {
        "images": len(validation.images),
        "validation": str(validation.split_dir),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "mask_agreement": float(np.mean(person(predicted) == person(reference))),
        "reference_iou": reference_iou,
        "iou": artefact_iou,
        "iou_drop": drop,
        "max_iou_drop": max_iou_drop,
        "passed": bool(drop <= max_iou_drop),
        "latency_ms": median_latency_ms(runner, validation.images[0], latency_runs),
    }

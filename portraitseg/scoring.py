"""When a pixel is person, and the IoU of two masks: one rule for every figure portraitseg prints.

A probability p is person when p >= 0.5; a stored uint8 mask value v when v >= 128 (the same
rule, as masks store round(255 p)). IoU is |A and B| / |A or B|, and two empty masks agree
perfectly (1.0), so a photo without a person that is predicted empty counts as right.

`iou` of one photo's masks is that photo's IoU; of a stack of photos' masks it is the pooled
IoU (summed intersections over summed unions, large people weigh by their pixels), which is
what a figure called "pooled" or "dataset-level" is. `mean_iou` is the mean over photos.
"""

from collections.abc import Iterable

import numpy as np

PERSON_THRESHOLD = 0.5  # probabilities
PERSON_LEVEL = 128  # stored uint8 masks: round(255 * 0.5) = 128


def person(values: np.ndarray) -> np.ndarray:
    """Boolean person mask of a probability map (float) or a stored mask (uint8)."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    return values >= (PERSON_LEVEL if values.dtype == np.uint8 else PERSON_THRESHOLD)


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two masks of one shape (probabilities, uint8 masks or booleans); both empty = 1.0."""
    a, b = person(predicted), person(truth)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def mean_iou(ious: Iterable[float]) -> float:
    """The headline over photos: the mean of per-photo IoUs (1.0 for no photo, as two empty sets agree)."""
    values = list(ious)
    return float(np.mean(values)) if values else 1.0

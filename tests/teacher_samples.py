"""Real inputs for teacher tests: people-dev photos with their masks, model files, a public-domain photo."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED

SHARED_DEEPLAB = SHARED / "weights" / "deeplabv3_mnv2_pascal_quant.tflite"


def people_dev_samples(shared_data: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `count` people-dev pairs by number: (RGB photo, boolean person mask at the photo's size)."""
    folder = shared_data / "people-dev"
    numbers = sorted(int(path.stem) for path in (folder / "Training_Images").glob("*.jpg"))[:count]
    samples = []
    for number in numbers:
        photo = cv2.cvtColor(cv2.imread(str(folder / "Training_Images" / f"{number}.jpg")), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(folder / "Ground_Truth" / f"{number}.png"), cv2.IMREAD_GRAYSCALE)
        # Many people-dev masks are smaller than their photo (same aspect ratio): nearest, as the README says.
        mask = cv2.resize(mask, photo.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        samples.append((photo, mask >= 128))
    return samples


def iou(probability: np.ndarray, truth: np.ndarray) -> float:
    person = probability >= 0.5
    union = (person | truth).sum()
    return 1.0 if union == 0 else float((person & truth).sum() / union)


def astronaut() -> np.ndarray:
    """scikit-image's public-domain portrait (512x512 RGB): one person filling the middle."""
    from skimage import data

    return data.astronaut()


def cached_model(name: str) -> Path:
    """The verified cached file of a `portraitseg.teacher_files` entry, or skip saying how to get it."""
    from portraitseg.teacher_files import ModelMissingError, model_path

    try:
        return model_path(name)
    except ModelMissingError as error:
        pytest.skip(f"model {name} is not cached on this machine: {error}")


def shared_deeplab() -> Path:
    if not SHARED_DEEPLAB.is_file():
        pytest.skip(f"needs the shared development weights at {SHARED_DEEPLAB} (not part of a user's checkout)")
    return SHARED_DEEPLAB

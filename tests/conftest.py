"""Shared fixture builders: tests make their own tiny datasets in every source layout."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def make_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, JPEG-friendly BGR test image (gradients plus a few blobs), deterministic per seed."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            127 + 100 * np.sin(xs / (7 + seed % 5) + rng.uniform(0, 6)),
            127 + 100 * np.cos(ys / (9 + seed % 3) + rng.uniform(0, 6)),
            (xs + ys) * 255.0 / (height + width),
        ],
        axis=-1,
    )
    return np.clip(image, 0, 255).astype(np.uint8)


def make_person_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A binary 0/255 'person': an ellipse body and a round head, placed by the seed."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    cx = int(width * rng.uniform(0.35, 0.65))
    cv2.ellipse(mask, (cx, int(height * 0.75)), (width // 4, height // 3), 0, 0, 360, 255, -1)
    cv2.circle(mask, (cx, int(height * 0.3)), max(2, min(height, width) // 8), 255, -1)
    return mask


def draw_blob(seed: int, height: int = 40, width: int = 48) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """A red-ish ellipse "person" on a blue-ish noisy background (BGR float), its 0/255 mask, centre and axes.

    The training, export and evaluation tests share it: a colour rule segments it, so a model or an
    artefact that works scores a high IoU on it.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal((200, 120, 60), 25, (height, width, 3))  # BGR: blue-ish background
    mask = np.zeros((height, width), np.uint8)
    center = (int(rng.integers(16, 32)), int(rng.integers(14, 26)))
    axes = (int(rng.integers(8, 14)), int(rng.integers(10, 16)))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 255, -1)
    image[mask > 0] = rng.normal((60, 90, 210), 25, (int((mask > 0).sum()), 3))  # red-ish person
    return image, mask, center, axes


def write_image(path: Path, image: np.ndarray, params: list[int] | None = None) -> Path:
    """Write with OpenCV (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image, params or []), path
    return path


def save_jpeg_with_orientation(path: Path, bgr: np.ndarray, orientation: int) -> Path:
    """A JPEG whose EXIF orientation tag says `orientation` (pixels stored as given)."""
    image = Image.fromarray(bgr[..., ::-1])
    exif = image.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data`, which developers and CI have and a user's checkout does not."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"needs the shared development data at {path} (not part of a user's checkout)")
    return path

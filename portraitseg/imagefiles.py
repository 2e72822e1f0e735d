"""Which files are images, and reading images and masks as the model side uses them.

The data side decodes with validation (truncation, EXIF, colour formats: `datatool.images`)
when it writes a canonical set; what it writes is plain RGB JPEG/PNG and one-channel PNG masks,
which these readers take as they are.
"""

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif"})
MASK_SUFFIXES = frozenset({".png", ".bmp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".webp"})


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; an unreadable file is an `OSError` naming it."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path} (missing, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8, 255 = person (soft values kept); an unreadable file is an `OSError` naming it."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise OSError(f"cannot read mask {path} (missing, truncated or not an image)")
    return mask

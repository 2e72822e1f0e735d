"""Image decoding with validation: truncation, odd colour formats and EXIF orientation.

OpenCV applies EXIF orientation when it reads a file and PIL does not; masks are PNGs without
EXIF. To treat image and mask the same way the engine decodes pixels *without* orientation,
reads the orientation tag itself and applies it to both (`apply_orientation`).
"""

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # these swap width and height
JPEG_END_OF_IMAGE = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageError(ValueError):
    """An image that cannot be used; the message is the reason shown in the report."""


@dataclass
class DecodedImage:
    """An image as stored (no orientation applied yet), with what is needed to write it back."""

    pixels: np.ndarray  # (H, W, 3) uint8 BGR (OpenCV order), *raw* orientation
    data: bytes  # the file's bytes, copied verbatim to the canonical set when nothing changed
    format: str  # "JPEG", "PNG", ... as PIL names it
    orientation: int  # EXIF orientation 1..8 (1 = as stored)
    notes: list[str] = field(default_factory=list)  # conversions made (greyscale, 16-bit, alpha dropped)

    @property
    def copyable(self) -> bool:
        """True when the file's bytes already are a valid canonical RGB image."""
        return not self.notes and self.orientation == 1 and self.format in ("JPEG", "PNG")


def read_image(path) -> DecodedImage:
    """Read and validate an image file; raise `ImageError` with a reason a user can act on."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ImageError(f"unreadable image: {error.strerror or error}") from error
    if not data:
        raise ImageError("unreadable image: empty file")
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only: format and EXIF
            image_format = header.format or "unknown"
            orientation = int(header.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt image: not a recognised image file ({error.__class__.__name__})") from error
    if orientation not in range(1, 9):
        orientation = 1

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None or decoded.size == 0:
        raise ImageError(f"corrupt or truncated image: {image_format} data could not be decoded")
    check_complete(data, image_format)

    notes: list[str] = []
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
        notes.append("16-bit image converted to 8-bit")
    elif decoded.dtype != np.uint8:
        raise ImageError(f"unsupported image: {decoded.dtype} pixels")
    if decoded.ndim == 2 or decoded.shape[2] == 1:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_GRAY2BGR)
        notes.append("greyscale image converted to RGB")
    elif decoded.shape[2] == 4:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2BGR)
        notes.append("alpha channel of the image dropped")
    return DecodedImage(decoded, data, image_format, orientation, notes)


def check_complete(data: bytes, image_format: str) -> None:
    """Reject truncated files, which decoders often return as half-grey images without an error."""
    if image_format == "JPEG":
        # Valid JPEGs may carry trailing data after the end marker (e.g. phone "motion photos"),
        # so only when the marker is not near the end is the full decode through PIL consulted.
        if JPEG_END_OF_IMAGE in data[-4096:]:
            return
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except OSError as error:
            raise ImageError(f"truncated image: {error}") from error
    elif image_format == "PNG" and data.rfind(b"IEND") == -1:
        raise ImageError("truncated image: PNG has no end chunk")


def oriented_size(height: int, width: int, orientation: int) -> tuple[int, int]:
    """(height, width) after applying an EXIF orientation."""
    return (width, height) if orientation in TRANSPOSING_ORIENTATIONS else (height, width)


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an (H, W[, C]) array, as `PIL.ImageOps.exif_transpose` does."""
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = array[::-1].swapaxes(0, 1)  # rotate 90 degrees clockwise
    elif orientation == 7:
        array = array[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        array = array[:, ::-1].swapaxes(0, 1)  # rotate 90 degrees counter-clockwise
    return np.ascontiguousarray(array)

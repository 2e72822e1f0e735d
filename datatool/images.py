"""Image decoding with validation: truncation, odd colour formats and EXIF orientation.

OpenCV applies EXIF orientation when it reads a file and PIL does not; masks are PNGs without
EXIF. To treat image and mask the same way the engine decodes pixels *without* orientation,
reads the orientation tag itself and applies it to both (`apply_orientation`).
"""

import io
from dataclasses import dataclass
from functools import cached_property

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
    """An image file, validated; its pixels are decoded on first use, in stored orientation."""

    data: bytes  # the file's bytes, copied verbatim to the canonical set when nothing changed
    format: str  # "JPEG", "PNG", ... as PIL names it
    mode: str  # PIL's mode from the header: "RGB", "L", "CMYK", "RGBA", "I;16", ...
    width: int  # stored (not oriented) size
    height: int
    orientation: int  # EXIF orientation 1..8 (1 = as stored)

    @property
    def copyable(self) -> bool:
        """True when the file's bytes already are a canonical image: 8-bit RGB JPEG/PNG, upright."""
        if self.orientation != 1 or self.mode != "RGB":
            return False
        if self.format == "PNG":
            return self.data[24] == 8  # IHDR bit depth: 16-bit RGB PNGs open as "RGB" in PIL too
        return self.format == "JPEG"

    @cached_property
    def decoded(self) -> tuple[np.ndarray, list[str]]:
        """(pixels as (H, W, 3) uint8 BGR in stored orientation, conversions made)."""
        array = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if array is None or array.size == 0:
            raise ImageError(f"corrupt or truncated image: {self.format} data could not be decoded")
        notes: list[str] = []
        if array.dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)
            notes.append("16-bit image converted to 8-bit")
        elif array.dtype != np.uint8:
            raise ImageError(f"unsupported image: {array.dtype} pixels")
        if array.ndim == 2 or array.shape[2] == 1:
            array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
            notes.append("greyscale image converted to RGB")
        elif array.shape[2] == 4:
            array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
            notes.append("alpha channel of the image dropped")
        return array, notes

    @property
    def pixels(self) -> np.ndarray:
        return self.decoded[0]

    @property
    def notes(self) -> list[str]:
        return self.decoded[1]

    def validate(self) -> None:
        """Decode the whole file once to prove it is intact, as cheaply as possible.

        A JPEG is decoded at 1/8 scale: libjpeg still entropy-decodes every block, so
        truncation and corrupt data fail exactly as in a full decode, but the inverse DCT and
        colour conversion run on 1/64 of the pixels (2x faster overall). Used when the file is
        copied as it is and its pixels are not needed.
        """
        if "decoded" in self.__dict__:
            return
        if self.format == "JPEG":
            reduced = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION)
            if reduced is None or reduced.size == 0:
                raise ImageError("corrupt or truncated image: JPEG data could not be decoded")
        else:
            self.decoded  # noqa: B018 - decoding is the check


def read_image(path) -> DecodedImage:
    """Open an image file and check its header and completeness; raise `ImageError` with a reason.

    Pixels are decoded lazily (`pixels`) or only validated (`validate()`), so that an image
    copied byte for byte costs one cheap decode.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ImageError(f"unreadable image: {error.strerror or error}") from error
    if not data:
        raise ImageError("unreadable image: empty file")
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only: format, mode, EXIF
            image_format, mode, (width, height) = header.format or "unknown", header.mode, header.size
            orientation = int(header.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt image: not a recognised image file ({error.__class__.__name__})") from error
    if orientation not in range(1, 9):
        orientation = 1
    check_complete(data, image_format)
    return DecodedImage(data, image_format, mode, width, height, orientation)


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

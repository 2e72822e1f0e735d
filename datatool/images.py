"""Image decoding with validation: truncation, odd colour formats, EXIF orientation and size.

OpenCV applies EXIF orientation when it reads a file and PIL does not; masks are PNGs without
EXIF. To treat image and mask the same way the engine decodes pixels *without* orientation,
reads the orientation tag itself and applies it to both (`apply_orientation`).

Pixels are never decoded beyond Pillow's `MAX_IMAGE_PIXELS` (about 89 million): a larger JPEG
is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (`DecodedImage.bounded`), anything else is
refused with the reason, so a decompression bomb costs its sample, never the run's memory.
"""

import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # these swap width and height
JPEG_END_OF_IMAGE = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# libjpeg decodes at these fractions of the stored size directly, without a full-size buffer.
JPEG_SCALE_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
FILE_TYPES = {
    stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
}  # fmt: skip


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
    header_notes: list[str] = field(default_factory=list)  # what was repaired in the header (EXIF)

    @property
    def copyable(self) -> bool:
        """True when the file's bytes already are a canonical image: 8-bit RGB JPEG/PNG, upright.

        A file with a repaired header is re-encoded without it, so that no reader rotates it
        differently, and one above the pixel limit is not copied into a set that later stages
        must decode whole.
        """
        if self.orientation != 1 or self.mode != "RGB" or self.header_notes or not within_limit(self.width, self.height):
            return False
        if self.format == "PNG":
            return self.data[24] == 8  # IHDR bit depth: 16-bit RGB PNGs open as "RGB" in PIL too
        return self.format == "JPEG"

    @cached_property
    def decoded(self) -> tuple[np.ndarray, list[str]]:
        """(pixels as (H, W, 3) uint8 BGR in stored orientation, conversions made), at full size."""
        if not within_limit(self.width, self.height):
            raise ImageError(too_large(self.width, self.height))
        array = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if array is None or array.size == 0:
            raise ImageError(f"corrupt or truncated image: {self.format} data could not be decoded")
        notes: list[str] = []
        if array.dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)
            notes.append("16-bit image converted to 8-bit")
        elif array.dtype != np.uint8:
            raise ImageError(f"unsupported image: {array.dtype} pixels")
        # OpenCV converts CMYK, palettes and grey + alpha to BGR(A) silently (a CMYK TIFF comes
        # as BGR plus a fourth channel that is no alpha): the header's mode tells what it was.
        channels = 1 if array.ndim == 2 else array.shape[2]
        if self.mode == "CMYK":
            notes.append("CMYK image converted to RGB")
        elif self.mode in ("P", "PA"):
            notes.append("palette image converted to RGB")
        if channels == 1 or self.mode in ("LA", "La"):
            notes.append("greyscale image converted to RGB")
        if (channels == 4 and self.mode != "CMYK") or self.mode in ("LA", "La", "PA"):
            notes.append("alpha channel of the image dropped")
        if channels == 1:
            array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
        elif channels == 4:
            array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
        return array, notes

    @property
    def pixels(self) -> np.ndarray:
        return self.decoded[0]

    @property
    def notes(self) -> list[str]:
        """What was repaired: the header's notes and the conversions of a full decode."""
        return [*self.header_notes, *self.decoded[1]]

    def bounded(self, max_side: int | None = None) -> tuple[np.ndarray, int]:
        """(BGR pixels in stored orientation, divisor): the pixels decoded at 1/divisor of the stored size.

        A JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale when that still leaves at least
        `max_side` pixels on the longer side (to be shrunk to `max_side` after), or when its
        full size is above the pixel limit; anything else is decoded whole (`pixels`).
        Raises `ImageError` when no scale fits the limit.
        """
        divisor = self.divisor(max_side)
        if divisor == 1:
            return self.pixels, 1
        flag = JPEG_SCALE_FLAGS[divisor] | cv2.IMREAD_IGNORE_ORIENTATION
        pixels = cv2.imdecode(np.frombuffer(self.data, np.uint8), flag)
        if pixels is None or pixels.size == 0:
            raise ImageError("corrupt or truncated image: JPEG data could not be decoded")
        return pixels, divisor

    def divisor(self, max_side: int | None = None) -> int:
        """The scale divisor `bounded` decodes at; raises `ImageError` when no scale fits the pixel limit."""
        divisors = (1, *JPEG_SCALE_FLAGS) if self.format == "JPEG" else (1,)
        # libjpeg rounds scaled sizes up
        fitting = [d for d in divisors if within_limit(-(-self.width // d), -(-self.height // d))]
        if not fitting:
            raise ImageError(too_large(self.width, self.height))
        long_side = max(self.width, self.height)
        keeping_max_side = [d for d in fitting if max_side and -(-long_side // d) >= max_side]
        return max(keeping_max_side, default=fitting[0])

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
    copied byte for byte costs one cheap decode. Only a regular file is opened: reading a FIFO
    or a device would block forever. An image that cannot be decoded within the pixel limit
    at any scale is refused here, before any decoding.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"unreadable image: not a regular file ({file_type(info.st_mode)})")
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ImageError(f"unreadable image: {error.strerror or error}") from error
    if not data:
        raise ImageError("unreadable image: empty file")
    try:
        with pixel_limit_lifted(), Image.open(io.BytesIO(data)) as header:  # reads the header only
            image_format, mode, (width, height) = header.format or "unknown", header.mode, header.size
            orientation, orientation_note = read_orientation(header)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt image: not a recognised image file ({error.__class__.__name__})") from error
    image = DecodedImage(data, image_format, mode, width, height, orientation, [orientation_note] if orientation_note else [])
    image.divisor()
    check_complete(data, image_format)
    return image


def read_orientation(header: Image.Image) -> tuple[int, str | None]:
    """(EXIF orientation 1..8, a note when the tag could not be interpreted and upright was assumed).

    The tag should be one SHORT, but files with it as text, a rational or raw bytes exist; an
    out-of-range number means "undefined" to every reader and is taken as upright silently.
    """
    try:
        value = header.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception as error:  # noqa: BLE001 - PIL's EXIF parser raises assorted errors on damaged blocks
        return 1, f"EXIF unreadable ({type(error).__name__}), treated as upright"
    number = orientation_number(value)
    if number is None:
        return 1, f"EXIF orientation tag unreadable ({value!r:.40}), treated as upright"
    return (number if number in range(1, 9) else 1), None


def orientation_number(value) -> int | None:
    """The integer an EXIF orientation value stands for (int, digits, integral rational), else None."""
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        digits = value.strip("\0 ")
        return int(digits) if digits.isdecimal() else None
    try:
        number = float(value)  # IFDRational, float
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def file_type(mode: int) -> str:
    """What a `stat` mode names: "directory", "FIFO", "socket", ... ("special file" otherwise)."""
    return FILE_TYPES.get(stat.S_IFMT(mode), "special file")


def pixel_limit() -> int | None:
    """The most pixels decoded at once: Pillow's `MAX_IMAGE_PIXELS` (None: no limit), read at each
    call so that a caller (or a test) that changes Pillow's limit changes this one."""
    return Image.MAX_IMAGE_PIXELS


def within_limit(width: int, height: int) -> bool:
    limit = pixel_limit()
    return limit is None or width * height <= limit


def too_large(width: int, height: int) -> str:
    return f"image too large: {width}x{height} pixels ({width * height:,}) > limit of {pixel_limit():,} pixels"


@contextmanager
def pixel_limit_lifted() -> Iterator[None]:
    """Pillow refuses to open a file whose header promises more than twice its pixel limit (and
    warns above it), although reading the header decodes nothing. Here the limit is lifted for
    reading headers and enforced by `DecodedImage.divisor` instead, which can decode at reduced
    scale. Pillow's limit is a module global: decoding runs one image per process at a time."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_complete(data: bytes, image_format: str) -> None:
    """Reject truncated files, which decoders often return as half-grey images without an error."""
    if image_format == "JPEG":
        # Valid JPEGs may carry trailing data after the end marker (e.g. phone "motion photos"),
        # so only when the marker is not near the end is the full decode through PIL consulted.
        if JPEG_END_OF_IMAGE in data[-4096:]:
            return
        try:
            with pixel_limit_lifted(), Image.open(io.BytesIO(data)) as image:
                # At 1/8 scale libjpeg still reads every block, so truncation fails as in a full decode.
                image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
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

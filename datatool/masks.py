"""Mask decoding: detect a mask's encoding from its values and normalise it to uint8, 255 = person.

Public datasets encode "person" in many ways: 0/1 (Kaggle people_segmentation, PFCN, EG1800),
0/255, a soft 0..255 alpha matte (AISegment), the alpha channel of an RGBA PNG, palette
indices, 16-bit PNGs, MATLAB files. Reading any of them with the wrong assumption silently
gives empty or full masks (the classic bug: 0/1 masks divided by 255 and thresholded), so the
encoding is always derived from the pixel values and recorded in the manifest.
"""

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

# Masks whose values are all small integers but more than two of them are class-index maps
# (e.g. human-parsing sets): there is no safe "person" interpretation, so they are rejected.
MAX_CLASS_INDEX = 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PALETTE_COLOR_TYPE = 3


class MaskError(ValueError):
    """A mask that cannot be read or whose encoding is not a person mask; the message is the reason."""


@dataclass
class Mask:
    """A decoded mask in the project's form, with how it was stored originally."""

    pixels: np.ndarray  # (H, W) uint8, 255 = person, soft values kept for mattes
    kind: str  # "binary" | "alpha"
    encoding: str  # the original encoding, e.g. "gray 0/1", "rgba alpha", "mat mask 0/1"
    notes: list[str] = field(default_factory=list)  # repairs made while decoding, for the report


def normalise_gray(values: np.ndarray, encoding_prefix: str = "gray") -> Mask:
    """Normalise a single-channel uint8/uint16/bool array whose values say person vs background."""
    if values.ndim != 2:
        raise MaskError(f"expected a single-channel mask, got shape {values.shape}")
    if values.dtype == bool:
        return Mask(np.where(values, 255, 0).astype(np.uint8), "binary", f"{encoding_prefix} bool")
    if values.dtype == np.uint16:
        present = np.unique(values)
        if set(present.tolist()) <= {0, 1, 65535} and not {1, 65535} <= set(present.tolist()):
            return Mask(np.where(values > 0, 255, 0).astype(np.uint8), "binary", f"{encoding_prefix}16 0/{present.max()}")
        return Mask(np.round(values / 257.0).astype(np.uint8), "alpha", f"{encoding_prefix}16 0..65535")
    if values.dtype != np.uint8:
        if np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() <= 255:
            values = values.astype(np.uint8)
        elif np.issubdtype(values.dtype, np.floating) and values.min() >= 0.0 and values.max() <= 1.0:
            return Mask(np.round(values * 255.0).astype(np.uint8), "alpha", f"{encoding_prefix} float 0..1")
        else:
            raise MaskError(f"unknown mask encoding: dtype {values.dtype} with values {values.min()}..{values.max()}")

    counts = np.bincount(values.ravel(), minlength=256)  # O(n), much faster than np.unique
    present = np.flatnonzero(counts)
    if set(present.tolist()) <= {0, 1}:
        # 0/1 masks look black in a viewer; dividing by 255 and thresholding empties them.
        return Mask(values * np.uint8(255), "binary", f"{encoding_prefix} 0/1")
    if set(present.tolist()) <= {0, 255}:
        return Mask(values, "binary", f"{encoding_prefix} 0/255")
    if len(present) == 2 and present[0] == 0:
        return Mask(np.where(values > 0, 255, 0).astype(np.uint8), "binary", f"{encoding_prefix} 0/{present[1]}")
    if present.max() <= MAX_CLASS_INDEX:
        raise MaskError(
            f"unknown mask encoding: values {present.tolist()} look like class indices, not a person mask"
        )
    return Mask(values, "alpha", f"{encoding_prefix} 0..255 soft")


def decode_mask_bytes(data: bytes) -> Mask:
    """Decode an image-file mask (PNG, BMP, TIFF, ...) of any common encoding."""
    if data.startswith(PNG_SIGNATURE) and len(data) > 25 and data[25] == PNG_PALETTE_COLOR_TYPE:
        # OpenCV expands palette PNGs to colours; the person is the palette *index*.
        try:
            with Image.open(io.BytesIO(data)) as image:
                indices = np.asarray(image)
        except OSError as error:
            raise MaskError(f"unreadable mask: {error}") from error
        if data.rfind(b"IEND") == -1:
            raise MaskError("truncated mask file (no PNG end chunk)")
        return normalise_gray(indices, "palette index")

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise MaskError("unreadable mask: not a decodable image file")
    if data.startswith(PNG_SIGNATURE) and data.rfind(b"IEND") == -1:
        raise MaskError("truncated mask file (no PNG end chunk)")
    return normalise_array(decoded)


def normalise_array(decoded: np.ndarray) -> Mask:
    """Normalise a decoded (OpenCV channel order) mask array of 1, 3 or 4 channels."""
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[:, :, 0]
    if decoded.ndim == 2:
        return normalise_gray(decoded)
    if decoded.ndim != 3 or decoded.shape[2] not in (3, 4):
        raise MaskError(f"unknown mask encoding: array of shape {decoded.shape}")
    if decoded.shape[2] == 4:
        alpha = decoded[:, :, 3]
        if alpha.min() != alpha.max():
            mask = normalise_gray(alpha, "rgba alpha")
            return mask
        decoded = decoded[:, :, :3]  # an opaque RGBA mask carries its labels in the colours
    if decoded.dtype != np.uint8:
        decoded = np.round(decoded / 257.0).astype(np.uint8) if decoded.dtype == np.uint16 else decoded
    blue, green, red = decoded[:, :, 0], decoded[:, :, 1], decoded[:, :, 2]
    if np.array_equal(blue, green) and np.array_equal(green, red):
        return normalise_gray(blue, "gray-as-rgb")
    packed = (red.astype(np.uint32) << 16) | (green.astype(np.uint32) << 8) | blue.astype(np.uint32)
    colours = np.unique(packed)
    if len(colours) == 2 and colours[0] == 0:
        return Mask(np.where(packed > 0, 255, 0).astype(np.uint8), "binary", "colour black/one colour")
    raise MaskError(
        f"unknown mask encoding: colour image with {len(colours)} colours "
        "(expected one channel, 0/1, 0/255, a soft matte or RGBA alpha)"
    )


def decode_mask_file(path) -> Mask:
    """Read and decode a mask file; unreadable files raise `MaskError` with the reason."""
    try:
        data = open(path, "rb").read()
    except OSError as error:
        raise MaskError(f"unreadable mask: {error.strerror or error}") from error
    if not data:
        raise MaskError("unreadable mask: empty file")
    return decode_mask_bytes(data)


def same_aspect(mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    """True when one size is a uniform scaling of the other, up to rounding of each side.

    A mask saved at scale s of its image has sides round(H*s), round(W*s); each rounding moves
    w*H - h*W by at most half a pixel times the other side, hence the tolerance (H + W) / 2
    (doubled for masks made by tools that floor instead of round).
    """
    (h, w), (big_h, big_w) = mask_hw, image_hw
    return abs(w * big_h - h * big_w) <= (big_h + big_w)


def fit_mask(mask: Mask, image_hw: tuple[int, int]) -> tuple[Mask, str | None]:
    """Resize a mask to its image when only the scale differs; different aspect ratios are an error.

    Binary masks are resized with nearest-neighbour (values stay 0/255); mattes bilinearly.
    Returns the mask and a note for the report when it was resized.
    """
    mask_hw = mask.pixels.shape[:2]
    if mask_hw == tuple(image_hw):
        return mask, None
    if not same_aspect(mask_hw, image_hw):
        raise MaskError(
            f"aspect ratio mismatch: mask {mask_hw[1]}x{mask_hw[0]} vs image {image_hw[1]}x{image_hw[0]} (quarantined)"
        )
    interpolation = cv2.INTER_NEAREST if mask.kind == "binary" else cv2.INTER_LINEAR
    resized = cv2.resize(mask.pixels, (image_hw[1], image_hw[0]), interpolation=interpolation)
    method = "nearest" if mask.kind == "binary" else "bilinear"
    note = f"mask resized: {mask_hw[1]}x{mask_hw[0]} to image size {image_hw[1]}x{image_hw[0]} ({method})"
    return Mask(resized, mask.kind, mask.encoding, mask.notes), note

"""Mask encodings: every common way of storing 'person' normalises to uint8 0/255 (mattes stay soft)."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from datatool.masks import MaskError, decode_mask_bytes, fit_mask, normalise_gray, same_aspect


def png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def person(h=40, w=30) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[10:35, 8:22] = 1
    return mask


def test_zero_one_mask_becomes_0_255_not_empty():
    mask = decode_mask_bytes(png(person()))
    assert mask.encoding == "gray 0/1" and mask.kind == "binary"
    assert set(np.unique(mask.pixels)) == {0, 255}
    assert (mask.pixels == 255).sum() == person().sum()


def test_0_255_mask_is_kept():
    mask = decode_mask_bytes(png(person() * 255))
    assert mask.encoding == "gray 0/255"
    np.testing.assert_array_equal(mask.pixels, person() * 255)


def test_two_value_mask_with_other_foreground_value():
    mask = decode_mask_bytes(png(person() * 128))
    assert mask.encoding == "gray 0/128"
    np.testing.assert_array_equal(mask.pixels, person() * 255)


def test_soft_matte_values_are_kept():
    matte = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (10, 1))
    mask = decode_mask_bytes(png(matte))
    assert mask.kind == "alpha"
    np.testing.assert_array_equal(mask.pixels, matte)


def test_rgba_alpha_is_the_matte():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = np.linspace(0, 255, 20).astype(np.uint8)[None, :]
    mask = decode_mask_bytes(png(rgba))
    assert mask.encoding.startswith("rgba alpha") and mask.kind == "alpha"
    np.testing.assert_array_equal(mask.pixels, rgba[..., 3])


def test_palette_png_uses_the_index_not_the_colour():
    indices = person()
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 128, 64, 200] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    mask = decode_mask_bytes(buffer.getvalue())
    assert mask.encoding == "palette index 0/1"
    np.testing.assert_array_equal(mask.pixels, indices * 255)


def test_sixteen_bit_masks():
    binary = decode_mask_bytes(png(person().astype(np.uint16) * 65535))
    assert binary.kind == "binary"
    np.testing.assert_array_equal(binary.pixels, person() * 255)
    soft = decode_mask_bytes(png(np.array([[0, 257 * 100, 65535]], np.uint16)))
    assert soft.kind == "alpha"
    np.testing.assert_array_equal(soft.pixels, [[0, 100, 255]])


def test_grey_saved_as_rgb_and_two_colour_masks():
    grey = decode_mask_bytes(png(cv2.cvtColor(person() * 255, cv2.COLOR_GRAY2BGR)))
    np.testing.assert_array_equal(grey.pixels, person() * 255)
    colour = np.zeros((40, 30, 3), np.uint8)
    colour[person() > 0] = (0, 0, 192)
    np.testing.assert_array_equal(decode_mask_bytes(png(colour)).pixels, person() * 255)


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.array([[0, 1, 2, 3]], np.uint8), "class indices"),
        (np.dstack([np.array([[0, 50, 100]], np.uint8), np.array([[9, 80, 3]], np.uint8), np.array([[1, 2, 3]], np.uint8)]), "colour image with 3 colours"),
    ],
)
def test_unknown_encodings_are_rejected_with_a_reason(array, reason):
    with pytest.raises(MaskError, match=reason):
        decode_mask_bytes(png(array))


def test_unreadable_and_truncated_masks():
    with pytest.raises(MaskError, match="unreadable mask"):
        decode_mask_bytes(b"this is not an image")
    data = png(person() * 255)
    with pytest.raises(MaskError, match="unreadable|truncated"):
        decode_mask_bytes(data[: len(data) // 2])


def test_fit_mask_resizes_same_aspect_with_nearest_and_rejects_other_aspects():
    small = normalise_gray(person(40, 30) * 255)
    fitted, note = fit_mask(small, (80, 60))
    assert fitted.pixels.shape == (80, 60) and set(np.unique(fitted.pixels)) == {0, 255}
    assert note == "mask resized: 30x40 to image size 60x80 (nearest)"
    assert fit_mask(small, (40, 30)) == (small, None)
    with pytest.raises(MaskError, match="aspect ratio mismatch"):
        fit_mask(small, (40, 40))


def test_same_aspect_tolerates_rounding_only():
    assert same_aspect((183, 276), (1200, 1810))  # 276 = round(1810 * 0.1525)
    assert same_aspect((300, 400), (600, 800))
    assert not same_aspect((300, 420), (600, 800))

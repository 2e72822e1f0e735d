"""Image decoding: corrupt and truncated files are caught, odd formats converted, EXIF understood."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import make_photo
from datatool.images import ImageError, apply_orientation, read_image


def jpeg(array: np.ndarray, orientation: int | None = None) -> bytes:
    image = Image.fromarray(array[..., ::-1] if array.ndim == 3 else array)
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format="JPEG", quality=95)
    else:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_plain_jpeg_is_copyable(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg(make_photo(32, 48)))
    image = read_image(path)
    assert image.pixels.shape == (32, 48, 3) and image.copyable and image.orientation == 1


def test_truncated_jpeg_is_rejected(tmp_path):
    data = jpeg(make_photo(256, 256, seed=3))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match="truncated"):
        read_image(path)


def test_jpeg_with_trailing_data_is_accepted(tmp_path):
    path = tmp_path / "motion.jpg"
    path.write_bytes(jpeg(make_photo(64, 64)) + b"\0" * 10000)
    assert read_image(path).pixels.shape == (64, 64, 3)


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"GIF89a-not-really", "corrupt image"), (b"hello world", "corrupt image")])
def test_corrupt_files_are_rejected(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        read_image(path)


def test_greyscale_rgba_and_16_bit_are_converted(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), make_photo(20, 30)[..., 0])
    assert read_image(grey).pixels.shape == (20, 30, 3)
    assert read_image(grey).notes == ["greyscale image converted to RGB"]
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.dstack([make_photo(20, 30), np.full((20, 30), 255, np.uint8)]))
    assert read_image(rgba).notes == ["alpha channel of the image dropped"]
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), make_photo(20, 30).astype(np.uint16) * 257)
    image = read_image(deep)
    assert image.notes == ["16-bit image converted to 8-bit"] and not image.copyable
    np.testing.assert_array_equal(image.pixels, make_photo(20, 30))


def test_cmyk_jpeg_is_decoded(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(make_photo(24, 24)[..., ::-1]).convert("CMYK").save(path, format="JPEG")
    assert read_image(path).pixels.shape == (24, 24, 3)


def test_orientation_is_read_not_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg(make_photo(20, 40), orientation=6))
    image = read_image(path)
    assert image.orientation == 6 and image.pixels.shape == (20, 40, 3) and not image.copyable


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pil(orientation):
    array = (np.arange(5 * 7 * 3) % 251).astype(np.uint8).reshape(5, 7, 3)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    np.testing.assert_array_equal(apply_orientation(array, orientation), expected)

"""Bad input costs a sample, never the run: every case below ends as a report entry.

Special files (FIFOs block a reader forever), symbolic link loops and cycles, unreadable folders,
decompression bombs, split lists in another encoding or corrupt, odd EXIF orientation values
and colour modes, unreadable files, and file names that are not UTF-8 or hold a newline.
"""

import errno
import json
import os
import socket
import stat
import struct
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import make_person_mask, make_photo, write_image
from PIL import Image

from datatool import images
from datatool.canonical import read_manifest
from datatool.images import ImageError, read_image
from datatool.ingest import ingest
from datatool.pseudolabel import pseudolabel
from datatool.report import Report
from datatool.sources import create_source
from datatool.sources.base import walk_files
from portraitseg.teachers.base import Teacher
from portraitseg.imagefiles import IMAGE_SUFFIXES

BLOCKED_AFTER_S = 5


def finishes(call, fifo: Path | None = None):
    """`call()`'s result; fails the test when it has not returned after BLOCKED_AFTER_S seconds."""
    result = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as error:  # re-raised in the test's thread
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BLOCKED_AFTER_S)
    if thread.is_alive():
        if fifo is not None:  # open the FIFO's writing end, so the blocked reader gets end-of-file and the thread ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"blocked for {BLOCKED_AFTER_S} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def folder_pair(root: Path, stem: str, height: int = 20, width: int = 30, seed: int = 0) -> None:
    """`images/<stem>.jpg` + `masks/<stem>.png` for the folder source."""
    write_image(root / "images" / f"{stem}.jpg", make_photo(height, width, seed))
    write_image(root / "masks" / f"{stem}.png", make_person_mask(height, width, seed))


def entries(report: dict | Report, kind: str) -> dict[str, str]:
    listed = report[kind] if isinstance(report, dict) else getattr(report, kind)
    return {entry["file"]: entry["reason"] for entry in listed}


def ingest_folder(root: Path, output: Path) -> tuple[dict, list[dict]]:
    """Ingest with the folder source; the report as written and the manifest rows (both must be valid JSON)."""
    ingest(create_source("folder", root), output, name="dev")
    return json.loads((output / "report.json").read_text(encoding="utf-8")), list(read_manifest(output))


class RedTeacher(Teacher):
    name = "red"

    def predict(self, images):
        return [image[..., 0].astype(np.float32) / 255 for image in images]


# -- special files -------------------------------------------------------------------------------


def test_walk_files_reports_fifos_and_sockets_without_opening_them(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    write_image(folder / "good.jpg", make_photo(8, 8))
    os.mkfifo(folder / "x.jpg")
    monkeypatch.chdir(folder)  # a relative name keeps the socket's address under the 108-byte limit
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("s.png")
    expected = {"x.jpg": "not a regular file (FIFO)", "s.png": "not a regular file (socket)"}
    if os.geteuid() == 0:  # only root may make device files (and not in every container)
        try:
            os.mknod(folder / "null.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            expected["null.jpg"] = "not a regular file (character device)"
        except OSError:
            pass
    report = Report(folder)
    assert finishes(lambda: list(walk_files(folder, report, IMAGE_SUFFIXES))) == [folder / "good.jpg"]
    assert entries(report, "ignored") == expected


def test_read_image_refuses_a_fifo_instead_of_blocking(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"not a regular file \(FIFO\)"):
        finishes(lambda: read_image(fifo), fifo)


def test_ingest_with_a_fifo_named_like_a_photo_finishes(tmp_path):
    root = tmp_path / "in"
    folder_pair(root, "ok")
    write_image(root / "masks/x.png", make_person_mask(20, 30))
    os.mkfifo(root / "images/x.jpg")
    report, rows = finishes(lambda: ingest_folder(root, tmp_path / "out"), root / "images/x.jpg")
    assert [row["source_image"] for row in rows] == ["images/ok.jpg"]
    assert entries(report, "ignored")["images/x.jpg"] == "not a regular file (FIFO)"
    assert entries(report, "skipped")["masks/x.png"].startswith("orphan mask")


# -- symbolic links and unreadable folders -------------------------------------------------------


def test_walk_files_reports_link_loops_cycles_broken_links_and_unreadable_folders(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for name in ("a.jpg", "sub/b.jpg", "locked/c.jpg"):
        write_image(root / name, make_photo(8, 8))
    (root / "self.jpg").symlink_to("self.jpg")  # a link to itself
    (root / "ping").symlink_to("pong")  # two links pointing at each other
    (root / "pong").symlink_to("ping")
    (root / "sub/up").symlink_to("..")  # a cycle back to an ancestor
    (root / "alias").symlink_to("sub")  # a second path to a folder (sorts before it)
    (root / "gone.jpg").symlink_to("missing.jpg")
    (root / "link.jpg").symlink_to("a.jpg")  # links to files are followed
    locked, real_scandir = root / "locked", os.scandir

    def scandir(path="."):  # tests run as root in CI, where chmod 000 would not stop a read
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = Report(root)
    files = finishes(lambda: list(walk_files(root, report, IMAGE_SUFFIXES)))
    assert files == [root / "a.jpg", root / "link.jpg", root / "sub/b.jpg"]
    assert entries(report, "skipped") == {
        "self.jpg": "symbolic link loop",
        "ping": "symbolic link loop",
        "pong": "symbolic link loop",
        "gone.jpg": "broken symbolic link",
        "locked": "unreadable folder: Permission denied",
    }
    assert entries(report, "ignored") == {
        "alias": "symbolic link to a folder already scanned: sub",
        "sub/up": "symbolic link to a folder already scanned: .",
    }


def test_ingest_survives_a_link_loop_in_its_input(tmp_path):
    root = tmp_path / "in"
    folder_pair(root, "ok")
    (root / "images/loop.jpg").symlink_to("loop.jpg")
    (root / "masks/again").symlink_to(".")
    report, rows = finishes(lambda: ingest_folder(root, tmp_path / "out"))
    assert [row["source_image"] for row in rows] == ["images/ok.jpg"]
    assert entries(report, "skipped")["images/loop.jpg"] == "symbolic link loop"
    assert entries(report, "ignored")["masks/again"] == "symbolic link to a folder already scanned: masks"


# -- decompression bombs -------------------------------------------------------------------------


def test_header_of_an_image_above_the_pixel_limit_is_read_and_its_decoding_bounded(tmp_path, monkeypatch):
    write_image(tmp_path / "big.png", make_photo(100, 100))
    write_image(tmp_path / "big.jpg", make_photo(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100x100 is over twice that: Pillow raises
    with pytest.raises(ImageError, match=r"^image too large: 100x100 pixels \(10,000\) > limit of 1,000"):
        read_image(tmp_path / "big.png")
    image = read_image(tmp_path / "big.jpg")  # a JPEG can still be decoded at reduced scale
    assert (image.width, image.height) == (100, 100) and not image.copyable
    with pytest.raises(ImageError, match="image too large"):
        image.pixels  # noqa: B018
    pixels, divisor = image.bounded(max_side=40)  # 1/2 would still be 2,500 pixels
    assert divisor == 4 and pixels.shape == (25, 25, 3)
    assert image.bounded(max_side=None)[1] == 4


def test_an_image_just_above_the_pixel_limit_warns_nothing(tmp_path, monkeypatch):
    write_image(tmp_path / "big.jpg", make_photo(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: Pillow warns DecompressionBombWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, divisor = read_image(tmp_path / "big.jpg").bounded(max_side=None)
    assert divisor == 2 and pixels.shape == (20, 20, 3)


def test_ingest_skips_images_above_the_pixel_limit_and_keeps_the_rest(tmp_path, monkeypatch):
    root = tmp_path / "in"
    folder_pair(root, "ok")  # 600 pixels
    write_image(root / "images/bomb.png", make_photo(100, 100))
    write_image(root / "masks/bomb.png", make_person_mask(100, 100))
    folder_pair(root, "huge", 100, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    report, rows = ingest_folder(root, tmp_path / "out")
    assert [row["source_image"] for row in rows] == ["images/ok.jpg"]
    skipped = entries(report, "skipped")
    for name in ("images/bomb.png", "images/huge.jpg"):
        assert skipped[name].startswith("image too large: 100x100 pixels (10,000) > limit of 1,000")
    assert not [path for path in (tmp_path / "out/images").iterdir() if "ok" not in path.name]


def test_pseudolabel_decodes_a_jpeg_above_the_pixel_limit_at_reduced_scale(tmp_path, monkeypatch):
    write_image(tmp_path / "in/ok.jpg", make_photo(20, 30))
    write_image(tmp_path / "in/huge.jpg", make_photo(100, 100))
    write_image(tmp_path / "in/bomb.png", make_photo(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    result = pseudolabel(RedTeacher(), tmp_path / "in", tmp_path / "out")
    rows = {row["source_image"]: row for row in read_manifest(tmp_path / "out")}
    assert sorted(rows) == ["huge.jpg", "ok.jpg"]
    assert (rows["huge.jpg"]["width"], rows["huge.jpg"]["height"]) == (25, 25)
    assert entries(result.report, "repaired")["huge.jpg"] == "downscaled from 100x100 to 25x25"
    assert entries(result.report, "skipped")["bomb.png"].startswith("image too large: 100x100 pixels")
    assert result.report["counts"]["decoded_at_reduced_scale"] == 1


# -- split lists ---------------------------------------------------------------------------------


def test_kaggle_split_lists_in_latin_1_or_binary_are_reported_and_the_images_kept(tmp_path):
    dataset = tmp_path / "people_segmentation"
    for seed, stem in enumerate(["café", "plain", "other"]):
        write_image(dataset / "images" / f"{stem}.jpg", make_photo(12, 16, seed))
        write_image(dataset / "masks" / f"{stem}.png", make_person_mask(12, 16, seed) // 255)
    (dataset / "segmentation").mkdir()
    (dataset / "segmentation/train.txt").write_bytes("café\nplain\n".encode("latin-1"))
    (dataset / "segmentation/val.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # an image saved as a list
    report = Report(tmp_path)
    records = create_source("kaggle-people", tmp_path).scan(report)
    assert {Path(record.key).stem: record.official_split for record in records} == {
        "café": "train",
        "plain": "train",
        "other": None,
    }
    assert entries(report, "repaired") == {"people_segmentation/segmentation/train.txt": "split list is not UTF-8: read as Latin-1"}
    assert entries(report, "skipped") == {
        "people_segmentation/segmentation/val.txt": "unusable split list, not used: binary data, not text"
    }


def write_mat(path: Path, **variables) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables)


@pytest.mark.parametrize(
    ("trainlist", "problem"),
    [
        (b"not a mat file", "unreadable .mat file (MatReadError"),
        ({"ids": np.array([[1]], np.uint16)}, "no variable 'trainlist' (found: ids)"),
        ({"trainlist": np.array([[0, 2.5]])}, "variable 'trainlist' does not hold positive integer ids"),
    ],
)
def test_pfcn_broken_split_list_is_reported_and_its_samples_kept_unsplit(tmp_path, trainlist, problem):
    for seed, sample_id in enumerate(["00001", "00002"]):
        write_mat(tmp_path / f"images_mask/{sample_id}_mask.mat", mask=(make_person_mask(16, 12, seed) > 0).astype(np.uint8))
        write_image(tmp_path / f"images_data_crop/{sample_id}.jpg", make_photo(16, 12, seed))
    if isinstance(trainlist, bytes):
        (tmp_path / "trainlist.mat").write_bytes(trainlist)
    else:
        write_mat(tmp_path / "trainlist.mat", **trainlist)
    write_mat(tmp_path / "testlist.mat", testlist=np.array([[2]], np.uint16))
    report = Report(tmp_path)
    records = create_source("pfcn", tmp_path).scan(report)
    assert {record.group: record.official_split for record in records} == {"00001": None, "00002": "test"}
    (reason,) = [entry["reason"] for entry in report.skipped if entry["file"] == "trainlist.mat"]
    assert reason.startswith(f"unusable split list, its ids get no official train split: {problem}")


# -- EXIF orientation and colour modes -----------------------------------------------------------


def jpeg_with_orientation_entry(field_type: int, count: int, value: bytes) -> bytes:
    """A JPEG whose EXIF orientation entry has the given TIFF type, count and value bytes (big-endian)."""
    data = cv2.imencode(".jpg", make_photo(20, 30))[1].tobytes()
    inline = len(value) <= 4  # longer values sit after the one-entry IFD, at offset 26
    entry = struct.pack(">HHI", 0x0112, field_type, count) + (value.ljust(4, b"\0") if inline else struct.pack(">I", 26))
    tiff = b"MM\0*" + struct.pack(">IH", 8, 1) + entry + struct.pack(">I", 0) + (b"" if inline else value)
    app1 = b"Exif\0\0" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


ASCII, RATIONAL, UNDEFINED = 2, 5, 7


@pytest.mark.parametrize(
    ("field_type", "count", "value", "orientation", "note"),
    [
        (ASCII, 2, b"6\0", 6, None),
        (RATIONAL, 1, struct.pack(">II", 6, 1), 6, None),
        (ASCII, 2, b"x\0", 1, "EXIF orientation tag unreadable ('x'), treated as upright"),
        (RATIONAL, 1, struct.pack(">II", 13, 2), 1, "EXIF orientation tag unreadable (6.5), treated as upright"),
        (UNDEFINED, 4, b"\x06\0\0\0", 1, r"EXIF orientation tag unreadable (b'\x06\x00\x00\x00'), treated as upright"),
    ],
)
def test_orientation_tag_of_an_unusual_type(tmp_path, field_type, count, value, orientation, note):
    path = tmp_path / "odd.jpg"
    path.write_bytes(jpeg_with_orientation_entry(field_type, count, value))
    image = read_image(path)
    assert image.orientation == orientation
    assert image.notes == ([note] if note else [])
    assert not image.copyable  # re-encoded without the odd tag, so no reader rotates it differently


def test_ingest_keeps_a_photo_whose_orientation_tag_is_text(tmp_path):
    root = tmp_path / "in"
    folder_pair(root, "odd")
    (root / "images/odd.jpg").write_bytes(jpeg_with_orientation_entry(ASCII, 2, b"x\0"))
    report, rows = ingest_folder(root, tmp_path / "out")
    assert [(row["source_image"], row["width"], row["height"]) for row in rows] == [("images/odd.jpg", 30, 20)]
    assert entries(report, "repaired") == {"images/odd.jpg": "EXIF orientation tag unreadable ('x'), treated as upright"}


def saved(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


def test_every_colour_conversion_is_noted(tmp_path):
    rgb = Image.fromarray(make_photo(20, 30)[..., ::-1])
    expected = {
        saved(tmp_path / "cmyk.jpg", rgb.convert("CMYK")): ["CMYK image converted to RGB"],
        saved(tmp_path / "cmyk.tif", rgb.convert("CMYK")): ["CMYK image converted to RGB"],
        saved(tmp_path / "palette.png", rgb.convert("P")): ["palette image converted to RGB"],
        saved(tmp_path / "grey-alpha.png", rgb.convert("LA")): ["greyscale image converted to RGB", "alpha channel of the image dropped"],
        saved(tmp_path / "grey16.png", rgb.convert("I;16")): ["16-bit image converted to 8-bit", "greyscale image converted to RGB"],
    }
    for path, notes in expected.items():
        image = read_image(path)
        assert (path.name, image.notes) == (path.name, notes)
        reference = np.asarray(Image.open(path).convert("RGB"))[..., ::-1].astype(int)
        if path.stem != "grey16":  # Pillow itself clips 16-bit greys instead of scaling them
            assert np.abs(image.pixels.astype(int) - reference).mean() < 2, path.name


# -- unreadable files and odd names --------------------------------------------------------------


def test_unreadable_image_is_skipped(tmp_path, monkeypatch):
    root = tmp_path / "in"
    folder_pair(root, "ok")
    folder_pair(root, "locked", seed=1)
    real_open = open

    def deny(path, *args, **kwargs):  # tests run as root in CI, where chmod 000 would not stop a read
        if Path(path).name == "locked.jpg":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(images, "open", deny, raising=False)
    report, rows = ingest_folder(root, tmp_path / "out")
    assert [row["source_image"] for row in rows] == ["images/ok.jpg"]
    assert entries(report, "skipped")["images/locked.jpg"] == "unreadable image: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_image_by_its_mode_is_skipped(tmp_path):
    path = write_image(tmp_path / "locked.jpg", make_photo(8, 8))
    path.chmod(0)
    with pytest.raises(ImageError, match="unreadable image: Permission denied"):
        read_image(path)


def test_report_shows_undecodable_and_multi_line_names_printably(tmp_path):
    report = Report(tmp_path)
    report.skip(Path(os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.jpg")), "corrupt image")
    report.ignore(tmp_path / "two\nlines.txt", "not an image")
    report.repair(tmp_path / "café.jpg", "greyscale image converted to RGB")
    report.write(tmp_path / "report.json")
    written = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert [entry["file"] for kind in ("skipped", "ignored", "repaired") for entry in written[kind]] == [
        "bad\\xff.jpg",
        "two\\nlines.txt",
        "café.jpg",
    ]


@pytest.mark.parametrize(
    ("stem", "shown"),
    [
        (b"two\nlines", "two\\nlines"),
        (b"bad\xff", "bad\\xff"),
    ],
)
def test_ingest_of_files_named_with_undecodable_bytes_or_newlines(tmp_path, stem, shown):
    root = tmp_path / "in"
    folder_pair(root, "ok")
    for folder, suffix, pixels in (("images", ".jpg", make_photo(20, 30)), ("masks", ".png", make_person_mask(20, 30))):
        path = Path(os.fsdecode(os.fsencode(root / folder) + b"/" + stem + suffix.encode()))
        path.write_bytes(cv2.imencode(suffix, pixels)[1].tobytes())
    report, rows = ingest_folder(root, tmp_path / "out")
    assert sorted(row["source_image"] for row in rows) == sorted([f"images/{shown}.jpg", "images/ok.jpg"])
    assert all(row["source_mask"].startswith("masks/") for row in rows)
    assert report["counts"]["ingested"] == 2


def test_pseudolabel_of_photos_named_with_undecodable_bytes_or_newlines(tmp_path):
    root = tmp_path / "in"
    write_image(root / "ok.jpg", make_photo(20, 30))
    for stem in (b"bad\xff", b"two\nlines"):
        Path(os.fsdecode(os.fsencode(root) + b"/" + stem + b".jpg")).write_bytes(cv2.imencode(".jpg", make_photo(20, 30))[1].tobytes())
    result = pseudolabel(RedTeacher(), root, tmp_path / "out")
    assert result.labelled == 3
    assert sorted(row["source_image"] for row in read_manifest(tmp_path / "out")) == ["bad\\xff.jpg", "ok.jpg", "two\\nlines.jpg"]
    json.loads((tmp_path / "out/report.json").read_text(encoding="utf-8"))


def test_a_link_loop_beside_supervisely_datasets_is_reported(tmp_path):
    (tmp_path / "ds/img").mkdir(parents=True)
    (tmp_path / "ds/ann").mkdir()
    (tmp_path / "loop").symlink_to("loop")
    report = Report(tmp_path)
    assert create_source("supervisely", tmp_path).scan(report) == []
    assert entries(report, "skipped") == {"loop": "symbolic link loop"}

"""The canonical set: the directory layout and manifest every stage reads and writes.

A canonical set is a directory with `images/<id>.<jpg|png>` (RGB, orientation applied),
`masks/<id>.png` (uint8, one channel, 255 = person, soft values kept for mattes),
`manifest.jsonl` (one JSON object per sample) and `report.json`. Manifest paths are relative
to the set, so a set can be moved or cached by DVC as a whole.
"""

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datatool.report import Report
from portraitseg.records import validate_row

MANIFEST = "manifest.jsonl"
REPORT = "report.json"
IMAGES = "images"
MASKS = "masks"
JPEG_QUALITY = 95  # images that must be re-encoded (rotated, converted, downscaled)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def make_id(name: str, key: str) -> str:
    """A stable, file-name-safe sample id: readable stem + hash of the set name and source path.

    Derived from the path, never from an enumeration, so re-running a stage on the same input
    gives the same ids (idempotent outputs, valid DVC caches) and two sets with the same
    relative paths do not collide when they are merged later.
    """
    stem = _UNSAFE.sub("_", Path(key).stem).strip("._-")[:48] or "sample"
    digest = hashlib.sha1(f"{name}/{key}".encode()).hexdigest()[:10]
    return f"{stem}-{digest}"


def read_manifest(set_dir: Path) -> Iterator[dict[str, Any]]:
    """Stream the samples of a canonical set, one dict per line."""
    path = Path(set_dir) / MANIFEST
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error


def read_rows(set_dir: Path, report: Report, shown: str = MANIFEST) -> Iterator[dict[str, Any]]:
    """Stream the rows of a canonical set that a stage can use; every other line is reported and skipped.

    A line that is not UTF-8 or not JSON, a row that breaks the contract (`validate_row`) and a
    row whose id an earlier row already has (its files would overwrite the first one's) each get
    a report entry `shown:LINE` with the reason; the first row of an id is kept.
    """
    first_line: dict[str, int] = {}
    with (Path(set_dir) / MANIFEST).open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{shown}:{number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                report.skip(where, "invalid manifest line: not UTF-8 text")
                continue
            except json.JSONDecodeError as error:
                report.skip(where, f"invalid manifest line: not JSON ({error.msg})")
                continue
            try:
                if not isinstance(row, dict):
                    raise ValueError(f"manifest line is a JSON {type(row).__name__}, not an object")
                validate_row(row)
            except ValueError as error:
                report.skip(where, f"invalid manifest row: {error}")
                continue
            sample_id = row["id"]
            if sample_id in first_line:
                report.skip(where, f"duplicate id: {sample_id} is also on line {first_line[sample_id]} (that row is kept)", id=sample_id)
                report.counts["duplicate_ids"] += 1
                continue
            first_line[sample_id] = number
            yield row


def write_manifest(set_dir: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write `manifest.jsonl` atomically (a crash never leaves half a manifest); return the row count."""
    path = Path(set_dir) / MANIFEST
    temporary = path.with_name(f".{MANIFEST}.tmp")
    count = 0
    with temporary.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(temporary, path)
    return count


# -- writing images and masks -------------------------------------------------------------------


def sample_files(sample_id: str, *png_folders: str) -> tuple[str, ...]:
    """Every file a sample of a set may be written as: its image (a JPEG or a PNG), its mask, and
    `<folder>/<id>.png` in each of `png_folders` (e.g. teacher_masks); what a stage claims before writing."""
    return (f"{IMAGES}/{sample_id}.jpg", f"{IMAGES}/{sample_id}.png", *(f"{folder}/{sample_id}.png" for folder in (MASKS, *png_folders)))


def image_name(sample_id: str, source_format: str) -> str:
    """`<id>.png` for PNG sources, `<id>.jpg` otherwise."""
    # Appended, not `with_suffix`: an id may contain dots ("IMG_2020.01.01-<hash>").
    return sample_id + (".png" if source_format == "PNG" else ".jpg")


def image_bytes(pixels: np.ndarray, suffix: str, jpeg_quality: int = JPEG_QUALITY) -> bytes:
    """A changed image encoded as `suffix` (.png lossless, .jpg at `jpeg_quality`)."""
    params = [] if suffix == ".png" else [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    ok, encoded = cv2.imencode(suffix, pixels, params)
    if not ok:
        raise OSError(f"could not encode an image as {suffix}")
    return encoded.tobytes()


def mask_bytes(pixels: np.ndarray) -> bytes:
    """A mask as a single-channel PNG."""
    # OpenCV's default PNG settings are 3x faster here than any explicit compression level.
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise OSError("could not encode a mask as PNG")
    return encoded.tobytes()


def write_files(set_dir: Path, files: dict[str, bytes]) -> None:
    """Write a sample's files (paths relative to the set) as `write_file` does."""
    for relative, data in files.items():
        write_file(set_dir / relative, data)


def link_file(source: Path, target: Path) -> str:
    """Hard-link `source` at `target` (replacing what is there), copying across filesystems;
    return how ("linked_files" or "copied_files", a report count)."""
    if target.is_file() and os.path.samefile(source, target):
        return "linked_files"  # an earlier run's link is still the same file
    target.parent.mkdir(parents=True, exist_ok=True)  # rows may name files in sub-folders
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
        how = "linked_files"
    except OSError:  # another filesystem (EXDEV) or one without hard links (EPERM)
        shutil.copyfile(source, temporary)
        how = "copied_files"
    # Replaced, never written through: the old target may be a link to an input file.
    os.replace(temporary, target)
    return how


def write_file(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a file hard-linked into another set (see
    `datatool boundary`) is replaced, never written through, and a crash leaves no half file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)

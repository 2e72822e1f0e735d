"""Supervisely Person (5,711 images in `ds1` .. `ds13`), and Supervisely projects laid out the same way.

A Supervisely project is `meta.json` plus dataset folders, each with `img/<image name>` and
`ann/<annotation>.json`. The mask is not a file: it is drawn from the annotation's objects,
bitmaps (a base64, zlib-compressed, 1-bit palette PNG covering the object's bounding box,
pasted at its `origin`) and polygons (an exterior ring with interior rings as holes).
Annotation files are named `<image name>.json` by current exports and `<stem>.json` by old
ones; both are accepted and the new name wins when an image has both.

Class `neutral` marks regions the annotators did not want to call person or background;
whether it counts as person is the user's policy (`neutral`), background by default.
"""

import base64
import binascii
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from datatool.masks import PNG_SIGNATURE, Mask, MaskError
from datatool.report import Report
from datatool.sources import register
from datatool.sources.base import Record, Source, is_junk, unusable_entry, walk_files
from portraitseg.imagefiles import IMAGE_SUFFIXES

META_FILE = "meta.json"
IMAGE_DIR = "img"
ANNOTATION_DIR = "ann"
ANNOTATION_SUFFIX = ".json"
PERSON_CLASSES = frozenset({"person_poly", "person_bmp"})
NEUTRAL_CLASS = "neutral"
NEUTRAL_POLICIES = ("background", "person", "skip")
MAX_MASK_PIXELS = 200_000_000  # 14000x14000; the largest Supervisely Person photos are ~6000x4000
DRAWN_GEOMETRIES = ("bitmap", "polygon")
GEOMETRY_KEYS = {"bitmap": "bitmap", "polygon": "points"}  # geometryType -> the key holding its data
PERSON = 255


@register
class SuperviselySource(Source):
    name = "supervisely"
    layout = (
        "  meta.json                        (project classes; optional, reported when missing)\n"
        "  <dataset>/img/<name>.png|.jpg    (e.g. ds1/img/pexels-photo-358010.png)\n"
        "  <dataset>/ann/<name>.png.json    (new annotation name; old exports: <stem>.json)\n"
        "  annotation JSON: size {height, width}, objects [{classTitle, bitmap | points}]"
    )

    def __init__(self, root: Path | str, neutral: str = "background"):
        super().__init__(root)
        if neutral not in NEUTRAL_POLICIES:
            raise ValueError(f"unknown neutral policy {neutral!r}; choose one of: {', '.join(NEUTRAL_POLICIES)}")
        self.neutral = neutral

    def options(self) -> dict[str, Any]:
        return {"neutral": self.neutral}

    # -- scan ---------------------------------------------------------------------------------

    def scan(self, report: Report) -> list[Record]:
        self.require_root()
        datasets = self.find_datasets(report)
        if not any((folder / IMAGE_DIR).is_dir() and (folder / ANNOTATION_DIR).is_dir() for folder in datasets):
            if (self.root / IMAGE_DIR).is_dir() and (self.root / ANNOTATION_DIR).is_dir():
                raise self.layout_error(
                    f"{IMAGE_DIR}/ and {ANNOTATION_DIR}/ lie directly in the input; give the project folder above "
                    "this dataset folder as the input"
                )
            raise self.layout_error(f"no dataset folder with {IMAGE_DIR}/ and {ANNOTATION_DIR}/ subfolders")
        self.check_meta(report)

        records: list[Record] = []
        for folder in datasets:
            records.extend(self.scan_dataset(folder, report))
        return sorted(records, key=lambda record: record.key)

    def find_datasets(self, report: Report) -> list[Path]:
        """The project's dataset folders (those holding img/ or ann/); anything else is reported."""
        datasets = []
        for entry in sorted_entries(self.root):
            path = Path(entry.path)
            try:
                is_folder = entry.is_dir(follow_symlinks=True)
            except OSError as error:  # a link loop, a folder it may not read
                report.skip(path, unusable_entry(entry, error))
                continue
            if is_junk(entry.name):
                report.ignore(path, "junk file (macOS/Windows metadata or hidden file)")
                report.counts["ignored_junk"] += 1
            elif is_folder:
                if (path / IMAGE_DIR).is_dir() or (path / ANNOTATION_DIR).is_dir():
                    datasets.append(path)
                elif entry.name not in (IMAGE_DIR, ANNOTATION_DIR):  # those make a LayoutError instead
                    report.ignore(path, f"not a Supervisely dataset folder (no {IMAGE_DIR}/ or {ANNOTATION_DIR}/ inside)")
                    report.counts["ignored_other"] += 1
            elif entry.name != META_FILE:
                report.ignore(path, "not part of the Supervisely layout")
                report.counts["ignored_other"] += 1
        return datasets

    def check_meta(self, report: Report) -> None:
        """Reject a Supervisely project of other classes; a missing meta.json is reported, not fatal.

        Every annotation names its classes itself, so meta.json is not needed to draw masks,
        and repacks of Supervisely Person circulate without it: refusing them would lose a
        usable dataset. A meta.json that lists none of the person classes, though, means a
        different project, whose masks would all come out empty.
        """
        path = self.root / META_FILE
        if not path.is_file():
            report.ignore(path, "meta.json not found: classes taken from the annotations")
            report.counts["missing_meta_json"] += 1
            return
        try:
            classes = json.loads(path.read_bytes())["classes"]
            titles = {entry["title"] for entry in classes}
        except (OSError, ValueError, KeyError, TypeError) as error:
            report.ignore(path, f"unreadable meta.json ({error.__class__.__name__}): classes taken from the annotations")
            report.counts["unreadable_meta_json"] += 1
            return
        if not titles & PERSON_CLASSES:
            raise self.layout_error(
                f"meta.json lists classes {sorted(titles)}, none of {sorted(PERSON_CLASSES)} (not a person dataset)"
            )

    def scan_dataset(self, folder: Path, report: Report) -> list[Record]:
        """Pair each image of one dataset folder with its annotation by name; report the rest."""
        dataset = folder.name
        image_dir, annotation_dir = folder / IMAGE_DIR, folder / ANNOTATION_DIR
        for entry in sorted_entries(folder):
            if entry.name not in (IMAGE_DIR, ANNOTATION_DIR):
                report.ignore(entry.path, f"not used: only {IMAGE_DIR}/ and {ANNOTATION_DIR}/ of a dataset are read")
                report.counts["ignored_other"] += 1
        images = list(walk_files(image_dir, report, IMAGE_SUFFIXES)) if image_dir.is_dir() else []
        annotations = (
            {
                path.relative_to(annotation_dir).as_posix(): path
                for path in walk_files(annotation_dir, report, frozenset({ANNOTATION_SUFFIX}))
            }
            if annotation_dir.is_dir()
            else {}
        )
        report.counts["images_found"] += len(images)
        report.counts["annotations_found"] += len(annotations)

        names = {image: image.relative_to(image_dir).as_posix() for image in images}
        # An old-style name `<stem>.json` fits every image with that stem (a.png and a.jpg): it
        # can be used only when exactly one image without a new-style annotation claims it.
        old_claims = Counter(
            old_annotation_name(name) for name in names.values() if new_annotation_name(name) not in annotations
        )
        used: set[str] = set()
        superseded: dict[str, str] = {}  # old-style annotation -> the new-style one chosen instead
        records = []
        for image, name in names.items():
            new_name, old_name = new_annotation_name(name), old_annotation_name(name)
            if new_name in annotations:
                chosen = new_name
                if old_name in annotations:
                    superseded[old_name] = new_name
            elif old_name in annotations and old_claims[old_name] > 1:
                report.skip(
                    image,
                    f"ambiguous annotation: {ANNOTATION_DIR}/{old_name} fits {old_claims[old_name]} images "
                    f"with stem {PurePosixPath(name).stem!r}; name it {ANNOTATION_DIR}/{new_name}",
                )
                report.counts["ambiguous_annotation"] += 1
                used.add(old_name)
                continue
            elif old_name in annotations:
                chosen = old_name
                report.counts["old_annotation_names"] += 1
            else:
                report.skip(
                    image, f"image without annotation: no {ANNOTATION_DIR}/{new_name} or {ANNOTATION_DIR}/{old_name}"
                )
                report.counts["orphan_image"] += 1
                continue
            used.add(chosen)
            records.append(
                Record(
                    key=image.relative_to(self.root).as_posix(),
                    image=image,
                    mask=annotations[chosen],
                    # The stem, not the file name: a photo exported as both .png and .jpg is one photo.
                    group=f"{dataset}/{PurePosixPath(name).with_suffix('')}",
                    extra={"dataset": dataset},
                )
            )

        for name, path in sorted(annotations.items()):
            if name in used:
                continue
            if name in superseded:
                report.ignore(path, f"old-style annotation name superseded by {ANNOTATION_DIR}/{superseded[name]}")
                report.counts["duplicate_annotation"] += 1
            else:
                report.skip(path, f"annotation without image: no image in {IMAGE_DIR}/ for {name}")
                report.counts["orphan_annotation"] += 1
        return records

    # -- masks --------------------------------------------------------------------------------

    def read_mask(self, record: Record) -> Mask:
        """Draw the person mask at the annotation's `size` from its objects."""
        annotation = load_annotation(record.mask)
        height, width = annotation_size(annotation)
        objects = annotation.get("objects", [])
        if not isinstance(objects, list):
            raise MaskError(f"malformed annotation: 'objects' is {type(objects).__name__}, expected a list")

        pixels = np.zeros((height, width), np.uint8)
        drawn: set[str] = set()
        notes: list[str] = []
        for index, item in enumerate(objects):
            if not isinstance(item, dict):
                raise MaskError(f"malformed annotation: object {index} is {type(item).__name__}, expected an object")
            title = item.get("classTitle")
            if title == NEUTRAL_CLASS:
                if self.neutral == "skip":
                    raise MaskError("neutral object present (neutral policy 'skip' drops such images)")
                if self.neutral == "background":
                    continue
            elif title not in PERSON_CLASSES:
                notes.append(f"ignored object of class {title!r}")
                continue
            geometry = object_geometry(item, index)
            if geometry not in DRAWN_GEOMETRIES:
                notes.append(f"ignored {geometry} object of class {title!r} (only bitmaps and polygons are masks)")
                continue
            where = f"object {index} ({title})"
            if geometry == "bitmap":
                painted, note = paste_bitmap(pixels, item["bitmap"], where)
            else:
                painted, note = fill_polygon(pixels, item["points"], where)
            if note:
                notes.append(note)
            if painted:
                drawn.add(geometry)

        # No note for an empty mask: images without people are valid samples (Supervisely Person
        # tags them `not-marked-people`), and the engine counts empty masks itself.
        encoding = "supervisely " + ("+".join(sorted(drawn)) if drawn else "empty")
        return Mask(pixels, "binary", encoding, notes)


def sorted_entries(directory: Path) -> list[os.DirEntry]:
    with os.scandir(directory) as scan:
        return sorted(scan, key=lambda entry: entry.name)


def new_annotation_name(image_name: str) -> str:
    """`pexels-photo-358010.png` -> `pexels-photo-358010.png.json` (current Supervisely exports)."""
    return image_name + ANNOTATION_SUFFIX


def old_annotation_name(image_name: str) -> str:
    """`pexels-photo-358010.png` -> `pexels-photo-358010.json` (old Supervisely exports)."""
    return PurePosixPath(image_name).with_suffix(ANNOTATION_SUFFIX).as_posix()


def load_annotation(path: Path) -> dict[str, Any]:
    try:
        annotation = json.loads(Path(path).read_bytes())
    except OSError as error:
        raise MaskError(f"unreadable annotation: {error.strerror or error}") from error
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise MaskError(f"malformed annotation JSON: {error}") from error
    if not isinstance(annotation, dict):
        raise MaskError(f"malformed annotation: top level is {type(annotation).__name__}, expected an object")
    return annotation


def annotation_size(annotation: dict[str, Any]) -> tuple[int, int]:
    """(height, width) from `size`, which is the image size the objects' coordinates refer to."""
    size = annotation.get("size")
    if not isinstance(size, dict):
        raise MaskError("annotation has no 'size' {height, width}")
    height, width = size.get("height"), size.get("width")
    if not (is_positive_int(height) and is_positive_int(width)):
        raise MaskError(f"annotation has an invalid size: height {height!r}, width {width!r}")
    if height * width > MAX_MASK_PIXELS:
        # A corrupt size would otherwise allocate gigabytes in a worker before any check fails.
        raise MaskError(f"annotation size {width}x{height} is implausibly large (over {MAX_MASK_PIXELS:,} pixels)")
    return height, width


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def object_geometry(item: dict[str, Any], index: int) -> str:
    """The object's geometry, picked by the key that carries it: old exports lack `geometryType`."""
    declared = item.get("geometryType")
    if declared is not None and declared not in DRAWN_GEOMETRIES:
        return str(declared)  # rectangle, point, line, ...: their `points` are not an area
    present = [geometry for geometry in DRAWN_GEOMETRIES if isinstance(item.get(GEOMETRY_KEYS[geometry]), dict)]
    if len(present) == 1:
        return present[0]
    if len(present) == 2:
        # Both keys (an empty `points` beside a bitmap): the declared type decides, else the one with content.
        if declared is not None:
            return declared
        return "bitmap" if item["bitmap"].get("data") else "polygon"
    # A person without geometry cannot be drawn, and a mask missing a person is wrong, not repairable.
    raise MaskError(f"malformed annotation: object {index} ({item.get('classTitle')}) has neither 'bitmap' nor 'points'")


def decode_bitmap(data: Any) -> np.ndarray:
    """A Supervisely bitmap `data` string -> (h, w) bool array, True = object.

    Supervisely writes `base64(zlib(PNG))` where the PNG is a 1-bit palette image whose index 0
    is transparent; its own reader takes the alpha channel. Plain `base64(PNG)` also occurs.
    """
    if not isinstance(data, str) or not data:
        raise MaskError("malformed bitmap: 'data' is not a base64 string")
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise MaskError(f"bad base64 in bitmap data: {error}") from error
    if not raw.startswith(PNG_SIGNATURE):
        try:
            raw = zlib.decompress(raw)
        except zlib.error as error:
            raise MaskError(f"bitmap data is neither zlib-compressed nor a PNG: {error}") from error
    if not raw.startswith(PNG_SIGNATURE):
        raise MaskError("bitmap data is not a PNG after zlib decompression")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return opaque_pixels(image)
    except (OSError, ValueError) as error:  # PIL: UnidentifiedImageError, truncated data, bad chunks
        raise MaskError(f"unreadable bitmap PNG: {error}") from error


def opaque_pixels(image: Image.Image) -> np.ndarray:
    """Where a bitmap PNG is opaque (the object), for every PNG mode Supervisely tools write."""
    if image.mode == "P":
        indices = np.asarray(image)
        transparency = image.info.get("transparency")
        if isinstance(transparency, bytes):  # per-index alpha (tRNS with partial entries)
            alpha = np.full(256, 255, np.uint8)
            alpha[: len(transparency)] = np.frombuffer(transparency[:256], np.uint8)
            return alpha[indices] != 0
        transparent_index = transparency if isinstance(transparency, int) else 0
        return indices != transparent_index
    if image.mode in ("1", "L"):  # a flat mask: Supervisely's reader takes non-zero values
        return np.asarray(image) != 0
    if image.mode in ("LA", "PA", "RGBA"):
        return np.asarray(image.getchannel("A")) != 0
    raise MaskError(f"unsupported bitmap PNG mode {image.mode!r} (expected a palette image with transparency)")


def paste_bitmap(pixels: np.ndarray, bitmap: dict[str, Any], where: str) -> tuple[bool, str | None]:
    """Paste a bitmap with its top-left corner at `origin` = [x (column), y (row)], clipped to the image.

    Returns whether any of it landed on the image, and a note for the report when it was clipped.
    """
    origin = bitmap.get("origin")
    if not (isinstance(origin, Sequence) and len(origin) == 2 and all(is_int(value) for value in origin)):
        raise MaskError(f"malformed bitmap of {where}: origin {origin!r}, expected [x, y] integers")
    x, y = int(origin[0]), int(origin[1])
    opaque = decode_bitmap(bitmap.get("data"))
    box_h, box_w = opaque.shape
    height, width = pixels.shape
    top, left, bottom, right = max(y, 0), max(x, 0), min(y + box_h, height), min(x + box_w, width)
    inside = opaque[top - y : max(bottom, top) - y, left - x : max(right, left) - x]
    pixels[top : top + inside.shape[0], left : left + inside.shape[1]][inside] = PERSON
    painted = inside.size > 0
    if (top, left, bottom, right) == (y, x, y + box_h, x + box_w):
        return painted, None
    lost = int(opaque.sum()) - int(inside.sum())
    return painted, (
        f"bitmap clipped: {where} {box_w}x{box_h} at origin [{x}, {y}] exceeds the {width}x{height} image "
        f"({lost} object pixels cut off)"
    )


def fill_polygon(pixels: np.ndarray, points: dict[str, Any], where: str) -> tuple[bool, str | None]:
    """Fill the exterior ring, then clear the interior rings (holes) of this object only.

    Returns whether it was drawn, and a note for the report when it was not.
    """
    exterior = polygon_ring(points.get("exterior"), where)
    interiors = points.get("interior") or []
    if not isinstance(interiors, list):
        raise MaskError(f"malformed polygon of {where}: 'interior' is not a list of rings")
    holes = [polygon_ring(ring, where) for ring in interiors]
    if len(exterior) < 3:
        return False, f"ignored degenerate polygon: {where} has {len(exterior)} exterior points"
    if not holes:
        cv2.fillPoly(pixels, [exterior], PERSON)
        return True, None
    # Holes are cut from this object's own layer: clearing them on the shared mask would also
    # erase another object (a person behind the hole of this one).
    layer = np.zeros_like(pixels)
    cv2.fillPoly(layer, [exterior], PERSON)
    cv2.fillPoly(layer, [hole for hole in holes if len(hole) >= 3], 0)
    np.maximum(pixels, layer, out=pixels)
    return True, None


def polygon_ring(ring: Any, where: str) -> np.ndarray:
    """A ring [[x, y], ...] -> (n, 2) int32 points as cv2.fillPoly takes them."""
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise MaskError(f"malformed polygon of {where}: {error}") from error
    if points.size == 0:
        return np.zeros((0, 2), np.int32)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise MaskError(f"malformed polygon of {where}: expected [[x, y], ...], got shape {points.shape}")
    return np.round(points).astype(np.int32)


def is_int(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()

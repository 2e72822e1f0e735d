"""AISegment "Matting Human Datasets": half-body portraits with soft RGBA mattes.

Layout (one copy of the set)::

    clip_img/<group>/clip_<8 digits>/<group>-<8 digits>.jpg
    matting/<group>/matting_<8 digits>/<group>-<8 digits>.png

The matte is the *alpha channel* of an RGBA PNG (the RGB is the cut-out foreground) and is
kept soft. `<group>` is a shooting session, so it is the split group.

Quirks of the published archives, all handled here:
- AppleDouble junk (`matting/1803201916/._matting_00000000` is a *file* where a folder would
  be, `clip_img/.../._1803241125-00000005.jpg` sits beside real images): reported, skipped.
- Orphans on both sides (the matte `1803201916-00000117.png` has no image): reported.
- The Kaggle archive holds the whole set twice, `clip_img/`+`matting/` at the top and again
  under `matting_human_half/`. The input may be either folder or a parent of them. One copy is
  ingested; files present in both are reported as duplicates, and a file present in only one
  copy is still ingested, so nothing is lost.
"""

from pathlib import Path

import cv2
import numpy as np

from datatool.masks import PNG_SIGNATURE, Mask, MaskError, normalise_gray
from datatool.report import Report
from datatool.sources import register
from datatool.sources.base import Record, Source, index_by_stem, walk_files
from portraitseg.imagefiles import IMAGE_SUFFIXES, MASK_SUFFIXES

IMAGE_DIR = "clip_img"
MATTE_DIR = "matting"
# How deep below the input root a copy may start: `<root>/<archive>/matting_human_half/clip_img`.
MAX_COPY_DEPTH = 2


@register
class AISegmentSource(Source):
    name = "aisegment"
    layout = (
        "  clip_img/<group>/clip_<8 digits>/<group>-<8 digits>.jpg\n"
        "  matting/<group>/matting_<8 digits>/<group>-<8 digits>.png   (RGBA, alpha = matte)\n"
        "  optionally a second copy of both under matting_human_half/ (the Kaggle archive)"
    )

    def scan(self, report: Report) -> list[Record]:
        self.require_root()
        copies = find_copies(self.root)
        if not copies:
            raise self.layout_error(
                f"no {IMAGE_DIR}/ or {MATTE_DIR}/ folder in it or up to {MAX_COPY_DEPTH} levels below"
            )
        images = merge_copies(copies, IMAGE_DIR, IMAGE_SUFFIXES, report)
        mattes = merge_copies(copies, MATTE_DIR, MASK_SUFFIXES, report)
        if not images and not mattes:
            raise self.layout_error(f"{IMAGE_DIR}/ and {MATTE_DIR}/ hold no image or matte files")
        report.counts["images_found"] += len(images)
        report.counts["mattes_found"] += len(mattes)

        # Pair by stem (`<group>-<8 digits>`, unique across the set) through an explicit mapping:
        # the same pairing as the path rule clip_img->matting, clip_->matting_, .jpg->.png, but
        # it does not depend on both sides being in equally numbered clip folders.
        images_by_stem = index_by_stem(sorted(images.values()), report, "image")
        mattes_by_stem = index_by_stem(sorted(mattes.values()), report, "matte")
        records = []
        for stem, image in images_by_stem.items():
            matte = mattes_by_stem.get(stem)
            if matte is None:
                report.skip(image, f"image without matte: no {MATTE_DIR}/.../{stem}.png")
                report.counts["image_without_matte"] += 1
                continue
            key = image.relative_to(self.root).as_posix()
            records.append(Record(key=key, image=image, mask=matte, group=session_of(image, stem)))
        for stem, matte in mattes_by_stem.items():
            if stem not in images_by_stem:
                report.skip(matte, f"orphan matte: no {IMAGE_DIR}/.../{stem}.jpg")
                report.counts["orphan_matte"] += 1
        return sorted(records, key=lambda record: record.key)

    def read_mask(self, record: Record) -> Mask:
        return decode_matte(record.mask)


def merge_copies(copies: list[Path], folder: str, suffixes: frozenset[str], report: Report) -> dict[str, Path]:
    """Files of `folder` across all copies by their path inside the copy; the first copy wins.

    A file that an earlier copy already has is a duplicate: counted, and summarised in one
    report entry per duplicate folder (the Kaggle archive repeats all 34,427 pairs, so one
    entry per file would bury everything else). Same-path files of different sizes are not
    plain duplicates and get an entry each.
    """
    merged: dict[str, Path] = {}
    for copy_root in copies:
        directory = copy_root / folder
        if not directory.is_dir():
            continue
        duplicates = 0
        for path in walk_files(directory, report, suffixes):
            inside = path.relative_to(copy_root).as_posix()
            kept = merged.get(inside)
            if kept is None:
                merged[inside] = path
                continue
            duplicates += 1
            if kept.stat().st_size != path.stat().st_size:
                report.ignore(
                    path,
                    f"second copy differs from the one used: {report.relative(kept)} "
                    f"({kept.stat().st_size} vs {path.stat().st_size} bytes)",
                )
                report.counts["duplicate_differs"] += 1
        if duplicates:
            report.ignore(
                directory,
                f"duplicate copy of the dataset: {duplicates} files also in an earlier copy, which is used",
                duplicates=duplicates,
            )
            report.counts[f"duplicate_{folder}_files"] += duplicates
    return merged


def find_copies(root: Path) -> list[Path]:
    """Folders at most `MAX_COPY_DEPTH` below `root` holding `clip_img/` or `matting/`, shallowest first.

    The top-level copy of the Kaggle archive comes before its `matting_human_half/` copy, so the
    top one is the one ingested and the nested one reports as the duplicate.
    """
    found: list[Path] = []
    level = [root]
    for _ in range(MAX_COPY_DEPTH + 1):
        next_level = []
        for folder in level:  # breadth first and sorted: shallower copies come first
            if (folder / IMAGE_DIR).is_dir() or (folder / MATTE_DIR).is_dir():
                found.append(folder)
            next_level.extend(
                child
                for child in sorted(folder.iterdir())
                # Never descend into a copy's own data folders: they hold only group folders.
                if child.is_dir() and not child.name.startswith(".") and child.name not in (IMAGE_DIR, MATTE_DIR)
            )
        level = next_level
    return found


def session_of(image: Path, stem: str) -> str:
    """The shooting session: the `<group>` folder right below `clip_img/` (else the stem's prefix)."""
    parts = image.parts
    # The last `clip_img` in the path is the copy's image folder (the input root may contain one too).
    index = len(parts) - 1 - parts[::-1].index(IMAGE_DIR) if IMAGE_DIR in parts else len(parts)
    below = parts[index + 1 :]
    return below[0] if len(below) > 1 else stem.split("-")[0]


def decode_matte(path: Path) -> Mask:
    """The alpha channel of an AISegment RGBA matte, soft values kept exactly.

    A single-channel file is accepted as a grey matte (repacked copies sometimes store only the
    alpha). An RGB file without alpha carries no matte (its colours are the cut-out person) and
    is rejected, like any other unknown encoding.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MaskError(f"unreadable matte: {error.strerror or error}") from error
    if not data:
        raise MaskError("unreadable matte: empty file")
    if data.startswith(PNG_SIGNATURE) and data.rfind(b"IEND") == -1:
        # Checked first: libpng refuses a cut-off file, and "truncated" is the reason a user can act on.
        raise MaskError("truncated matte file (no PNG end chunk)")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise MaskError("unreadable matte: not a decodable image file")

    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[:, :, 0]
    if decoded.ndim == 2:
        return normalise_gray(decoded, "gray matte")
    if decoded.ndim == 3 and decoded.shape[2] == 4:
        alpha = decoded[:, :, 3]
        if alpha.dtype == np.uint16:
            return Mask(np.round(alpha / 257.0).astype(np.uint8), "alpha", "rgba16 alpha")
        if alpha.dtype == np.uint8:
            return Mask(np.ascontiguousarray(alpha), "alpha", "rgba alpha")
    raise MaskError(
        f"unknown matte encoding: array of shape {decoded.shape} and dtype {decoded.dtype} "
        "(expected an RGBA PNG whose alpha is the matte, or a single-channel matte)"
    )

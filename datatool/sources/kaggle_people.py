"""Kaggle "Person Segmentation" (`people_segmentation/`, 5,678 pairs) with its official split.

Layout::

    people_segmentation/images/<stem>.jpg
    people_segmentation/masks/<stem>.png           single channel, values {0, 1}
    people_segmentation/segmentation/train.txt     one stem per line, no extension
    people_segmentation/segmentation/val.txt
    people_segmentation/segmentation/trainval.txt  (optional) the union, only cross-checked

The input may be `people_segmentation/` itself or the folder holding it. Masks are 0/1, which
look black in a viewer; the shared decoder detects that from the values and scales to 0/255
(dividing by 255 and thresholding would empty every mask, the classic bug with this set).
Every stem is its own photo, so the stem is the split group.
"""

import codecs
from pathlib import Path

from datatool.report import Report, printable
from datatool.sources import register
from datatool.sources.base import Record, Source, index_by_stem, is_junk, walk_files
from portraitseg.imagefiles import IMAGE_SUFFIXES, MASK_SUFFIXES

DATASET_DIR = "people_segmentation"
IMAGE_DIR = "images"
MASK_DIR = "masks"
SPLIT_DIR = "segmentation"
SPLIT_FILES = {"train": "train.txt", "val": "val.txt"}
UNION_FILE = "trainval.txt"
# A stem listed in both train.txt and val.txt goes to train: the official val list must stay
# free of anything the official train list trains on, so a model trained on the official train
# list is never evaluated on one of its own training images.
CONFLICT_SPLIT = "train"
MAX_EXAMPLES = 5  # stems quoted in a summary report entry


@register
class KagglePeopleSource(Source):
    name = "kaggle-people"
    layout = (
        "  [people_segmentation/]images/<stem>.jpg\n"
        "  [people_segmentation/]masks/<stem>.png        (values 0/1)\n"
        "  [people_segmentation/]segmentation/train.txt, val.txt   (one stem per line)"
    )

    def scan(self, report: Report) -> list[Record]:
        self.require_root()
        dataset = self._find_dataset_dir()
        images = index_by_stem(list(walk_files(dataset / IMAGE_DIR, report, IMAGE_SUFFIXES)), report, "image")
        masks = index_by_stem(list(walk_files(dataset / MASK_DIR, report, MASK_SUFFIXES)), report, "mask")
        if not images and not masks:
            raise self.layout_error(f"{IMAGE_DIR}/ and {MASK_DIR}/ hold no image or mask files")
        report.counts["images_found"] += len(images)
        report.counts["masks_found"] += len(masks)
        split_of = read_official_split(dataset / SPLIT_DIR, report)

        records = []
        for stem, image in images.items():
            mask = masks.get(stem)
            if mask is None:
                report.skip(image, f"image without mask: no {MASK_DIR}/{stem}.png")
                report.counts["image_without_mask"] += 1
                continue
            split = split_of.get(stem)
            report.counts[f"split_{split or 'none'}"] += 1
            key = printable(image.relative_to(self.root).as_posix())  # the sample id derives from it
            records.append(Record(key=key, image=image, mask=mask, group=stem, official_split=split))
        for stem, mask in masks.items():
            if stem not in images:
                report.skip(mask, f"orphan mask: no {IMAGE_DIR}/{stem}.jpg")
                report.counts["orphan_mask"] += 1
        for stem, split in sorted(split_of.items()):
            if stem not in images:
                report.skip(
                    dataset / SPLIT_DIR / SPLIT_FILES[split], f"listed in the split file but no image: {stem}"
                )
                report.counts["split_stem_without_image"] += 1
        return sorted(records, key=lambda record: record.key)

    def _find_dataset_dir(self) -> Path:
        """The root itself, or the one folder inside it, that holds `images/` and `masks/`."""
        if is_dataset_dir(self.root):
            return self.root
        candidates = [
            child for child in sorted(self.root.iterdir()) if not is_junk(child.name) and is_dataset_dir(child)
        ]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            names = ", ".join(child.name for child in candidates)
            raise self.layout_error(f"several folders hold {IMAGE_DIR}/ and {MASK_DIR}/ ({names}); pass one of them")
        raise self.layout_error(f"no {IMAGE_DIR}/ and {MASK_DIR}/ folders in it or in {DATASET_DIR}/ below it")


def is_dataset_dir(folder: Path) -> bool:
    return folder.is_dir() and (folder / IMAGE_DIR).is_dir() and (folder / MASK_DIR).is_dir()


def read_official_split(split_dir: Path, report: Report) -> dict[str, str]:
    """Stem -> "train" | "val" from the split files; conflicts and missing files are reported."""
    split_of: dict[str, str] = {}
    for split, file_name in SPLIT_FILES.items():
        path = split_dir / file_name
        if not path.is_file():
            # Without the file the images are still usable, only without an official split.
            report.counts[f"split_file_missing_{split}"] += 1
            continue
        for stem in read_stems(path, report) or []:
            previous = split_of.get(stem)
            if previous is None:
                split_of[stem] = split
            elif previous != split:
                split_of[stem] = CONFLICT_SPLIT
                report.repair(
                    path,
                    f"stem in both {SPLIT_FILES[previous]} and {file_name}: {stem} "
                    f"(official_split set to {CONFLICT_SPLIT})",
                )
                report.counts["split_conflict"] += 1
    union = split_dir / UNION_FILE
    stems = read_stems(union, report) if union.is_file() else None
    if stems is not None:
        check_union(union, stems, set(split_of), report)
    return split_of


def read_stems(path: Path, report: Report) -> list[str] | None:
    """One stem per line; blank lines dropped, a stray image extension tolerated.

    A list that is not UTF-8 is read as Latin-1 (Windows tools still write the ANSI code page)
    and reported as repaired. An unreadable or binary list is reported and None returned: the
    images it names are kept, only without an official split.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        return unusable_list(path, f"unreadable: {error.strerror or error}", report)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Notepad's "Unicode"
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            return unusable_list(path, "not valid UTF-16 text", report)
    elif b"\0" in data:
        return unusable_list(path, "binary data, not text", report)
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
            report.repair(path, "split list is not UTF-8: read as Latin-1")
            report.counts["split_list_not_utf8"] += 1
    stems = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry:
            continue
        if Path(entry).suffix.lower() in IMAGE_SUFFIXES:
            entry = Path(entry).stem
        stems.append(entry)
    return stems


def unusable_list(path: Path, problem: str, report: Report) -> None:
    report.skip(path, f"unusable split list, not used: {problem}")
    report.counts["unusable_split_list"] += 1


def check_union(path: Path, union: list[str], listed: set[str], report: Report) -> None:
    """`trainval.txt` should be exactly train + val; a difference is reported, not acted on."""
    for problem, stems in (
        ("stems in trainval.txt but in neither train.txt nor val.txt", sorted(set(union) - listed)),
        ("stems in train.txt/val.txt but not in trainval.txt", sorted(listed - set(union))),
    ):
        if stems:
            examples = ", ".join(stems[:MAX_EXAMPLES]) + (", ..." if len(stems) > MAX_EXAMPLES else "")
            report.ignore(path, f"{problem}: {len(stems)} ({examples})", stems=len(stems))
            report.counts["trainval_mismatch"] += len(stems)

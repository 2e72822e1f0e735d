"""PFCN portrait set (Shen et al., "Automatic Portrait Segmentation for Image Stylization", 2016).

The release ships masks, split lists and image URLs but **no images**: users download and
crop them themselves (`datatool fetch pfcn --release DIR`) into `images_data_crop/`. Many
URLs are dead and 123 listed ids have no crop entry, so a mask without its image is the
normal case here: it is reported per mask with what to do, never fatal.
"""

import re
import zlib
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from datatool.masks import Mask, MaskError, normalise_gray
from datatool.report import Report
from datatool.sources import register
from datatool.sources.base import Record, Source, index_by_stem, walk_files
from portraitseg.imagefiles import IMAGE_SUFFIXES

MASK_DIR = "images_mask"
IMAGE_DIR = "images_data_crop"
MASK_VARIABLE = "mask"
MASK_NAME = re.compile(r"^(?P<id>\d+)_mask\.mat$")
# (file, variable, split): 1-based integer ids, 1x1529 and 1x300 uint16 in the release.
SPLIT_LISTS = (("trainlist.mat", "trainlist", "train"), ("testlist.mat", "testlist", "test"))
FETCH_COMMAND = "`datatool fetch pfcn --release DIR`"
FETCH_HINT = "the release ships only URLs, many of them dead"
# What scipy's MATLAB reader raises on truncated or corrupt files (found by fuzzing real .mat
# files): it has no single error type, and a zlib error surfaces for compressed variables.
# scipy cannot read MATLAB v7.3 files (HDF5) at all and says so with NotImplementedError: such
# a split list is reported as unusable like a corrupt one (its samples kept without a split).
MAT_READ_ERRORS = (MatReadError, OSError, ValueError, TypeError, IndexError, zlib.error, NotImplementedError)


@register
class PfcnSource(Source):
    name = "pfcn"
    layout = (
        "  images_mask/NNNNN_mask.mat     (MATLAB, variable 'mask', uint8 800x600, values 0/1)\n"
        "  images_data_crop/NNNNN.jpg     (downloaded by `datatool fetch pfcn --release DIR`)\n"
        "  trainlist.mat, testlist.mat    (variables 'trainlist'/'testlist': 1-based ids)\n"
        "  images_tracker/, alldata_urls.txt, crop.txt  (release files, not read by ingest)"
    )

    def scan(self, report: Report) -> list[Record]:
        self.require_root()
        mask_dir, image_dir = self.root / MASK_DIR, self.root / IMAGE_DIR
        if not mask_dir.is_dir():
            raise self.layout_error(f"no {MASK_DIR}/ folder")
        masks = self.index_masks(mask_dir, report)
        if not masks:
            raise self.layout_error(f"no *_mask.mat files in {MASK_DIR}/")
        images = self.index_images(image_dir, report)
        if not images:
            raise self.layout_error(f"no images in {IMAGE_DIR}/ ({FETCH_HINT}): run {FETCH_COMMAND} first")
        splits = self.read_splits(report)
        report.counts["masks_found"] += len(masks)
        report.counts["images_found"] += len(images)

        records = []
        for sample_id, mask in sorted(masks.items()):
            image = images.get(sample_id)
            if image is None:
                # The hint goes before the ':' so that the per-reason summary of the CLI shows it.
                report.skip(
                    mask,
                    f"image missing, {FETCH_COMMAND} downloads it: "
                    f"{IMAGE_DIR}/{sample_id}.jpg not found ({FETCH_HINT})",
                )
                report.counts["missing_image"] += 1
                continue
            split = splits.get(sample_id)
            if split is None:
                report.counts["in_no_split_list"] += 1  # 58 released masks are in neither list
            key = image.relative_to(self.root).as_posix()
            records.append(Record(key=key, image=image, mask=mask, group=sample_id, official_split=split))
        for sample_id, image in sorted(images.items()):
            if sample_id not in masks:
                report.skip(image, f"image without a mask: no {MASK_DIR}/{sample_id}_mask.mat")
                report.counts["orphan_image"] += 1
        return sorted(records, key=lambda record: record.key)

    def read_mask(self, record: Record) -> Mask:
        try:
            variables = scipy.io.loadmat(record.mask, variable_names=[MASK_VARIABLE])
        except MAT_READ_ERRORS as error:
            raise MaskError(f"unreadable .mat mask: {error.__class__.__name__}: {error}") from error
        if MASK_VARIABLE not in variables:
            raise MaskError(f"no variable {MASK_VARIABLE!r} in the .mat file (found: {mat_variables(record.mask)})")
        values = variables[MASK_VARIABLE]
        if values.dtype != np.uint8:
            raise MaskError(f"variable {MASK_VARIABLE!r} is {values.dtype}, expected uint8 (PFCN masks are uint8 0/1)")
        if values.ndim != 2 or values.size == 0:
            raise MaskError(f"variable {MASK_VARIABLE!r} has shape {values.shape}, expected a 2-D (800, 600) array")
        return normalise_gray(values, "mat mask")

    def index_masks(self, mask_dir: Path, report: Report) -> dict[str, Path]:
        """id -> mask file; other files in images_mask/ are reported."""
        named: list[Path] = []
        for path in walk_files(mask_dir, report, frozenset({".mat"})):
            if MASK_NAME.match(path.name):
                named.append(path)
            else:
                report.ignore(path, "not a PFCN mask file name (expected NNNNN_mask.mat)")
                report.counts["ignored_other"] += 1
        by_stem = index_by_stem(named, report, "mask")
        return {stem.removesuffix("_mask"): path for stem, path in by_stem.items()}

    def index_images(self, image_dir: Path, report: Report) -> dict[str, Path]:
        """id -> image file (the fetch writes NNNNN.jpg; other image formats are accepted)."""
        if not image_dir.is_dir():
            return {}
        return index_by_stem(list(walk_files(image_dir, report, IMAGE_SUFFIXES)), report, "image")

    def read_splits(self, report: Report) -> dict[str, str]:
        """id -> "train"/"test" from the release's split lists."""
        splits: dict[str, str] = {}
        for file_name, variable, split in SPLIT_LISTS:
            path = self.root / file_name
            if not path.is_file():
                report.ignore(path, f"split list not found: its ids get no official {split} split")
                report.counts["missing_split_list"] += 1
                continue
            for sample_id in self.read_split_list(path, variable, split, report):
                previous = splits.setdefault(sample_id, split)
                if previous != split:
                    # As for Kaggle's lists: the training side wins, so the official test split
                    # never holds an image that the official training split trains on.
                    splits[sample_id] = "train"
                    report.repair(path, f"id in both trainlist.mat and testlist.mat: {sample_id} (official_split set to train)")
                    report.counts["split_conflict"] += 1
        return splits

    def read_split_list(self, path: Path, variable: str, split: str, report: Report) -> list[str]:
        """The ids of one split list, as '%05d' strings (the lists hold 1-based MATLAB integers).

        An unreadable or corrupt list is reported and gives no ids: its samples are kept,
        without an official split.
        """
        try:
            ids = scipy.io.loadmat(path, variable_names=[variable]).get(variable)
        except MAT_READ_ERRORS as error:
            problem = f"unreadable .mat file ({type(error).__name__}: {error})"
        else:
            ids = None if ids is None else np.asarray(ids).ravel()  # stored as a 1xN row
            if ids is None:
                problem = f"no variable {variable!r} (found: {mat_variables(path)})"
            elif ids.dtype.kind not in "iuf" or not np.all(np.isfinite(ids) & (ids >= 1) & (ids == np.round(ids))):
                problem = f"variable {variable!r} does not hold positive integer ids"
            else:
                return [f"{int(sample_id):05d}" for sample_id in ids]
        report.skip(path, f"unusable split list, its ids get no official {split} split: {problem}")
        report.counts["unusable_split_list"] += 1
        return []


def mat_variables(path: Path) -> str:
    """The variable names in a .mat file, for error messages."""
    try:
        names = [name for name, _shape, _class in scipy.io.whosmat(path)]
    except MAT_READ_ERRORS:
        return "unreadable variable list"
    return ", ".join(names) or "none"

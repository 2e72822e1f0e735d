"""`datatool boundary`: edge maps of the person outline, for boundary-aware losses.

PortraitNet (Zhang et al., 2019) trains an auxiliary boundary head with a focal loss on a
band around the person outline. This stage writes that band for every sample of a canonical
set: `edges/<id>.png`, uint8, 255 on the band and 0 elsewhere, manifest field `edge`.

Masks are thresholded first (value >= 128 is person, as everywhere else in the project), so
a soft matte and its binarised version give the same band. Methods, each giving a band of
`width` pixels across a straight outline:

- `morph` (default): dilate(person) XOR erode(person) with an elliptical kernel of
  `width + 1` pixels. A pixel is on the band when its neighbourhood holds both person and
  background. The kernel is one pixel larger than the band because a (2r+1)-pixel kernel
  reaches r pixels to each side, so the band of a straight outline is 2r pixels wide: with
  `width + 1` it is exactly `width` (`width // 2` outside and `width - width // 2` inside the
  outline for even widths; for odd ones the extra pixel goes inside or outside depending on
  the direction of the edge, as OpenCV anchors even kernels off-centre).
- `canny`: Canny's one-pixel edge of the binary mask, thickened by dilation with an
  elliptical kernel of `width` pixels.
- `sobel`: pixels where the Sobel gradient of the binary mask is non-zero (a two-pixel line,
  one each side of the outline), thickened by an elliptical kernel of `width - 1` pixels
  (so its thinnest band is two pixels, even for `width` 1).

The image border is not an outline: a person cut off by the frame gets no band along it.

The output is a complete canonical set: every file the input's rows reference (image, mask,
teacher mask, ...) is hard-linked into it when both lie on one filesystem, copied otherwise.
Links cost no space and no time, and they keep the output self-contained, so DVC caches it
as any other set and the training side reads one folder; references to the input set would
make the output break whenever the input moves or is re-built. (A hard link shares its
bytes: a tool that rewrites an input file in place would change the output too. DVC removes
a stage's outputs before re-running it, so in the pipeline an input is always replaced, never
rewritten.)
"""

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import MANIFEST, REPORT, read_rows, write_manifest, write_mask
from datatool.outputs import OutputFolder
from datatool.report import Report
from portraitseg.progress import progress
from portraitseg.records import FILE_FIELDS

EDGES = "edges"
METHODS = ("morph", "canny", "sobel")
PERSON_LEVEL = 128  # stored mask value from which a pixel counts as person
CANNY_THRESHOLDS = (100, 200)  # any pair below 255 finds every step of a 0/255 mask


@dataclass
class BoundaryResult:
    output: Path
    rows: int
    written: int
    skipped: int
    report: dict[str, Any]


def edge_map(mask: np.ndarray, width: int = 4, method: str = "morph") -> np.ndarray:
    """The boundary band of a (H, W) uint8 mask as a (H, W) uint8 map of 0 and 255 (see the module doc)."""
    if method not in METHODS:
        raise ValueError(f"unknown edge method {method!r}; choose one of: {', '.join(METHODS)}")
    if width < 1:
        raise ValueError(f"edge width must be at least 1 pixel, got {width}")
    person = (mask >= PERSON_LEVEL).astype(np.uint8) * 255
    if method == "morph":
        kernel = ellipse(width + 1)
        # The defaults pad with the neutral value (erode: max, dilate: min): no band at the frame.
        band = cv2.dilate(person, kernel) ^ cv2.erode(person, kernel)
    elif method == "canny":
        band = thicken(cv2.Canny(person, *CANNY_THRESHOLDS), width)
    else:
        gradient_x = cv2.Sobel(person, cv2.CV_16S, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
        gradient_y = cv2.Sobel(person, cv2.CV_16S, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
        line = ((gradient_x != 0) | (gradient_y != 0)).astype(np.uint8) * 255
        band = thicken(line, width - 1)
    return np.where(band > 0, 255, 0).astype(np.uint8)


def ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def thicken(line: np.ndarray, width: int) -> np.ndarray:
    """Dilate a thin line to about `width` pixels (a width of 1 or less leaves it as it is)."""
    return cv2.dilate(line, ellipse(width)) if width > 1 else line


def build_boundaries(input_dir: Path, output: Path, *, width: int = 4, method: str = "morph") -> BoundaryResult:
    """Write the canonical set `output` = the set `input_dir` plus `edges/<id>.png` and the field `edge`.

    Raises `ValueError` for a missing input, the input as output, or a bad width or method;
    a sample whose mask cannot be read is reported and left out.
    """
    edge_map(np.zeros((1, 1), np.uint8), width, method)  # checks width and method before any work
    input_dir = Path(input_dir).expanduser().resolve()
    if not (input_dir / MANIFEST).is_file():
        raise ValueError(f"input {input_dir} is not a canonical set (no {MANIFEST})")
    folder = OutputFolder(output, [input_dir])
    output = folder.path
    # The input's visible folders (images/, masks/, teacher_masks/ ...) hold what the rows' file
    # fields name; an `edges/` the input may already have is replaced by the new one.
    carried = sorted(entry.name for entry in os.scandir(input_dir) if entry.is_dir() and not entry.name.startswith(".") and entry.name != EDGES)
    folder.begin([*carried, EDGES])
    report = Report(input_dir)
    produced: set[str] = set()
    with (input_dir / MANIFEST).open("rb") as lines:
        total = sum(1 for line in lines if line.strip())  # for the progress bar; rows are streamed

    def output_rows() -> Iterator[dict[str, Any]]:
        for row in progress(read_rows(input_dir, report), total=total, desc=f"boundary {input_dir.name}"):
            sample_id = row["id"]
            mask = cv2.imread(str(input_dir / row["mask"]), cv2.IMREAD_UNCHANGED)
            if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
                report.skip(input_dir / row["mask"], "unreadable mask: missing or not a one-channel 8-bit image", id=sample_id)
                continue
            files = [*carried_files(row), f"{EDGES}/{sample_id}.png"]
            missing = next((name for name in files[:-1] if not (input_dir / name).is_file()), None)
            if missing:
                report.skip(input_dir / missing, "file named in the manifest is missing", id=sample_id)
                continue
            folder.claim(files)
            for name in files[:-1]:
                report.counts[place_file(input_dir / name, output / name)] += 1
            edge = edge_map(mask, width, method)
            write_mask(output / files[-1], edge)
            report.counts["edge_pixels"] += int(np.count_nonzero(edge))
            report.counts["empty_edges"] += not edge.any()
            produced.update(files)
            yield {**row, "edge": files[-1]}

    written = write_manifest(output, output_rows())
    report.counts["rows"] = total
    report.counts["written"] = written
    report.counts["removed_stale_files"] = folder.finish(produced)
    header = {
        "stage": "boundary",
        "version": __version__,
        "input": str(input_dir),
        "output": str(output.resolve()),
        "options": {"width": width, "method": method, "person_level": PERSON_LEVEL},
        "carried_folders": carried,
    }
    summary = report.write(output / REPORT, **header)
    return BoundaryResult(output=output, rows=total, written=written, skipped=len(report.skipped), report=summary)


def carried_files(row: dict[str, Any]) -> list[str]:
    """The row's own files (image, mask, teacher mask); a path that leaves the set is not followed."""
    files = [row[name] for name in FILE_FIELDS if name != "edge" and isinstance(row.get(name), str)]
    return [name for name in files if ".." not in PurePosixPath(name).parts and not PurePosixPath(name).is_absolute()]


def place_file(source: Path, target: Path) -> str:
    """Hard-link `source` at `target` (replacing what is there), copying across filesystems; return how."""
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


__all__ = ["BoundaryResult", "METHODS", "build_boundaries", "edge_map"]

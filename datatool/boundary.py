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

The stage runs on `datatool.engine` (here, in worker processes or on Ray; the driver makes the
links). A re-run reuses every sample whose row and files are unchanged (`.boundary-state.jsonl`).
"""

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import MANIFEST, REPORT, mask_bytes, read_rows
from datatool.engine import Done, EngineOptions, StageDefaults, Work, engine_header, run_stage
from datatool.outputs import OutputFolder
from datatool.report import Report
from datatool.reuse import Outcome, row_fingerprint, signature
from portraitseg.records import FILE_FIELDS

ENGINE_VERSION = 1  # bump when the same input and options would give different output files
STATE = ".boundary-state.jsonl"
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


def build_boundaries(
    input_dir: Path, output: Path, *, width: int = 4, method: str = "morph", engine: EngineOptions | None = None
) -> BoundaryResult:
    """Write the canonical set `output` = the set `input_dir` plus `edges/<id>.png` and the field `edge`.

    Raises `ValueError` for a missing input, the input as output, or a bad width or method;
    a sample whose mask cannot be read is reported and left out.
    """
    edge_map(np.zeros((1, 1), np.uint8), width, method)  # checks width and method before any work
    input_dir = Path(input_dir).expanduser().resolve()
    if not (input_dir / MANIFEST).is_file():
        raise ValueError(f"input {input_dir} is not a canonical set (no {MANIFEST})")
    engine = engine or EngineOptions()
    folder = OutputFolder(output, [input_dir])
    output = folder.path
    report = Report(input_dir)
    works = [
        Work(row["id"], row_fingerprint([input_dir / name for name in carried_files(row)], input_dir, row), row, str(input_dir / row["mask"]))
        for row in read_rows(input_dir, report)
    ]
    stage = BoundaryStage(input_dir, width, method)
    totals = run_stage(stage, folder, works, report, engine)
    with (input_dir / MANIFEST).open("rb") as lines:
        report.counts["rows"] = sum(1 for line in lines if line.strip())
    report.counts["written"] = totals.written
    header = {
        "stage": "boundary",
        "version": __version__,
        "input": str(input_dir),
        "output": str(output.resolve()),
        "options": {"width": width, "method": method, "person_level": PERSON_LEVEL},
        "carried_folders": list(stage.carried),
        "engine": engine_header(engine, totals),
    }
    summary = report.write(output / REPORT, **header)
    return BoundaryResult(output=output, rows=report.counts["rows"], written=totals.written, skipped=len(report.skipped), report=summary)


class BoundaryStage(StageDefaults):
    """What boundary tells the engine (`datatool.engine.Stage`)."""

    state_file = STATE
    processed_counter = "processed"
    manifest = True
    batch_size = 8

    def __init__(self, input_dir: Path, width: int, method: str):
        self.input_dir = input_dir
        self.width = width
        self.method = method
        self.label = f"boundary {input_dir.name}"
        self.signature = signature(engine=ENGINE_VERSION, root=str(input_dir), width=width, method=method)
        # The input's visible folders (images/, masks/, teacher_masks/ ...) hold what the rows' file
        # fields name; an `edges/` the input may already have is replaced by the new one.
        self.carried = tuple(sorted(
            entry.name for entry in os.scandir(input_dir) if entry.is_dir() and not entry.name.startswith(".") and entry.name != EDGES
        ))  # fmt: skip
        self.folders = (*self.carried, EDGES)

    def claims(self, work: Work) -> list[str]:
        return [*carried_files(work.item), f"{EDGES}/{work.sample_id}.png"]

    def step_factory(self):
        return partial(BoundaryStep, self.input_dir, self.width, self.method)


class BoundaryStep:
    """Reads a sample's mask, draws its edge map, and names the files to link into the output."""

    def __init__(self, input_dir: Path, width: int, method: str):
        self.input_dir = input_dir
        self.width = width
        self.method = method

    def __call__(self, works: list[Work]) -> list[Done]:
        return [self.edges(work) for work in works]

    def edges(self, work: Work) -> Done:
        row, sample_id = work.item, work.sample_id
        done = Done(Outcome(sample_id=sample_id, inputs=work.inputs))
        mask = cv2.imread(str(self.input_dir / row["mask"]), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
            reason = "unreadable mask: missing or not a one-channel 8-bit image"
            done.outcome.skips = [{"file": str(self.input_dir / row["mask"]), "reason": reason, "id": sample_id}]
            return done
        carried = carried_files(row)
        missing = next((name for name in carried if not (self.input_dir / name).is_file()), None)
        if missing:
            done.outcome.skips = [{"file": str(self.input_dir / missing), "reason": "file named in the manifest is missing", "id": sample_id}]
            return done
        edge = edge_map(mask, self.width, self.method)
        edge_file = f"{EDGES}/{sample_id}.png"
        done.links = {name: str(self.input_dir / name) for name in carried}
        done.files = {edge_file: mask_bytes(edge)}
        done.outcome.counts = {"edge_pixels": int(np.count_nonzero(edge)), "empty_edges": int(not edge.any())}
        done.outcome.rows = [{**row, "edge": edge_file}]
        return done


def carried_files(row: dict[str, Any]) -> list[str]:
    """The row's own files (image, mask, teacher mask); a path that leaves the set is not followed."""
    files = [row[name] for name in FILE_FIELDS if name != "edge" and isinstance(row.get(name), str)]
    return [name for name in files if ".." not in PurePosixPath(name).parts and not PurePosixPath(name).is_absolute()]


__all__ = ["BoundaryResult", "METHODS", "build_boundaries", "edge_map"]

"""`datatool ingest`: turn one downloaded dataset into a validated canonical set.

The source adapter scans the input (cheap, no decoding); the step (`IngestStep`, run by
`datatool.engine` in worker processes or Ray actors) then, for every record: decodes and
validates the image (truncation, colour format, EXIF orientation), decodes the mask in the
source's encoding, applies the image's orientation to the mask, resizes masks that differ only
in scale and quarantines the rest; the engine writes `images/`, `masks/`, `manifest.jsonl` and
`report.json`.

Re-running over unchanged input does no decoding: each record's input files are
fingerprinted (size, mtime) in `.ingest-state.jsonl`, and a record whose fingerprint, options
and outputs are unchanged reuses its previous manifest row and report entries.
"""

import os
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import IMAGES, MASKS, REPORT, image_bytes, image_name, make_id, mask_bytes, sample_files
from datatool.engine import Done, EngineOptions, Work, engine_header, run_stage
from datatool.images import TRANSPOSING_ORIENTATIONS, ImageError, apply_orientation, oriented_size, read_image
from datatool.masks import Mask, MaskError, fit_mask, same_aspect
from datatool.outputs import OutputFolder
from datatool.report import Report, printable
from datatool.reuse import Outcome, file_fingerprint, relative_to, signature
from datatool.sources.base import Record, Source

# Bump when the same input would give different output files, so old state is not reused.
ENGINE_VERSION = 1
STATE = ".ingest-state.jsonl"


@dataclass(frozen=True)
class IngestOptions:
    """Options that change the output files (part of the re-use signature)."""

    max_side: int | None = None  # downscale so that max(height, width) <= max_side; None keeps size


@dataclass
class IngestResult:
    output: Path
    records: int
    ingested: int
    reused: int
    skipped: int
    report: dict[str, Any]


def ingest(
    source: Source,
    output: Path,
    *,
    name: str | None = None,
    workers: int | None = 1,
    max_side: int | None = None,
    engine: EngineOptions | None = None,
) -> IngestResult:
    """Ingest `source` into the canonical set at `output`; raise `LayoutError` if it is not that source.

    `workers` (0 or None = all cores) are worker processes of the local engine or actors of the
    Ray engine; `engine` says which (default: local).
    """
    name = name or source.name
    options = IngestOptions(max_side=max_side or None)
    # 0 stays 0 for the engine: all of this machine's cores locally, all of the cluster's CPUs on Ray.
    engine = replace(engine or EngineOptions(), workers=workers or 0)
    folder = OutputFolder(output, [source.root])
    output = folder.path
    report = Report(source.root)
    records = unique_ids(source.scan(report), name, report)
    report.counts["records"] = len(records)
    works = [
        Work(sample_id, file_fingerprint(source.inputs(record), source.root), record, str(record.image))
        for sample_id, record in records
    ]
    stage = IngestStage(source, name, options)
    totals = run_stage(stage, folder, works, report, engine)
    report.counts["ingested"] = totals.written
    header = {
        "stage": "ingest",
        "version": __version__,
        "source": name,
        "source_format": source.name,
        "input": str(source.root),
        "output": str(output.resolve()),
        "options": {**asdict(options), **source.options(), "workers": workers or os.cpu_count() or 1},
        "mask_encodings": dict(stage.encodings.most_common()),
        "engine": engine_header(engine, totals),
    }
    summary = report.write(output / REPORT, **header)
    return IngestResult(
        output=output,
        records=len(records),
        ingested=totals.written,
        reused=report.counts["reused"],
        skipped=len(report.skipped),
        report=summary,
    )


class IngestStage:
    """What ingest tells the engine (`datatool.engine.Stage`)."""

    state_file = STATE
    folders = (IMAGES, MASKS)
    processed_counter = "processed"
    manifest = True
    batch_size = 8  # images per step call: fewer round trips to worker processes and Ray actors

    def __init__(self, source: Source, name: str, options: IngestOptions):
        self.source = source
        self.name = name
        self.options = options
        self.label = f"ingest {name}"
        self.signature = signature(
            engine=ENGINE_VERSION, name=name, source=source.name, root=str(source.root),
            source_options=source.options(), options=asdict(options),
        )  # fmt: skip
        self.encodings: Counter[str] = Counter()

    def claims(self, work: Work) -> tuple[str, ...]:
        return sample_files(work.sample_id)

    def step_factory(self):
        return partial(IngestStep, self.source, self.name, self.options)

    def note(self, report: Report, work: Work, outcome: Outcome, note: str) -> None:
        report.repair(work.file, note, id=outcome.sample_id, mask=report.relative(work.item.mask))

    def accept(self, work: Work, row: dict[str, Any]) -> dict[str, Any]:
        self.encodings[row["mask_encoding"]] += 1
        return row


def unique_ids(records: list[Record], name: str, report: Report) -> list[tuple[str, Record]]:
    """(sample id, record) pairs; a record whose id is taken is reported with both files, never written over the other."""
    first: dict[str, Record] = {}
    for record in records:
        sample_id = make_id(name, record.key)
        if sample_id in first:
            report.skip(record.image, f"duplicate sample id {sample_id}: {report.relative(first[sample_id].image)} has it too (kept)")
            report.counts["duplicate_ids"] += 1
        else:
            first[sample_id] = record
    return [(sample_id, record) for sample_id, record in first.items()]


class IngestStep:
    """Decodes, validates and repairs samples into file bytes (built once per worker)."""

    def __init__(self, source: Source, name: str, options: IngestOptions):
        self.source = source
        self.name = name
        self.options = options

    def __call__(self, works: list[Work]) -> list[Done]:
        return [ingest_record(self.source, work, self.name, self.options) for work in works]


def ingest_record(source: Source, work: Work, name: str, options: IngestOptions) -> Done:
    """Decode, validate and repair one sample into its files and manifest row."""
    record, sample_id = work.item, work.sample_id
    done = Done(Outcome(sample_id=sample_id, inputs=work.inputs))
    outcome = done.outcome
    try:
        image = read_image(record.image)
        height, width = oriented_size(image.height, image.width, image.orientation)
        downscaled = bool(options.max_side) and max(height, width) > options.max_side
        copied = image.copyable and not downscaled
        if copied:
            image.validate()  # the bytes are copied: prove they decode, skip the pixels
        else:
            pixels = apply_orientation(image.pixels, image.orientation)
            outcome.notes.extend(image.notes)
    except ImageError as error:
        outcome.skips = [{"file": str(record.image), "reason": str(error)}]
        return done
    try:
        mask = source.read_mask(record)
    except MaskError as error:
        outcome.skips = [{"file": str(record.mask), "reason": str(error)}]
        return done
    except Exception as error:  # a bug or an exotic file must not end a 30,000-image run
        outcome.skips = [{"file": str(record.mask), "reason": f"unreadable mask: {type(error).__name__}: {error}"}]
        return done

    outcome.notes.extend(mask.notes)
    if image.orientation != 1:
        mask, note = orient_mask(mask, image.orientation, (image.height, image.width), (height, width))
        outcome.notes.append(note)
    try:
        mask, note = fit_mask(mask, (height, width))
    except MaskError as error:
        outcome.skips = [{"file": str(record.mask), "reason": str(error)}]
        return done
    if note:
        outcome.notes.append(note)

    if downscaled:
        pixels, mask = downscale(pixels, mask, options.max_side)
        height, width = pixels.shape[:2]
        outcome.counts["downscaled_to_max_side"] = 1
    image_file = f"{IMAGES}/{image_name(sample_id, image.format)}"
    done.files[image_file] = image.data if copied else image_bytes(pixels, Path(image_file).suffix)
    outcome.counts["copied_images" if copied else "encoded_images"] = 1
    done.files[f"{MASKS}/{sample_id}.png"] = mask_bytes(mask.pixels)
    if not mask.pixels.any():
        outcome.counts["empty_masks"] = 1

    outcome.rows.append({
        "id": sample_id,
        "image": image_file,
        "mask": f"{MASKS}/{sample_id}.png",
        "source": name,
        "source_format": source.name,
        "source_image": record.key,
        "source_mask": printable(relative_to(record.mask, source.root)),
        "width": width,
        "height": height,
        "mask_kind": mask.kind,
        "mask_encoding": mask.encoding,
        "group": f"{name}/{record.group}",
        "official_split": record.official_split,
        **record.extra,
    })
    return done


def orient_mask(mask: Mask, orientation: int, raw_hw: tuple[int, int], upright_hw: tuple[int, int]) -> tuple[Mask, str]:
    """Apply the image's EXIF orientation to its mask, unless the mask is visibly upright already.

    Masks are drawn on the pixels as stored, so the image's orientation is applied to both.
    Only for the rotations that swap width and height can the mask's shape tell that it was
    drawn on the rotated photo instead; then it is left as it is.
    """
    mask_hw = mask.pixels.shape[:2]
    if orientation in TRANSPOSING_ORIENTATIONS and same_aspect(mask_hw, upright_hw) and not same_aspect(mask_hw, raw_hw):
        return mask, f"EXIF orientation {orientation} applied to the image; the mask was already upright"
    rotated = Mask(apply_orientation(mask.pixels, orientation), mask.kind, mask.encoding, mask.notes)
    return rotated, f"EXIF orientation {orientation} applied to image and mask"


def downscale(pixels: np.ndarray, mask: Mask, max_side: int) -> tuple[np.ndarray, Mask]:
    """Shrink image and mask so the longer side is `max_side` (area filter; binary masks re-thresholded)."""
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    shrunk = cv2.resize(mask.pixels, size, interpolation=cv2.INTER_AREA)
    if mask.kind == "binary":  # area averaging smooths edges; a binary mask must stay 0/255
        shrunk = np.where(shrunk >= 128, 255, 0).astype(np.uint8)
    return pixels, Mask(shrunk, mask.kind, mask.encoding, mask.notes)

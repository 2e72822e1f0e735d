"""`datatool ingest`: turn one downloaded dataset into a validated canonical set.

The source adapter scans the input (cheap, no decoding); this engine then, for every record and
in parallel worker processes: decodes and validates the image (truncation, colour format,
EXIF orientation), decodes the mask in the source's encoding, applies the image's orientation
to the mask, resizes masks that differ only in scale, quarantines the rest, and writes
`images/`, `masks/`, `manifest.jsonl` and `report.json`.

Re-running over unchanged input does no decoding: each record's input files are
fingerprinted (size, mtime) in `.ingest-state.jsonl`, and a record whose fingerprint, options
and outputs are unchanged reuses its previous manifest row and report entries.
"""

import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import IMAGES, MASKS, REPORT, copy_image, encode_image, make_id, sample_files, write_manifest, write_mask
from datatool.images import TRANSPOSING_ORIENTATIONS, ImageError, apply_orientation, oriented_size, read_image
from datatool.masks import Mask, MaskError, fit_mask, same_aspect
from datatool.outputs import OutputFolder
from datatool.report import Report, printable
from datatool.reuse import Outcome, StateWriter, file_fingerprint, load_state, relative_to, signature
from datatool.sources.base import Record, Source
from portraitseg.progress import progress

# Bump when the same input would give different output files, so old state is not reused.
ENGINE_VERSION = 1
STATE = ".ingest-state.jsonl"
IN_FLIGHT_PER_WORKER = 8  # bounded queue: memory stays flat however many images there are


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
) -> IngestResult:
    """Ingest `source` into the canonical set at `output`; raise `LayoutError` if it is not that source."""
    name = name or source.name
    options = IngestOptions(max_side=max_side or None)
    workers = workers or os.cpu_count() or 1
    folder = OutputFolder(output, [source.root])
    output = folder.path
    report = Report(source.root)
    records = unique_ids(source.scan(report), name, report)
    report.counts["records"] = len(records)

    run_signature = signature(
        engine=ENGINE_VERSION, name=name, source=source.name, root=str(source.root),
        source_options=source.options(), options=asdict(options),
    )  # fmt: skip
    previous = load_state(output / STATE, run_signature)
    folder.begin([IMAGES, MASKS], claims=(path for sample_id, _ in records for path in sample_files(sample_id)))

    encodings: Counter[str] = Counter()
    produced: set[str] = set()

    def manifest_rows(state: StateWriter) -> Iterator[dict[str, Any]]:
        outcomes = process_records(source, records, name, output, options, previous, workers)
        for record, outcome, reused in progress(outcomes, total=len(records), desc=f"ingest {name}"):
            report.counts["reused" if reused else "processed"] += 1
            for counter, value in outcome.counts.items():
                report.counts[counter] += value
            for note in outcome.notes:
                report.repair(record.image, note, id=outcome.sample_id, mask=report.relative(record.mask))
            if outcome.inputs is not None:
                state.write(asdict(outcome))
            if outcome.skip is not None:
                report.skip(outcome.skip["file"], outcome.skip["reason"])
                continue
            produced.update((outcome.row["image"], outcome.row["mask"]))
            encodings[outcome.row["mask_encoding"]] += 1
            yield outcome.row

    with StateWriter(output / STATE, run_signature) as state:
        ingested = write_manifest(output, manifest_rows(state))
    report.counts["ingested"] = ingested
    report.counts["removed_stale_files"] = folder.finish(produced)
    header = {
        "stage": "ingest",
        "version": __version__,
        "source": name,
        "source_format": source.name,
        "input": str(source.root),
        "output": str(output.resolve()),
        "options": {**asdict(options), **source.options(), "workers": workers},
        "mask_encodings": dict(encodings.most_common()),
    }
    summary = report.write(output / REPORT, **header)
    return IngestResult(
        output=output,
        records=len(records),
        ingested=ingested,
        reused=report.counts["reused"],
        skipped=len(report.skipped),
        report=summary,
    )


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


def process_records(
    source: Source,
    records: list[tuple[str, Record]],
    name: str,
    output: Path,
    options: IngestOptions,
    previous: dict[str, dict[str, Any]],
    workers: int,
) -> Iterator[tuple[Record, Outcome, bool]]:
    """Yield `(record, outcome, reused)` in record order, decoding only what changed.

    With several workers, at most `workers * IN_FLIGHT_PER_WORKER` records are in flight, and
    results come back in submission order, so the manifest is deterministic and memory flat.
    """
    executor = None
    if workers > 1:
        # forkserver, not fork: a forked child inherits OpenCV's thread pool mid-state from the
        # parent (which may already have decoded images) and can deadlock in its first call.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["datatool.ingest", "datatool.sources"])  # import once, fork cheaply
        executor = ProcessPoolExecutor(workers, mp_context=context, initializer=limit_worker_threads)
    pending: deque[tuple[Record, Future | Outcome, bool]] = deque()
    try:
        for sample_id, record in records:
            inputs = file_fingerprint(source.inputs(record), source.root)
            cached = previous.get(sample_id)
            if cached is not None and inputs is not None and cached["inputs"] == inputs and outputs_exist(output, cached):
                pending.append((record, Outcome(**cached), True))
            elif executor is None:
                pending.append((record, ingest_record(source, record, sample_id, inputs, name, output, options), False))
            else:
                future = executor.submit(ingest_record, source, record, sample_id, inputs, name, output, options)
                pending.append((record, future, False))
            while pending and (executor is None or len(pending) >= workers * IN_FLIGHT_PER_WORKER):
                yield resolve(pending.popleft())
        while pending:
            yield resolve(pending.popleft())
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def resolve(item: tuple[Record, "Future | Outcome", bool]) -> tuple[Record, Outcome, bool]:
    record, outcome, reused = item
    return record, outcome.result() if isinstance(outcome, Future) else outcome, reused


def limit_worker_threads() -> None:
    # Each worker process decodes one image at a time; OpenCV's own thread pool would only
    # oversubscribe the cores that the other workers already use.
    cv2.setNumThreads(1)


def ingest_record(
    source: Source,
    record: Record,
    sample_id: str,
    inputs: list | None,
    name: str,
    output: Path,
    options: IngestOptions,
) -> Outcome:
    """Decode, validate, repair and write one sample (runs in a worker process)."""
    outcome = Outcome(sample_id=sample_id, inputs=inputs)
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
        outcome.skip = {"file": str(record.image), "reason": str(error)}
        return outcome
    try:
        mask = source.read_mask(record)
    except MaskError as error:
        outcome.skip = {"file": str(record.mask), "reason": str(error)}
        return outcome
    except Exception as error:  # a bug or an exotic file must not end a 30,000-image run
        outcome.skip = {"file": str(record.mask), "reason": f"unreadable mask: {type(error).__name__}: {error}"}
        return outcome

    outcome.notes.extend(mask.notes)
    if image.orientation != 1:
        mask, note = orient_mask(mask, image.orientation, (image.height, image.width), (height, width))
        outcome.notes.append(note)
    try:
        mask, note = fit_mask(mask, (height, width))
    except MaskError as error:
        outcome.skip = {"file": str(record.mask), "reason": str(error)}
        return outcome
    if note:
        outcome.notes.append(note)

    if downscaled:
        pixels, mask = downscale(pixels, mask, options.max_side)
        height, width = pixels.shape[:2]
        outcome.counts["downscaled_to_max_side"] = 1
    if copied:
        image_name = copy_image(output / IMAGES / sample_id, image)
    else:
        image_name = encode_image(output / IMAGES / sample_id, pixels, image.format)
    outcome.counts["copied_images" if copied else "encoded_images"] = 1
    write_mask(output / MASKS / f"{sample_id}.png", mask.pixels)
    if not mask.pixels.any():
        outcome.counts["empty_masks"] = 1

    outcome.row = {
        "id": sample_id,
        "image": f"{IMAGES}/{image_name}",
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
    }
    return outcome


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


def outputs_exist(output: Path, cached: dict[str, Any]) -> bool:
    row = cached.get("row")
    return row is None or ((output / row["image"]).is_file() and (output / row["mask"]).is_file())

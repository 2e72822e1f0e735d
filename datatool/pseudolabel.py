"""`datatool pseudolabel`: label photos with a teacher model and say how far each label can be trusted.

Input is either a folder of photos (searched recursively; any common image suffix; any file
name, spaces and brackets included; junk and other files reported) or a canonical set (a
folder with `manifest.jsonl`). The output is a canonical set:

- from a photo folder: `images/<id>` (EXIF orientation applied, at most `max_side` pixels on
  the longer side) and `masks/<id>.png` = the teacher's person probability x 255, rounded
  (`mask_kind: soft`, `mask_encoding: teacher probability x255`);
- from a canonical set: every input field is carried through, the ground truth stays the
  `mask`, the teacher's mask goes to `teacher_masks/<id>.png` (field `teacher_mask`), and
  `teacher_iou` says how well the two agree (label QA sorts by it).

Quality fields of every row. Let v be the stored 8-bit teacher mask and p = v / 255, so each
value can be recomputed from the PNG alone:

- `confidence` = mean over pixels of |2p - 1|, in [0, 1]: 1 when every pixel is a firm 0 or 1,
  0 when every pixel is 0.5. It is the mean distance from the decision boundary, rescaled.
- `uncertain_fraction` = share of pixels with 0.1 < p < 0.9 (26 <= v <= 229): the band where
  the teacher hesitates. Confidence averages; this counts, so a thin hesitant edge and a
  hesitant blob of the same mean are told apart.
- `person_fraction` = share of pixels with v >= 128 (p >= 0.5). An empty mask is confident
  (all zeros) but wrong for a photo of people, so it is caught by this field.
- `teacher_agreement` (ensembles only) = mean over all pairs of members of the IoU of their
  masks at p >= 0.5, computed on the members' maps at the resolution the teacher saw; a pair
  of two empty masks counts as agreement 1. Pixel-wise spread would be dominated by the easy
  background; IoU measures agreement on where the person is.
- `teacher_iou` (canonical input) = |T and G| / |T or G| with T = teacher mask >= 128 and
  G = ground-truth mask >= 128, at the ground truth's resolution (the teacher mask is resized
  to it if the sizes differ); 1 when both are empty.
- `needs_review` = any `review_reasons`; a reason is written for each threshold
  (`ReviewThresholds`) that the row fails, e.g. `"confidence 0.712 < 0.8"`.

Large photos: a JPEG whose longer side is at least twice `max_side` is decoded at 1/2, 1/4 or
1/8 scale by libjpeg itself (never below `max_side`), so an 8000x6000 photo costs a
2000x1500 buffer, not 144 MB; other formats are decoded whole and shrunk at once.

Re-runs: each photo's file is fingerprinted (size, mtime) in `.pseudolabel-state.jsonl`; with
the same teacher, name and `max_side`, an unchanged photo keeps its outputs and the teacher is
not run for it. Review flags are recomputed from the stored quality fields, so changing a
threshold re-labels nothing.
"""

import hashlib
import json
import operator
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import (
    IMAGES, MANIFEST, MASKS, REPORT, copy_image, encode_image, make_id, read_rows, sample_files, write_manifest, write_mask,
)  # fmt: skip
from datatool.images import ImageError, apply_orientation, oriented_size, read_image
from datatool.outputs import OutputFolder
from datatool.report import Report, printable
from datatool.reuse import Outcome, StateWriter, file_fingerprint, load_state, signature
from datatool.sources.base import walk_files
from portraitseg.teachers.base import Teacher, TeacherError
from portraitseg.imagefiles import IMAGE_SUFFIXES
from portraitseg.progress import progress
from portraitseg.scoring import PERSON_LEVEL, iou, mean_iou

ENGINE_VERSION = 1  # bump when the same input and teacher would give different output files
STATE = ".pseudolabel-state.jsonl"
TEACHER_MASKS = "teacher_masks"
SOURCE_FORMAT = "photos"  # `source_format` of rows labelled from a photo folder
MASK_ENCODING = "teacher probability x255"
UNCERTAIN_BAND = (0.1, 0.9)  # open interval of p that counts as uncertain
DECIMALS = 4  # manifest precision of the quality fields
FAILS = {"<": operator.lt, ">": operator.gt}  # how a value fails a minimum ("<") or a maximum (">")


@dataclass(frozen=True)
class ReviewThresholds:
    """When a label needs a person to look at it: each failed threshold is one of its `review_reasons`."""

    min_confidence: float = 0.85
    max_uncertain_fraction: float = 0.1
    min_person_fraction: float = 0.01  # a photo of people where the teacher finds (almost) nobody
    min_agreement: float = 0.8  # ensembles: mean pairwise IoU of the members
    min_teacher_iou: float = 0.7  # canonical input: the teacher contradicts the ground truth

    def reasons(self, row: dict[str, Any]) -> list[str]:
        """One reason per failed threshold; fields that the row does not have are not checked."""
        checks = (
            ("confidence", "<", self.min_confidence),
            ("uncertain_fraction", ">", self.max_uncertain_fraction),
            ("person_fraction", "<", self.min_person_fraction),
            ("teacher_agreement", "<", self.min_agreement),
            ("teacher_iou", "<", self.min_teacher_iou),
        )
        return [
            f"{name} {row[name]:g} {relation} {limit:g}"
            for name, relation, limit in checks
            if row.get(name) is not None and FAILS[relation](row[name], limit)
        ]


@dataclass(frozen=True)
class PseudolabelOptions:
    batch_size: int = 8  # images per teacher call
    # Photos are downscaled so that max(height, width) <= max_side; canonical sets keep their
    # images, only the teacher sees them downscaled (its mask is resized back).
    max_side: int | None = 1600
    review: ReviewThresholds = field(default_factory=ReviewThresholds)


@dataclass(frozen=True)
class InputPhoto:
    """One photo to label: where it is, and for canonical input the row it comes with."""

    key: str  # photo folder: path relative to the input (posix); canonical set: the sample id
    path: Path
    row: dict[str, Any] | None = None  # the canonical input row (None for a photo folder)


@dataclass
class LoadedPhoto:
    """A photo ready for the teacher; its output image is already written."""

    sample_id: str
    rgb: np.ndarray  # (h, w, 3) uint8 RGB, what the teacher sees
    output_hw: tuple[int, int]  # size of the mask to store (the output image's size)
    row: dict[str, Any]  # manifest row so far (paths, sizes, carried fields)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    ground_truth: np.ndarray | None = None  # canonical input: the (H, W) uint8 mask


@dataclass
class PseudolabelResult:
    output: Path
    photos: int
    labelled: int
    reused: int
    skipped: int
    needs_review: int
    report: dict[str, Any]


def pseudolabel(
    teacher: Teacher,
    input_dir: Path,
    output: Path,
    *,
    name: str | None = None,
    options: PseudolabelOptions | None = None,
) -> PseudolabelResult:
    """Label every photo under `input_dir` (a photo folder or a canonical set) into the canonical set `output`.

    Raises `ValueError` when the input is missing or is the output, and `TeacherError` when the
    teacher cannot run (a run-level failure, unlike a bad photo, which is reported and skipped).
    """
    options = options or PseudolabelOptions()
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {options.batch_size}")
    input_dir = Path(input_dir).expanduser().resolve()
    if not input_dir.is_dir():
        raise ValueError(f"input {input_dir} is not a folder of photos or a canonical set")
    # An output inside a photo folder is left out of its scan (users keep labels beside their photos).
    folder = OutputFolder(output, [input_dir], allow_inside=True)
    output = folder.path
    canonical = (input_dir / MANIFEST).is_file()
    name = name or input_dir.name
    report = Report(input_dir)
    photos = scan_canonical(input_dir, report) if canonical else scan_photos(input_dir, output, report)
    report.counts["photos"] = len(photos)

    # What, besides the input files, decides the output files (the review thresholds do not).
    run_signature = signature(
        engine=ENGINE_VERSION, teacher=teacher.label, name=name, root=str(input_dir),
        canonical=canonical, max_side=options.max_side or None,
    )  # fmt: skip
    previous = load_state(output / STATE, run_signature)
    extra_masks = (TEACHER_MASKS,) if canonical else ()
    ids = (photo.key if canonical else make_id(name, photo.key) for photo in photos)
    folder.begin((IMAGES, MASKS, *extra_masks), claims=(path for sample_id in ids for path in sample_files(sample_id, *extra_masks)))
    labeller = Labeller(teacher, name, input_dir, output, canonical, options)
    totals: Counter[str] = Counter()
    quality: dict[str, list[float]] = {key: [] for key in ("confidence", "uncertain_fraction", "teacher_agreement", "teacher_iou")}
    produced: set[str] = set()

    def manifest_rows(state: StateWriter) -> Iterator[dict[str, Any]]:
        outcomes = labeller.label_in_order(photos, previous)
        for photo, outcome, reused in progress(outcomes, total=len(photos), desc=f"pseudolabel {name}"):
            report.counts["reused" if reused else "labelled_now"] += 1
            for counter, value in outcome.counts.items():
                report.counts[counter] += value
            for note in outcome.notes:
                report.repair(photo.path, note, id=outcome.sample_id)
            if outcome.inputs is not None:
                state.write(asdict(outcome))
            if outcome.skip is not None:
                report.skip(outcome.skip["file"], outcome.skip["reason"])
                continue
            produced.update(outcome.row[field] for field in ("image", "mask", "teacher_mask") if field in outcome.row)
            row = with_review(outcome.row, options.review)
            totals["needs_review"] += row["needs_review"]
            for key, values in quality.items():
                if row.get(key) is not None:
                    values.append(row[key])
            yield row

    with StateWriter(output / STATE, run_signature) as state:
        labelled = write_manifest(output, manifest_rows(state))
    report.counts["labelled"] = labelled
    report.counts["needs_review"] = totals["needs_review"]
    report.counts["removed_stale_files"] = folder.finish(produced)
    header = {
        "stage": "pseudolabel",
        "version": __version__,
        "teacher": teacher.label,
        "input": str(input_dir),
        "input_kind": "canonical set" if canonical else "photo folder",
        "output": str(output.resolve()),
        "name": name,
        "options": {"batch_size": options.batch_size, "max_side": options.max_side, "review": asdict(options.review)},
        "teacher_seconds": round(labeller.teacher_seconds, 3),
        "teacher_images_per_second": round(labeller.teacher_images / labeller.teacher_seconds, 2) if labeller.teacher_seconds else None,
        "mean": {key: round(float(np.mean(values)), DECIMALS) if values else None for key, values in quality.items()},
        "definitions": FIELD_DEFINITIONS,
    }
    summary = report.write(output / REPORT, **header)
    return PseudolabelResult(
        output=output,
        photos=len(photos),
        labelled=labelled,
        reused=report.counts["reused"],
        skipped=len(report.skipped),
        needs_review=totals["needs_review"],
        report=summary,
    )


FIELD_DEFINITIONS = {
    "confidence": "mean over pixels of |2p - 1|, p = stored mask value / 255",
    "uncertain_fraction": "share of pixels with 0.1 < p < 0.9",
    "person_fraction": "share of pixels with stored value >= 128 (p >= 0.5)",
    "teacher_agreement": "ensembles: mean pairwise IoU of the members' masks at p >= 0.5 (both empty = 1)",
    "teacher_iou": "canonical input: IoU of teacher mask >= 128 and ground truth >= 128 at the ground truth's size",
    "needs_review": "true when review_reasons is not empty (thresholds under options.review)",
}


# -- scanning ------------------------------------------------------------------------------------


def scan_photos(root: Path, output: Path, report: Report) -> list[InputPhoto]:
    """Every image file under `root`, sorted; junk and non-images reported; the output folder excluded."""
    output = output.resolve()
    photos = []
    for path in walk_files(root, report, IMAGE_SUFFIXES):
        if path.resolve().is_relative_to(output):
            continue  # an output folder inside the input must not be labelled on the next run
        photos.append(InputPhoto(key=printable(path.relative_to(root).as_posix()), path=path))
    return photos


def scan_canonical(root: Path, report: Report) -> list[InputPhoto]:
    """The usable rows of a canonical set; bad lines and repeated ids are reported (`read_rows`)."""
    return [InputPhoto(key=row["id"], path=root / row["image"], row=row) for row in read_rows(root, report)]


# -- labelling -----------------------------------------------------------------------------------


class Labeller:
    """Runs the teacher over photos in batches and turns its maps into files and manifest rows."""

    def __init__(self, teacher: Teacher, name: str, root: Path, output: Path, canonical: bool, options: PseudolabelOptions):
        self.teacher = teacher
        self.name = name
        self.root = root
        self.output = output
        self.canonical = canonical
        self.options = options
        self.ensemble = callable(getattr(teacher, "predict_members", None))
        self.teacher_seconds = 0.0
        self.teacher_images = 0

    def label_in_order(
        self, photos: list[InputPhoto], previous: dict[str, dict[str, Any]]
    ) -> Iterator[tuple[InputPhoto, Outcome, bool]]:
        """Yield `(photo, outcome, reused)` in input order; decoded photos go to the teacher in full batches.

        A photo waits (with those before it) only while a batch is being filled, so memory is
        bounded by `batch_size` decoded photos and the progress bar moves with every batch.
        """
        waiting: list[tuple[InputPhoto, Outcome, bool]] = []
        batch: list[tuple[LoadedPhoto, Outcome]] = []
        for photo in photos:
            sample_id = photo.key if self.canonical else make_id(self.name, photo.key)
            inputs = self.fingerprint(photo)
            cached = previous.get(sample_id)
            if cached is not None and inputs is not None and cached["inputs"] == inputs and self.outputs_exist(cached):
                waiting.append((photo, Outcome(**cached), True))
            else:
                outcome = Outcome(sample_id=sample_id, inputs=inputs)
                waiting.append((photo, outcome, False))
                try:
                    batch.append((self.load(photo, sample_id), outcome))
                except ImageError as error:
                    outcome.skip = {"file": str(photo.path), "reason": str(error)}
                except GroundTruthError as error:
                    outcome.skip = {"file": str(error.file), "reason": str(error)}
            if len(batch) == self.options.batch_size:
                self.label_batch(batch)
                batch = []
            if not batch:
                yield from waiting
                waiting = []
        if batch:
            self.label_batch(batch)
        yield from waiting

    def label_batch(self, batch: list[tuple[LoadedPhoto, Outcome]]) -> None:
        """Run the teacher once on a batch of decoded photos; fill in their outcomes."""
        probabilities, members = self.predict([item.rgb for item, _ in batch])
        for index, (item, outcome) in enumerate(batch):
            outcome.row = self.finish(item, probabilities[index], members[index] if members else None)
            outcome.notes, outcome.counts = item.notes, item.counts

    def predict(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]] | None]:
        """The teacher's maps, and for an ensemble each member's; checked against the contract."""
        started = time.perf_counter()
        members = None
        if self.ensemble:
            # predict = mean of the members by contract; asking for the members once and
            # averaging here avoids running every member twice.
            members = self.teacher.predict_members(images)
            probabilities = [np.mean(np.stack(list(maps.values())), axis=0) for maps in members]
        else:
            probabilities = self.teacher.predict(images)
        self.teacher_seconds += time.perf_counter() - started
        self.teacher_images += len(images)
        if len(probabilities) != len(images):
            raise TeacherError(f"teacher {self.teacher.label} returned {len(probabilities)} maps for {len(images)} images")
        for image, probability in zip(images, probabilities, strict=True):
            if probability.shape != image.shape[:2]:
                raise TeacherError(
                    f"teacher {self.teacher.label} returned a {probability.shape} map for a {image.shape[:2]} image"
                )
        return probabilities, members

    # -- loading ---------------------------------------------------------------------------------

    def load(self, photo: InputPhoto, sample_id: str) -> LoadedPhoto:
        return self.load_canonical(photo) if self.canonical else self.load_photo(photo, sample_id)

    def load_photo(self, photo: InputPhoto, sample_id: str) -> LoadedPhoto:
        """Decode a photo (bounded in size), write it to `images/`; raise `ImageError` if it is unusable."""
        image = read_image(photo.path)
        height, width = oriented_size(image.height, image.width, image.orientation)
        max_side = self.options.max_side
        downscaled = bool(max_side) and max(height, width) > max_side
        notes: list[str] = []
        counts: dict[str, int] = {}
        if image.copyable and not downscaled:
            image_name = copy_image(self.output / IMAGES / sample_id, image)
            bgr = image.pixels
            counts["copied_images"] = 1
        else:
            bgr, factor = decode_bounded(image, max_side if downscaled else None)
            notes.extend(image.notes if factor == 1 else [*image.header_notes, *conversion_notes(image.mode)])
            bgr = apply_orientation(bgr, image.orientation)
            if image.orientation != 1:
                notes.append(f"EXIF orientation {image.orientation} applied")
            if downscaled:
                bgr = shrink(bgr, max_side)
                counts["downscaled_to_max_side"] = 1
            if factor > 1:  # also without --max-side: a photo above the pixel limit
                counts["decoded_at_reduced_scale"] = 1
            if bgr.shape[:2] != (height, width):
                notes.append(f"downscaled from {width}x{height} to {bgr.shape[1]}x{bgr.shape[0]}")
            image_name = encode_image(self.output / IMAGES / sample_id, bgr, image.format)
            counts["encoded_images"] = 1
        del image  # the file's bytes and any full-size pixels are not needed any more
        out_height, out_width = bgr.shape[:2]
        row = {
            "id": sample_id,
            "image": f"{IMAGES}/{image_name}",
            "mask": f"{MASKS}/{sample_id}.png",
            "source": self.name,
            "source_format": SOURCE_FORMAT,
            "source_image": photo.key,
            "source_mask": None,
            "width": out_width,
            "height": out_height,
            "mask_kind": "soft",
            "mask_encoding": MASK_ENCODING,
            "group": f"{self.name}/{PurePosixPath(photo.key).with_suffix('')}",
            "official_split": None,
        }
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        return LoadedPhoto(sample_id, rgb, (out_height, out_width), row, notes, counts)

    def load_canonical(self, photo: InputPhoto) -> LoadedPhoto:
        """A canonical sample: image and ground truth copied as they are; the teacher sees it bounded in size."""
        row = dict(photo.row)
        sample_id = row["id"]
        image = read_image(photo.path)
        ground_truth_path = self.root / row["mask"]
        ground_truth = read_ground_truth(ground_truth_path)
        height, width = oriented_size(image.height, image.width, image.orientation)
        max_side = self.options.max_side
        downscaled = bool(max_side) and max(height, width) > max_side
        bgr, _ = decode_bounded(image, max_side if downscaled else None)
        bgr = apply_orientation(bgr, image.orientation)
        if downscaled:
            bgr = shrink(bgr, max_side)  # the teacher's map is resized back to the image's size
        image_name = copy_image(self.output / IMAGES / sample_id, image)
        del image
        mask_name = f"{sample_id}.png"
        shutil.copyfile(ground_truth_path, self.output / MASKS / mask_name)
        row.update(image=f"{IMAGES}/{image_name}", mask=f"{MASKS}/{mask_name}")
        row["teacher_mask"] = f"{TEACHER_MASKS}/{sample_id}.png"
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        return LoadedPhoto(sample_id, rgb, (height, width), row, counts={"copied_images": 1}, ground_truth=ground_truth)

    # -- results ---------------------------------------------------------------------------------

    def finish(self, item: LoadedPhoto, probability: np.ndarray, members: dict[str, np.ndarray] | None) -> dict[str, Any]:
        """Store the teacher's mask and return the row with the teacher's fields."""
        mask = to_mask(probability, item.output_hw)
        row = dict(item.row)
        row["teacher"] = self.teacher.label
        row.update(mask_quality(mask))
        if members is not None:
            row["teacher_agreement"] = round(mean_pairwise_iou(list(members.values())), DECIMALS)
        if self.canonical:
            write_mask(self.output / TEACHER_MASKS / f"{item.sample_id}.png", mask)
            row["teacher_iou"] = round(teacher_iou(mask, item.ground_truth), DECIMALS)
        else:
            write_mask(self.output / MASKS / f"{item.sample_id}.png", mask)
        return row

    def fingerprint(self, photo: InputPhoto) -> list | None:
        """(relative path, size, mtime_ns) of the photo (and ground truth); None when a file is missing."""
        paths = [photo.path] if photo.row is None else [photo.path, self.root / photo.row["mask"]]
        entries = file_fingerprint(paths, self.root)
        if entries is not None and photo.row is not None:  # a changed row (e.g. a new field) must reach the output too
            entries.append(hashlib.sha1(json.dumps(photo.row, sort_keys=True).encode()).hexdigest())
        return entries

    def outputs_exist(self, cached: dict[str, Any]) -> bool:
        row = cached.get("row")
        if row is None:
            return True
        files = [row["image"], row["mask"]] + ([row["teacher_mask"]] if "teacher_mask" in row else [])
        return all((self.output / name).is_file() for name in files)


class GroundTruthError(ValueError):
    """A canonical sample whose ground-truth mask cannot be read; skips the sample."""

    def __init__(self, file: Path, reason: str):
        super().__init__(reason)
        self.file = file


# -- pixels --------------------------------------------------------------------------------------


def decode_bounded(image, max_side: int | None) -> tuple[np.ndarray, int]:
    """(BGR pixels in stored orientation, scale divisor): a JPEG much larger than `max_side` is
    decoded at 1/2, 1/4 or 1/8 scale by libjpeg, never below `max_side` unless the pixel limit
    requires it; anything else whole (`DecodedImage.bounded`; `ImageError` when too large)."""
    return image.bounded(max_side)


def conversion_notes(mode: str) -> list[str]:
    """What a reduced-scale decode (always 8-bit BGR) converted, named as `read_image` names it."""
    if mode in ("L", "LA", "1", "I;16", "I"):
        return ["greyscale image converted to RGB"]
    if mode in ("CMYK", "YCCK"):
        return ["CMYK image converted to RGB"]
    return []  # a reduced decode is only ever a JPEG: 8-bit, without palette or alpha


def shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is `max_side` (area filter, as ingest does); never enlarge.

    A photo decoded at reduced scale for the pixel limit may already be smaller than `max_side`.
    """
    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def to_mask(probability: np.ndarray, output_hw: tuple[int, int]) -> np.ndarray:
    """Probability (h, w) in [0, 1] -> uint8 (H, W) = round(p x 255), resized bilinearly to `output_hw`."""
    values = np.nan_to_num(np.asarray(probability, np.float32), nan=0.0)
    mask = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    if mask.shape != tuple(output_hw):
        mask = cv2.resize(mask, (output_hw[1], output_hw[0]), interpolation=cv2.INTER_LINEAR)
    return mask


def mask_quality(mask: np.ndarray) -> dict[str, float]:
    """`confidence`, `uncertain_fraction` and `person_fraction` of a stored uint8 mask (see the module doc)."""
    values = mask.astype(np.int16)
    low, high = (round(bound * 255, 6) for bound in UNCERTAIN_BAND)
    return {
        "confidence": round(float(np.abs(2 * values - 255).mean() / 255), DECIMALS),
        "uncertain_fraction": round(float(((values > low) & (values < high)).mean()), DECIMALS),
        "person_fraction": round(float((mask >= PERSON_LEVEL).mean()), DECIMALS),
    }


def mean_pairwise_iou(maps: list[np.ndarray]) -> float:
    """Mean IoU at p >= 0.5 over all pairs of probability maps (1.0 for fewer than two maps)."""
    return mean_iou(iou(maps[i], maps[j]) for i in range(len(maps)) for j in range(i + 1, len(maps)))


def teacher_iou(mask: np.ndarray, ground_truth: np.ndarray) -> float:
    """IoU of teacher mask and ground truth, both at >= 128, at the ground truth's resolution."""
    if mask.shape != ground_truth.shape:
        shrinking = ground_truth.size < mask.size
        size = (ground_truth.shape[1], ground_truth.shape[0])
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return iou(mask, ground_truth)


def read_ground_truth(path: Path) -> np.ndarray:
    """A canonical mask: uint8, one channel; anything else is a `GroundTruthError`."""
    if not path.is_file():
        raise GroundTruthError(path, "ground-truth mask missing")
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
        raise GroundTruthError(path, "unreadable ground-truth mask: not a one-channel 8-bit image")
    return mask


def with_review(row: dict[str, Any], thresholds: ReviewThresholds) -> dict[str, Any]:
    reasons = thresholds.reasons(row)
    return {**row, "needs_review": bool(reasons), "review_reasons": reasons}


__all__ = ["PseudolabelOptions", "PseudolabelResult", "ReviewThresholds", "pseudolabel"]

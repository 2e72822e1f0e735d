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

import operator
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import IMAGES, MANIFEST, MASKS, REPORT, image_bytes, image_name, make_id, mask_bytes, read_rows, sample_files
from datatool.engine import Done, EngineOptions, Work, engine_header, run_stage
from datatool.images import ImageError, apply_orientation, oriented_size, read_image
from datatool.outputs import OutputFolder
from datatool.report import Report, printable
from datatool.reuse import Outcome, file_fingerprint, row_fingerprint, signature
from datatool.sources.base import walk_files
from portraitseg.teachers.base import Teacher, TeacherError
from portraitseg.imagefiles import IMAGE_SUFFIXES
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
    """A photo ready for the teacher, with its output image's bytes."""

    sample_id: str
    rgb: np.ndarray  # (h, w, 3) uint8 RGB, what the teacher sees
    output_hw: tuple[int, int]  # size of the mask to store (the output image's size)
    row: dict[str, Any]  # manifest row so far (paths, sizes, carried fields)
    files: dict[str, bytes]  # output files so far (the image; canonical input: the ground truth too)
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
    engine: EngineOptions | None = None,
) -> PseudolabelResult:
    """Label every photo under `input_dir` (a photo folder or a canonical set) into the canonical set `output`.

    Raises `ValueError` when the input is missing or is the output, and `TeacherError` when the
    teacher cannot run (a run-level failure, unlike a bad photo, which is reported and skipped).
    `engine` says where the teacher runs (default: in this process; `kind: ray`: an actor pool,
    each actor building the teacher from its spec once).
    """
    options = options or PseudolabelOptions()
    engine = engine or EngineOptions()
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {options.batch_size}")
    input_dir = Path(input_dir).expanduser().resolve()
    if not input_dir.is_dir():
        raise ValueError(f"input {input_dir} is not a folder of photos or a canonical set")
    # An output inside a photo folder is left out of its scan (users keep labels beside their photos).
    folder = OutputFolder(output, [input_dir], allow_inside=True)
    output = folder.path
    name = name or input_dir.name
    inputs = CanonicalSet(input_dir) if (input_dir / MANIFEST).is_file() else PhotoFolder(input_dir, name, output)
    report = Report(input_dir)
    works = inputs.scan(report)
    report.counts["photos"] = len(works)
    stage = PseudolabelStage(teacher, inputs, name, options)
    totals = run_stage(stage, folder, works, report, engine)
    report.counts["labelled"] = totals.written
    report.counts["needs_review"] = stage.needs_review
    header = {
        "stage": "pseudolabel",
        "version": __version__,
        "teacher": teacher.label,
        "input": str(input_dir),
        "input_kind": inputs.kind,
        "output": str(output.resolve()),
        "name": name,
        "options": {"batch_size": options.batch_size, "max_side": options.max_side, "review": asdict(options.review)},
        "teacher_seconds": round(totals.step_seconds, 3),
        "teacher_images_per_second": round(totals.stepped / totals.step_seconds, 2) if totals.step_seconds else None,
        "mean": {key: round(float(np.mean(values)), DECIMALS) if values else None for key, values in stage.quality.items()},
        "definitions": FIELD_DEFINITIONS,
        "engine": engine_header(engine, totals),
    }
    summary = report.write(output / REPORT, **header)
    return PseudolabelResult(
        output=output,
        photos=len(works),
        labelled=totals.written,
        reused=report.counts["reused"],
        skipped=len(report.skipped),
        needs_review=stage.needs_review,
        report=summary,
    )


class PseudolabelStage:
    """What pseudolabel tells the engine (`datatool.engine.Stage`)."""

    state_file = STATE
    processed_counter = "labelled_now"
    manifest = True

    def __init__(self, teacher: Teacher, inputs: "PhotoFolder | CanonicalSet", name: str, options: PseudolabelOptions):
        self.teacher = teacher
        self.inputs = inputs
        self.options = options
        self.label = f"pseudolabel {name}"
        self.batch_size = options.batch_size
        self.folders = (IMAGES, MASKS, *inputs.extra_folders)
        # What, besides the input files, decides the output files (the review thresholds do not).
        self.signature = signature(
            engine=ENGINE_VERSION, teacher=teacher.label, name=name, root=str(inputs.root),
            canonical=inputs.extra_folders != (), max_side=options.max_side or None,
        )  # fmt: skip
        self.needs_review = 0
        self.quality: dict[str, list[float]] = {key: [] for key in ("confidence", "uncertain_fraction", "teacher_agreement", "teacher_iou")}

    def claims(self, work: Work) -> tuple[str, ...]:
        return sample_files(work.sample_id, *self.inputs.extra_folders)

    def step_factory(self):
        return partial(Labeller, self.teacher, self.inputs, self.options)

    def note(self, report: Report, work: Work, outcome: Outcome, note: str) -> None:
        report.repair(work.file, note, id=outcome.sample_id)

    def accept(self, work: Work, row: dict[str, Any]) -> dict[str, Any]:
        row = with_review(row, self.options.review)
        self.needs_review += row["needs_review"]
        for key, values in self.quality.items():
            if row.get(key) is not None:
                values.append(row[key])
        return row


FIELD_DEFINITIONS = {
    "confidence": "mean over pixels of |2p - 1|, p = stored mask value / 255",
    "uncertain_fraction": "share of pixels with 0.1 < p < 0.9",
    "person_fraction": "share of pixels with stored value >= 128 (p >= 0.5)",
    "teacher_agreement": "ensembles: mean pairwise IoU of the members' masks at p >= 0.5 (both empty = 1)",
    "teacher_iou": "canonical input: IoU of teacher mask >= 128 and ground truth >= 128 at the ground truth's size",
    "needs_review": "true when review_reasons is not empty (thresholds under options.review)",
}


# -- the two input kinds ----------------------------------------------------------------------------


class PhotoFolder:
    """A folder of photos: each becomes `images/<id>` (bounded in size) and `masks/<id>.png`, the teacher's mask."""

    kind = "photo folder"
    extra_folders: tuple[str, ...] = ()

    def __init__(self, root: Path, name: str, output: Path):
        self.root = root
        self.name = name
        self.output = output

    def scan(self, report: Report) -> list[Work]:
        """Every image file under the root, sorted; junk and non-images reported; the output folder excluded."""
        works = []
        for path in walk_files(self.root, report, IMAGE_SUFFIXES):
            if path.resolve().is_relative_to(self.output):
                continue  # an output folder inside the input must not be labelled on the next run
            photo = InputPhoto(key=printable(path.relative_to(self.root).as_posix()), path=path)
            works.append(Work(make_id(self.name, photo.key), file_fingerprint([path], self.root), photo, str(path)))
        return works

    def load(self, photo: InputPhoto, sample_id: str, max_side: int | None) -> LoadedPhoto:
        """Decode a photo (bounded in size) and encode its output image; raise `ImageError` if it is unusable."""
        image = read_image(photo.path)
        height, width = oriented_size(image.height, image.width, image.orientation)
        downscaled = bool(max_side) and max(height, width) > max_side
        notes: list[str] = []
        counts: dict[str, int] = {}
        image_file = f"{IMAGES}/{image_name(sample_id, image.format)}"
        if image.copyable and not downscaled:
            files = {image_file: image.data}
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
            files = {image_file: image_bytes(bgr, Path(image_file).suffix)}
            counts["encoded_images"] = 1
        del image  # the file's bytes and any full-size pixels are not needed any more
        out_height, out_width = bgr.shape[:2]
        row = {
            "id": sample_id,
            "image": image_file,
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
        return LoadedPhoto(sample_id, rgb, (out_height, out_width), row, files, notes, counts)

    def store(self, item: LoadedPhoto, mask: np.ndarray, row: dict[str, Any]) -> None:
        """The teacher's mask is the sample's mask."""
        item.files[row["mask"]] = mask_bytes(mask)


class CanonicalSet:
    """A canonical set: every field carried through, the ground truth stays the `mask`, the teacher's
    mask goes to `teacher_masks/<id>.png` with `teacher_iou`, its agreement with the ground truth."""

    kind = "canonical set"
    extra_folders = (TEACHER_MASKS,)

    def __init__(self, root: Path):
        self.root = root

    def scan(self, report: Report) -> list[Work]:
        """The usable rows; bad lines and repeated ids are reported (`read_rows`)."""
        works = []
        for row in read_rows(self.root, report):
            photo = InputPhoto(key=row["id"], path=self.root / row["image"], row=row)
            fingerprint = row_fingerprint([photo.path, self.root / row["mask"]], self.root, row)
            works.append(Work(row["id"], fingerprint, photo, str(photo.path)))
        return works

    def load(self, photo: InputPhoto, sample_id: str, max_side: int | None) -> LoadedPhoto:
        """Image and ground truth copied as they are; the teacher sees the image bounded in size."""
        row = dict(photo.row)
        image = read_image(photo.path)
        ground_truth_path = self.root / row["mask"]
        ground_truth = read_ground_truth(ground_truth_path)
        height, width = oriented_size(image.height, image.width, image.orientation)
        downscaled = bool(max_side) and max(height, width) > max_side
        bgr, _ = decode_bounded(image, max_side if downscaled else None)
        bgr = apply_orientation(bgr, image.orientation)
        if downscaled:
            bgr = shrink(bgr, max_side)  # the teacher's map is resized back to the image's size
        image_file = f"{IMAGES}/{image_name(sample_id, image.format)}"
        files = {image_file: image.data, f"{MASKS}/{sample_id}.png": ground_truth_path.read_bytes()}
        del image
        row.update(image=image_file, mask=f"{MASKS}/{sample_id}.png", teacher_mask=f"{TEACHER_MASKS}/{sample_id}.png")
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        return LoadedPhoto(sample_id, rgb, (height, width), row, files, counts={"copied_images": 1}, ground_truth=ground_truth)

    def store(self, item: LoadedPhoto, mask: np.ndarray, row: dict[str, Any]) -> None:
        """The teacher's mask goes beside the ground truth, with their agreement."""
        item.files[row["teacher_mask"]] = mask_bytes(mask)
        row["teacher_iou"] = round(teacher_iou(mask, item.ground_truth), DECIMALS)


# -- labelling -----------------------------------------------------------------------------------


class Labeller:
    """The step: decodes a batch of photos, runs the teacher once on them, and turns its maps into
    file bytes and manifest rows. Built once per worker (on Ray, the teacher is built from its spec)."""

    def __init__(self, teacher: Teacher, inputs: PhotoFolder | CanonicalSet, options: PseudolabelOptions):
        self.teacher = teacher
        self.inputs = inputs
        self.options = options
        self.ensemble = callable(getattr(teacher, "predict_members", None))

    def __call__(self, works: list[Work]) -> list[Done]:
        done = [Done(Outcome(sample_id=work.sample_id, inputs=work.inputs)) for work in works]
        loaded: list[tuple[LoadedPhoto, Done]] = []
        for work, result in zip(works, done, strict=True):
            try:
                loaded.append((self.inputs.load(work.item, work.sample_id, self.options.max_side), result))
            except ImageError as error:
                result.outcome.skips = [{"file": str(work.item.path), "reason": str(error)}]
            except GroundTruthError as error:
                result.outcome.skips = [{"file": str(error.file), "reason": str(error)}]
        if loaded:
            started = time.perf_counter()
            probabilities, members = self.predict([item.rgb for item, _ in loaded])
            share = (time.perf_counter() - started) / len(loaded)
            for index, (item, result) in enumerate(loaded):
                result.outcome.rows = [self.finish(item, probabilities[index], members[index] if members else None)]
                result.outcome.notes, result.outcome.counts = item.notes, item.counts
                result.files, result.seconds = item.files, share
        return done

    def predict(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]] | None]:
        """The teacher's maps, and for an ensemble each member's; checked against the contract."""
        members = None
        if self.ensemble:
            # predict = mean of the members by contract; asking for the members once and
            # averaging here avoids running every member twice.
            members = self.teacher.predict_members(images)
            probabilities = [np.mean(np.stack(list(maps.values())), axis=0) for maps in members]
        else:
            probabilities = self.teacher.predict(images)
        if len(probabilities) != len(images):
            raise TeacherError(f"teacher {self.teacher.label} returned {len(probabilities)} maps for {len(images)} images")
        for image, probability in zip(images, probabilities, strict=True):
            if probability.shape != image.shape[:2]:
                raise TeacherError(
                    f"teacher {self.teacher.label} returned a {probability.shape} map for a {image.shape[:2]} image"
                )
        return probabilities, members

    def finish(self, item: LoadedPhoto, probability: np.ndarray, members: dict[str, np.ndarray] | None) -> dict[str, Any]:
        """Store the teacher's mask and return the row with the teacher's fields."""
        mask = to_mask(probability, item.output_hw)
        row = dict(item.row)
        row["teacher"] = self.teacher.label
        row.update(mask_quality(mask))
        if members is not None:
            row["teacher_agreement"] = round(mean_pairwise_iou(list(members.values())), DECIMALS)
        self.inputs.store(item, mask, row)
        return row


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

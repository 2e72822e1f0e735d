"""`datatool backgrounds`: a background library for `datatool synth`, cut from labelled photos.

Composites teach a student that people stand in front of anything, but only on the
backgrounds a user has; the few that ship with the demo (bricks, grass, a cat) look nothing
like the streets and rooms of real portraits, and a student trained on them takes clutter for
a person. Photos of people are full of the right backgrounds: this stage takes a canonical set
(ground-truth masks or a teacher's pseudo-labels) and writes, per photo,

- `<id>-filled.jpg`: the whole photo with the people painted out (OpenCV's Telea inpainting
  over the person mask, grown by a margin), when people cover less than
  `max_person_fraction` of it; the filled area is smooth, so the pasted person of a composite
  often covers it;
- `<id>-crop<k>.jpg`: up to `crops` square crops that hold no person pixel at all (after the
  margin), the largest first, overlapping each other by at most half their side.

Folders given with `include` (the backgrounds a user has) are hard-linked in beside them, so
the output is one folder for `datatool synth --backgrounds` and one DVC output.

Soft masks count as person from `person_level` (a low level: a pseudo-label's faint halo is
still somebody's hair). Photos are shrunk to `max_side` first, which is plenty for
backgrounds that synth scales to its composite size.

Leakage: backgrounds cut from validation or test photos would show the student the scenes it
is scored on. Cut them from photos that are not in the split at all (a folder of unlabelled
photos, pseudo-labelled) or from training photos only.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import MANIFEST, REPORT, image_bytes, read_rows
from datatool.engine import Done, EngineOptions, StageDefaults, Work, engine_header, run_stage
from datatool.images import ImageError, read_image
from datatool.outputs import OutputFolder
from datatool.report import Report
from datatool.reuse import Outcome, file_fingerprint, row_fingerprint, signature
from datatool.sources.base import walk_files
from portraitseg.imagefiles import IMAGE_SUFFIXES

FILLED = "filled"
CROP = "crop"
JPEG_QUALITY = 92  # what backgrounds have always been written at: another value changes every background file
STATE = ".backgrounds-state.jsonl"
ENGINE_VERSION = 1  # bump when the same photos and options would give other files


@dataclass
class BackgroundOptions:
    crops: int = 3  # person-free square crops per photo, at most
    min_crop: float = 0.4  # smallest crop side as a share of the photo's shorter side
    fill: bool = True  # also write the photo with its people painted out
    max_person_fraction: float = 0.5  # ... unless people (with the margin) cover more than this
    margin: float = 0.03  # grow the person mask by this share of the longer side
    person_level: int = 32  # mask value (0-255) from which a pixel counts as person
    max_side: int = 640  # shrink photos whose longer side exceeds this

    def check(self) -> None:
        if self.crops < 0:
            raise ValueError(f"crops must not be negative, got {self.crops}")
        if not 0.1 <= self.min_crop <= 1.0:
            raise ValueError(f"min_crop is a share of the shorter side in [0.1, 1], got {self.min_crop}")
        if not 0.0 < self.max_person_fraction < 1.0:
            raise ValueError(f"max_person_fraction must lie in (0, 1), got {self.max_person_fraction}")
        if not 0.0 <= self.margin <= 0.25:
            raise ValueError(f"margin must lie in [0, 0.25], got {self.margin}")
        if not 1 <= self.person_level <= 255:
            raise ValueError(f"person_level must lie in [1, 255], got {self.person_level}")
        if self.max_side < 64:
            raise ValueError(f"max_side must be at least 64, got {self.max_side}")
        if self.crops == 0 and not self.fill:
            raise ValueError("nothing to write: crops is 0 and fill is off")


@dataclass
class BackgroundsResult:
    output: Path
    photos: int
    backgrounds: int  # cut from the photos
    included: int  # linked from the --include folders
    skipped: int
    report: dict[str, Any]


def build_backgrounds(
    sets: Sequence[Path],
    output: Path,
    *,
    include: Sequence[Path] = (),
    options: BackgroundOptions | None = None,
    engine: EngineOptions | None = None,
) -> BackgroundsResult:
    """Write a background library to `output`: `<set name>/` with the backgrounds cut from each canonical
    set's photos, and `<folder name>/` with the images of each `include` folder (hard-linked).

    One folder for `datatool synth --backgrounds`, and one DVC output. Runs on `datatool.engine`
    (a work item per photo and per included image; a re-run reuses the unchanged ones). Raises
    `ValueError` for a missing input, clashing names or bad options; a photo that cannot be read,
    or that has no person-free area, is reported and gives no background. Files of an earlier run
    that are no longer produced are removed.
    """
    options = options or BackgroundOptions()
    options.check()
    engine = engine or EngineOptions()
    sets = [Path(path).expanduser().resolve() for path in sets]
    include = [Path(path).expanduser().resolve() for path in include]
    if not sets and not include:
        raise ValueError("nothing to do: give at least one --input set or --include folder")
    for set_dir in sets:
        if not (set_dir / MANIFEST).is_file():
            raise ValueError(f"input {set_dir} is not a canonical set (no {MANIFEST}); run datatool ingest or pseudolabel first")
    for folder in include:
        if not folder.is_dir():
            raise ValueError(f"--include {folder} is not a folder")
    names = [path.name for path in [*sets, *include]]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"two inputs share the folder name {', '.join(clashes)}: their backgrounds would share one subfolder")
    library = OutputFolder(output, [*sets, *include])
    output = library.path
    report = Report()
    works = [
        PhotoRow(set_dir, row).work()
        for set_dir in sets
        for row in read_rows(set_dir, report, shown=f"{set_dir.name}/{MANIFEST}")
    ]
    photos = len(works)
    works += [IncludedImage(folder, path).work() for folder in include for path in walk_files(folder, report, IMAGE_SUFFIXES)]
    stage = BackgroundsStage([*sets, *include], options)
    totals = run_stage(stage, library, works, report, engine)
    report.counts["photos"] = photos
    for counter in ("backgrounds", "included"):  # reported even when 0
        report.counts.setdefault(counter, 0)
    header = {
        "stage": "backgrounds",
        "version": __version__,
        "inputs": [str(path) for path in sets],
        "include": [str(path) for path in include],
        "output": str(output),
        "options": asdict(options),
        "engine": engine_header(engine, totals),
    }
    summary = report.write(output / REPORT, **header)
    counts = report.counts
    return BackgroundsResult(output, photos, counts["backgrounds"], counts["included"], len(report.skipped), summary)


class BackgroundsStage(StageDefaults):
    """What backgrounds tells the engine (`datatool.engine.Stage`): a work item is a photo of a set
    (`PhotoRow`) or an image of an include folder (`IncludedImage`); the library has no manifest."""

    state_file = STATE
    processed_counter = "processed"
    manifest = False
    batch_size = 4
    label = "backgrounds"

    def __init__(self, inputs: list[Path], options: BackgroundOptions):
        self.options = options
        self.folders = tuple(path.name for path in inputs)
        self.signature = signature(engine=ENGINE_VERSION, inputs=[str(path) for path in inputs], options=asdict(options))

    def claims(self, work: Work) -> list[str]:
        return work.item.claims(self.options)

    def step_factory(self):
        return partial(BackgroundsStep, self.options)

    def note(self, report: Report, work: Work, outcome: Outcome, note: str) -> None:
        report.repair(work.file, note)


class BackgroundsStep:
    """The step: each work item makes itself (a photo cuts its backgrounds, an included image is checked)."""

    def __init__(self, options: BackgroundOptions):
        self.options = options

    def __call__(self, works: list[Work]) -> list[Done]:
        return [work.item.make(work, self.options) for work in works]


@dataclass(frozen=True)
class PhotoRow:
    """A labelled photo of a canonical set: its backgrounds are cut out (`cut_backgrounds`)."""

    set_dir: Path
    row: dict[str, Any]

    def work(self) -> Work:
        row, set_dir = self.row, self.set_dir
        fingerprint = row_fingerprint([set_dir / row["image"], set_dir / row["mask"]], set_dir, row)
        return Work(f"{set_dir.name}/{row['id']}", fingerprint, self, f"{set_dir.name}/{row['image']}")

    def claims(self, options: BackgroundOptions) -> list[str]:
        kinds = [FILLED] * options.fill + [f"{CROP}{index}" for index in range(options.crops)]
        return [self.name(kind) for kind in kinds]

    def name(self, kind: str) -> str:
        return f"{self.set_dir.name}/{self.row['id']}-{kind}.jpg"

    def make(self, work: Work, options: BackgroundOptions) -> Done:
        """The photo's backgrounds as JPEG bytes; problems are the outcome's skip."""
        done = Done(Outcome(sample_id=work.sample_id, inputs=work.inputs))
        row, set_dir, shown = self.row, self.set_dir, self.set_dir.name  # reports show <set name>/images/...
        image = cv2.imread(str(set_dir / row["image"]), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(set_dir / row["mask"]), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            done.outcome.skips.append({"file": f"{shown}/{row['image'] if image is None else row['mask']}", "reason": "unreadable image or mask", "id": row["id"]})
            return done
        if mask.shape != image.shape[:2]:
            size = f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}"
            done.outcome.skips.append({"file": f"{shown}/{row['mask']}", "reason": size, "id": row["id"]})
            return done
        pieces = cut_backgrounds(image, mask, options)
        if not pieces:
            reason = "no person-free area: people cover too much of the photo"
            done.outcome.skips.append({"file": f"{shown}/{row['image']}", "reason": reason, "id": row["id"]})
        for kind, pixels in pieces:
            done.files[self.name(kind)] = image_bytes(pixels, ".jpg", JPEG_QUALITY)
            counter = f"{kind.rstrip('0123456789')}_backgrounds"  # filled_ or crop_
            done.outcome.counts[counter] = done.outcome.counts.get(counter, 0) + 1
        done.outcome.counts["backgrounds"] = len(pieces)
        return done


@dataclass(frozen=True)
class IncludedImage:
    """An image of a user's background folder: checked, then linked into the library as it is."""

    folder: Path
    path: Path

    def work(self) -> Work:
        name = self.name()
        return Work(name, file_fingerprint([self.path], self.folder), self, str(self.path))

    def claims(self, options: BackgroundOptions) -> list[str]:
        return [self.name()]

    def name(self) -> str:
        return f"{self.folder.name}/{self.path.relative_to(self.folder).as_posix()}"

    def make(self, work: Work, options: BackgroundOptions) -> Done:
        done = Done(Outcome(sample_id=work.sample_id, inputs=work.inputs))
        try:
            read_image(self.path).validate()  # linked as it is: synth must not meet a corrupt file later
        except ImageError as error:
            done.outcome.skips.append({"file": str(self.path), "reason": f"background not usable: {error}"})
            return done
        done.links[self.name()] = str(self.path)
        done.outcome.counts["included"] = 1
        return done


def cut_backgrounds(image: np.ndarray, mask: np.ndarray, options: BackgroundOptions) -> list[tuple[str, np.ndarray]]:
    """(name, BGR pixels) of the filled photo and the person-free crops of one photo; [] when there are none."""
    scale = options.max_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    person = (mask >= options.person_level).astype(np.uint8)
    radius = round(options.margin * max(person.shape))
    if radius:
        person = cv2.dilate(person, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    pieces = []
    if options.fill and person.mean() <= options.max_person_fraction:
        pieces.append((FILLED, cv2.inpaint(image, person * 255, 7, cv2.INPAINT_TELEA) if person.any() else image))
    for index, (x, y, side) in enumerate(person_free_squares(person, options.crops, options.min_crop)):
        pieces.append((f"{CROP}{index}", np.ascontiguousarray(image[y : y + side, x : x + side])))
    return pieces


def person_free_squares(person: np.ndarray, count: int, min_share: float) -> list[tuple[int, int, int]]:
    """Up to `count` squares (x, y, side) with no person pixel, largest first, overlapping by at most half a side.

    Sides shrink from the photo's shorter side to `min_share` of it in steps of 15 %; positions
    are tried on a grid of a sixth of the side. A summed-area table makes each test O(1).
    """
    height, width = person.shape
    summed = cv2.integral(person)
    chosen: list[tuple[int, int, int]] = []
    share = 1.0
    while share >= min_share - 1e-9 and len(chosen) < count:
        side = int(share * min(height, width))
        step = max(4, side // 6)
        for y in range(0, height - side + 1, step):
            for x in range(0, width - side + 1, step):
                inside = summed[y + side, x + side] - summed[y, x + side] - summed[y + side, x] + summed[y, x]
                apart = all(abs(x - cx) >= min(side, cs) / 2 or abs(y - cy) >= min(side, cs) / 2 for cx, cy, cs in chosen)
                if inside == 0 and apart:
                    chosen.append((x, y, side))
                    if len(chosen) == count:
                        return chosen
        share -= 0.15
    return chosen

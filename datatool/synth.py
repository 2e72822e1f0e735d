"""`datatool synth`: paste the labelled people of a canonical set onto new backgrounds.

Most portrait datasets are shot against plain backgrounds, so models trained on them fail on
cluttered scenes. Each foreground sample becomes `per_foreground` composites:

1. alpha: the mask as it is where it is a matte (`mask_kind` alpha/soft); a binary mask is
   feathered after scaling (Gaussian, `feather_sigma` px), so no hard cut-out edge teaches the
   model that people have aliased outlines;
2. the person is cropped to its alpha's bounding box, scaled so it is `person_height` of the
   output height (never wider than the output), flipped at random and placed so that the
   whole bounding box lies inside the output;
3. the background (any image under a folder, chosen at random) is scaled to cover the output
   (up or down) and cropped at a random offset;
4. the person's colours are moved towards the background's (Reinhard et al. 2001, LAB mean and
   standard deviation transfer, weighted by alpha, blended with `harmonise_strength`);
5. composite = alpha * person + (1 - alpha) * background;
6. photometric augmentation (albumentations: brightness/contrast, hue/saturation, noise, blur)
   on the whole composite. It moves no pixel, so the mask stays exactly the pasted alpha.

The output is a canonical set: `masks/<id>.png` is the pasted alpha (uint8), `mask_kind` is
`alpha`, and each row carries `foreground_id`, `background_id` (the background's path relative
to the background folder), the foreground's `group` and `official_split` (so a composite
always lands in its foreground's split) and how it was pasted.

Determinism: every composite draws from its own generator seeded with (seed, foreground id,
k), and so does its augmentation; the result depends neither on the order nor on the other
samples.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from datatool import __version__
from datatool.canonical import IMAGES, MANIFEST, MASKS, REPORT, image_bytes, make_id, mask_bytes, read_rows
from datatool.engine import Done, EngineOptions, StageDefaults, Work, engine_header, run_stage
from datatool.images import ImageError, apply_orientation, read_image
from datatool.outputs import OutputFolder
from datatool.report import Report
from datatool.reuse import Outcome, file_fingerprint, row_fingerprint, signature
from datatool.sources.base import walk_files
from portraitseg.imagefiles import IMAGE_SUFFIXES

SOURCE_FORMAT = "synth"
STATE = ".synth-state.jsonl"
ENGINE_VERSION = 1  # bump when the same foregrounds, backgrounds and options would give other files
SOFT_KINDS = ("alpha", "soft")  # masks kept as they are; "binary" ones are feathered
BACKGROUND_CACHE = 8  # decoded backgrounds kept; a composite needs one, a folder may hold thousands
STD_RATIO_LIMITS = (0.5, 2.0)  # a flat background must not blow the person's contrast up (or away)


@dataclass(frozen=True)
class SynthOptions:
    per_foreground: int = 3  # composites per foreground sample
    size: tuple[int, int] = (512, 512)  # (height, width) of every composite
    seed: int = 0
    person_height: tuple[float, float] = (0.5, 0.95)  # bounding-box height as a share of the output's
    flip_probability: float = 0.5
    feather_sigma: float = 1.5  # px at output scale; binary masks only
    harmonise_strength: float = 0.5  # 0 = person's own colours, 1 = full LAB statistics transfer
    augment: bool = True  # photometric augmentation of the composite
    image_format: str = "jpg"  # "jpg" (quality 95) or "png" (lossless, bigger)

    def check(self) -> None:
        height, width = self.size
        if self.per_foreground < 1:
            raise ValueError(f"per_foreground must be at least 1, got {self.per_foreground}")
        if min(height, width) < 16:
            raise ValueError(f"size must be at least 16x16, got {height}x{width}")
        low, high = self.person_height
        if not 0 < low <= high <= 1:
            raise ValueError(f"person_height must satisfy 0 < low <= high <= 1, got {self.person_height}")
        if not 0 <= self.harmonise_strength <= 1:
            raise ValueError(f"harmonise_strength must lie in [0, 1], got {self.harmonise_strength}")
        if self.feather_sigma < 0:
            raise ValueError(f"feather_sigma must not be negative, got {self.feather_sigma}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be jpg or png, got {self.image_format!r}")


@dataclass
class SynthResult:
    output: Path
    foregrounds: int
    backgrounds: int
    composites: int
    skipped: int
    report: dict[str, Any]


class BackgroundError(ImageError):
    """A background image that cannot be decoded; `key` is its path as the report shows it."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


@dataclass(frozen=True)
class Background:
    key: str  # path relative to the background folder (posix): the manifest's background_id
    path: Path


@dataclass
class Foreground:
    """A person ready to paste: BGR pixels and float alpha in [0, 1], cropped to the person."""

    pixels: np.ndarray  # (h, w, 3) uint8 BGR
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    soft: bool  # the mask is a matte (kept) rather than binary (feathered)
    cut_at_bottom: bool = False  # the person reaches the photo's bottom edge (a bust, a half-body shot)


def synthesize(
    foregrounds: Path,
    backgrounds: Path | Sequence[Path],
    output: Path,
    *,
    name: str | None = None,
    options: SynthOptions | None = None,
    engine: EngineOptions | None = None,
) -> SynthResult:
    """Write `per_foreground` composites of every sample of the canonical set `foregrounds` to `output`.

    Runs on `datatool.engine` (one work item per foreground): a re-run with the same options and
    backgrounds reuses the composites of unchanged foregrounds. Raises `ValueError` when the
    foreground set or the background folder is missing, when the background folder holds no
    usable image, or when the options are invalid. A foreground that cannot be read is reported
    and skipped.
    """
    options = options or SynthOptions()
    options.check()
    engine = engine or EngineOptions()
    foregrounds, folders = resolve_inputs(foregrounds, backgrounds)
    folder = OutputFolder(output, [foregrounds, *folders])
    output = folder.path
    name = name or output.name
    report = Report(foregrounds)
    background_list = scan_background_folders(folders, report)
    where = ", ".join(str(folder) for folder in folders)
    rows = list(read_rows(foregrounds, report))
    report.counts["foregrounds"] = len(rows)
    report.counts["backgrounds"] = len(background_list)
    works = [
        Work(row["id"], row_fingerprint([foregrounds / row["image"], foregrounds / row["mask"]], foregrounds, row), row, row["image"])
        for row in rows
    ]
    stage = SynthStage(foregrounds, background_list, name, options)
    totals = run_stage(stage, folder, works, report, engine)
    header = {
        "stage": "synth",
        "version": __version__,
        "foregrounds": str(foregrounds),
        "backgrounds": where,
        "output": str(output),
        "name": name,
        "options": asdict(options),
        "composites_per_second": round(totals.written / report.seconds, 2) if report.seconds else None,
        "engine": engine_header(engine, totals),
    }
    summary = report.write(output / REPORT, **header)
    return SynthResult(output, len(rows), len(background_list), totals.written, len(report.skipped), summary)


class SynthStage(StageDefaults):
    """What synth tells the engine (`datatool.engine.Stage`): a work item is one foreground row,
    its outcome that person's composites."""

    state_file = STATE
    processed_counter = "processed"
    manifest = True
    folders = (IMAGES, MASKS)
    batch_size = 2  # foregrounds per step call (each makes per_foreground composites)

    def __init__(self, foregrounds: Path, backgrounds: list[Background], name: str, options: SynthOptions):
        self.foregrounds = foregrounds
        self.backgrounds = backgrounds
        self.name = name
        self.options = options
        self.label = f"synth {name}"
        # Every composite may draw any background, so a changed background library changes them all.
        self.signature = signature(
            engine=ENGINE_VERSION, name=name, root=str(foregrounds), options=asdict(options),
            backgrounds=[background.key for background in backgrounds],
            library=file_fingerprint([background.path for background in backgrounds], Path("/")),
        )  # fmt: skip

    def claims(self, work: Work) -> list[str]:
        ids = (composite_id(self.name, work.sample_id, k) for k in range(self.options.per_foreground))
        return [path for sample_id in ids for path in composite_files(sample_id, self.options.image_format)]

    def step_factory(self):
        return partial(SynthStep, self.foregrounds, self.backgrounds, self.name, self.options)


class SynthStep:
    """Makes the composites of a batch of foregrounds (built once per worker: its own background cache)."""

    def __init__(self, foregrounds: Path, backgrounds: list[Background], name: str, options: SynthOptions):
        self.foregrounds = foregrounds
        self.name = name
        self.options = options
        self.compositor = Compositor(backgrounds, options)

    def __call__(self, works: list[Work]) -> list[Done]:
        return [self.composites(work) for work in works]

    def composites(self, work: Work) -> Done:
        row, options = work.item, self.options
        done = Done(Outcome(sample_id=work.sample_id, inputs=work.inputs))
        outcome = done.outcome
        foreground = usable_foreground(self.foregrounds, row, outcome)
        if foreground is None:
            return done
        for k in range(options.per_foreground):
            sample_id = composite_id(self.name, row["id"], k)
            try:
                image, alpha, paste = self.compositor.compose(foreground, sample_seed(options.seed, row["id"], k))
            except BackgroundError as error:  # passed the scan's cheap check, fails the full decode
                outcome.skips.append({"file": error.key, "reason": f"background not usable: {error}", "id": sample_id})
                continue
            image_file, mask_file = composite_files(sample_id, options.image_format)
            done.files[image_file] = image_bytes(image, f".{options.image_format}")
            done.files[mask_file] = mask_bytes(alpha)
            outcome.counts["composites"] = outcome.counts.get("composites", 0) + 1
            outcome.rows.append({
                "id": sample_id,
                "image": image_file,
                "mask": mask_file,
                "source": self.name,
                "source_format": SOURCE_FORMAT,
                "width": options.size[1],
                "height": options.size[0],
                "mask_kind": "alpha",
                "mask_encoding": "pasted matte" if foreground.soft else f"pasted binary mask, feathered (sigma {options.feather_sigma:g} px)",
                "group": row["group"],
                "official_split": row.get("official_split"),
                "foreground_id": row["id"],
                "foreground_source": row["source"],
                "foreground_mask_kind": row["mask_kind"],
                "background_id": paste.pop("background_id"),
                "paste": paste,
            })  # fmt: skip
        return done


def composite_id(name: str, foreground_id: str, k: int) -> str:
    return make_id(name, f"{foreground_id}-s{k}")


def composite_files(sample_id: str, image_format: str) -> tuple[str, str]:
    return f"{IMAGES}/{sample_id}.{image_format}", f"{MASKS}/{sample_id}.png"


def sample_seed(seed: int, foreground_id: str, k: int) -> int:
    """A 63-bit seed per composite from (seed, foreground id, k): independent of order and of other samples."""
    digest = hashlib.sha256(f"{seed}/{foreground_id}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# -- inputs --------------------------------------------------------------------------------------


def resolve_inputs(foregrounds: Path, backgrounds: Path | Sequence[Path]) -> tuple[Path, list[Path]]:
    """The foreground set and background folders as absolute paths; `ValueError` when one is missing."""
    foregrounds = Path(foregrounds).expanduser().resolve()
    folders = [Path(path).expanduser().resolve() for path in ([backgrounds] if isinstance(backgrounds, str | Path) else backgrounds)]
    if not (foregrounds / MANIFEST).is_file():
        raise ValueError(f"foregrounds {foregrounds} is not a canonical set (no manifest.jsonl)")
    if not folders:
        raise ValueError("no background folder given")
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"backgrounds {folder} is not a folder")
    return foregrounds, folders


def scan_background_folders(folders: list[Path], report: Report) -> list[Background]:
    """Every readable image under the folders; `ValueError` when there is none (the reasons named)."""
    # With several folders a background's key starts with its folder's name, so keys stay unique.
    backgrounds = [
        background
        for folder in folders
        for background in scan_backgrounds(folder, report, prefix=f"{folder.name}/" if len(folders) > 1 else "")
    ]
    if not backgrounds:
        where = ", ".join(str(folder) for folder in folders)
        rejected = report.skipped + report.ignored
        if not rejected:
            raise ValueError(f"no background image under {where}: the folder is empty")
        examples = "; ".join(f"{entry['file']}: {entry['reason']}" for entry in rejected[:3])
        raise ValueError(f"no usable background image under {where} ({len(rejected)} files rejected, e.g. {examples})")
    return backgrounds


def scan_backgrounds(root: Path, report: Report, prefix: str = "") -> list[Background]:
    """Every readable image under `root` (recursive, sorted), keyed `prefix` + relative path; the rest reported."""
    backgrounds = []
    background_report = Report(root)  # paths relative to the background folder, then merged
    for path in walk_files(root, background_report, IMAGE_SUFFIXES):
        key = prefix + path.relative_to(root).as_posix()
        try:
            read_image(path).validate()
        except ImageError as error:
            background_report.skip(path, f"background not usable: {error}")
            continue
        backgrounds.append(Background(key, path))
    for entry in background_report.skipped:
        report.skip(f"backgrounds/{prefix}{entry['file']}", entry["reason"])
    for entry in background_report.ignored:
        report.ignore(f"backgrounds/{prefix}{entry['file']}", entry["reason"])
    report.counts.update({f"backgrounds_{key}": value for key, value in background_report.counts.items()})
    return backgrounds


def usable_foreground(root: Path, row: dict[str, Any], outcome: Outcome) -> Foreground | None:
    """The row's person (`load_foreground`), or None with the reason in `outcome.skips`: unreadable, or no person."""
    try:
        foreground = load_foreground(root, row)
    except (ValueError, OSError) as error:  # ImageError is a ValueError
        outcome.skips.append({"file": row["image"], "reason": f"foreground not usable: {error}", "id": row["id"]})
        return None
    if foreground is None:
        outcome.skips.append({"file": row["image"], "reason": "empty mask: no person to paste", "id": row["id"]})
    return foreground


def load_foreground(root: Path, row: dict[str, Any]) -> Foreground | None:
    """The sample's pixels and alpha cropped to the person's bounding box; None when the mask is empty."""
    image = read_image(root / row["image"])
    pixels = apply_orientation(image.pixels, image.orientation)
    mask = cv2.imread(str(root / row["mask"]), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ImageError(f"mask {row['mask']} could not be read")
    if mask.shape != pixels.shape[:2]:
        raise ImageError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {pixels.shape[1]}x{pixels.shape[0]}")
    box = bounding_box(mask)
    if box is None:
        return None
    top, bottom, left, right = box
    alpha = mask[top:bottom, left:right].astype(np.float32) / 255.0
    return Foreground(np.ascontiguousarray(pixels[top:bottom, left:right]), alpha, row["mask_kind"] in SOFT_KINDS, bottom == mask.shape[0])


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), exclusive ends, of the pixels > 0; None when there are none."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


# -- compositing ---------------------------------------------------------------------------------


class BackgroundCache:
    """The last `BACKGROUND_CACHE` decoded backgrounds (a worker draws from a library that may hold thousands)."""

    def __init__(self):
        self.decoded: OrderedDict[Path, np.ndarray] = OrderedDict()

    def pixels(self, background: Background) -> np.ndarray:
        """The background's BGR pixels, upright; `BackgroundError` when it does not decode. Do not modify them."""
        if background.path in self.decoded:
            self.decoded.move_to_end(background.path)
            return self.decoded[background.path]
        try:
            image = read_image(background.path)
            pixels = apply_orientation(image.pixels, image.orientation)
        except ImageError as error:
            raise BackgroundError(f"backgrounds/{background.key}", str(error)) from error
        self.decoded[background.path] = pixels
        if len(self.decoded) > BACKGROUND_CACHE:
            self.decoded.popitem(last=False)
        return pixels


class Compositor:
    """Makes one composite from a foreground and a per-sample seed; keeps a few decoded backgrounds."""

    def __init__(self, backgrounds: list[Background], options: SynthOptions):
        self.backgrounds = backgrounds
        self.options = options
        self.cache = BackgroundCache()
        self.augmentation = photometric_augmentation() if options.augment else None

    def background_pixels(self, background: Background) -> np.ndarray:
        return self.cache.pixels(background)

    def compose(self, foreground: Foreground, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(composite BGR uint8, alpha uint8, how it was pasted), both at the output size."""
        options = self.options
        height, width = options.size
        rng = np.random.default_rng(seed)
        background = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        canvas = cover_crop(self.background_pixels(background), options.size, rng)

        pixels, alpha, scale, flip = place_foreground(foreground, options, rng)
        ph, pw = alpha.shape
        y, x = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        region = canvas[y : y + ph, x : x + pw]
        if options.harmonise_strength > 0:
            pixels = harmonise(pixels, alpha, canvas, options.harmonise_strength)
        # Alpha is quantised first so that the stored mask is exactly the alpha that was blended.
        alpha_u8 = np.round(alpha * 255).astype(np.uint8)
        weight = (alpha_u8.astype(np.float32) / 255)[..., None]
        blended = weight * pixels.astype(np.float32) + (1 - weight) * region.astype(np.float32)
        canvas[y : y + ph, x : x + pw] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[y : y + ph, x : x + pw] = alpha_u8

        if self.augmentation is not None:
            self.augmentation.set_random_seed(int(rng.integers(2**31)))
            rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
            canvas = cv2.cvtColor(self.augmentation(image=rgb)["image"], cv2.COLOR_RGB2BGR)
        paste = {"background_id": background.key, "x": x, "y": y, "width": pw, "height": ph, "scale": round(scale, 4), "flip": flip}
        return canvas, mask, paste


def cover_crop(pixels: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Scale `pixels` (up or down) so they cover `size` = (height, width), then crop at a random offset."""
    height, width = size
    h, w = pixels.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation) if (new_h, new_w) != (h, w) else pixels
    top, left = int(rng.integers(0, new_h - height + 1)), int(rng.integers(0, new_w - width + 1))
    # A copy, always: the composite is drawn into it, and `pixels` is the cached background.
    return scaled[top : top + height, left : left + width].copy()


def place_foreground(foreground: Foreground, options: SynthOptions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(pixels, alpha, scale, flipped): the person scaled to a random height, flipped at random,
    feathered and cropped to its alpha's box (`scale_foreground`)."""
    target = rng.uniform(*options.person_height) * options.size[0]
    flip = bool(rng.random() < options.flip_probability)
    pixels, alpha, scale = scale_foreground(foreground, target, options.size, options.feather_sigma, flip)
    return pixels, alpha, scale, flip


def scale_foreground(
    foreground: Foreground, target_height: float, size: tuple[int, int], feather_sigma: float, flip: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """(pixels, alpha, scale): the person scaled so its box is `target_height` px high, flipped,
    feathered (binary masks) and cropped to its alpha's box.

    The patch is never larger than `size` = (height, width), so any offset inside the output
    keeps the whole person in frame.
    """
    height, width = size
    h, w = foreground.alpha.shape
    # Feathering widens the alpha by about 3 sigma on each side; room for it is kept.
    margin = 0 if foreground.soft else int(np.ceil(3 * feather_sigma))
    scale = min((target_height - 2 * margin) / h, (height - 2 * margin) / h, (width - 2 * margin) / w)
    scale = max(scale, 1 / min(h, w))  # at least one pixel
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    pixels = cv2.resize(foreground.pixels, (new_w, new_h), interpolation=interpolation)
    alpha = cv2.resize(foreground.alpha, (new_w, new_h), interpolation=interpolation)
    if flip:
        pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
    if margin:
        pixels = cv2.copyMakeBorder(np.ascontiguousarray(pixels), margin, margin, margin, margin, cv2.BORDER_REPLICATE)
        alpha = cv2.copyMakeBorder(np.ascontiguousarray(alpha), margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=0)
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather_sigma)
    alpha = np.clip(alpha, 0, 1)
    # Crop to what will be stored as non-zero, so "the person's box inside the frame" holds for the mask.
    box = bounding_box(np.round(alpha * 255).astype(np.uint8))
    if box is None:  # a person scaled below one visible pixel
        box = (0, alpha.shape[0], 0, alpha.shape[1])
    top, bottom, left, right = box
    return np.ascontiguousarray(pixels[top:bottom, left:right]), np.ascontiguousarray(alpha[top:bottom, left:right]), scale


def harmonise(pixels: np.ndarray, alpha: np.ndarray, background: np.ndarray, strength: float) -> np.ndarray:
    """Move the person's LAB mean and standard deviation towards the background's (Reinhard et al. 2001).

    Person statistics are weighted by alpha, so the pixels around the person that the crop
    includes do not count. The std ratio is limited (`STD_RATIO_LIMITS`): a flat sky would
    otherwise flatten the person into a silhouette.
    """
    total = float(alpha.sum())
    if total < 1:
        return pixels
    person = cv2.cvtColor(pixels.astype(np.float32) / 255, cv2.COLOR_BGR2LAB)  # (h, w, 3): L 0..100, a/b about -127..127
    # Every 4th pixel of the scene gives the same statistics at 1/16 of the conversion cost.
    scene = cv2.cvtColor(background[::4, ::4].astype(np.float32) / 255, cv2.COLOR_BGR2LAB)
    weight = alpha[..., None]
    person_mean = (person * weight).sum((0, 1)) / total
    person_std = np.sqrt((np.square(person - person_mean) * weight).sum((0, 1)) / total)
    scene_mean, scene_std = (statistic.ravel() for statistic in cv2.meanStdDev(scene))
    ratio = np.clip(scene_std / np.maximum(person_std, 1e-3), *STD_RATIO_LIMITS)
    # person + strength * ((person - person_mean) * ratio + scene_mean - person), as one affine map per channel
    gain = (1 - strength + strength * ratio).astype(np.float32)
    offset = (strength * (scene_mean - person_mean * ratio)).astype(np.float32)
    mixed = person * gain + offset
    mixed[..., 0] = np.clip(mixed[..., 0], 0, 100)  # L range of float LAB in OpenCV
    bgr = cv2.cvtColor(mixed, cv2.COLOR_LAB2BGR)
    return np.clip(np.round(bgr * 255), 0, 255).astype(np.uint8)


def photometric_augmentation() -> A.Compose:
    """Moderate colour, noise and blur changes on the whole composite; no geometry, so mask == alpha."""
    return A.Compose([
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.6),
        A.HueSaturationValue(hue_shift_limit=6, sat_shift_limit=15, val_shift_limit=0, p=0.4),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.3),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.2),
    ])  # fmt: skip

"""Demo sources: a tiny copy of every supported dataset layout, built offline from public-domain photos.

`datatool demo --output data/raw/demo` lets a newcomer (and CI) run the whole pipeline without
downloading a dataset. It writes, under the output folder:

- ``aisegment/``, ``kaggle-people/``, ``pfcn/``, ``supervisely/`` — a few samples in each
  source's exact on-disk layout (see docs/datasets.md), each with one realistic quirk that
  `datatool ingest` must report (AppleDouble junk, a split-file stem without its image, a PFCN
  mask whose image could not be downloaded, a Supervisely annotation without its image);
- ``backgrounds/`` — person-free photos, copied as they are, for compositing;
- ``photos/`` — the person photos themselves, unlabelled and unchanged: input of the
  pseudo-labelling stage (`datatool pseudolabel`);
- ``README.md`` (photos, licences, method, layouts, quirks) and ``demo.json`` (parameters).

Photos (shipped inside installed packages, read with `importlib.resources`, no network):
- ``skimage/data/astronaut.png`` — Eileen Collins, NASA; public domain (scikit-image notes).
- ``matplotlib/mpl-data/sample_data/grace_hopper.jpg`` — Commodore Grace M. Hopper, official
  U.S. Navy portrait (1984); a work of the U.S. federal government, public domain. matplotlib
  ships it without a note; the provenance is the U.S. Navy / Wikimedia Commons record.
- ``skimage/data/camera.png`` — "cameraman" (greyscale); CC0 by the photographer, Lav Varshney.

Masks are **demo-grade**, not ground truth. Method, per photo: OpenCV GrabCut
(`GC_INIT_WITH_MASK`, 5 iterations, OpenCV's RNG reseeded so the GMM initialisation repeats)
initialised from hand-chosen polygons in photo pixels — a generous *outline* (outside it is
sure background, inside probable person) plus a few *sure person* strokes (face, hair, torso)
and *sure background* strokes (the astronaut's helmet, the camera on the tripod) — then the
largest 8-connected component is kept and speckle holes (< 1/4096 of the image) are filled;
larger holes are real (background seen between arm and body) and stay. Hair edges and fine detail are only as
good as GrabCut makes them.

Each layout gets `samples_per_source` variants, cycling through the photos: a crop (and for
AISegment/PFCN the fixed 600x800 portrait size of those sets, else a free output size), a
horizontal flip on every second pass, and a mild brightness/saturation/hue change. The same
geometric transform is applied to photo and mask. Everything is deterministic for a seed: the
same seed gives the same bytes (OpenCV's JPEG/PNG encoders and zlib are deterministic; the
timestamp scipy writes into .mat headers is replaced by a fixed text). The output folder is
replaced as a whole on every run (DVC deletes its outputs anyway).
"""

import base64
import io
import json
import shutil
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io
from PIL import Image

from datatool import __version__

LAYOUTS = ("aisegment", "kaggle-people", "pfcn", "supervisely")  # folder name = `datatool ingest` SOURCE
BACKGROUND_DIR = "backgrounds"
PHOTOS_DIR = "photos"  # the person photos without masks, for `datatool pseudolabel`
MARKER = "demo.json"  # only a folder holding this file (or an empty one) is ever replaced

# -- how masks are made --------------------------------------------------------------------------
GRABCUT_ITERATIONS = 5
GRABCUT_RNG_SEED = 0  # GrabCut's GMM initialisation (k-means++) draws from OpenCV's global RNG
# Holes smaller than 1/4096 of the image (64 px in a 512x512 photo) are GrabCut or resizing noise
# and are filled; larger ones are real (background seen between arm and body) and stay.
SPECKLE_HOLE_FRACTION = 1 / 4096
FEATHER_SIGMA = 1.5  # px: width of the soft edge band of the AISegment-style matte

# -- how variants are made -----------------------------------------------------------------------
FIXED_SIZE = (600, 800)  # (width, height) of every AISegment and PFCN image
FIXED_SIZE_LAYOUTS = frozenset({"aisegment", "pfcn"})
FREE_LONG_SIDES = (320, 400, 480, 512, 640)  # Kaggle and Supervisely images come in many sizes
CROP_SCALE = (0.85, 1.0)  # crop side as a fraction of the largest crop that fits
HEAD_ROOM = 0.3  # the crop starts in the top 30% of the free rows: heads stay in the picture
BRIGHTNESS = (0.85, 1.15)
SATURATION = (0.85, 1.15)
HUE_SHIFT = 6  # at most, in OpenCV hue units (2 degrees each)

# -- how files are written -----------------------------------------------------------------------
JPEG_QUALITY = 92
PNG_COMPRESSION = 6
# scipy.io.savemat writes "Created on: <current time>" into the 116-byte text header of a .mat
# file; a fixed text keeps the demo byte-identical between runs.
MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, written by datatool demo"
MAT_HEADER_TEXT_BYTES = 116
# The 82-byte "._<name>" file macOS writes beside a file copied to a non-HFS volume: AppleDouble
# magic and version, filler, two entries (Finder info, empty resource fork), empty Finder info.
APPLEDOUBLE = (
    struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 2)
    + struct.pack(">III", 9, 50, 32)
    + struct.pack(">III", 2, 82, 0)
    + bytes(32)
)


class DemoError(Exception):
    """The demo cannot be built where asked (e.g. the output folder holds something else)."""


Points = tuple[tuple[int, int], ...]  # a polygon, (x, y) in photo pixels


@dataclass(frozen=True)
class PackagePhoto:
    """A photo shipped inside an installed Python package, with its provenance."""

    name: str
    package: str
    resource: str  # path inside the package
    credit: str
    licence: str

    def read_bytes(self) -> bytes:
        return resources.files(self.package).joinpath(self.resource).read_bytes()

    @property
    def file_name(self) -> str:
        return Path(self.resource).name


@dataclass(frozen=True)
class PersonPhoto(PackagePhoto):
    """A photo of one person, with the hand-chosen GrabCut initialisation and per-layout names."""

    outline: Points = ()  # outside: sure background; inside: probable person
    sure_person: tuple[Points, ...] = ()
    sure_background: tuple[Points, ...] = ()
    session: str = ""  # AISegment group folder (a shooting session)
    slug: str = ""  # Pexels-style name stem (Kaggle, Supervisely)
    held_out: bool = False  # official val (Kaggle) / test (PFCN) split: all variants of a photo together


PERSON_PHOTOS = (
    PersonPhoto(
        name="astronaut",
        package="skimage",
        resource="data/astronaut.png",
        credit="Eileen Collins, NASA (scikit-image `astronaut`, NASA Great Images database)",
        licence="public domain (no known copyright restrictions, per scikit-image)",
        outline=(
            (140, 40), (200, 6), (262, 8), (308, 50), (302, 150), (335, 200), (352, 240), (362, 300),
            (362, 345), (292, 368), (276, 430), (272, 511), (8, 511), (12, 330), (38, 230), (110, 188),
            (150, 165),
        ),
        sure_person=(
            ((190, 70), (262, 70), (262, 140), (190, 140)),  # face
            ((175, 60), (195, 35), (230, 24), (265, 33), (288, 60), (292, 85), (162, 85)),  # hair
            # The suit's neck ring is grey like the wall: without this stroke the head comes loose.
            ((125, 200), (150, 168), (190, 156), (240, 158), (270, 178), (292, 212), (294, 250), (265, 280),
             (200, 285), (145, 262), (125, 230)),
            ((60, 300), (250, 300), (250, 480), (60, 480)),  # torso
            ((282, 342), (322, 342), (322, 360), (282, 360)),  # name badge
            ((240, 335), (268, 335), (274, 505), (242, 505)),  # white straps, pale like the wall
        ),
        sure_background=(((318, 400), (460, 372), (492, 440), (492, 510), (308, 510)),),  # the helmet she holds
        session="1803151021",
        slug="woman-astronaut-smiling-portrait",
    ),
    PersonPhoto(
        name="grace_hopper",
        package="matplotlib",
        resource="mpl-data/sample_data/grace_hopper.jpg",
        credit="Commodore Grace M. Hopper, official U.S. Navy portrait, 1984 (matplotlib sample data)",
        licence="public domain (work of the U.S. federal government; matplotlib ships it without a note)",
        outline=(
            (175, 45), (200, 22), (260, 16), (322, 28), (358, 60), (372, 100), (372, 160), (374, 240),
            (372, 300), (350, 318), (420, 348), (482, 378), (511, 420), (511, 599), (0, 599), (0, 500),
            (8, 480), (16, 440), (34, 395), (58, 371), (100, 351), (140, 341), (175, 305), (150, 200),
            (150, 100),
        ),
        sure_person=(
            ((200, 150), (330, 150), (330, 300), (200, 300)),  # face
            ((190, 60), (330, 60), (330, 120), (190, 120)),  # cap
            ((335, 255), (352, 250), (360, 275), (352, 300), (335, 308)),  # grey hair, bluish like the wall
            ((100, 420), (450, 420), (450, 590), (100, 590)),  # uniform
        ),
        session="1803151107",
        slug="woman-navy-officer-portrait",
        held_out=True,
    ),
    PersonPhoto(
        name="camera",
        package="skimage",
        resource="data/camera.png",
        credit="'cameraman' by Lav Varshney (scikit-image `camera`)",
        licence="CC0 (no copyright restrictions, per scikit-image)",
        outline=(
            (0, 200), (60, 140), (140, 110), (160, 70), (210, 52), (265, 70), (280, 120), (340, 160),
            (345, 210), (315, 232), (315, 300), (205, 305), (190, 310), (142, 378), (150, 511), (0, 511),
        ),
        sure_person=(
            ((20, 250), (160, 250), (160, 330), (20, 330)),  # coat
            ((200, 120), (245, 120), (245, 185), (200, 185)),  # face
            ((200, 80), (250, 80), (250, 100), (200, 100)),  # hair
            ((176, 186), (188, 186), (188, 208), (176, 208)),  # white collar, else a false hole
            ((200, 200), (240, 200), (240, 230), (200, 230)),  # left glove
            ((305, 175), (325, 175), (325, 220), (305, 220)),  # right glove under the camera
            ((280, 220), (305, 220), (305, 280), (270, 290)),  # right sleeve
            ((40, 380), (120, 380), (120, 500), (40, 500)),  # legs
        ),
        sure_background=(
            ((258, 138), (322, 138), (322, 166), (258, 166)),  # the camera
            ((287, 200), (297, 200), (297, 511), (287, 511)),  # the tripod's pole
        ),
        session="1803151134",
        slug="man-photographer-camera-tripod",
    ),
)

BACKGROUNDS = (
    PackagePhoto("coffee", "skimage", "data/coffee.png", "Rachel Michetti, courtesy of Pikolo Espresso Bar", "CC0"),
    PackagePhoto("chelsea", "skimage", "data/chelsea.png", "Chelsea the cat, by Stefan van der Walt", "CC0"),
    PackagePhoto("rocket", "skimage", "data/rocket.jpg", "DSCOVR launch on Falcon 9, SpaceX", "public domain"),
    PackagePhoto("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "Hubble XDF, NASA", "public domain"),
    PackagePhoto("brick", "skimage", "data/brick.png", "brick wall texture, CC0Textures (Bricks25)", "CC0"),
    PackagePhoto("grass", "skimage", "data/grass.png", "grass texture by linolafett (DeviantArt)", "CC0"),
    PackagePhoto("gravel", "skimage", "data/gravel.png", "gravel texture, CC0Textures (Gravel04)", "CC0"),
)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """How one sample is derived from a photo: crop, resize, flip (photo and mask), colour (photo only)."""

    photo: str
    crop: tuple[int, int, int, int]  # x, y, width, height in photo pixels
    size: tuple[int, int]  # output (width, height)
    flip: bool
    brightness: float
    saturation: float
    hue_shift: int


@dataclass(frozen=True)
class DemoSample:
    """One sample as written in one layout, and the person mask its annotation must decode to."""

    layout: str
    image: Path
    annotation: Path  # matte PNG, mask PNG, .mat or annotation JSON
    variant: Variant
    mask: np.ndarray = field(repr=False, compare=False)  # (H, W) uint8 0/255 at the image's size


@dataclass(frozen=True)
class Quirk:
    """A deliberate defect of the kind real downloads have, which ingest must report."""

    layout: str
    file: Path
    what: str


@dataclass
class DemoResult:
    output: Path
    samples: list[DemoSample]
    quirks: list[Quirk]
    backgrounds: list[Path]
    photos: list[Path]
    seconds: float

    def inputs(self) -> dict[str, Path]:
        """Source name -> the folder to pass as `datatool ingest SOURCE --input`."""
        return {layout: self.output / layout for layout in LAYOUTS}

    def samples_of(self, layout: str) -> list[DemoSample]:
        return [sample for sample in self.samples if sample.layout == layout]


@dataclass(frozen=True)
class Rendered:
    """A variant's pixels: BGR image and 0/255 person mask of the same size."""

    variant: Variant
    image: np.ndarray
    mask: np.ndarray

    @property
    def photo(self) -> PersonPhoto:
        return photo_named(self.variant.photo)


# -- building ------------------------------------------------------------------------------------


def build_demo(output: Path, seed: int = 0, samples_per_source: int = 6) -> DemoResult:
    """Write the demo sources to `output` (replacing a previous demo there) and describe them."""
    if samples_per_source < 1:
        raise ValueError(f"samples_per_source must be at least 1, got {samples_per_source}")
    started = time.perf_counter()
    output = Path(output)
    check_replaceable(output)
    # Built beside the output and swapped in at the end: an interrupted run never leaves half a demo.
    staging = output.with_name(f".{output.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    photos = {photo.name: (decode_photo(photo), segment_person(photo)) for photo in PERSON_PHOTOS}
    samples: list[DemoSample] = []
    quirks: list[Quirk] = []
    for layout_index, layout in enumerate(LAYOUTS):
        # One more variant than samples: the layouts with an orphan quirk need its annotation.
        variants = plan_variants(layout, np.random.default_rng([seed, layout_index]), samples_per_source + 1, photos)
        rendered = [render_variant(*photos[variant.photo], variant) for variant in variants]
        written, found = LAYOUT_WRITERS[layout](staging / layout, rendered[:-1], rendered[-1])
        samples.extend(written)
        quirks.extend(found)
    backgrounds = copy_backgrounds(staging / BACKGROUND_DIR)
    unlabelled = copy_person_photos(staging / PHOTOS_DIR)
    (staging / "README.md").write_text(readme_text(seed, samples_per_source, quirks, staging))
    (staging / MARKER).write_text(json.dumps(marker(seed, samples_per_source), indent=2) + "\n")

    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return DemoResult(
        output=output,
        samples=[relocate(sample, staging, output) for sample in samples],
        quirks=[Quirk(quirk.layout, output / quirk.file.relative_to(staging), quirk.what) for quirk in quirks],
        backgrounds=[output / path.relative_to(staging) for path in backgrounds],
        photos=[output / path.relative_to(staging) for path in unlabelled],
        seconds=time.perf_counter() - started,
    )


def check_replaceable(output: Path) -> None:
    """Refuse to delete a folder that is not a previous demo: `--output ~` must not wipe a home."""
    if output.exists() and not output.is_dir():
        raise DemoError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / MARKER).is_file():
        raise DemoError(f"{output} is not empty and holds no {MARKER}: not replacing a folder the demo did not write")


def relocate(sample: DemoSample, staging: Path, output: Path) -> DemoSample:
    return DemoSample(
        sample.layout,
        output / sample.image.relative_to(staging),
        output / sample.annotation.relative_to(staging),
        sample.variant,
        sample.mask,
    )


def photo_named(name: str) -> PersonPhoto:
    return next(photo for photo in PERSON_PHOTOS if photo.name == name)


def decode_photo(photo: PackagePhoto) -> np.ndarray:
    """The photo as 3-channel BGR (the greyscale `camera` becomes three equal channels)."""
    pixels = cv2.imdecode(np.frombuffer(photo.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise DemoError(f"cannot decode {photo.package}/{photo.resource}")
    return pixels


# -- masks ---------------------------------------------------------------------------------------


def segment_person(photo: PersonPhoto) -> np.ndarray:
    """The demo-grade person mask (0/255) of a photo: GrabCut from the hand-chosen polygons."""
    image = decode_photo(photo)
    labels = np.full(image.shape[:2], cv2.GC_BGD, np.uint8)
    cv2.fillPoly(labels, [np.array(photo.outline, np.int32)], cv2.GC_PR_FGD)
    for stroke in photo.sure_person:
        cv2.fillPoly(labels, [np.array(stroke, np.int32)], cv2.GC_FGD)
    for stroke in photo.sure_background:
        cv2.fillPoly(labels, [np.array(stroke, np.int32)], cv2.GC_BGD)
    cv2.setRNGSeed(GRABCUT_RNG_SEED)
    background_model, person_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(image, labels, None, background_model, person_model, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    person = np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    return clean_mask(person)


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the largest region and fill speckle holes (after GrabCut, and again after resizing)."""
    return fill_holes(largest_component(mask), SPECKLE_HOLE_FRACTION * mask.size)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected region of a 0/255 mask (GrabCut leaves stray islands)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == largest, 255, 0).astype(np.uint8)


def hole_labels(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Label the background (4-connected) and list the regions that do not touch the border: holes."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.where(mask > 0, 0, 255).astype(np.uint8), connectivity=4
    )
    height, width = mask.shape
    holes = []
    for index in range(1, count):
        x, y, w, h = stats[index, :4]
        if x > 0 and y > 0 and x + w < width and y + h < height:
            holes.append(index)
    return labels, holes


def fill_holes(mask: np.ndarray, max_pixels: float | None = None) -> np.ndarray:
    """Fill holes of a 0/255 mask (all of them, or those smaller than `max_pixels`)."""
    labels, holes = hole_labels(mask)
    filled = mask.copy()
    for index in holes:
        region = labels == index
        if max_pixels is None or np.count_nonzero(region) < max_pixels:
            filled[region] = 255
    return filled


def feather(mask: np.ndarray) -> np.ndarray:
    """A soft matte from a 0/255 mask: blurred across the edge band, 0 or 255 elsewhere.

    Clamped to >= 128 on the mask and <= 127 off it, so that the matte's 50% level is exactly the
    mask: thresholding the matte gives back the same person pixels as every other layout.
    """
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), FEATHER_SIGMA)
    alpha = np.clip(np.round(blurred), 0, 255).astype(np.uint8)
    return np.where(mask > 0, np.maximum(alpha, 128), np.minimum(alpha, 127)).astype(np.uint8)


# -- variants ------------------------------------------------------------------------------------


def plan_variants(
    layout: str, rng: np.random.Generator, count: int, photos: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[Variant]:
    """`count` variants cycling through the photos; the second pass over them is flipped."""
    variants = []
    for index in range(count):
        photo = PERSON_PHOTOS[index % len(PERSON_PHOTOS)]
        image, mask = photos[photo.name]
        height, width = image.shape[:2]
        if layout in FIXED_SIZE_LAYOUTS:
            size = FIXED_SIZE
            aspect = FIXED_SIZE[0] / FIXED_SIZE[1]
            largest = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
            scale = rng.uniform(*CROP_SCALE)
            crop_w, crop_h = round(largest[0] * scale), round(largest[1] * scale)
        else:
            crop_w, crop_h = round(width * rng.uniform(*CROP_SCALE)), round(height * rng.uniform(*CROP_SCALE))
            long_side = int(rng.choice(FREE_LONG_SIDES))
            ratio = long_side / max(crop_w, crop_h)
            size = (round(crop_w * ratio), round(crop_h * ratio))
        # Centred on the person (with some jitter) so that crops do not cut the person off.
        centre = float(np.mean(np.nonzero(mask)[1]))
        x = round(np.clip(centre - crop_w / 2 + rng.uniform(-0.1, 0.1) * crop_w, 0, width - crop_w))
        y = round(rng.uniform(0, HEAD_ROOM) * (height - crop_h))
        variants.append(
            Variant(
                photo=photo.name,
                crop=(x, y, crop_w, crop_h),
                size=size,
                flip=(index // len(PERSON_PHOTOS)) % 2 == 1,
                brightness=round(float(rng.uniform(*BRIGHTNESS)), 3),
                saturation=round(float(rng.uniform(*SATURATION)), 3),
                hue_shift=int(rng.integers(-HUE_SHIFT, HUE_SHIFT + 1)),
            )
        )
    return variants


def render_variant(image: np.ndarray, mask: np.ndarray, variant: Variant) -> Rendered:
    """Apply a variant: the same crop, resize and flip to photo and mask; colour to the photo only."""
    x, y, w, h = variant.crop
    image, mask = image[y : y + h, x : x + w], mask[y : y + h, x : x + w]
    shrinking = variant.size[0] < w
    image = cv2.resize(image, variant.size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    # Resized smoothly and re-thresholded: nearest-neighbour would make staircase edges.
    mask = np.where(cv2.resize(mask, variant.size, interpolation=cv2.INTER_LINEAR) >= 128, 255, 0).astype(np.uint8)
    # Shrinking can pinch a thin part off or leave a one-pixel crack: not part of a person mask.
    mask = clean_mask(mask)
    if variant.flip:
        image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
    return Rendered(variant, adjust_colour(image, variant), mask)


def adjust_colour(image: np.ndarray, variant: Variant) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + variant.hue_shift, 180)  # OpenCV hue is 0..179
    hsv[..., 1] *= variant.saturation
    hsv[..., 2] *= variant.brightness
    return cv2.cvtColor(np.clip(np.round(hsv), 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


# -- file writing --------------------------------------------------------------------------------


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_encoded(path: Path, pixels: np.ndarray) -> Path:
    """Encode with OpenCV by the file's suffix (deterministic bytes for the same pixels)."""
    if path.suffix == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
    ok, encoded = cv2.imencode(path.suffix, pixels, params)
    if not ok:
        raise DemoError(f"could not encode {path.name}")
    return write_bytes(path, encoded.tobytes())


def mat_bytes(variables: dict[str, np.ndarray]) -> bytes:
    """A MATLAB 5 .mat file as scipy writes it, with a fixed header text instead of the time."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, do_compression=True)
    data = buffer.getvalue()
    return MAT_HEADER_TEXT.ljust(MAT_HEADER_TEXT_BYTES, b" ") + data[MAT_HEADER_TEXT_BYTES:]


def write_json(path: Path, value: Any) -> Path:
    return write_bytes(path, json.dumps(value).encode())  # one line, as Supervisely exports often are


# -- the four layouts ----------------------------------------------------------------------------


def write_aisegment(root: Path, rendered: list[Rendered], _spare: Rendered) -> tuple[list[DemoSample], list[Quirk]]:
    """`clip_img/<session>/clip_00000000/<session>-<8 digits>.jpg` + RGBA matte under `matting/`."""
    samples, numbers = [], Counter()
    for item in rendered:
        session = item.photo.session
        stem = f"{session}-{numbers[session]:08d}"
        numbers[session] += 1
        image = write_encoded(root / "clip_img" / session / "clip_00000000" / f"{stem}.jpg", item.image)
        alpha = feather(item.mask)
        cutout = np.where(alpha[..., None] > 0, item.image, 0).astype(np.uint8)  # RGB = the cut-out person
        matte_path = root / "matting" / session / "matting_00000000" / f"{stem}.png"
        matte = write_encoded(matte_path, np.dstack([cutout, alpha]))
        samples.append(DemoSample("aisegment", image, matte, item.variant, item.mask))
    # The real archive has both forms: `._<image>` beside images, `._matting_00000000` as a file
    # where a folder belongs.
    first = samples[0].image
    beside_image = write_bytes(first.with_name(f"._{first.name}"), APPLEDOUBLE)
    beside_folder = write_bytes(root / "matting" / first.parent.parent.name / "._matting_00000000", APPLEDOUBLE)
    quirks = [
        Quirk("aisegment", beside_image, "macOS AppleDouble file beside an image"),
        Quirk("aisegment", beside_folder, "macOS AppleDouble file next to the matting_00000000 folder"),
    ]
    return samples, quirks


def write_kaggle_people(root: Path, rendered: list[Rendered], spare: Rendered) -> tuple[list[DemoSample], list[Quirk]]:
    """`people_segmentation/images/<stem>.jpg`, `masks/<stem>.png` (0/1), `segmentation/{train,val}.txt`."""
    dataset = root / "people_segmentation"
    samples, splits = [], {"train": [], "val": []}
    for index, item in enumerate(rendered):
        stem = f"{item.photo.slug}-{10001 + index}"
        image = write_encoded(dataset / "images" / f"{stem}.jpg", item.image)
        mask = write_encoded(dataset / "masks" / f"{stem}.png", (item.mask // 255).astype(np.uint8))  # values 0/1
        splits["val" if item.photo.held_out else "train"].append(stem)
        samples.append(DemoSample("kaggle-people", image, mask, item.variant, item.mask))
    missing = f"{spare.photo.slug}-{10001 + len(rendered)}"
    split = "val" if spare.photo.held_out else "train"
    splits[split].append(missing)
    for name, stems in splits.items():
        write_bytes(dataset / "segmentation" / f"{name}.txt", "".join(f"{stem}\n" for stem in sorted(stems)).encode())
    quirk = Quirk(
        "kaggle-people", dataset / "segmentation" / f"{split}.txt", f"stem {missing} listed in {split}.txt has no image"
    )
    return samples, [quirk]


def write_pfcn(root: Path, rendered: list[Rendered], spare: Rendered) -> tuple[list[DemoSample], list[Quirk]]:
    """`images_data_crop/NNNNN.jpg`, `images_mask/NNNNN_mask.mat` and the split lists.

    Ids are not contiguous (like the release's 00001..02632). The spare variant gets a mask but
    no image: in the real set many image URLs are dead, so masks without images are normal.
    """
    lists: dict[str, list[int]] = {"trainlist": [], "testlist": []}

    def write_mask(index: int, item: Rendered) -> tuple[str, Path]:
        number = 1 + 3 * index
        lists["testlist" if item.photo.held_out else "trainlist"].append(number)
        mask = mat_bytes({"mask": (item.mask // 255).astype(np.uint8)})  # uint8 (800, 600), values 0/1
        return f"{number:05d}", write_bytes(root / "images_mask" / f"{number:05d}_mask.mat", mask)

    samples = []
    for index, item in enumerate(rendered):
        sample_id, mask = write_mask(index, item)
        image = write_encoded(root / "images_data_crop" / f"{sample_id}.jpg", item.image)
        samples.append(DemoSample("pfcn", image, mask, item.variant, item.mask))
    orphan_id, orphan = write_mask(len(rendered), spare)
    for name, numbers in lists.items():
        write_bytes(root / f"{name}.mat", mat_bytes({name: np.array(numbers, np.uint16).reshape(1, -1)}))
    return samples, [Quirk("pfcn", orphan, f"mask {orphan_id} has no image (its download failed)")]


SUPERVISELY_CLASSES = (
    {"title": "person_poly", "shape": "polygon", "color": "#E33B3B", "geometry_config": {}, "id": 1001, "hotkey": ""},
    {"title": "person_bmp", "shape": "bitmap", "color": "#3BE33B", "geometry_config": {}, "id": 1002, "hotkey": ""},
    {"title": "neutral", "shape": "polygon", "color": "#3B3BE3", "geometry_config": {}, "id": 1003, "hotkey": ""},
)  # fmt: skip
SUPERVISELY_EMPTY_TAG = {"name": "not-marked-people", "value_type": "none", "color": "#A0A0A0"}


def write_supervisely(root: Path, rendered: list[Rendered], spare: Rendered) -> tuple[list[DemoSample], list[Quirk]]:
    """`meta.json`, `ds1/img/<name>.png|.jpg`, `ds1/ann/<annotation>.json`.

    Alternates bitmaps and polygons, new (`<image name>.json`) and old (`<stem>.json`) annotation
    names with their JSON styles, and .png/.jpg images, so every combination a reader must handle
    occurs. The spare variant's annotation is written without its image.
    """
    meta = {"classes": list(SUPERVISELY_CLASSES), "tags": [SUPERVISELY_EMPTY_TAG], "projectType": "images"}
    write_json(root / "meta.json", meta)
    dataset = root / "ds1"

    def write_annotation(index: int, item: Rendered) -> tuple[str, Path]:
        geometry = "bitmap" if index % 2 == 0 else "polygon"
        new_style = (index // 2) % 2 == 0
        suffix = ".png" if (index + index // 2) % 2 == 0 else ".jpg"  # out of step with the other two
        image_name = f"{item.photo.slug}-{20001 + index}{suffix}"
        annotation_name = f"{image_name}.json" if new_style else f"{Path(image_name).stem}.json"
        annotation = supervisely_annotation(item.mask, geometry, new_style, image_name)
        return image_name, write_json(dataset / "ann" / annotation_name, annotation)

    samples = []
    for index, item in enumerate(rendered):
        image_name, annotation = write_annotation(index, item)
        image = write_encoded(dataset / "img" / image_name, item.image)
        samples.append(DemoSample("supervisely", image, annotation, item.variant, item.mask))
    _, orphan = write_annotation(len(rendered), spare)
    return samples, [Quirk("supervisely", orphan, f"annotation {orphan.name} has no image in ds1/img/")]


LAYOUT_WRITERS = {
    "aisegment": write_aisegment,
    "kaggle-people": write_kaggle_people,
    "pfcn": write_pfcn,
    "supervisely": write_supervisely,
}


# -- Supervisely geometry ------------------------------------------------------------------------


def supervisely_annotation(mask: np.ndarray, geometry: str, new_style: bool, image_name: str) -> dict[str, Any]:
    """An annotation in the current export style, or the old one (no `geometryType`, `name`, both keys)."""
    height, width = mask.shape
    objects = []
    if geometry == "bitmap":
        data, origin = encode_bitmap(mask)
        shapes = [("person_bmp", {"bitmap": {"data": data, "origin": origin}})]
    else:
        shapes = [("person_poly", {"points": rings}) for rings in mask_polygons(mask)]
    for number, (title, shape) in enumerate(shapes):
        if new_style:
            kind = "bitmap" if "bitmap" in shape else "polygon"
            class_id = next(entry["id"] for entry in SUPERVISELY_CLASSES if entry["title"] == title)
            objects.append(
                {"id": 5000 + number, "classId": class_id, "description": "", "geometryType": kind,
                 "labelerLogin": "demo", "tags": [], "classTitle": title, **shape}
            )  # fmt: skip
        else:
            # Old exports carry an empty `points` beside a bitmap.
            points = shape.get("points", {"exterior": [], "interior": []})
            objects.append({"description": "", "tags": [], "classTitle": title, **shape, "points": points})
    annotation = {"description": "", "tags": [], "size": {"height": height, "width": width}, "objects": objects}
    if not new_style:
        annotation = {"name": Path(image_name).stem, **annotation}
    return annotation


def encode_bitmap(mask: np.ndarray) -> tuple[str, list[int]]:
    """Supervisely's bitmap: base64(zlib(1-bit palette PNG, index 0 transparent)) of the bounding box.

    Returns the data string and the origin [x (column), y (row)] of the box's top-left corner.
    """
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    box = Image.fromarray((mask[y : y + h, x : x + w] > 0).astype(np.uint8), mode="P")
    box.putpalette([0, 0, 0, 255, 255, 255])  # two colours: PIL writes a 1-bit PNG
    buffer = io.BytesIO()
    box.save(buffer, format="PNG", transparency=0)
    return base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii"), [int(x), int(y)]


def mask_polygons(mask: np.ndarray) -> list[dict[str, list]]:
    """One `{exterior, interior}` per region; rasterising them (fillPoly) gives the mask back exactly.

    Exteriors are traced on the region's own border pixels, interiors on the *hole's* border
    pixels: a reader fills the exterior and clears each interior ring including its outline, so
    a ring traced on the person's pixels around the hole would erase a one-pixel band of person.
    """
    binary = (mask > 0).astype(np.uint8)
    exteriors, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    labels, holes = hole_labels(mask)
    hole_rings = []
    for index in holes:
        rings, _ = cv2.findContours((labels == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hole_rings.extend(rings)
    polygons = []
    for exterior in sorted(exteriors, key=lambda ring: tuple(ring[0, 0])):  # contour order is not meaningful
        inside = [ring for ring in hole_rings if cv2.pointPolygonTest(exterior, ring_point(ring), False) > 0]
        polygons.append({"exterior": exterior[:, 0].tolist(), "interior": [ring[:, 0].tolist() for ring in inside]})
    return polygons


def ring_point(ring: np.ndarray) -> tuple[float, float]:
    x, y = ring[0, 0]
    return float(x), float(y)


# -- backgrounds, README, marker -----------------------------------------------------------------


def copy_backgrounds(folder: Path) -> list[Path]:
    return [write_bytes(folder / photo.file_name, photo.read_bytes()) for photo in BACKGROUNDS]


def copy_person_photos(folder: Path) -> list[Path]:
    return [write_bytes(folder / photo.file_name, photo.read_bytes()) for photo in PERSON_PHOTOS]


def marker(seed: int, samples_per_source: int) -> dict[str, Any]:
    return {
        "generator": "datatool demo",
        "version": __version__,
        "seed": seed,
        "samples_per_source": samples_per_source,
        "layouts": list(LAYOUTS),
        "photos": [f"{photo.package}/{photo.resource}" for photo in PERSON_PHOTOS],
        "backgrounds": [f"{photo.package}/{photo.resource}" for photo in BACKGROUNDS],
    }


def readme_text(seed: int, samples_per_source: int, quirks: list[Quirk], root: Path) -> str:
    photo_lines = "\n".join(
        f"- `{photo.package}/{photo.resource}` — {photo.credit}; {photo.licence}." for photo in PERSON_PHOTOS
    )
    background_lines = "\n".join(
        f"  - `{BACKGROUND_DIR}/{photo.file_name}` — {photo.credit}; {photo.licence}." for photo in BACKGROUNDS
    )
    quirk_lines = "\n".join(f"- `{quirk.file.relative_to(root).as_posix()}` — {quirk.what}." for quirk in quirks)
    ingest_lines = "\n".join(
        f"    datatool ingest {layout} --input $DEMO/{layout} --output data/interim/demo-{layout}" for layout in LAYOUTS
    )
    return f"""# Demo sources (generated by `datatool demo`; do not edit)

Small copies of every dataset layout `datatool ingest` reads, made from public-domain photos
that ship inside installed Python packages, so the whole pipeline runs without a download.
Seed {seed}, {samples_per_source} samples per source. Rebuilding replaces this folder.

**The masks are demo-grade, not ground truth.** They were made by OpenCV GrabCut
({GRABCUT_ITERATIONS} iterations, initialised from hand-chosen polygons per photo: an outline, sure-person
strokes and sure-background strokes), keeping the largest connected region and filling holes
smaller than 1/{round(1 / SPECKLE_HOLE_FRACTION)} of the image. Hair and fine edges are rough. The AISegment mattes
are these masks feathered across the edge (Gaussian, sigma {FEATHER_SIGMA} px), not real alpha mattes. Do not
report accuracy measured on this data.

## Photos

{photo_lines}

Every sample is a variant of one of these photos (crop, output size, horizontal flip, mild
brightness/saturation/hue change; the same geometry applied to photo and mask). Variants of
one photo are near-duplicates: the official splits below keep each photo on one side
(`grace_hopper` is the Kaggle `val` / PFCN `test` photo), but a random split of the canonical
sets may not, since each source treats each file as its own photo.

## Layouts

- `aisegment/` — `clip_img/<session>/clip_00000000/<session>-<8 digits>.jpg` and
  `matting/<session>/matting_00000000/<session>-<8 digits>.png` (RGBA, alpha = matte), 600x800.
- `kaggle-people/people_segmentation/` — `images/<stem>.jpg`, `masks/<stem>.png` (values 0/1),
  `segmentation/train.txt`, `segmentation/val.txt`.
- `pfcn/` — `images_data_crop/NNNNN.jpg` (600x800), `images_mask/NNNNN_mask.mat` (variable
  `mask`, uint8 0/1, 800x600), `trainlist.mat`, `testlist.mat` (uint16 1xN, 1-based ids).
- `supervisely/` — `meta.json`, `ds1/img/<name>.png|.jpg`, `ds1/ann/<name>.png.json` (current
  exports) or `ds1/ann/<stem>.json` (old exports); `person_bmp` bitmaps and `person_poly`
  polygons (with holes where the mask has them).
- `{BACKGROUND_DIR}/` — person-free photos for compositing, copied unchanged:
{background_lines}
- `{PHOTOS_DIR}/` — the person photos above, copied unchanged and without masks: the input of
  `datatool pseudolabel`, which labels them with a teacher model.

## Deliberate quirks (ingest must report each)

{quirk_lines}

## Ingest

With `DEMO` set to this folder (e.g. `DEMO=data/raw/demo`):

{ingest_lines}
"""

"""`datatool synth-video`: short clips with a true mask for every frame, made from labelled people.

Per-frame models flicker on video, and no public set here has video with truth. Each foreground
sample of a canonical set becomes `clips_per_foreground` clips of `round(seconds * fps)` frames,
composited like `datatool synth` (the same foreground loading, scaling, feathering, cover-scaled
backgrounds and LAB harmonisation) but with known motion drawn once per clip (`ClipMotion`):

- the person walks a smooth path (three waypoints, smoothstep between them, always wholly in
  frame; one cut off by the photo's bottom edge stays on the frame's) and scales over time (a
  sinusoid of up to `scale_range`, e.g. +-15 %);
- the camera pans across a background larger than the frame (smoothstep from one offset to
  another) and shakes (a whole-pixel jitter of up to `shake_px` per frame);
- the lighting changes: the whole frame's gain and offset ramp to new values over part of the
  clip (the mask does not change);
- a brief partial occlusion: for a few frames an occluder (a shaded patch cut from another part
  of the background) sweeps across a band of the person; the mask is 0 where it covers the person.

Every frame's mask is exactly the alpha that was blended (uint8, quantised before blending), after
the occlusion. Rows carry `clip` (file-name safe), `frame` (0-based) and `fps`; the first frame of
a clip carries `motion`, the parameters drawn for the clip, and every frame `occluded_pixels`.

Determinism: a clip's motion and noise come from its own generator seeded with (seed, foreground
id, clip index), so a clip depends neither on the order nor on the other samples.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from datatool import __version__
from datatool.canonical import IMAGES, MASKS, REPORT, image_bytes, make_id, mask_bytes, read_rows
from datatool.engine import Done, EngineOptions, StageDefaults, Work, engine_header, run_stage
from datatool.outputs import OutputFolder
from datatool.report import Report
from datatool.reuse import Outcome, file_fingerprint, row_fingerprint, signature
from datatool.synth import (
    Background,
    BackgroundCache,
    BackgroundError,
    Foreground,
    composite_files,
    cover_crop,
    harmonise,
    resolve_inputs,
    sample_seed,
    scale_foreground,
    scan_background_folders,
    usable_foreground,
)

SOURCE_FORMAT = "synth-video"
STATE = ".synth-video-state.jsonl"
ENGINE_VERSION = 1  # bump when the same foregrounds, backgrounds and options would give other files
MIN_FRAMES = 4  # the occlusion needs a clean frame before it and room to sweep


@dataclass(frozen=True)
class SynthVideoOptions:
    clips_per_foreground: int = 1
    seconds: float = 2.0  # clip length
    fps: float = 15.0  # frames per second (stored on every row)
    size: tuple[int, int] = (256, 256)  # (height, width) of every frame
    seed: int = 0
    # The person's box height as a share of the frame's at the clip's mean scale; with the scale
    # swing on top it still fits (0.75 * 1.15 < 1).
    person_height: tuple[float, float] = (0.5, 0.75)
    scale_range: float = 0.15  # the person's size swings by up to this share over the clip
    flip_probability: float = 0.5
    feather_sigma: float = 1.5  # px at output scale; binary masks only
    harmonise_strength: float = 0.5  # 0 = person's own colours, 1 = full LAB statistics transfer
    pan: float = 0.3  # the background is this share wider than the frame; the camera pans across up to all of it
    shake_px: int = 2  # per-frame camera jitter, whole pixels
    lighting: float = 0.25  # the frame's gain ramps by up to this share (and its offset by up to 60x that, in grey levels)
    occlusion: bool = True  # a brief partial occlusion per clip
    noise: float = 2.0  # std of per-frame Gaussian sensor noise, grey levels (0 = none)
    image_format: str = "jpg"  # "jpg" (quality 95) or "png" (lossless, bigger)

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)

    def check(self) -> None:
        height, width = self.size
        if self.clips_per_foreground < 1:
            raise ValueError(f"clips_per_foreground must be at least 1, got {self.clips_per_foreground}")
        if min(height, width) < 16:
            raise ValueError(f"size must be at least 16x16, got {height}x{width}")
        if self.fps <= 0 or self.seconds <= 0:
            raise ValueError(f"seconds and fps must be positive, got {self.seconds} s at {self.fps} fps")
        if self.frames < MIN_FRAMES:
            raise ValueError(f"a clip needs at least {MIN_FRAMES} frames, got {self.seconds} s x {self.fps} fps = {self.frames}")
        low, high = self.person_height
        if not 0 < low <= high <= 1:
            raise ValueError(f"person_height must satisfy 0 < low <= high <= 1, got {self.person_height}")
        for name in ("scale_range", "lighting"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.harmonise_strength <= 1:
            raise ValueError(f"harmonise_strength must lie in [0, 1], got {self.harmonise_strength}")
        if self.feather_sigma < 0 or self.pan < 0 or self.shake_px < 0 or self.noise < 0:
            raise ValueError("feather_sigma, pan, shake_px and noise must not be negative")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be jpg or png, got {self.image_format!r}")


@dataclass
class SynthVideoResult:
    output: Path
    foregrounds: int
    backgrounds: int
    clips: int
    frames: int
    skipped: int
    report: dict[str, Any]


@dataclass(frozen=True)
class ClipMotion:
    """Everything random about one clip, drawn up front (`draw_motion`); rendering is a pure function of it.

    Frames are indexed 0..n-1; a span (start, end) covers frames start <= f < end. Positions are
    shares of the room the person or camera has, so the person is in frame at every scale.
    """

    flip: bool
    person_height: float  # px, the box height at scale 1
    scale_amplitude: float  # signed share: scale(f) = 1 + amplitude * sin(2 pi cycles f / (n - 1) + phase)
    scale_cycles: float
    scale_phase: float
    path_x: tuple[float, float, float]  # waypoints at the start, middle and end: 0 = left edge, 1 = right edge
    path_y: tuple[float, float, float]  # 0 = top edge, 1 = bottom edge
    pan_from: tuple[int, int]  # (y, x) of the camera's window in the background canvas, first frame
    pan_to: tuple[int, int]  # ... last frame
    shake: tuple[tuple[int, int], ...]  # (dy, dx) per frame
    lighting_frames: tuple[int, int]  # the ramp's span; after it the new level holds
    lighting_gain: float  # the frame's gain at the end of the ramp (1 = unchanged)
    lighting_offset: float  # grey levels added at the end of the ramp
    occlusion_frames: tuple[int, int]  # span of the occlusion ((0, 0) when off)
    occluder_height: float  # share of the person's box height
    occluder_width: float  # share of the person's box width
    occluder_top: float  # where the band starts, as a share of the room left in the person's box
    occluder_sweep: int  # +1: left to right, -1: right to left
    occluder_source: tuple[float, float]  # (y, x) in the canvas where the occluder's texture is cut, as shares
    occluder_shade: float  # gain on the occluder's texture: a near object in shadow, not a hole showing the background
    noise_seed: int


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    mask: np.ndarray  # (H, W) uint8, the blended alpha after the occlusion
    occluded_pixels: int  # person pixels (alpha > 0) the occluder hides


def synthesize_video(
    foregrounds: Path,
    backgrounds: Path | Sequence[Path],
    output: Path,
    *,
    name: str | None = None,
    options: SynthVideoOptions | None = None,
    engine: EngineOptions | None = None,
) -> SynthVideoResult:
    """Write `clips_per_foreground` clips of every sample of the canonical set `foregrounds` to `output`.

    Runs on `datatool.engine` (one work item per foreground): a re-run with the same options and
    backgrounds reuses the clips of unchanged foregrounds. Raises `ValueError` when the foreground
    set or the background folder is missing, when the background folder holds no usable image, or
    when the options are invalid. A foreground that cannot be read, or has an empty mask, is
    reported and skipped.
    """
    options = options or SynthVideoOptions()
    options.check()
    engine = engine or EngineOptions()
    foregrounds, folders = resolve_inputs(foregrounds, backgrounds)
    folder = OutputFolder(output, [foregrounds, *folders])
    output = folder.path
    name = name or output.name
    report = Report(foregrounds)
    background_list = scan_background_folders(folders, report)
    rows = list(read_rows(foregrounds, report))
    report.counts["foregrounds"] = len(rows)
    report.counts["backgrounds"] = len(background_list)
    works = [
        Work(row["id"], row_fingerprint([foregrounds / row["image"], foregrounds / row["mask"]], foregrounds, row), row, row["image"])
        for row in rows
    ]
    totals = run_stage(SynthVideoStage(foregrounds, background_list, name, options), folder, works, report, engine)
    header = {
        "stage": "synth-video",
        "version": __version__,
        "foregrounds": str(foregrounds),
        "backgrounds": ", ".join(str(folder) for folder in folders),
        "output": str(output),
        "name": name,
        "options": asdict(options),
        "frames_per_clip": options.frames,
        "frames_per_second_made": round(totals.written / report.seconds, 2) if report.seconds else None,
        "engine": engine_header(engine, totals),
    }
    summary = report.write(output / REPORT, **header)
    clips = report.counts["clips"]
    return SynthVideoResult(output, len(rows), len(background_list), clips, totals.written, len(report.skipped), summary)


class SynthVideoStage(StageDefaults):
    """What synth-video tells the engine (`datatool.engine.Stage`): a work item is one foreground
    row, its outcome that person's clips, frame by frame."""

    state_file = STATE
    processed_counter = "processed"
    manifest = True
    folders = (IMAGES, MASKS)
    batch_size = 1  # one foreground makes a whole clip (30 frames at 2 s x 15 fps) per clip

    def __init__(self, foregrounds: Path, backgrounds: list[Background], name: str, options: SynthVideoOptions):
        self.foregrounds = foregrounds
        self.backgrounds = backgrounds
        self.name = name
        self.options = options
        self.label = f"synth-video {name}"
        # Every clip may draw any background, so a changed background library changes them all.
        self.signature = signature(
            engine=ENGINE_VERSION, name=name, root=str(foregrounds), options=asdict(options),
            backgrounds=[background.key for background in backgrounds],
            library=file_fingerprint([background.path for background in backgrounds], Path("/")),
        )  # fmt: skip

    def claims(self, work: Work) -> list[str]:
        claimed = []
        for k in range(self.options.clips_per_foreground):
            clip = clip_id(self.name, work.sample_id, k)
            for frame in range(self.options.frames):
                claimed.extend(composite_files(frame_id(clip, frame), self.options.image_format))
        return claimed

    def step_factory(self):
        return partial(SynthVideoStep, self.foregrounds, self.backgrounds, self.name, self.options)


class SynthVideoStep:
    """Makes the clips of a batch of foregrounds (built once per worker: its own background cache)."""

    def __init__(self, foregrounds: Path, backgrounds: list[Background], name: str, options: SynthVideoOptions):
        self.foregrounds = foregrounds
        self.backgrounds = backgrounds
        self.name = name
        self.options = options
        self.cache = BackgroundCache()

    def __call__(self, works: list[Work]) -> list[Done]:
        return [self.clips(work) for work in works]

    def clips(self, work: Work) -> Done:
        row, options = work.item, self.options
        done = Done(Outcome(sample_id=work.sample_id, inputs=work.inputs))
        outcome = done.outcome
        foreground = usable_foreground(self.foregrounds, row, outcome)
        if foreground is None:
            return done
        encoding = "pasted matte" if foreground.soft else f"pasted binary mask, feathered (sigma {options.feather_sigma:g} px)"
        for k in range(options.clips_per_foreground):
            clip = clip_id(self.name, row["id"], k)
            rng = np.random.default_rng(sample_seed(options.seed, row["id"], k))
            background = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            motion = draw_motion(options, rng)
            try:
                canvas = cover_crop(self.cache.pixels(background), canvas_size(options), rng)
            except BackgroundError as error:  # passed the scan's cheap check, fails the full decode
                outcome.skips.append({"file": error.key, "reason": f"background not usable: {error}", "id": clip})
                continue
            outcome.counts["clips"] = outcome.counts.get("clips", 0) + 1
            for index, frame in enumerate(render_clip(foreground, canvas, motion, options)):
                sample_id = frame_id(clip, index)
                image_file, mask_file = composite_files(sample_id, options.image_format)
                done.files[image_file] = image_bytes(frame.image, f".{options.image_format}")
                done.files[mask_file] = mask_bytes(frame.mask)
                outcome.counts["frames"] = outcome.counts.get("frames", 0) + 1
                outcome.rows.append({
                    "id": sample_id,
                    "image": image_file,
                    "mask": mask_file,
                    "source": self.name,
                    "source_format": SOURCE_FORMAT,
                    "width": options.size[1],
                    "height": options.size[0],
                    "mask_kind": "alpha",
                    "mask_encoding": encoding,
                    # The foreground's group, not the clip: the clips of one person (and the photo
                    # they were cut from) must share a split, or the person leaks across splits.
                    "group": row["group"],
                    "official_split": row.get("official_split"),
                    "clip": clip,
                    "frame": index,
                    "fps": float(options.fps),
                    "foreground_id": row["id"],
                    "foreground_source": row["source"],
                    "foreground_mask_kind": row["mask_kind"],
                    "background_id": background.key,
                    "occluded_pixels": frame.occluded_pixels,
                    **({"motion": asdict(motion)} if index == 0 else {}),
                })  # fmt: skip
        return done


def clip_id(name: str, foreground_id: str, k: int) -> str:
    return make_id(name, f"{foreground_id}-c{k}")


def frame_id(clip: str, frame: int) -> str:
    # The clip id is file-name safe already; the frame number last, so files sort in clip order.
    return f"{clip}-f{frame:04d}"


def canvas_size(options: SynthVideoOptions) -> tuple[int, int]:
    """(height, width) of the background the camera moves over: the frame plus pan room plus shake on both sides."""
    height, width = options.size
    margin = 2 * options.shake_px
    return height + pan_room(options)[0] + margin, width + pan_room(options)[1] + margin


def pan_room(options: SynthVideoOptions) -> tuple[int, int]:
    """(y, x) px the camera may travel: mostly sideways, a little up and down."""
    height, width = options.size
    return round(options.pan * height / 4), round(options.pan * width)


# -- motion --------------------------------------------------------------------------------------


def draw_motion(options: SynthVideoOptions, rng: np.random.Generator) -> ClipMotion:
    """One clip's motion. Every value is drawn whatever the options switch off (occlusion), so a
    clip without the occlusion is the same clip with the occluder left out."""
    n = options.frames
    height = options.size[0]

    def share(low: float, high: float) -> float:
        return round(float(rng.uniform(low, high)), 4)  # rounded as stored: `motion` describes what was rendered

    flip = bool(rng.random() < options.flip_probability)
    person_height = round(share(*options.person_height) * height, 2)
    scale_amplitude = share(options.scale_range / 2, options.scale_range) * (1 if rng.random() < 0.5 else -1)
    scale_cycles, scale_phase = share(0.5, 1.0), share(0, 2 * np.pi)
    # The person crosses at least a third of the room: start in one third, end in the other.
    start_x, end_x = share(0, 0.35), share(0.65, 1.0)
    if rng.random() < 0.5:
        start_x, end_x = end_x, start_x
    path_x = (start_x, share(0, 1), end_x)
    path_y = (share(0.6, 1.0), share(0.6, 1.0), share(0.6, 1.0))  # people stand low in a portrait frame
    room_y, room_x = pan_room(options)
    travel = round(share(0.5, 1.0) * room_x)
    first_x = int(rng.integers(0, room_x - travel + 1))
    pan_x = (first_x, first_x + travel) if rng.random() < 0.5 else (first_x + travel, first_x)
    pan_y = (int(rng.integers(0, room_y + 1)), int(rng.integers(0, room_y + 1)))
    shake = tuple((int(dy), int(dx)) for dy, dx in rng.integers(-options.shake_px, options.shake_px + 1, size=(n, 2)))
    ramp = max(2, round(share(0.3, 0.6) * n))
    lighting_start = int(rng.integers(0, n - ramp + 1))
    sign = 1 if rng.random() < 0.5 else -1
    lighting_gain = round(1 + sign * share(options.lighting / 2, options.lighting), 4)
    lighting_offset = round(sign * share(0, 60 * options.lighting), 2)
    # A few frames (0.2-0.35 s, at least 2, at most a third of the clip), never the first frame.
    duration = min(max(2, round(share(0.2, 0.35) * options.fps)), max(2, n // 3))
    occlusion_start = int(rng.integers(1, n - duration + 1))
    occluder = dict(
        occluder_height=share(0.3, 0.6), occluder_width=share(0.3, 0.5), occluder_top=share(0, 1),
        occluder_sweep=1 if rng.random() < 0.5 else -1, occluder_source=(share(0, 1), share(0, 1)), occluder_shade=share(0.45, 0.75),
    )  # fmt: skip
    return ClipMotion(
        flip=flip, person_height=person_height, scale_amplitude=scale_amplitude, scale_cycles=scale_cycles,
        scale_phase=scale_phase, path_x=path_x, path_y=path_y, pan_from=(pan_y[0], pan_x[0]), pan_to=(pan_y[1], pan_x[1]),
        shake=shake, lighting_frames=(lighting_start, lighting_start + ramp), lighting_gain=lighting_gain,
        lighting_offset=lighting_offset,
        occlusion_frames=(occlusion_start, occlusion_start + duration) if options.occlusion else (0, 0),
        noise_seed=int(rng.integers(2**31)), **occluder,
    )  # fmt: skip


def smoothstep(t: float) -> float:
    """0 -> 0, 1 -> 1 with zero speed at both ends: motion that starts and stops without a jolt."""
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


def along(waypoints: tuple[float, ...], t: float) -> float:
    """The value at time `t` in [0, 1] on a path through evenly spaced waypoints, smoothstep between them."""
    segments = len(waypoints) - 1
    position = min(max(t, 0.0), 1.0) * segments
    index = min(int(position), segments - 1)
    return waypoints[index] + (waypoints[index + 1] - waypoints[index]) * smoothstep(position - index)


def ramp(span: tuple[int, int], frame: int) -> float:
    """0 before the span, 1 after it, smoothstep through it."""
    start, end = span
    return smoothstep((frame - start) / max(1, end - start))


# -- rendering -----------------------------------------------------------------------------------


def render_clip(foreground: Foreground, canvas: np.ndarray, motion: ClipMotion, options: SynthVideoOptions) -> list[Frame]:
    """Every frame of a clip: `foreground` moved over `canvas` (the background, `canvas_size`) as `motion` says."""
    if options.harmonise_strength > 0:
        # Once per clip, against the whole canvas: per-frame statistics would make the person's colours flicker.
        pixels = harmonise(foreground.pixels, foreground.alpha, canvas, options.harmonise_strength)
        foreground = replace(foreground, pixels=pixels)
    texture = occluder_texture(canvas, foreground, motion, options)
    return [render_frame(foreground, canvas, texture, motion, options, frame) for frame in range(options.frames)]


def occluder_texture(canvas: np.ndarray, foreground: Foreground, motion: ClipMotion, options: SynthVideoOptions) -> np.ndarray:
    """A patch of the canvas, flipped upside down and shaded, big enough for the occluder at the person's largest size."""
    largest = motion.person_height * (1 + abs(motion.scale_amplitude))
    h, w = foreground.alpha.shape
    height = max(2, min(canvas.shape[0], int(np.ceil(largest * motion.occluder_height)) + 1))
    width = max(2, min(canvas.shape[1], int(np.ceil(largest * w / h * motion.occluder_width)) + 1, options.size[1]))
    top = round(motion.occluder_source[0] * (canvas.shape[0] - height))
    left = round(motion.occluder_source[1] * (canvas.shape[1] - width))
    patch = canvas[top : top + height, left : left + width][::-1].astype(np.float32)
    return np.round(patch * motion.occluder_shade).astype(np.uint8)


def render_frame(
    foreground: Foreground, canvas: np.ndarray, texture: np.ndarray, motion: ClipMotion, options: SynthVideoOptions, frame: int
) -> Frame:
    height, width = options.size
    n = options.frames
    t = frame / (n - 1)
    scale = 1 + motion.scale_amplitude * np.sin(2 * np.pi * motion.scale_cycles * t + motion.scale_phase)
    pixels, alpha, _ = scale_foreground(foreground, motion.person_height * scale, options.size, options.feather_sigma, motion.flip)
    ph, pw = alpha.shape
    x = round(along(motion.path_x, t) * (width - pw))
    # A person cut off by the photo's bottom edge stands on the frame's: a bust never floats.
    y = height - ph if foreground.cut_at_bottom else round(along(motion.path_y, t) * (height - ph))

    # The camera: a smooth pan plus this frame's shake, in whole pixels (no resampling of the background).
    pan = smoothstep(t)
    shake_y, shake_x = motion.shake[frame]
    top = options.shake_px + round(motion.pan_from[0] + (motion.pan_to[0] - motion.pan_from[0]) * pan) + shake_y
    left = options.shake_px + round(motion.pan_from[1] + (motion.pan_to[1] - motion.pan_from[1]) * pan) + shake_x
    image = canvas[top : top + height, left : left + width].astype(np.float32)

    # Alpha is quantised first so that the stored mask is exactly the alpha that was blended.
    alpha_u8 = np.round(alpha * 255).astype(np.uint8)
    weight = (alpha_u8.astype(np.float32) / 255)[..., None]
    region = image[y : y + ph, x : x + pw]
    image[y : y + ph, x : x + pw] = np.round(weight * pixels.astype(np.float32) + (1 - weight) * region)
    mask = np.zeros((height, width), np.uint8)
    mask[y : y + ph, x : x + pw] = alpha_u8

    occluded = 0
    box = occluder_box(motion, frame, (y, x, ph, pw), texture.shape[:2], options.size)
    if box is not None:
        o_top, o_bottom, o_left, o_right = box
        occluded = int(np.count_nonzero(mask[o_top:o_bottom, o_left:o_right]))
        image[o_top:o_bottom, o_left:o_right] = texture[: o_bottom - o_top, : o_right - o_left]
        mask[o_top:o_bottom, o_left:o_right] = 0  # in front of the person: the truth loses those pixels

    # Lighting moves no pixel, so the mask is unchanged by it (and by the noise).
    level = ramp(motion.lighting_frames, frame)
    image = image * (1 + (motion.lighting_gain - 1) * level) + motion.lighting_offset * level
    if options.noise > 0:
        image += np.random.default_rng([motion.noise_seed, frame]).normal(0, options.noise, image.shape).astype(np.float32)
    return Frame(np.clip(np.round(image), 0, 255).astype(np.uint8), mask, occluded)


def occluder_box(
    motion: ClipMotion, frame: int, person: tuple[int, int, int, int], texture_hw: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the occluder in this frame, clipped to the frame; None outside the occlusion.

    It covers a band of the person's box (`occluder_height` of it) and sweeps across the box's
    middle, from 0.35 of the box's width on one side of its centre to 0.35 on the other, so some
    of the person is hidden in every occluded frame and never all of it.
    """
    start, end = motion.occlusion_frames
    if not start <= frame < end:
        return None
    y, x, ph, pw = person
    band = min(texture_hw[0], max(1, round(motion.occluder_height * ph)))
    wide = min(texture_hw[1], max(1, round(motion.occluder_width * pw)))
    top = y + round(motion.occluder_top * (ph - band))
    progress = (frame - start + 0.5) / (end - start)  # 0..1 through the occlusion
    centre = x + pw / 2 + motion.occluder_sweep * (progress - 0.5) * 0.7 * pw
    left = round(centre - wide / 2)
    height, width = size
    top, bottom, left, right = max(0, top), min(height, top + band), max(0, left), min(width, left + wide)
    return (top, bottom, left, right) if bottom > top and right > left else None

"""`trainer predict`: run any model on photos, folders, videos, cameras and streams; write masks and composites.

    summary = predict(open_predictor("models/x/best.pt"), expand_sources("photos/"), Path("out"), ("mask", "blur"))

One path for every model and every source:

1. The model is a `portraitseg.predictor.Predictor`: a checkpoint or an exported file
   (`trainer.model_spec.open_model` opens it, as `trainer evaluate` does) as a
   `portraitseg.predictor.FixedInputPredictor`, which runs a batch of photos at once and fits each into the model's
   input (square, or e.g. a landscape 144x256): stretched, as the students are trained (`trainer.data`) and as MediaPipe runs, or with
   its aspect ratio kept (`fit="letterbox"`, padded with the ImageNet mean, which the graph
   normalises to 0). On the 27 people-dev test photos the best student scores IoU 0.855 stretched
   and 0.814 letterboxed, so stretch is the default. A teacher does its own resizing. Either way
   the probabilities come back bilinearly at each photo's full size.
2. Video frames may be smoothed over time (`portraitseg.predictor.smooth_temporal`: MediaPipe's
   SegmentationSmoothingCalculator), then the probability is refined at full resolution by a
   guided filter with the photo as its guide (`refine_edges`, OpenCV contrib's ximgproc), so its
   0.5 level follows the photo's edges (hair, outlines) instead of the model's coarse grid.
3. `render` turns photo + probability into each requested output: `mask` (0/255, p >= threshold),
   `matte` (round(255 p)), `cutout` (RGBA, alpha = matte), `blur` and `replace` (the background
   blurred or replaced, blended by the matte) and `overlay` (the mask tinted on the photo).
4. Outputs go to `OUTPUT/<kind>/<the input's path below its folder>` with the input's stem:
   `.png` for mask, matte and cutout, the photo's own format (JPEG or PNG) for the rest, and for a
   video a video of the same frame rate and size with the source's audio stream copied. Every
   file is written under a temporary name and renamed when complete, so an interrupted run never
   leaves a half-written output. An unreadable photo or an undecodable frame is reported and
   skipped; the run goes on.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from portraitseg.imagefiles import IMAGE_SUFFIXES, read_rgb
from portraitseg.predictor import FrameStream, Predictor
from portraitseg.progress import progress
from portraitseg.resize import resize_probability
from portraitseg.scoring import PERSON_THRESHOLD

# --- defaults, each with its reason -----------------------------------------------------------
OUTPUT_KINDS = ("mask", "matte", "cutout", "blur", "replace", "overlay")
VIDEO_KINDS = ("mask", "matte", "blur", "replace", "overlay")  # a cutout needs alpha, which H.264 has not
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif"})
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "tcp://", "udp://", "srt://")
GLOB_CHARACTERS = re.compile(r"[*?\[]")
IMAGENET_MEAN_RGB = (124, 116, 104)  # letterbox padding: 0 after the graph's ImageNet normalisation
GUIDED_RADIUS = 2.0  # guided filter radius in model-input pixels at the photo's scale (people-dev val: 2 > 1 > 0.5 for the student)
VIDEO_GUIDED_SIDE = 640  # video frames are edge-refined on a copy of at most this long side (speed), photos in full
GUIDED_EPS = 1e-2  # guided filter regularisation, guide in [0, 1] (people-dev val: 1e-2 > 3e-2 > 1e-3)
BLUR_SIGMA = 0.012  # background blur: Gaussian sigma as a share of the photo's long side
BLUR_SHRINK = 4  # the blur runs on a 1/4-size copy: 16x fewer pixels, the same look at this sigma
OVERLAY_TINT = np.array((255, 0, 255), np.float32)  # magenta: rare in photos, visible on skin and clothes
OVERLAY_OPACITY = 0.5
DEFAULT_BACKGROUND = "white"
JPEG_QUALITY = 95
VIDEO_CODEC = "libx264"
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"})  # copied as they are; others dropped
VIDEO_OPTIONS = {"crf": "18", "preset": "veryfast"}  # near-transparent quality, fast enough for real time
COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "green": (0, 177, 64), "blue": (0, 71, 187), "gray": (128, 128, 128)}


class PredictError(RuntimeError):
    """A run that cannot start: no such source, a source that is not an image or video, a camera that will not open."""


# ---------------------------------------------------------------------------------------------
# The model


def open_predictor(
    model: str | Path, threads: int = 2, model_cache: Path | None = None, size: tuple[int, int] | None = None,
    fit: str = "stretch",
) -> Predictor:  # fmt: skip
    """The Predictor of `--model`: a checkpoint or export (fitted, see portraitseg.predictor.FixedInputPredictor) or a teacher spec.

    Raises the builders' errors (`RunnerError`, `TeacherError`, `ModelMissingError`); a size given
    for a teacher is a PredictError (a teacher has its own input size).
    """
    from trainer.model_spec import ARTEFACT_SUFFIXES, open_model

    if Path(model).suffix not in ARTEFACT_SUFFIXES and size is not None:
        raise PredictError(f"--size applies to checkpoints only; {model} is a teacher with its own input size")
    opened = open_model(model, threads, model_cache, size)
    if hasattr(opened, "as_predictor"):  # a trainer.runtime.Runner
        return opened.as_predictor(fit, IMAGENET_MEAN_RGB)
    return opened


# ---------------------------------------------------------------------------------------------
# Probabilities: temporal smoothing and edges


def refine_edges(
    probability: np.ndarray, photo: np.ndarray, input_size: tuple[int, int] | None, max_side: int | None = None
) -> np.ndarray:
    """The full-size probability (H, W) filtered by a guided filter with the photo as guide (He et al., 2013).

    The radius is `GUIDED_RADIUS` model-input pixels at the photo's scale (a bilinear upsampling
    spreads an edge over about one model pixel, so that is the band to re-decide), at least 2 px.
    `max_side` runs the filter on a copy whose long side is at most that (video: the colour guided
    filter costs ~60 ms on a 720p frame on two cores, ~9 ms at half size) and enlarges the result
    bilinearly; None filters at full resolution.
    """
    height, width = probability.shape
    work_height, work_width = height, width
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        work_height, work_width = max(1, round(height * scale)), max(1, round(width * scale))
        photo = cv2.resize(photo, (work_width, work_height), interpolation=cv2.INTER_AREA)
        probability = cv2.resize(probability, (work_width, work_height), interpolation=cv2.INTER_AREA)
    model_side = max(input_size) if input_size else 320  # the model's pixels along the photo's long side, about
    radius = max(2, round(GUIDED_RADIUS * max(work_height, work_width) / model_side))
    # A uint8 guide takes eps in 0..255 units: the same filter as a [0, 1] guide with GUIDED_EPS, without the copy.
    refined = cv2.ximgproc.guidedFilter(photo, probability.astype(np.float32), radius, GUIDED_EPS * 255**2)
    return resize_probability(refined, height, width)  # clipped to [0, 1]


# ---------------------------------------------------------------------------------------------
# Outputs


class Backgrounds:
    """The replacement background of `--background`: an image file, a folder of images (one per input, in
    turn) or a colour (a name, #RRGGBB or R,G,B); each is scaled to cover a photo and centre-cropped."""

    def __init__(self, spec: str = DEFAULT_BACKGROUND):
        self.spec = spec
        self.colour: tuple[int, int, int] | None = None
        self.files: list[Path] = []
        path = Path(spec)
        if path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise PredictError(f"--background folder {path} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.is_file():
            self.files = [path]
        else:
            self.colour = parse_colour(spec)
        self.cache: dict[tuple[int, int, int], np.ndarray] = {}

    def for_photo(self, index: int, height: int, width: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB background for the index-th input."""
        if self.colour is not None:
            return np.broadcast_to(np.array(self.colour, np.uint8), (height, width, 3))
        number = index % len(self.files)
        key = (number, height, width)
        if key not in self.cache:
            try:
                image = read_rgb(self.files[number])
            except OSError as error:
                raise PredictError(f"--background: {error}") from error
            self.cache = {key: cover(image, height, width)}  # one size at a time: video frames share it
        return self.cache[key]


def parse_colour(spec: str) -> tuple[int, int, int]:
    text = spec.strip().lower()
    if text in COLOURS:
        return COLOURS[text]
    if re.fullmatch(r"#[0-9a-f]{6}", text):
        return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    parts = text.split(",")
    if len(parts) == 3 and all(part.strip().isdigit() and int(part) <= 255 for part in parts):
        return tuple(int(part) for part in parts)  # type: ignore[return-value]
    raise PredictError(
        f"--background {spec!r} is not an image file, a folder of images or a colour "
        f"({', '.join(COLOURS)}, #RRGGBB or R,G,B)"
    )


def cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` scaled to cover height x width with its aspect kept, centre-cropped."""
    scale = max(height / image.shape[0], width / image.shape[1])
    scaled_h, scaled_w = max(height, round(image.shape[0] * scale)), max(width, round(image.shape[1] * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (scaled_w, scaled_h), interpolation=interpolation)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return scaled[top : top + height, left : left + width]


def blurred(photo: np.ndarray) -> np.ndarray:
    """A strong Gaussian blur of the photo, run on a 1/BLUR_SHRINK copy and enlarged back."""
    height, width = photo.shape[:2]
    small = cv2.resize(
        photo, (max(1, width // BLUR_SHRINK), max(1, height // BLUR_SHRINK)), interpolation=cv2.INTER_AREA
    )
    sigma = BLUR_SIGMA * max(height, width) / BLUR_SHRINK
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(sigma, 0.5))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def blend(photo: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """alpha * photo + (1 - alpha) * background, uint8 (H, W, 3); alpha (H, W) float32 in [0, 1]."""
    alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    return cv2.blendLinear(photo, np.ascontiguousarray(background, dtype=np.uint8), alpha, 1.0 - alpha)


def render(
    photo: np.ndarray,
    probability: np.ndarray,
    kinds: Sequence[str],
    threshold: float = PERSON_THRESHOLD,
    background: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Each output kind of one photo (H, W, 3) uint8 RGB and its probability (H, W) float32.

    mask (H, W) 0/255 where p >= threshold; matte (H, W) round(255 p); cutout (H, W, 4) RGBA with the
    matte as alpha; blur / replace (H, W, 3) the photo over its blurred self / `background`, blended by
    p; overlay (H, W, 3) the mask tinted on the photo.
    """
    out: dict[str, np.ndarray] = {}
    matte = np.rint(probability * 255).astype(np.uint8)
    mask = np.where(probability >= threshold, np.uint8(255), np.uint8(0))
    for kind in kinds:
        if kind == "mask":
            out[kind] = mask
        elif kind == "matte":
            out[kind] = matte
        elif kind == "cutout":
            out[kind] = np.dstack([photo, matte])
        elif kind == "blur":
            out[kind] = blend(photo, blurred(photo), probability)
        elif kind == "replace":
            if background is None:
                raise ValueError("replace needs a background")
            out[kind] = blend(photo, background, probability)
        elif kind == "overlay":
            weight = (mask > 0).astype(np.float32)[..., None] * OVERLAY_OPACITY
            out[kind] = np.clip(photo * (1 - weight) + OVERLAY_TINT * weight, 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"unknown output kind {kind!r}; choose from {', '.join(OUTPUT_KINDS)}")
    return out


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Write an RGB/RGBA/gray uint8 image (format from the suffix) under a temporary name, then rename it."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        temporary.write_bytes(encoded.tobytes())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Sources


@dataclasses.dataclass(frozen=True)
class Source:
    """One input: an image or video file, a camera index or a stream URL, and its output name (no suffix)."""

    kind: str  # image | video | camera | stream
    location: str  # a path, a camera index or a URL
    name: str  # output path below OUTPUT/<kind>/, relative, without suffix

    @property
    def suffix(self) -> str:
        return Path(self.location).suffix.lower() if self.kind in ("image", "video") else ""


def expand_sources(spec: str) -> list[Source]:
    """The inputs `spec` names, in Ultralytics' grammar: an image or video file, a folder (recursive), a
    glob, a camera index (0), a stream URL (rtsp://, http://...), or a .txt file listing any of those.

    An existing path is taken as a path even when it contains glob characters ([1] in a file name).
    Inside a folder or glob, files that are neither image nor video are left out; a file named
    directly that is neither is a PredictError, as is a spec that matches nothing.
    """
    spec = str(spec).strip()
    if spec.isdigit():
        return [Source("camera", spec, f"camera{spec}")]
    if spec.lower().startswith(STREAM_SCHEMES):
        stem = Path(spec.split("?")[0].rstrip("/")).stem or "stream"
        return [Source("stream", spec, stem)]
    path = Path(spec).expanduser()
    if path.is_dir():
        found = sorted(file for file in path.rglob("*") if file.is_file() and media_kind(file))
        if not found:
            raise PredictError(f"{path} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}) or video file")
        return [file_source(file, file.relative_to(path)) for file in found]
    if path.is_file():
        if path.suffix.lower() == ".txt":
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            sources = [source for line in lines if line and not line.startswith("#") for source in expand_sources(line)]
            if not sources:
                raise PredictError(f"{path} lists no source")
            return sources
        if not media_kind(path):
            raise PredictError(
                f"{path} is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a video "
                f"({', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        return [file_source(path, Path(path.name))]
    if GLOB_CHARACTERS.search(spec):
        found = sorted(Path(file) for file in glob.glob(spec, recursive=True) if Path(file).is_file())
        found = [file for file in found if media_kind(file)]
        if not found:
            raise PredictError(f"the pattern {spec} matches no image or video file")
        return [file_source(file, Path(file.name)) for file in found]
    raise PredictError(
        f"source {spec} does not exist; pass an image or video file, a folder, a glob, a camera index, "
        "a stream URL or a .txt list of those"
    )


def media_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def file_source(path: Path, relative: Path) -> Source:
    return Source(media_kind(path) or "image", str(path), str(relative.with_suffix("")))


# ---------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class PredictSummary:
    photos: int = 0
    videos: int = 0
    frames: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)  # "WHAT: why", one per skipped photo or frame
    written: int = 0  # output files
    seconds: float = 0.0  # video wall time: decode, model, outputs, encode
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    kinds: tuple[str, ...] = ("mask",)
    threshold: float = PERSON_THRESHOLD  # the one person rule (portraitseg.scoring)
    edges: str = "guided"  # guided | bilinear
    smooth: float = 0.0  # video: MediaPipe's combine_with_previous_ratio; 0 = off
    batch: int = 4  # video frames per model call
    background: str = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in OUTPUT_KINDS]
        if unknown or not self.kinds:
            raise PredictError(f"--save {','.join(self.kinds)}: choose from {','.join(OUTPUT_KINDS)}")
        if not 0 <= self.smooth < 1:
            raise PredictError(f"--smooth must be in [0, 1), got {self.smooth}")
        if not 0 < self.threshold < 1:
            raise PredictError(f"--threshold must be in (0, 1), got {self.threshold}")
        if self.edges not in ("guided", "bilinear"):
            raise PredictError(f"edges must be guided or bilinear, got {self.edges}")


def probabilities_of(predictor: Predictor, photos: list[np.ndarray], edges: str) -> list[np.ndarray]:
    """Full-size probabilities of photos, edge-refined at full resolution unless `edges` is bilinear."""
    raw = predictor.predict(photos)
    if edges == "bilinear":
        return raw
    return [refine_edges(probability, photo, predictor.input_size) for probability, photo in zip(raw, photos, strict=True)]


def predict(
    predictor: Predictor,
    sources: Iterable[Source],
    output: Path,
    options: PredictOptions,
    report: Callable[[str], None] = print,
) -> PredictSummary:
    """Every source through the predictor; outputs under `output/<kind>/`. Bad photos and frames are
    reported with `report` and skipped."""
    sources = unique_names(list(sources))
    summary = PredictSummary()
    backgrounds = Backgrounds(options.background) if "replace" in options.kinds else None
    photos = [source for source in sources if source.kind == "image"]
    for index, source in enumerate(progress(photos, desc="predict photos", total=len(photos))):
        try:
            photo = read_rgb(Path(source.location))
        except OSError as error:
            summary.skipped.append(f"{source.location}: {error}")
            report(f"skipped {source.location}: {error}")
            continue
        probability = probabilities_of(predictor, [photo], options.edges)[0]  # photos are independent: no smoothing
        background = backgrounds.for_photo(index, *photo.shape[:2]) if backgrounds else None
        for kind, image in render(photo, probability, options.kinds, options.threshold, background).items():
            write_image_atomic(output / kind / (source.name + photo_suffix(kind, source.suffix)), image)
            summary.written += 1
        summary.photos += 1
    for index, source in enumerate(source for source in sources if source.kind != "image"):
        predict_video(predictor, source, output, options, summary, report, backgrounds, index)
    return summary


def unique_names(sources: list[Source]) -> list[Source]:
    """Inputs that would share an output name (a.jpg and a.png) keep their suffix in it: a.png -> a.png.png."""
    seen: set[str] = set()
    renamed = []
    for source in sources:
        name = source.name
        if name in seen:
            name = f"{name}{source.suffix}" if source.suffix else f"{name}-{len(renamed)}"
        seen.add(name)
        renamed.append(dataclasses.replace(source, name=name))
    return renamed


def photo_suffix(kind: str, source_suffix: str) -> str:
    """mask, matte, cutout: PNG (lossless, alpha); composites: JPEG for a JPEG photo, else PNG."""
    if kind in ("mask", "matte", "cutout"):
        return ".png"
    return ".jpg" if source_suffix in (".jpg", ".jpeg", ".jfif") else ".png"


# --- video -------------------------------------------------------------------------------------


class VideoWriter:
    """One output video: H.264 at the source's frame rate and size, the source's audio copied, written under
    a temporary name and renamed by `close(complete=True)`."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, audio_template=None):
        import av

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
        self.container = av.open(str(self.temporary), "w", format=container_format(path.suffix))
        self.stream = self.container.add_stream(VIDEO_CODEC, rate=rate, options=dict(VIDEO_OPTIONS))
        self.stream.width, self.stream.height = width, height
        # 4:2:0 chroma needs even sides; 4:4:4 takes any size
        self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.audio = self.container.add_stream_from_template(audio_template) if audio_template is not None else None
        self.time_base = 1 / Fraction(rate)  # frame i at i / rate: constant frame rate, the source's
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image if image.ndim == 3 else np.dstack([image] * 3), format="rgb24")
        frame.pts = self.frames
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def write_audio(self, packet) -> None:
        """A copy of an audio packet of the source (muxing consumes a packet, and each output needs one)."""
        import av

        if self.audio is None:
            return
        copy = av.Packet(bytes(packet))
        copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
        copy.stream = self.audio
        self.container.mux(copy)

    def close(self, complete: bool) -> None:
        try:
            if complete:
                self.container.mux(self.stream.encode(None))  # flush the encoder
            self.container.close()
            if complete:
                os.replace(self.temporary, self.path)
        finally:
            self.temporary.unlink(missing_ok=True)


def container_format(suffix: str) -> str:
    return {".mkv": "matroska", ".mov": "mov"}.get(suffix, "mp4")


def video_suffix(source_suffix: str) -> str:
    """The source's container when it is one H.264 goes into (mp4, mov, mkv); else mp4."""
    return source_suffix if source_suffix in (".mp4", ".mov", ".mkv") else ".mp4"


@dataclasses.dataclass
class VideoInput:
    """Frames of a video file or stream (PyAV) or a camera (OpenCV), and what the outputs copy from it."""

    frames: Iterator[np.ndarray | None]  # RGB frames; None for a frame that could not be decoded
    width: int
    height: int
    rate: Fraction
    total: int | None  # frame count when the container knows it
    audio: object | None  # PyAV audio stream to copy
    audio_packets: list  # audio packets demuxed so far, drained by the writer loop
    close: Callable[[], None]


def open_video(source: Source) -> VideoInput:
    """Open a video file or stream with PyAV, or a camera with OpenCV; PredictError when it cannot be opened."""
    if source.kind == "camera":
        return open_camera(int(source.location))
    import av

    try:
        container = av.open(source.location)
    except (av.error.FFmpegError, OSError) as error:
        raise PredictError(f"cannot open video {source.location}: {error}") from error
    if not container.streams.video:
        container.close()
        raise PredictError(f"{source.location} has no video stream")
    video = container.streams.video[0]
    video.thread_type = "AUTO"  # decode with frame threads
    audio = container.streams.audio[0] if container.streams.audio else None
    rate = video.average_rate or video.guessed_rate or Fraction(30)
    pending: list = []

    def frames() -> Iterator[np.ndarray | None]:
        streams = [video] + ([audio] if audio is not None else [])
        for packet in container.demux(*streams):
            if packet.stream.type == "audio":
                if packet.dts is not None:
                    pending.append(packet)
                continue
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                yield None  # reported and skipped by the caller
                continue
            for frame in decoded:
                yield frame.to_ndarray(format="rgb24")

    context = video.codec_context
    return VideoInput(
        frames(), context.width, context.height, Fraction(rate), video.frames or None, audio, pending, container.close
    )


def open_camera(index: int) -> VideoInput:
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise PredictError(f"cannot open camera {index}: no such device, or it is busy")
    rate = capture.get(cv2.CAP_PROP_FPS) or 30.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def frames() -> Iterator[np.ndarray | None]:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    return VideoInput(frames(), width, height, Fraction(rate).limit_denominator(1001), None, None, [], capture.release)


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(
    predictor: Predictor,
    source: Source,
    output: Path,
    options: PredictOptions,
    summary: PredictSummary,
    report: Callable[[str], None] = print,
    backgrounds: Backgrounds | None = None,
    index: int = 0,
) -> None:
    """One video, camera or stream: frames in batches of `options.batch` through the model, each output kind
    encoded as it goes. A frame that cannot be decoded is reported and skipped."""
    import time

    kinds = [kind for kind in options.kinds if kind in VIDEO_KINDS]
    if len(kinds) < len(options.kinds):
        summary.notes.append(f"{source.location}: no cutout for a video (H.264 has no alpha channel); write matte with it")
    if not kinds:
        return
    stream = open_video(source)
    suffix = video_suffix(source.suffix)
    audio = stream.audio
    if audio is not None and suffix == ".mp4" and audio.codec_context.name not in MP4_AUDIO_CODECS:
        summary.notes.append(f"{source.location}: its {audio.codec_context.name} audio cannot be copied into MP4; no sound")
        audio = None
    writers = {
        kind: VideoWriter(output / kind / (source.name + suffix), stream.width, stream.height, stream.rate, audio)
        for kind in kinds
    }
    complete = False
    start = time.perf_counter()
    frame_stream = FrameStream(predictor, options.smooth)  # smoothing, and a prior student's own previous output
    count = 0
    try:
        frames = progress(stream.frames, total=stream.total, desc=Path(source.name).name, unit="frame")
        for batch in batched(frames, options.batch):
            good = []
            for frame in batch:
                count += 1
                if frame is None:
                    message = f"{source.location}: frame {count} skipped: it could not be decoded"
                    summary.skipped.append(message)
                    report(message)
                else:
                    good.append(frame)
            for packet in stream.audio_packets:  # demuxed so far; the muxer interleaves them with the video
                for writer in writers.values():
                    writer.write_audio(packet)
            stream.audio_packets.clear()
            if not good:
                continue
            # Smoothed at the model's estimate, before the edges snap to this frame.
            for frame, probability in zip(good, frame_stream.predict(good), strict=True):
                if options.edges == "guided":
                    probability = refine_edges(probability, frame, predictor.input_size, VIDEO_GUIDED_SIDE)
                background = backgrounds.for_photo(index, *frame.shape[:2]) if backgrounds else None
                for kind, image in render(frame, probability, kinds, options.threshold, background).items():
                    writers[kind].write(image)
                summary.frames += 1
        for packet in stream.audio_packets:
            for writer in writers.values():
                writer.write_audio(packet)
        complete = True
    except KeyboardInterrupt:
        if source.kind not in ("camera", "stream"):
            raise  # a file left half-done: its outputs are removed
        complete = True  # Ctrl-C is how a camera or live stream ends: keep what was recorded
        summary.notes.append(f"{source.location}: stopped by Ctrl-C after {summary.frames} frames")
    finally:
        stream.close()
        for writer in writers.values():
            writer.close(complete)
    summary.seconds += time.perf_counter() - start
    summary.videos += 1
    summary.written += len(writers)

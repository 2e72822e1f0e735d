"""`trainer evaluate`: every artefact (checkpoint or export) and the reference on the same test images.

For each artefact (a `best.pt` checkpoint, an `.onnx`, `.tflite` or TensorRT `.engine` file,
opened with `trainer.runtime.open_runner`), for the reference teacher (the MediaPipe selfie
segmenter by default, the speed reference) and for any more teachers (`evaluate.teachers`, e.g.
the ensemble the students learn from), all of them `portraitseg.predictor.Predictor`s, it
measures in one run:

- quality on the split's images (all, or those of `evaluate.sources`) at ground-truth
  resolution, IoU as the mean over photos and pooled (`trainer.harness.score`, the
  scoring of the export parity check too), with the boundary F band width from params;
- speed: batch-1 latency (`trainer.harness.time_predictors`: median and p90 over `repeats`
  calls after `warmup` calls, `threads` threads in every runtime, the reference's included) of
  `predict` on the first photo already at the model's input size: for a student the model call
  with its uint8 -> float cast (students normalise inside their graph), for the MediaPipe
  reference its own pre- and post-processing (/ 255, `set_tensor`, `invoke`, `get_tensor`);
  the photo resizes are outside the timing for both;
- size: parameters and MACs (from the artefact's checkpoint, see `trainer.complexity`; an
  export counts those of `../best.pt` beside its `export/` folder) and the artefact's file size;
- video: the rows with a `clip` field (`datatool synth-video`, or clips ingested with `datatool
  ingest clips`) are video frames. They are scored clip by clip, frames in order
  (`trainer.harness.score_clips`): per-frame IoU and the temporal instability (dtSSD, flip rate)
  of every candidate per frame and smoothed (`evaluate.smooth`, as `trainer predict --smooth`);
  a student trained with `model_options.prior` sees its own previous output. The photo table
  holds the rows without a clip, or the first frame of each clip when the set has only clips.

`trainer.evaluation_report` turns the results into metrics.json, plots, overlays and the
leaderboard.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from portraitseg.params import ConfigError
from portraitseg.predictor import Predictor
from portraitseg.progress import progress
from portraitseg.records import SplitError, read_split
from portraitseg.resize import InputSize, format_input_size
from portraitseg.teacher_files import ModelMissingError
from portraitseg.teachers import TeacherError
from trainer.complexity import count_macs, count_parameters
from trainer.harness import WARMUP_CALLS, read_samples, score, score_clips, time_predictors, use_threads
from trainer.model_spec import ARTEFACT_SUFFIXES, open_model
CHECKPOINT_NAME = "best.pt"
EXPORT_DIR = "export"


class EvaluationError(RuntimeError):
    """Evaluation cannot run (no artefacts, empty split, unreadable artefact); says what to do."""


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate:` section of params.yaml (`portraitseg.params.load_section`); the only place its defaults live."""

    set: str = "test"  # which manifest of the split: test.jsonl
    sources: list[str] = dataclasses.field(default_factory=list)  # only rows of these sources (e.g. [people-dev]); [] = all
    boundary_width: int = 2  # px tolerance of the boundary F-score (DAVIS-style band)
    threads: int = 2  # CPU threads of every runtime, the reference included (a fair, fixed count)
    warmup: int = WARMUP_CALLS  # untimed calls first: allocations, XNNPACK weight packing, caches
    repeats: int = 100  # timed batch-1 calls; the median and p90 are reported
    max_images: int = 0  # 0 = every image of the set
    reference: str = "mediapipe-selfie"  # teacher evaluated beside the students; "" = none
    teachers: list[str] = dataclasses.field(default_factory=list)  # more teachers scored beside them (e.g. the
    # ensemble the students learn from); not the speed reference
    overlay_images: int = 6  # rows of reports/overlays.png
    latency_ratio_iou_window: float = 0.01  # the latency ratio takes the best student's fastest artefact
    # whose IoU is within this of that student's best
    smooth: float = 0.7  # clips: the `trainer predict --smooth` ratio of the "smoothed" rows

    def __post_init__(self) -> None:
        for name in ("threads", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluate.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("boundary_width", "warmup", "max_images", "overlay_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"evaluate.{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.smooth < 1:
            raise ConfigError(f"evaluate.smooth must be in [0, 1), got {self.smooth}")


# ---------------------------------------------------------------------------------------------
# Which files to evaluate


def discover_artefacts(models_dir: Path) -> list[Path]:
    """`models_dir/*/best.pt` and every `models_dir/*/export/*.{onnx,tflite,engine}`, sorted."""
    found = sorted(Path(models_dir).glob(f"*/{CHECKPOINT_NAME}"))
    for suffix in ARTEFACT_SUFFIXES[1:]:
        found += sorted(Path(models_dir).glob(f"*/{EXPORT_DIR}/*{suffix}"))
    return sorted(found)


def model_folders(folder: Path) -> list[Path]:
    """Where a model folder's files are: the folder, then its export folder when it has one."""
    return [folder, folder / EXPORT_DIR] if (folder / EXPORT_DIR).is_dir() else [folder]


def expand_artefacts(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder contributes its artefact files (`best.pt` only among checkpoints)."""
    artefacts = []
    for path in map(Path, paths):
        if path.is_dir():
            artefacts += [
                file
                for folder in model_folders(path)
                for file in sorted(folder.iterdir())
                if file.suffix in ARTEFACT_SUFFIXES and (file.suffix != ".pt" or file.name == CHECKPOINT_NAME)
            ]
        elif path.is_file():
            artefacts.append(path)
        else:
            raise EvaluationError(f"artefact {path} does not exist; pass a checkpoint, an exported file or a folder of them")
    return artefacts


def unbuilt_artefacts(paths: Sequence[Path]) -> list[str]:
    """"REPORT: STATUS" for each export report in the folders `paths` (and their export folders)
    whose artefact does not exist: a converter could not build it, or it needs a machine this is
    not (TensorRT without CUDA). `trainer export` writes those reports; the leaderboard lists them
    under "Not evaluated" so that a format missing from it is explained, not silently absent.
    """
    lines = []
    folders = [folder for path in paths if Path(path).is_dir() for folder in model_folders(Path(path))]
    for folder in folders:
        for report_path in sorted(folder.glob("*.json")):
            try:
                report = json.loads(report_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # not an export report (a parity report is always valid JSON)
            if isinstance(report, dict) and {"artefact", "format", "status"} <= report.keys():
                if report["status"] not in ("passed", "failed"):
                    lines.append(f"{report_path}: {report['status']}")
    return lines


def model_name_of(path: Path) -> str:
    """`models/<name>/best.pt` and `models/<name>/export/<file>` both belong to `<name>`."""
    parent = path.parent
    return parent.parent.name if parent.name == EXPORT_DIR else parent.name


def checkpoint_of(path: Path) -> Path | None:
    """The checkpoint an artefact was made from, by the layout `trainer export` writes."""
    if path.suffix == ".pt":
        return path
    folder = path.parent.parent if path.parent.name == EXPORT_DIR else path.parent
    candidate = folder / CHECKPOINT_NAME
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------------------------------------
# What is evaluated: artefacts and the reference behind one small interface


@dataclasses.dataclass
class Candidate:
    """One model x backend: its predictor (scored and timed like every other) and what it is."""

    model: str
    backend: str  # e.g. pytorch-fp32, onnxruntime-int8, litert-fp16
    path: Path
    predictor: Predictor
    params: int | None = None
    macs: int | None = None
    reference: bool = False  # the speed reference (evaluate.reference)
    teacher: bool = False  # a teacher (the reference or one of evaluate.teachers), not a student
    timing: str = ""  # what the latency covers

    @property
    def name(self) -> str:
        return f"{self.model}/{self.backend}"

    @property
    def size(self) -> list[int] | None:
        """The model input as [height, width]; None for a teacher that takes photos of other shapes."""
        size = self.predictor.input_size
        return list(size) if size else None


def open_artefact(path: Path, threads: int, size_cache: dict) -> Candidate:
    """A Candidate for a checkpoint or exported file; RunnerError becomes an EvaluationError naming it."""
    from trainer.runtime import RunnerError

    try:
        runner = open_model(path, threads)
    except RunnerError as error:
        raise EvaluationError(f"cannot evaluate {path}: {error}") from error
    size = runner.input_size
    params = macs = None
    checkpoint = checkpoint_of(path)
    if checkpoint is not None:
        params, macs = complexity_of(checkpoint, size, size_cache)
    precision = getattr(runner, "precision", "") or ""
    return Candidate(
        model=model_name_of(path),
        backend=f"{runner.backend}-{precision}" if precision else str(runner.backend),
        path=path,
        predictor=runner.as_predictor(),
        params=params,
        macs=macs,
        timing=f"runner.predict ({'GPU' if runner.backend == 'tensorrt' else 'CPU'}) of a photo at its "
        f"{format_input_size(size)} input: uint8 (1, H, W, 3) -> probabilities (cast and normalisation in the call)",
    )


def complexity_of(checkpoint: Path, size: InputSize, cache: dict) -> tuple[int | None, int | None]:
    """(parameters, MACs at size) of a checkpoint's model; (None, None) when it cannot be rebuilt."""
    from trainer.checkpoint import CheckpointError, load_model

    key = (checkpoint.resolve(), size)
    if key not in cache:
        try:
            model, _ = load_model(checkpoint)
        except (CheckpointError, ValueError):
            return None, None  # the artefact itself still runs; its size columns read n/a
        cache[key] = (count_parameters(model), count_macs(model, size))
    return cache[key]


def open_teacher(spec: str, threads: int, model_cache: Path | None, reference: bool = True) -> Candidate:
    """A teacher (the reference, or one more beside it), a predictor like the students, with `threads` threads."""
    try:
        teacher = open_model(spec, threads, model_cache)
    except (TeacherError, ModelMissingError) as error:
        raise EvaluationError(f"cannot build the {'reference' if reference else 'teacher'} {spec}: {error}") from error
    model_file = getattr(teacher, "model_file", None)
    size = teacher.input_size
    on = f"a photo at its {format_input_size(size)} input" if size else "the first photo at its own size (resizes included)"
    return Candidate(
        model=spec,
        backend=teacher.backend,
        path=Path(model_file) if model_file else Path(spec),
        predictor=teacher,
        reference=reference,
        teacher=True,
        timing=f"teacher.predict on {on}: the teacher's own pre- and post-processing and model call",
    )


# ---------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class EvaluationResult:
    rows: list[dict[str, Any]]  # one per candidate, leaderboard order (IoU descending)
    images: int
    set_name: str
    threads: int
    overlay: dict[str, Any]  # images, masks and per-candidate probabilities of the first rows
    speed: dict[str, Any] | None  # best student's fastest artefact vs the reference
    not_verified: list[str] = dataclasses.field(default_factory=list)  # "PATH: not verified here: reason", "REPORT: not built: reason"
    video: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # clips: one row per candidate x variant
    clips: int = 0
    frames: int = 0
    smooth: float = 0.0


def load_rows(split_dir: Path, set_name: str, max_images: int, sources: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of the split's `set_name` manifest, of `sources` only when given, the first `max_images` (0 = all)."""
    manifest = Path(split_dir) / f"{set_name}.jsonl"
    if not manifest.is_file():
        raise EvaluationError(f"no {manifest}; run `datatool split` (or `dvc repro split`) or pass --split-dir DIR")
    try:
        rows = read_split(split_dir, set_name)
    except SplitError as error:
        raise EvaluationError(str(error)) from error
    if sources:
        found = sorted({str(row.get("source")) for row in rows})
        rows = [row for row in rows if row.get("source") in sources]
        if not rows:
            raise EvaluationError(
                f"{manifest} has no row of sources {', '.join(sources)}; its sources are {', '.join(found)}"
            )
    return rows[:max_images] if max_images else rows


def clips_of(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rows with a `clip` field as clips (same set and clip), first-seen order, each sorted by `frame`."""
    clips: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("clip") is not None:
            clips.setdefault((row["set"], str(row["clip"])), []).append(row)
    return [sorted(frames, key=lambda row: int(row.get("frame", 0))) for frames in clips.values()]


def samples_of(split_dir: Path, rows: list[dict[str, Any]], set_name: str):
    """(photo, mask) of each row with a progress bar; an unreadable file is an EvaluationError naming it."""
    try:
        yield from read_samples(split_dir, progress(rows, desc=f"evaluate {set_name}", total=len(rows)))
    except OSError as error:
        raise EvaluationError(str(error)) from error


def evaluate(
    artefacts: Sequence[Path],
    split_dir: Path,
    config: EvaluateConfig,
    *,
    model_cache: Path | None = None,
    not_built: Sequence[str] = (),
) -> EvaluationResult:
    """Quality and speed of every artefact and the reference on the split's `config.set` images.

    `not_built` ("REPORT: STATUS", from `unbuilt_artefacts`) joins the report's "Not evaluated" list.
    """
    if not artefacts:
        raise EvaluationError(
            "no artefacts to evaluate: pass --artefact PATH (a best.pt or an exported file) or --models-dir DIR "
            "holding <model>/best.pt (train one with `trainer train`)"
        )
    rows = load_rows(split_dir, config.set, config.max_images, config.sources)
    clips = clips_of(rows)
    # A clip-only set's photos are the first frames of its clips: frames on their own, without
    # scoring every frame twice.
    photo_rows = [row for row in rows if row.get("clip") is None] or [clip[0] for clip in clips]
    use_threads(config.threads)
    size_cache: dict = {}
    candidates, not_verified = [], list(not_built)
    for path in map(Path, artefacts):
        try:
            candidates.append(open_artefact(path, config.threads, size_cache))
        except EvaluationError as error:
            # A TensorRT engine needs a CUDA device: where there is none it is reported, not failed.
            if path.suffix != ".engine":
                raise
            not_verified.append(f"{path}: not verified here: {error.__cause__ or error}")
    if not candidates:
        raise EvaluationError(f"none of the artefacts can run on this machine: {'; '.join(not_verified)}")
    name_candidates(candidates)
    for spec in config.teachers:
        candidates.append(open_teacher(spec, config.threads, model_cache, reference=False))
    if config.reference:
        candidates.append(open_teacher(config.reference, config.threads, model_cache))

    overlay: dict[str, Any] = {"images": [], "masks": [], "predictions": {c.name: [] for c in candidates}}
    first: list[np.ndarray] = []  # the photo every candidate is timed on

    def observe(index: int, image: np.ndarray, mask: np.ndarray, probabilities: list[np.ndarray]) -> None:
        if index == 0:
            first.append(image)
        if index < config.overlay_images:
            overlay["images"].append(image)
            overlay["masks"].append(mask)
            for candidate, probability in zip(candidates, probabilities, strict=True):
                overlay["predictions"][candidate.name].append(probability)

    predictors = [candidate.predictor for candidate in candidates]
    quality = score(predictors, samples_of(split_dir, photo_rows, config.set), config.boundary_width, observe)
    latencies = time_predictors(predictors, first[0], config.warmup, config.repeats)
    results = []
    for candidate, metrics, latency in zip(candidates, quality, latencies, strict=True):
        results.append(
            {
                "model": candidate.model,
                "backend": candidate.backend,
                "reference": candidate.reference,
                "teacher": candidate.teacher,
                "path": str(candidate.path),
                "input_size": candidate.size,
                **metrics,
                **latency,
                "params": candidate.params,
                "macs": candidate.macs,
                "file_mb": file_megabytes(candidate.path),
                "timing": candidate.timing,
            }
        )
    reference = next((result for result in results if result["reference"]), None)
    for result in results:
        result["latency_ratio"] = result["latency_ms"] / reference["latency_ms"] if reference else None
    results.sort(key=lambda result: -result["iou"])
    return EvaluationResult(
        rows=results,
        images=len(photo_rows),
        set_name=config.set,
        threads=config.threads,
        overlay=overlay,
        speed=speed_comparison(results, config.latency_ratio_iou_window),
        not_verified=not_verified,
        video=video_rows(candidates, split_dir, clips, config),
        clips=len(clips),
        frames=sum(map(len, clips)),
        smooth=config.smooth,
    )


def video_rows(candidates: list[Candidate], split_dir: Path, clips: list[list[dict[str, Any]]], config: EvaluateConfig) -> list[dict[str, Any]]:
    """Per-frame IoU, dtSSD and flip rate of every candidate on the clips, per frame and smoothed; best dtSSD first."""
    if not clips:
        return []
    # One stream of frames (one progress bar), cut into clips in order.
    samples = samples_of(split_dir, [row for clip in clips for row in clip], f"{config.set} clips")
    clip_samples = (itertools.islice(samples, len(clip)) for clip in clips)
    scores = score_clips([c.predictor for c in candidates], clip_samples, config.smooth, config.boundary_width)
    rows = []
    for candidate, variants in zip(candidates, scores, strict=True):
        for variant, metrics in variants.items():
            rows.append({
                "model": candidate.model,
                "backend": candidate.backend,
                "variant": variant,
                "prior": bool(getattr(candidate.predictor, "takes_prior", False)),
                "reference": candidate.reference,
                "teacher": candidate.teacher,
                **metrics,
            })  # fmt: skip
    rows.sort(key=lambda row: (row["dtssd"] is None, row["dtssd"] or 0.0))
    return rows


def name_candidates(candidates: list[Candidate]) -> None:
    """Make model/backend names unique: a second file with the same pair gets its file name added."""
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.name in seen:
            candidate.backend = f"{candidate.backend} ({candidate.path.name})"
        seen.add(candidate.name)


def file_megabytes(path: Path) -> float | None:
    return os.path.getsize(path) / 1e6 if Path(path).is_file() else None


def speed_comparison(results: list[dict[str, Any]], iou_window: float) -> dict[str, Any] | None:
    """The best student (highest IoU of any of its artefacts) and its fastest artefact that keeps
    its IoU within `iou_window` of that best, against the reference; None without a reference."""
    reference = next((result for result in results if result["reference"]), None)
    students = [result for result in results if not result["teacher"]]
    if reference is None or not students:
        return None
    best_model = max(students, key=lambda result: result["iou"])
    eligible = [r for r in students if r["model"] == best_model["model"] and r["iou"] >= best_model["iou"] - iou_window]
    fastest = min(eligible, key=lambda result: result["latency_ms"])
    return {
        "student": f"{fastest['model']}/{fastest['backend']}",
        "student_size": fastest["input_size"],
        "student_latency_ms": fastest["latency_ms"],
        "student_iou": fastest["iou"],
        "reference": f"{reference['model']}",
        "reference_size": reference["input_size"],
        "reference_latency_ms": reference["latency_ms"],
        "reference_iou": reference["iou"],
        "latency_ratio": fastest["latency_ms"] / reference["latency_ms"],
    }


def speed_line(speed: dict[str, Any], images: int) -> str:
    """"latency ratio A / B at SxS: X.XX" (both sizes named when they differ) with both IoUs."""
    student, reference = (format_input_size(speed[key]) for key in ("student_size", "reference_size"))
    sizes = f"at {student}" if student == reference else f"at {student} vs {reference} (input sizes differ)"
    return (
        f"latency ratio {speed['student']} / {speed['reference']} {sizes}: {speed['latency_ratio']:.2f} "
        f"({speed['student_latency_ms']:.2f} ms vs {speed['reference_latency_ms']:.2f} ms; "
        f"IoU {speed['student_iou']:.4f} vs {speed['reference_iou']:.4f} on the same {images} images)"
    )

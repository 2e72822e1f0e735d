"""`trainer evaluate`: every artefact (checkpoint or export) and the reference on the same test images.

For each artefact (a `best.pt` checkpoint, an `.onnx`, `.tflite` or TensorRT `.engine` file,
opened with `trainer.runtime.open_runner`) and for the reference teacher (the MediaPipe selfie
segmenter by default) it measures, in one run:

- quality on the split's images at **ground-truth resolution**: the photo is resized to the
  model's S x S input (area when shrinking, bilinear when growing, as the teachers do), the
  S x S probabilities are resized bilinearly to the mask's size and thresholded at 0.5.
  Person IoU, background IoU and pixel accuracy are dataset-level (sums over every pixel of
  every image, like `trainer.metrics`); the boundary F-score is the mean over images of
  `trainer.metrics.boundary_f_scores` with the band width from params; alpha MAE is the mean
  of |probability - mask / 255| over every pixel.
- speed: batch-1 CPU latency (median and p90 over `repeats` calls after `warmup` calls, fixed
  thread count) of `runner.predict` on one S x S uint8 image, i.e. the model call including
  the uint8 -> float cast (students normalise inside their graph) and excluding the photo
  resizes. The MediaPipe reference is timed the same way through its own LiteRT interpreter
  with the same thread count: uint8 -> float / 255, `set_tensor`, `invoke`, `get_tensor`.
  Candidates take turns in blocks of calls (`measure_latencies`), so load from other
  processes falls on several of them alike.
- size: parameters and MACs (from the artefact's checkpoint, see `trainer.complexity`; an
  export counts those of `../best.pt` beside its `export/` folder) and the artefact's file size.

`trainer.evaluation_report` turns the results into metrics.json, plots, overlays and the
leaderboard.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from portraitseg.params import ConfigError
from portraitseg.progress import progress
from portraitseg.litert import open_tflite
from portraitseg.records import resolve
from portraitseg.scoring import person
from portraitseg.resize import resize_image, resize_probability
from trainer.complexity import count_macs, count_parameters
from trainer.metrics import boundary_f_scores

ARTEFACT_SUFFIXES = (".pt", ".onnx", ".tflite", ".engine")
CHECKPOINT_NAME = "best.pt"
EXPORT_DIR = "export"
REFERENCE_INPUT_SIZE = 256  # the MediaPipe selfie model's input side
LATENCY_ROUNDS = 5  # timing blocks per candidate (see measure_latencies)
BLOCK_WARMUP = 2  # untimed calls at the start of each block
SETTLE_SECONDS = 0.05  # pause before each block


class EvaluationError(RuntimeError):
    """Evaluation cannot run (no artefacts, empty split, unreadable artefact); says what to do."""


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate:` section of params.yaml (`portraitseg.params.load_section`); the only place its defaults live."""

    set: str = "test"  # which manifest of the split: test.jsonl
    boundary_width: int = 2  # px tolerance of the boundary F-score (DAVIS-style band)
    threads: int = 2  # CPU threads of every runtime, the reference included (a fair, fixed count)
    warmup: int = 10  # untimed calls first: allocations, XNNPACK weight packing, caches
    repeats: int = 100  # timed batch-1 calls; the median and p90 are reported
    max_images: int = 0  # 0 = every image of the set
    reference: str = "mediapipe-selfie"  # teacher evaluated beside the students; "" = none
    overlay_images: int = 6  # rows of reports/overlays.png
    latency_ratio_iou_window: float = 0.01  # the latency ratio takes the best student's fastest artefact
    # whose IoU is within this of that student's best

    def __post_init__(self) -> None:
        for name in ("threads", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluate.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("boundary_width", "warmup", "max_images", "overlay_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"evaluate.{name} must not be negative, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------
# Which files to evaluate


def discover_artefacts(models_dir: Path) -> list[Path]:
    """`models_dir/*/best.pt` and every `models_dir/*/export/*.{onnx,tflite,engine}`, sorted."""
    found = sorted(Path(models_dir).glob(f"*/{CHECKPOINT_NAME}"))
    for suffix in ARTEFACT_SUFFIXES[1:]:
        found += sorted(Path(models_dir).glob(f"*/{EXPORT_DIR}/*{suffix}"))
    return sorted(found)


def expand_artefacts(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder contributes its artefact files (`best.pt` only among checkpoints)."""
    artefacts = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = [
                file
                for file in sorted(path.iterdir())
                if file.suffix in ARTEFACT_SUFFIXES and (file.suffix != ".pt" or file.name == CHECKPOINT_NAME)
            ]
            if (path / EXPORT_DIR).is_dir():
                inside += expand_artefacts([path / EXPORT_DIR])
            artefacts += inside
        elif path.is_file():
            artefacts.append(path)
        else:
            raise EvaluationError(f"artefact {path} does not exist; pass a checkpoint, an exported file or a folder of them")
    return artefacts


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
# Quality


class QualityMetrics:
    """Person IoU, two-class mIoU, pixel accuracy, alpha MAE and boundary F over a set of images.

    Accumulates sums like `trainer.metrics.SegmentationMetrics`, but from probabilities and
    masks at each image's own resolution (images of different sizes cannot share a batch).
    """

    def __init__(self, boundary_width: int = 2):
        self.boundary_width = boundary_width
        self.sums = dict.fromkeys(
            ("person_inter", "person_union", "background_inter", "background_union", "correct", "pixels", "abs_error",
             "boundary_f", "images"),
            0.0,
        )  # fmt: skip

    def update(self, probability: np.ndarray, mask: np.ndarray) -> None:
        """One image: probability (H, W) float in [0, 1]; mask (H, W) uint8, 255 = person (soft values allowed)."""
        if probability.shape != mask.shape:
            raise ValueError(f"prediction {probability.shape} and mask {mask.shape} differ in size")
        predicted, truth = person(probability), person(mask)  # one rule: portraitseg.scoring
        sums = self.sums
        sums["person_inter"] += float(np.count_nonzero(predicted & truth))
        sums["person_union"] += float(np.count_nonzero(predicted | truth))
        sums["background_inter"] += float(np.count_nonzero(~predicted & ~truth))
        sums["background_union"] += float(np.count_nonzero(~predicted | ~truth))
        sums["correct"] += float(np.count_nonzero(predicted == truth))
        sums["pixels"] += float(mask.size)
        sums["abs_error"] += float(np.abs(probability.astype(np.float64) - mask / 255.0).sum())
        sums["boundary_f"] += float(boundary_f_scores(as_batch(predicted), as_batch(truth), self.boundary_width)[0])
        sums["images"] += 1

    def compute(self) -> dict[str, float]:
        """{"iou", "miou", "boundary_f", "pixel_accuracy", "alpha_mae"}; an empty union counts as IoU 1."""
        s = self.sums
        person_iou = s["person_inter"] / s["person_union"] if s["person_union"] else 1.0
        background_iou = s["background_inter"] / s["background_union"] if s["background_union"] else 1.0
        return {
            "iou": person_iou,
            "miou": (person_iou + background_iou) / 2,
            "boundary_f": s["boundary_f"] / s["images"] if s["images"] else 0.0,
            "pixel_accuracy": s["correct"] / s["pixels"] if s["pixels"] else 0.0,
            "alpha_mae": s["abs_error"] / s["pixels"] if s["pixels"] else 0.0,
        }


def as_batch(mask: np.ndarray) -> torch.Tensor:
    """(H, W) bool array -> (1, 1, H, W) tensor, the layout of `trainer.metrics`."""
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def predict_full_size(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, size: int) -> np.ndarray:
    """Run a batch-1 S x S `predict` on an (H, W, 3) photo; the probabilities come back at H x W."""
    height, width = image.shape[:2]
    batch = resize_image(image, size, size)[np.newaxis]  # (1, S, S, 3) uint8
    probability = np.asarray(predict(batch))[0]  # (S, S) float32
    return resize_probability(probability, height, width)


# ---------------------------------------------------------------------------------------------
# Speed


def measure_latency(call: Callable[[], Any], warmup: int, repeats: int) -> dict[str, float]:
    """Median and p90 wall time of `call()` in milliseconds, after `warmup` untimed calls."""
    return measure_latencies({"call": call}, warmup, repeats)["call"]


def measure_latencies(calls: Mapping[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median and p90 (ms) of each call: `repeats` timed calls each, in `LATENCY_ROUNDS` blocks.

    The candidates take turns block by block, so a burst of load from another process on a
    shared machine falls on several of them instead of on one candidate's whole run. Turns are
    blocks, not single calls: PyTorch (OpenMP), ONNX Runtime and LiteRT each keep a thread pool
    whose idle threads spin for a while after a call, and alternating call by call made the
    pools fight (PyTorch 400 ms instead of 15 ms here). Each block therefore starts after a
    pause and a few untimed calls.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    rounds = min(LATENCY_ROUNDS, repeats)
    for round_index in progress(range(rounds), desc="latency", unit="round"):
        block = repeats // rounds + (1 if round_index < repeats % rounds else 0)
        for name, call in calls.items():
            time.sleep(SETTLE_SECONDS)  # let the previous runtime's spinning threads go idle
            for _ in range(min(warmup, BLOCK_WARMUP)):
                call()
            for _ in range(block):
                start = time.perf_counter_ns()
                call()
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: summarise_times(values) for name, values in times.items()}


def summarise_times(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"latency_ms": statistics.median(ordered), "latency_p90_ms": p90}


# ---------------------------------------------------------------------------------------------
# What is evaluated: artefacts and the reference behind one small interface


@dataclasses.dataclass
class Candidate:
    """One model x backend: how to predict, how to time it, and what it is."""

    model: str
    backend: str  # e.g. pytorch-fp32, onnxruntime-int8, litert-fp16
    size: int  # square input side S
    path: Path
    predict_full: Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (H, W) float32 probabilities
    time_once: Callable[[np.ndarray], Any]  # one batch-1 model call on an S x S uint8 image
    params: int | None = None
    macs: int | None = None
    reference: bool = False
    timing: str = ""  # what the latency covers

    @property
    def name(self) -> str:
        return f"{self.model}/{self.backend}"


def open_artefact(path: Path, threads: int, size_cache: dict[Path, tuple[int, int]]) -> Candidate:
    """A Candidate for a checkpoint or exported file; RunnerError becomes an EvaluationError naming it."""
    from trainer.runtime import RunnerError, open_runner

    try:
        runner = open_runner(path, threads=threads)
    except RunnerError as error:
        raise EvaluationError(f"cannot evaluate {path}: {error}") from error
    size = int(runner.input_size)
    params = macs = None
    checkpoint = checkpoint_of(path)
    if checkpoint is not None:
        params, macs = complexity_of(checkpoint, size, size_cache)
    precision = getattr(runner, "precision", "") or ""
    return Candidate(
        model=model_name_of(path),
        backend=f"{runner.backend}-{precision}" if precision else str(runner.backend),
        size=size,
        path=path,
        predict_full=lambda image: predict_full_size(runner.predict, image, size),
        time_once=runner.predict,
        params=params,
        macs=macs,
        timing=f"runner.predict on the {'GPU' if runner.backend == 'tensorrt' else 'CPU'}: uint8 (1, S, S, 3) -> "
        "probabilities (cast and normalisation in the call)",
    )


def complexity_of(checkpoint: Path, size: int, cache: dict[Path, tuple[int, int]]) -> tuple[int | None, int | None]:
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


def open_reference(spec: str, threads: int, model_cache: Path | None) -> Candidate:
    """The reference teacher: quality through `teacher.predict`, latency through its own interpreter."""
    from datatool.models import ModelMissingError
    from datatool.teachers import TeacherError, create_teacher

    try:
        teacher = create_teacher(spec, models_dir=model_cache)
    except (TeacherError, ModelMissingError) as error:
        raise EvaluationError(f"cannot build the reference {spec}: {error}") from error
    model_file = getattr(teacher, "model_file", None)
    if spec == "mediapipe-selfie" and model_file is not None:
        time_once, timing = litert_timer(Path(model_file), threads), (
            "LiteRT interpreter: uint8 (1, 256, 256, 3) / 255 -> set_tensor, invoke, get_tensor"
        )
    else:
        # Other teachers hide their runtime; time their whole predict on an image already at 256 x 256.
        time_once, timing = (lambda image: teacher.predict([image[0]])), "teacher.predict on a 256 x 256 image"
    return Candidate(
        model=spec,
        backend="litert-fp32" if spec == "mediapipe-selfie" else "teacher",
        size=REFERENCE_INPUT_SIZE,
        path=Path(model_file) if model_file else Path(spec),
        predict_full=lambda image: teacher.predict([image])[0],
        time_once=time_once,
        reference=True,
        timing=timing,
    )


def litert_timer(model_file: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A batch-1 call of the MediaPipe model on a (1, 256, 256, 3) uint8 image, with `threads` threads."""
    interpreter = open_tflite(model_file, threads)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]

    def call(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(input_index, image.astype(np.float32) / 255.0)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)[..., 0]  # (1, 256, 256)

    return call


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
    not_verified: list[str] = dataclasses.field(default_factory=list)  # "PATH: not verified here: reason"


def load_rows(split_dir: Path, set_name: str, max_images: int) -> list[dict[str, Any]]:
    manifest = Path(split_dir) / f"{set_name}.jsonl"
    if not manifest.is_file():
        raise EvaluationError(f"no {manifest}; run `datatool split` (or `dvc repro split`) or pass --split DIR")
    from portraitseg.records import SplitError, read_split

    try:
        rows = read_split(split_dir, set_name)
    except SplitError as error:
        raise EvaluationError(str(error)) from error
    return rows[:max_images] if max_images else rows


def read_sample(split_dir: Path, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB photo and its (H, W) uint8 mask, errors naming the file."""
    from portraitseg.imagefiles import read_rgb

    try:
        image = read_rgb(resolve(split_dir, row, "image"))
    except OSError as error:
        raise EvaluationError(f"{error}; re-run `datatool split` or restore the file") from error
    mask_path = resolve(split_dir, row, "mask")
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise EvaluationError(f"cannot read mask {mask_path} (missing, truncated or not an image); re-run `datatool split`")
    if mask.shape != image.shape[:2]:
        raise EvaluationError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}")
    return image, mask


def evaluate(
    artefacts: Sequence[Path],
    split_dir: Path,
    config: EvaluateConfig,
    *,
    model_cache: Path | None = None,
) -> EvaluationResult:
    """Quality and speed of every artefact and the reference on the split's `config.set` images."""
    if not artefacts:
        raise EvaluationError(
            "no artefacts to evaluate: pass --artefact PATH (a best.pt or an exported file) or --models-dir DIR "
            "holding <model>/best.pt (train one with `trainer train`)"
        )
    rows = load_rows(split_dir, config.set, config.max_images)
    torch.set_num_threads(config.threads)
    cv2.setNumThreads(config.threads)
    size_cache: dict = {}
    candidates, not_verified = [], []
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
    if config.reference:
        candidates.append(open_reference(config.reference, config.threads, model_cache))

    metrics = {candidate.name: QualityMetrics(config.boundary_width) for candidate in candidates}
    overlay: dict[str, Any] = {"images": [], "masks": [], "predictions": {c.name: [] for c in candidates}}
    first_image = None
    for index, row in enumerate(progress(rows, desc=f"evaluate {config.set}", total=len(rows))):
        image, mask = read_sample(split_dir, row)
        first_image = image if first_image is None else first_image
        keep = index < config.overlay_images
        if keep:
            overlay["images"].append(image)
            overlay["masks"].append(mask)
        for candidate in candidates:
            probability = candidate.predict_full(image)
            metrics[candidate.name].update(probability, mask)
            if keep:
                overlay["predictions"][candidate.name].append(probability)

    samples = {size: resize_image(first_image, size, size)[np.newaxis] for size in {c.size for c in candidates}}
    calls = {c.name: functools.partial(c.time_once, samples[c.size]) for c in candidates}  # a real photo, (1, S, S, 3)
    latencies = measure_latencies(calls, config.warmup, config.repeats)
    results = []
    for candidate in candidates:
        latency = latencies[candidate.name]
        results.append(
            {
                "model": candidate.model,
                "backend": candidate.backend,
                "reference": candidate.reference,
                "path": str(candidate.path),
                "input_size": candidate.size,
                **metrics[candidate.name].compute(),
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
        images=len(rows),
        set_name=config.set,
        threads=config.threads,
        overlay=overlay,
        speed=speed_comparison(results, config.latency_ratio_iou_window),
        not_verified=not_verified,
    )


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
    students = [result for result in results if not result["reference"]]
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
    student, reference = speed["student_size"], speed["reference_size"]
    sizes = (
        f"at {student}x{student}"
        if student == reference
        else f"at {student}x{student} vs {reference}x{reference} (input sizes differ)"
    )
    return (
        f"latency ratio {speed['student']} / {speed['reference']} {sizes}: {speed['latency_ratio']:.2f} "
        f"({speed['student_latency_ms']:.2f} ms vs {speed['reference_latency_ms']:.2f} ms; "
        f"IoU {speed['student_iou']:.4f} vs {speed['reference_iou']:.4f} on the same {images} images)"
    )

"""`export_checkpoint`: one checkpoint -> one artefact (format + precision) -> its parity report.

    export_checkpoint(checkpoint, "tflite", "int8", output_dir, split_dir, config, calibration=...)
      ├─ refuse an unsupported format / precision pair (before any work)
      ├─ load the checkpoint (CheckpointError for damaged or foreign files)
      ├─ build the artefact (int8: calibration samples from --calibration or the split's train set,
      │  with a second-frame prior channel for a prior student;
      │  TFLite int8 with export.qat_epochs > 0: then quantization-aware training on the train set);
      │  a converter that cannot build it -> status "not built: <reason>", no artefact, no parity
      ├─ score it and fp32 PyTorch on the split's validation photos as `trainer evaluate` scores
      │  (trainer.harness) -> parity numbers (trainer.export.parity)
      └─ write <output_dir>/<format>-<precision>.json next to <format>-<precision>.<suffix>

The `export:` section of params.yaml (`ExportConfig`) sets the IoU drop parity allows, how many
validation and calibration images to use, the seed, threads and latency runs; the split folder
comes from the command line (`--split-dir`), never from inside the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portraitseg.params import ConfigError
from portraitseg.resize import InputSize, as_input_size
from trainer.export import tensorrt
from trainer.data import PriorSimulation
from trainer.export.calibration import load_calibration, with_second_frame_priors
from trainer.export.parity import compare
from trainer.export.qat import export_tflite_int8_qat
from trainer.harness import use_threads
from trainer.runtime import open_runner
from trainer.checkpoint import load_model

SUPPORTED: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "int8"),
    "tflite": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "tensorrt": ".engine"}
NOT_BUILT = "not built: "  # the status of an artefact a converter could not build, before the reason


class ExportError(ValueError):
    """An export that cannot run as asked (unsupported pair, missing validation split)."""


class ConversionError(ExportError):
    """A converter (litert-torch, torch.onnx, ONNX Runtime's quantizer) cannot build this artefact from this model."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}; the other formats and precisions are built separately and may still work")
        self.reason = reason  # "the converter cannot build it from MODEL (TYPE: first line of its message)"


@dataclass(frozen=True)
class ExportConfig:
    """The `export:` section of params.yaml (`portraitseg.params.load_section`); the only place its defaults live."""

    max_parity_iou_drop: float = 0.01  # parity fails when an artefact loses more validation IoU than this
    # against fp32 PyTorch
    validation_images: int = 32  # parity is checked on the first N rows of val.jsonl
    calibration_images: int = 64  # int8 calibration samples drawn from the split's train set
    seed: int = 0  # which train images calibrate
    threads: int = 2  # CPU threads of every runtime (parity and latency)
    latency_runs: int = 20  # timed batch-1 runs per artefact (0 skips timing), after trainer.harness.WARMUP_CALLS
    # > 0: the TFLite int8 artefact is fine-tuned this many epochs with quantization-aware training
    # (trainer.export.qat) on the split's train set after calibration; 0: post-training only
    qat_epochs: int = 0
    qat_lr: float = 3e-6  # AdamW learning rate of that fine-tune (README "Quantization-aware training": 3e-5 undoes it)
    qat_batch_size: int = 16
    # The artefacts' input, S or [height, width]; 0 = the training size. The students are fully
    # convolutional, so one trained at 224 x 224 can run at 208 x 272 (README "Starting from
    # MediaPipe's own model" has a case where that is better).
    size: int | list[int] = 0

    def __post_init__(self) -> None:
        if self.size != 0:
            try:
                as_input_size(self.size)
            except ValueError as error:
                raise ConfigError(f"export.size: {error}") from None

    def input_size(self, training_size: "InputSize | int | list[int]") -> InputSize:
        """The artefacts' (height, width): `size`, or `training_size` where `size` is 0."""
        return as_input_size(self.size or training_size)


def supported_pairs() -> str:
    return ", ".join(f"{fmt} {precision}" for fmt, precisions in SUPPORTED.items() for precision in precisions)


def check_supported(fmt: str, precision: str) -> None:
    if precision not in SUPPORTED.get(fmt, ()):
        raise ExportError(f"unsupported format/precision {fmt} {precision}; supported: {supported_pairs()}")


@dataclass
class ExportResult:
    name: str  # e.g. "tflite-int8"
    artefact: Path | None  # None when it could not be built here (TensorRT without CUDA)
    report: dict[str, Any]
    report_path: Path

    @property
    def status(self) -> str:
        return self.report["status"]

    @property
    def failed(self) -> bool:
        """The artefact was built and lost more IoU than parity allows."""
        return self.status == "failed"

    @property
    def not_built(self) -> bool:
        """A converter could not build it (the reason is in the status); there is no artefact."""
        return self.status.startswith(NOT_BUILT)


def export_checkpoint(
    checkpoint: Path,
    fmt: str,
    precision: str,
    output_dir: Path,
    split_dir: Path,
    config: ExportConfig | None = None,
    calibration: Path | None = None,
    size: "InputSize | int | None" = None,
) -> ExportResult:
    """Build `fmt`/`precision` from `checkpoint` into `output_dir` and check it on the validation
    photos of `split_dir` (see the module doc); int8 calibrates on `calibration`, else on its train set.

    `size` is the artefact's input size, S or (height, width) (default: `config.size`, and where
    that is 0 the training size; the students are fully convolutional, so e.g. a 160 px student
    exports at 256 to run where a 256 px model does, or at 144 x 256 to take landscape frames).
    """
    check_supported(fmt, precision)
    config = config or ExportConfig()
    model, state = load_model(checkpoint)
    size = as_input_size(size) if size else config.input_size(state["config"]["size"])
    name = f"{fmt}-{precision}"
    output_dir.mkdir(parents=True, exist_ok=True)
    artefact = output_dir / f"{name}{SUFFIX[fmt]}"
    base = {
        "artefact": name,
        "format": fmt,
        "precision": precision,
        "checkpoint": str(checkpoint),
        "model": state["model_name"],
        "input_size": list(size),  # [height, width]
    }
    report_path = output_dir / f"{name}.json"

    # Checked before any work: the parity check needs the validation split (a TensorRT engine that
    # cannot be built here is never run, so it does not).
    split_dir = Path(split_dir)
    runs_here = fmt != "tensorrt" or tensorrt.unavailable_reason() is None
    if runs_here and not (split_dir / "val.jsonl").is_file():
        raise ExportError(
            f"no validation split at {split_dir} (val.jsonl) for the parity check; "
            "pass --split-dir SPLIT_DIR (a `datatool split` output)"
        )

    samples = None
    quantization_aware = fmt == "tflite" and precision == "int8" and config.qat_epochs > 0
    if precision == "int8":
        source = calibration or split_dir
        samples = load_calibration(source, size, config.calibration_images, config.seed)
        base["calibration"] = {"source": str(source), "images": len(samples)}
        if model.in_channels == 4:
            samples = with_second_frame_priors(model, samples)
            base["calibration"]["prior"] = "the fp32 model's output with an empty prior (a second frame)"
        base["quantization"] = {"method": "post-training"}

    try:
        with converter_errors(name, state["model_name"]):
            if fmt == "tensorrt":
                built = build_tensorrt(model, size, precision, artefact, samples, checkpoint, output_dir, base)
                if built is not None:
                    report_path.write_text(json.dumps(built, indent=2) + "\n")
                    return ExportResult(name, None, built, report_path)
            elif quantization_aware:
                _, base["quantization"] = export_tflite_int8_qat(
                    model, size, samples, split_dir, config.qat_epochs, config.qat_lr, config.qat_batch_size, config.seed,
                    artefact, PriorSimulation(empty_share=state["config"]["prior_empty"]) if model.in_channels == 4 else None,
                )  # fmt: skip
            else:
                build_artefact(model, size, fmt, precision, artefact, samples)
    except ConversionError as error:
        # Recorded, not raised: a pipeline builds every format in turn, and one that this model
        # cannot take must not hide the others. A file left by an earlier run of another
        # checkpoint would be evaluated as this one's, so it goes.
        artefact.unlink(missing_ok=True)
        report = {**base, "status": f"{NOT_BUILT}{error.reason}"}
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        return ExportResult(name, None, report, report_path)

    use_threads(config.threads)
    reference = open_runner(checkpoint, config.threads, size=size)
    runner = open_runner(artefact, config.threads)
    parity = compare(
        runner.as_predictor(), reference.as_predictor(), split_dir, config.validation_images,
        config.max_parity_iou_drop, config.latency_runs,
    )  # fmt: skip
    report = {
        **base,
        "file": artefact.name,
        "backend": runner.backend,
        "size_bytes": artefact.stat().st_size,
        "threads": config.threads,
        **parity,
        "status": "passed" if parity["passed"] else "failed",
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return ExportResult(name, artefact, report, report_path)


@contextlib.contextmanager
def converter_errors(name: str, model_name: str) -> Iterator[None]:
    """Turn a converter's own failure (litert-torch, torch.onnx, ONNX Runtime's quantizer) into a `ConversionError`.

    The converters raise whatever their passes raise (litert-torch's int8 layout pass an
    AssertionError); the user gets the artefact, the model and the converter's reason instead of
    a traceback. Our own errors and OS errors (a full disk) pass through unchanged.
    """
    try:
        yield
    except (ExportError, OSError):
        raise
    except Exception as error:  # noqa: BLE001 - a third-party converter's failure, re-raised with context
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConversionError(name, f"the converter cannot build it from {model_name} ({type(error).__name__}: {reason})") from error


def build_artefact(model, size: InputSize, fmt: str, precision: str, artefact: Path, samples) -> None:
    from trainer.export import onnx as onnx_export
    from trainer.export import tflite

    if fmt == "onnx" and precision == "fp32":
        onnx_export.export_onnx(model, size, artefact)
    elif fmt == "onnx" and precision == "int8":
        write_onnx_int8(model, size, samples, artefact)
    elif fmt == "tflite" and precision == "fp32":
        tflite.export_tflite(model, size, artefact)
    elif fmt == "tflite" and precision == "fp16":
        tflite.export_tflite_fp16(model, size, artefact)
    elif fmt == "tflite" and precision == "int8":
        tflite.export_tflite_int8(model, size, samples, artefact)


def write_onnx_int8(model, size: InputSize, samples, target: Path) -> None:
    """The QDQ int8 ONNX graph at `target`, quantized from a temporary fp32 export beside it."""
    from trainer.export import onnx as onnx_export

    fp32 = target.with_name(target.stem + ".fp32-tmp.onnx")
    try:
        onnx_export.export_onnx(model, size, fp32)
        onnx_export.quantize_onnx_int8(fp32, samples, target)
    finally:
        fp32.unlink(missing_ok=True)


def build_tensorrt(
    model, size: InputSize, precision: str, artefact: Path, samples, checkpoint: Path, output_dir: Path, base: dict[str, Any]
) -> dict[str, Any] | None:
    """Write the engine's ONNX input; build the engine when possible, else return the "not verified" report."""
    from trainer.export import onnx as onnx_export

    # In a subfolder: the export folder's top level holds only artefacts to evaluate, and this
    # ONNX file is the same graph as onnx-fp32 / onnx-int8, only the engine's build input.
    onnx_path = output_dir / "tensorrt" / artefact.with_suffix(".onnx").name
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        write_onnx_int8(model, size, samples, onnx_path)
    else:
        onnx_export.export_onnx(model, size, onnx_path)
    reason = tensorrt.unavailable_reason()
    if reason is None:
        artefact.with_suffix(".json").write_text(json.dumps({**base, "status": "building"}) + "\n")
        tensorrt.build_engine(onnx_path, artefact, precision)
        return None
    artefact.unlink(missing_ok=True)  # never leave an engine that this run did not build
    return {
        **base,
        "onnx": str(onnx_path),
        "status": f"not verified here: {reason}",
        "commands": tensorrt.build_commands(onnx_path, artefact, precision, checkpoint, output_dir),
    }


def summary_line(result: ExportResult) -> str:
    """One line per artefact for the terminal."""
    report = result.report
    if result.not_built:
        return f"{result.name}: {report['status']}; the other formats and precisions are built separately"
    if result.artefact is None:
        return f"{result.name}: {report['status']}; build it with: {report['commands'][0]}"
    latency = f", {report['latency_ms']:.1f} ms" if report.get("latency_ms") is not None else ""
    quantization = report.get("quantization", {})
    qat = f" after {quantization['epochs']} QAT epochs" if "epochs" in quantization else ""
    return (
        f"{result.name}{qat}: {report['status']} - max |dp| {report['max_abs_diff']:.2e}, IoU {report['iou']:.4f} vs "
        f"{report['reference_iou']:.4f} fp32 (drop {report['iou_drop']:+.4f}, allowed {report['max_iou_drop']}), "
        f"{report['size_bytes'] / 1e6:.2f} MB{latency} -> {result.artefact}"
    )

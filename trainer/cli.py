"""The `trainer` command line. Training, export and evaluation commands join this group as they land."""

import importlib.metadata
import platform
from pathlib import Path

import click

from portraitseg.params import DefaultFrom
from trainer import __version__

BACKENDS = ("torch", "torchvision", "onnx", "onnxruntime", "ai-edge-litert", "litert-torch", "dvc", "dvclive")
# The dataclass of each params section a command reads: the one place its defaults live.
SECTION_DEFAULTS = {
    "train": "trainer.config:TrainConfig",
    "evaluate": "trainer.evaluate:EvaluateConfig",
    "export": "trainer.export.pipeline:ExportConfig",
}


def params_option(help_text: str, must_exist: bool = False):
    """The `--params FILE` option (default params.yaml) that every command reading a params section takes.

    Unless `must_exist`, an absent file reaches the command as None: the section's defaults apply.
    """
    return click.option(
        "--params",
        "params_path",
        type=click.Path(exists=must_exist, dir_okay=False, path_type=Path),
        default="params.yaml",
        show_default=True,
        callback=lambda ctx, param, path: path if path.is_file() else None,
        help=help_text,
    )


def setting_option(*param_decls: str, key: str, **attrs):
    """An option that overrides params key `key` ("section.field") when given; --help shows the key
    and the section dataclass's default."""
    section, _, field = key.partition(".")
    return click.option(
        *param_decls, cls=DefaultFrom, defaults=SECTION_DEFAULTS[section], field=field, params_key=key, **attrs
    )


class InputSizeType(click.ParamType):
    """A model input size on the command line: S (a square, e.g. 192) or HxW (e.g. 144x256, landscape)."""

    name = "S|HxW"

    def __init__(self, min_side: int = 16):
        self.min_side = min_side

    def convert(self, value, param, ctx):
        from portraitseg.resize import as_input_size

        if isinstance(value, tuple):
            return value
        try:
            size = as_input_size(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if min(size) < self.min_side:
            self.fail(f"{value!r}: each side must be at least {self.min_side} px", param, ctx)
        return size


def split_dir_option(help_text: str):
    """`--split-dir DIR`: the `datatool split` folder (train/val/test.jsonl), one name for every command."""
    return click.option(
        "--split-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default="data/processed/split",
        show_default=True,
        help=help_text,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trainer")
def main() -> None:
    """Train, export and evaluate compact person-segmentation models."""


@main.command()
def env() -> None:
    """Show the versions and accelerators the trainer would use on this machine."""
    import onnxruntime
    import torch

    click.echo(f"python {platform.python_version()} on {platform.machine()}, {torch.get_num_threads()} torch threads")
    for package in BACKENDS:
        try:
            click.echo(f"{package:>16} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            click.echo(f"{package:>16} not installed")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (training runs on the CPU)"
    click.echo(f"{'CUDA device':>16} {cuda}")
    click.echo(f"{'ORT providers':>16} {', '.join(onnxruntime.get_available_providers())}")


@main.command()
@params_option("YAML file whose `train:` section configures the run.", must_exist=True)
@split_dir_option("`datatool split` folder whose train.jsonl and val.jsonl the run reads.")
@setting_option("--model", key="train.model", help="Registered model to train; a wrong name lists them.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for checkpoints, metrics and plots.  [default: models/<model>]",
)
@setting_option(
    "--init-weights", key="train.init_weights",
    help="Weights to start from: a `trainer import-encoder` file (one that says `none` starts from random weights) or a best.pt.",
)  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue from <output>/last.pt.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def train(
    params_path: Path,
    split_dir: Path,
    model: str | None,
    output: Path | None,
    init_weights: str | None,
    resume: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train one student on the split manifests.

    KEY=VALUE pairs override the `train:` section, e.g. `epochs=5 loss_weights.dice=0.5`.
    """
    from portraitseg.records import SplitError
    from trainer.checkpoint import CheckpointError
    from portraitseg.params import ConfigError, given, load_section, parse_overrides
    from trainer.config import TrainConfig
    from trainer.models import ModelError, is_model, list_models
    from trainer.train import fit

    try:
        config = load_section(
            params_path, "train", TrainConfig, {**parse_overrides(overrides), **given(model=model, init_weights=init_weights)}
        )
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    if not is_model(config.model):
        raise click.UsageError(f"unknown model {config.model!r}; registered models: {', '.join(list_models())}")
    output = output or Path("models") / config.model
    try:
        summary = fit(config, split_dir, output, resume=resume)
    except ModelError as error:
        raise click.UsageError(f"{error}; fix train.model_options in {params_path} or on the command line") from error
    except (CheckpointError, SplitError, OSError) as error:  # OSError: an image that cannot be read, a full disk
        raise click.ClickException(str(error)) from error
    click.echo(
        f"{config.model}: val IoU {summary['val_iou']:.4f} (Dice {summary['val_dice']:.4f}, boundary F "
        f"{summary['val_boundary_f']:.4f}) at epoch {summary['best_epoch']}/{summary['epochs']}, "
        f"{summary['params'] / 1e6:.3f} M parameters -> {output}"
    )


@main.command("import-encoder")
@click.option(
    "--tflite",
    "tflite_name",
    required=True,
    help="A TFLite file to start from, or the name of a cached teacher file (`datatool teacher-files list`): "
    "MediaPipe's selfie segmenter (`mediapipe-selfie`, the whole `selfie_segmenter` student), or a quantized "
    "MobileNetV2, DeepLabV3 on PASCAL VOC (deeplabv3_mnv2_pascal_quant.tflite, width 1.0; "
    "deeplabv3_mnv2_dm05_pascal_quant.tflite, width 0.5) or the ImageNet classifier "
    "(mobilenet_v2_1.0_224_quant.tflite), e.g. in ../shared/weights (the encoder of `mobile_unet`; the width comes "
    "from the file). An empty value writes an init file that says `none`: the student starts from random weights "
    "(the pipeline's `encoder` stage when `encoder.tflite` is empty).",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Photos for the check against the TFLite interpreter and, for a MobileNetV2, its BatchNorm calibration "
    "(the first 16 readable ones; 4 for MediaPipe's model).",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .pt file to write.")
@click.option(
    "--teacher-files",
    "teacher_files_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where a --tflite teacher-file name is cached (the pipeline's data/teacher-files).  [default: the user cache]",
)
def import_encoder(tflite_name: str, images_dir: Path, output: Path, teacher_files_dir: Path | None) -> None:
    """Pretrained weights from a TFLite file: MediaPipe's selfie segmenter, or a MobileNetV2 encoder.

    MediaPipe's selfie segmenter gives a whole `selfie_segmenter` (use `model=selfie_segmenter`).
    A MobileNetV2 file (DeepLabV3 or the ImageNet classifier) gives the encoder of `mobile_unet`
    or `lraspp_mnv2` with `model_options.width_mult=<the printed width>`. Use the output as
    `train.init_weights` (or `trainer train --init-weights`).
    """
    from portraitseg.teacher_files import ModelMissingError, list_models, model_path
    from trainer.checkpoint import write_no_encoder
    from trainer.models.encoder_import import EncoderImportError, import_mobilenet_encoder
    from trainer.models.selfie_import import NotSelfieFileError, import_selfie_segmenter

    if not tflite_name.strip():
        write_no_encoder(output, "no --tflite file given (encoder.tflite is empty)")
        click.echo(f"no encoder file given: {output} says `none`, so the student starts from random weights")
        return
    try:
        tflite_path = model_path(tflite_name, teacher_files_dir) if tflite_name in list_models() else Path(tflite_name)
    except ModelMissingError as error:
        raise click.ClickException(str(error)) from error
    try:
        summary = import_selfie_segmenter(tflite_path, images_dir, output)
    except NotSelfieFileError:
        summary = None
    except EncoderImportError as error:
        raise click.ClickException(str(error)) from error
    if summary is not None:
        height, width = summary["input_size"]
        click.echo(
            f"MediaPipe selfie segmenter {summary['source']} ({height}x{width}): {summary['convolutions']} convolutions "
            f"-> {summary['tensors']} tensors of {summary['model']}; probabilities vs the TFLite interpreter differ by at "
            f"most {summary['check_max_difference']:.1e} on {summary['check_images']} photos (the input scaling folded into "
            f"the stem); {summary['seconds']:.1f} s -> {output}"
        )
    else:
        try:
            summary = import_mobilenet_encoder(tflite_path, images_dir, output)
        except EncoderImportError as error:
            raise click.ClickException(str(error)) from error
        click.echo(
            f"{summary['source_kind']} {summary['source']} (MobileNetV2 width {summary['model_options']['width_mult']}): "
            f"{summary['convolutions']} convolutions -> "
            f"{summary['tensors']} tensors of {summary['model']} {summary['model_options']} encoder "
            f"({len(summary['widened'])} widened to torchvision's channel rounding); stride-16 features vs the TFLite "
            f"interpreter: correlation {summary['check_correlation']:.4f} on {summary['check_image']}; BatchNorm "
            f"calibrated on {summary['calibration_images']} photos; {summary['seconds']:.1f} s -> {output}"
        )
    for skipped in summary["skipped_images"]:
        click.echo(f"  skipped {skipped['file']}: {skipped['reason']}", err=True)


@main.command()
@click.argument("artefact")
@click.option("--size", type=InputSizeType(), help="A checkpoint's input: S or HxW px (e.g. 144x256).  [default: its training size]")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="CPU threads of the runtime.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="How many of the slowest layers to list.")
@click.option("--runs", type=click.IntRange(min=1), default=30, show_default=True, help="Timed runs after warm-up.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the whole profile as JSON.")
def profile(artefact: str, size: tuple[int, int] | None, threads: int, top: int, runs: int, output: Path | None) -> None:
    """Where ARTEFACT's CPU time goes: time per operator type and the slowest layers (Markdown).

    ARTEFACT is a checkpoint (best.pt), an .onnx or .tflite file, or `mediapipe-selfie` /
    `mediapipe-selfie-landscape` (the cached teacher files). PyTorch uses torch.profiler, ONNX Runtime its own profiler, LiteRT
    times each operator cut out of the model with XNNPACK; the header says what was measured.
    """
    from trainer.profile import ProfileError, format_profile, profile_artefact, write_profile_json

    try:
        result = profile_artefact(artefact, threads=threads, runs=runs, size=size)
        click.echo(format_profile(result, top))
        if output:
            click.echo(f"-> {write_profile_json(result, output)}")
    except (ProfileError, OSError) as error:  # OSError: the JSON file cannot be written
        raise click.ClickException(str(error)) from error


@main.command()
@click.argument("models_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default="models")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Markdown file to write.  [default: <models_dir>/runs.md]",
)
def runs(models_dir: Path, output: Path | None) -> None:
    """Table of every training run in MODELS_DIR (each <name>/metrics.json), best validation IoU first."""
    from trainer.runs import RunsError, write_runs

    output = output or models_dir / "runs.md"
    try:
        results = write_runs(models_dir, output)
    except RunsError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{len(results)} trained students -> {output}")


# --- trainer evaluate (issue 6) ---------------------------------------------------------------
@main.command()
@click.option(
    "--artefact",
    "artefacts",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A checkpoint (best.pt), an exported .onnx/.tflite/.engine file, or a folder of them; repeatable.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also evaluate every <dir>/*/best.pt and <dir>/*/export/*.{onnx,tflite,engine}.",
)
@split_dir_option("`datatool split` folder; --set picks its manifest.")
@setting_option("--set", "set_name", key="evaluate.set", help="Which manifest of the split (test, val, train).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default="reports", show_default=True)
@setting_option("--threads", key="evaluate.threads", type=int, help="CPU threads of every runtime.")
@setting_option("--max-images", key="evaluate.max_images", type=int, help="Evaluate the first N images only (0 = all).")
@setting_option(
    "--source", "sources", key="evaluate.sources", multiple=True,
    help="Evaluate only rows of this source (e.g. people-dev); repeatable.",
)  # fmt: skip
@params_option("YAML file whose `evaluate:` section sets band width, threads, warm-up, repeats, reference (absent = defaults).")
@click.option(
    "--teacher-files",
    "model_cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Model files of the reference teacher (`datatool teacher-files fetch`).  [default: ~/.cache/portraitseg/teacher-files]",
)
def evaluate(
    artefacts: tuple[Path, ...],
    models_dir: Path | None,
    split_dir: Path,
    set_name: str | None,
    output: Path,
    threads: int | None,
    max_images: int | None,
    sources: tuple[str, ...],
    params_path: Path | None,
    model_cache: Path | None,
) -> None:
    """Quality and batch-1 CPU latency of every model x backend beside the MediaPipe reference."""
    from portraitseg.params import ConfigError, load_section
    from trainer.evaluate import (
        EvaluateConfig, EvaluationError, discover_artefacts, evaluate, expand_artefacts, unbuilt_artefacts,
    )  # fmt: skip
    from trainer.evaluation_report import write_reports

    overrides = {"set": set_name, "threads": threads, "max_images": max_images, "sources": list(sources) or None}
    try:
        config = load_section(params_path, "evaluate", EvaluateConfig, overrides)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    try:
        paths = expand_artefacts(artefacts) + (discover_artefacts(models_dir) if models_dir else [])
        folders = [*artefacts, *(sorted(models_dir.glob("*")) if models_dir else [])]  # each looked into with its export/
        result = evaluate(
            list(dict.fromkeys(paths)), split_dir, config, model_cache=model_cache, not_built=unbuilt_artefacts(folders)
        )
    except EvaluationError as error:
        raise click.ClickException(str(error)) from error
    written = write_reports(result, output)
    click.echo(written["leaderboard"].read_text(encoding="utf-8"))  # ends with the latency ratio line
    click.echo(f"{len(result.rows)} model x backend results on {result.images} images -> {output}/")


# --- trainer predict (issue 16) ----------------------------------------------------------------
@main.command()
@click.option(
    "--model", required=True,
    help="A checkpoint (best.pt), an exported .onnx/.tflite/.engine, or a teacher: mediapipe-selfie, rembg, an ensemble A+B.",
)  # fmt: skip
@click.option(
    "--source", required=True,
    help="An image or video file, a folder (recursive), a glob ('photos/*.jpg'), a camera index (0), "
    "a stream URL (rtsp://...) or a .txt file listing those.",
)  # fmt: skip
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder: OUTPUT/<kind>/<input name>.")
@click.option(
    "--save", default="mask", show_default=True,
    help="Comma-separated outputs: mask (0/255 PNG), matte (soft PNG), cutout (RGBA PNG), blur, replace, overlay.",
)  # fmt: skip
@click.option(
    "--background", default="white", show_default=True,
    help="For replace: an image file, a folder of images (one per input, in turn) or a colour (white, #00b140, 0,177,64).",
)  # fmt: skip
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Person where the probability is at least this (mask, overlay).")
@click.option("--size", type=InputSizeType(), help="A checkpoint's input: S or HxW px (e.g. 144x256).  [default: its training size]")
@click.option(
    "--fit", type=click.Choice(["stretch", "letterbox"]), default="stretch", show_default=True,
    help="How a photo meets a student's input: stretched, as students train (the better IoU), or its aspect kept and padded.",
)  # fmt: skip
@click.option(
    "--edges", type=click.Choice(["guided", "bilinear"]), default="guided", show_default=True,
    help="Bring the mask to full resolution with a guided filter on the photo (clean edges) or plain bilinear.",
)  # fmt: skip
@click.option(
    "--smooth", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
    help="Video: MediaPipe's temporal smoothing, uncertain pixels keep this share of the previous frame (e.g. 0.7); 0 = off.",
)  # fmt: skip
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="Video frames per model call.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="CPU threads of the runtime.")
@click.option(
    "--teacher-files", "model_cache", type=click.Path(file_okay=False, path_type=Path),
    help="Teacher model files (`datatool teacher-files fetch`).  [default: ~/.cache/portraitseg/teacher-files]",
)  # fmt: skip
def predict(
    model: str, source: str, output: Path, save: str, background: str, threshold: float, size: tuple[int, int] | None,
    fit: str, edges: str, smooth: float, batch: int, threads: int, model_cache: Path | None,
) -> None:  # fmt: skip
    """Run a model on photos, folders, videos, a camera or a stream: masks, mattes, cutouts, blurred or replaced backgrounds."""
    import sys

    from portraitseg.teacher_files import ModelMissingError
    from portraitseg.teachers import TeacherError
    from trainer.predict import PredictError, PredictOptions, expand_sources, open_predictor, predict
    from trainer.runtime import RunnerError

    try:
        kinds = tuple(kind.strip() for kind in save.split(",") if kind.strip())
        options = PredictOptions(kinds, threshold, edges, smooth, batch, background)
        sources = expand_sources(source)
    except PredictError as error:
        raise click.UsageError(str(error)) from error
    try:
        predictor = open_predictor(model, threads, model_cache, size, fit)
        summary = predict(predictor, sources, output, options, report=lambda line: click.echo(line, err=True))
    except (PredictError, RunnerError, TeacherError, ModelMissingError) as error:
        raise click.ClickException(str(error)) from error
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    video = f", {summary.videos} videos ({summary.frames} frames, {summary.fps:.1f} fps)" if summary.videos else ""
    skipped = f"; {len(summary.skipped)} skipped (see above)" if summary.skipped else ""
    click.echo(f"{summary.photos} photos{video} -> {summary.written} files in {output}/{skipped}")
    if not summary.photos and not summary.frames:
        sys.exit(1)  # nothing could be read: a failed run for scripts


# --- export (issue 6 part A) -------------------------------------------------------------------


@main.command("calibration-set")
@split_dir_option("`datatool split` folder; images come from its train.jsonl.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
@setting_option("--count", key="export.calibration_images", type=click.IntRange(min=1), help="Train images to draw.")
@click.option(
    "--size", type=InputSizeType(min_side=1),
    help="Model input: S or HxW px (e.g. 144x256).  [default: export.size of --params, else train.size]",
)  # fmt: skip
@setting_option("--seed", key="export.seed", type=int, help="Same seed -> the same images.")
@params_option("YAML file whose `export:` section sets the count, seed and size (`train.size` where export.size is 0).")
def calibration_set(
    split_dir: Path, output: Path, count: int | None, size: tuple[int, int] | None, seed: int | None, params_path: Path | None
) -> None:
    """Write the int8 calibration set: COUNT seeded train images at the model's input size (samples.npy + calibration.json)."""
    from portraitseg.params import ConfigError, load_section
    from portraitseg.resize import format_input_size
    from trainer.config import TrainConfig
    from trainer.export.calibration import CalibrationError, write_calibration_set
    from trainer.export.pipeline import ExportConfig

    try:
        config = load_section(params_path, "export", ExportConfig, {"calibration_images": count, "seed": seed})
        # The artefacts' size: export.size, else train.size. Either is a list for a non-square input,
        # which dvc.yaml cannot put into a command: read here.
        size = size or config.input_size(load_section(params_path, "train", TrainConfig).size)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    try:
        info = write_calibration_set(split_dir, output, config.calibration_images, size, config.seed)
    except (CalibrationError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{info.count} train images at {format_input_size(size)} (seed {config.seed}) -> {output}")


@main.command()
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Checkpoint written by `trainer train` (best.pt).",
)
@click.option("--format", "fmt", type=click.Choice(["onnx", "tflite", "tensorrt"]), required=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="int8: a `trainer calibration-set` folder, a split folder or a folder of images.  [default: --split-dir]",
)
@split_dir_option("`datatool split` folder: the parity check uses its val.jsonl, int8 calibrates on its train.jsonl.")
@click.option(
    "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the artefact."
)
@click.option("--allow-drop", is_flag=True, help="Exit 0 even when the IoU drop exceeds export.max_parity_iou_drop.")
@click.option(
    "--keep-going", is_flag=True,
    help="Exit 0 when the converter cannot build this format from this model; the reason stays in its .json "
    "(the pipeline builds every format, and one a model cannot take must not stop the others).",
)  # fmt: skip
@click.option(
    "--size", type=InputSizeType(),
    help="The artefact's input: S or HxW px (e.g. 144x256).  [default: export.size of --params, else the training size]",
)  # fmt: skip
@params_option("YAML file whose `export:` section sets the checks (defaults when the file or section is absent).")
def export(
    checkpoint: Path,
    fmt: str,
    precision: str,
    calibration: Path | None,
    split_dir: Path,
    output: Path,
    allow_drop: bool,
    keep_going: bool,
    params_path: Path | None,
    size: tuple[int, int] | None,
) -> None:
    """Export a checkpoint to ONNX, TFLite or TensorRT and check it against fp32 PyTorch on validation photos."""
    from portraitseg.records import SplitError
    from portraitseg.params import ConfigError, load_section
    from trainer.export.calibration import CalibrationError
    from trainer.export.pipeline import ExportConfig, ExportError, check_supported, export_checkpoint, summary_line
    from trainer.checkpoint import CheckpointError

    try:
        check_supported(fmt, precision)
        config = load_section(params_path, "export", ExportConfig)
    except (ExportError, ConfigError) as error:
        raise click.UsageError(str(error)) from error
    try:
        result = export_checkpoint(checkpoint, fmt, precision, output, split_dir, config, calibration, size)
    except (CheckpointError, CalibrationError, ExportError, SplitError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(summary_line(result))
    if result.not_built and not keep_going:
        raise click.ClickException(
            f"{result.name} was not built ({result.report_path} records why); try another format or precision, "
            "or pass --keep-going to record it and exit 0"
        )
    if result.failed and not allow_drop:
        raise click.ClickException(
            f"{result.name} loses {result.report['iou_drop']:.4f} IoU (> export.max_parity_iou_drop "
            f"{config.max_parity_iou_drop}); see {result.report_path}, or pass --allow-drop to keep it"
        )

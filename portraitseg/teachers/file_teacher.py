"""`tflite` and `onnx` teachers: any segmentation model file, described by a small YAML spec.

A spec says how to feed the model and how to read its output:

    model: deeplabv3_mnv2_pascal_quant.tflite   # relative to the spec file, or absolute
    sha256: 350af47f...                       # optional: the file is verified when given
    how_to_get: download it from ...           # optional: shown when the file is missing
    input_size: [513, 513]                     # [height, width] of the model input
    layout: nhwc                               # nhwc | nchw
    input_dtype: uint8                         # float32 (default) | uint8 | int8
    value_range: [0, 255]                      # pixel 0..255 -> lo..hi, or instead:
    # mean: [0.485, 0.456, 0.406]              # (pixel / 255 - mean) / std, per RGB channel
    # std: [0.229, 0.224, 0.225]
    fit: letterbox                             # stretch (default) | letterbox (aspect kept, top-left)
    pad_value: 128                             # letterbox border, as a 0..255 pixel value
    output: argmax                             # sigmoid | softmax | argmax | probability
    person_class: 15                           # class id (argmax) or channel (softmax; multi-channel others)
    output_index: 0                            # which model output (default 0)
    output_layout: nhwc                        # channel position of the output (default: layout)

Output kinds, for the output tensor without its batch dimension, (h, w), (h, w, C) or (C, h, w):
`probability` is used as is; `sigmoid` applies the logistic function; `softmax` normalises C
class scores and takes channel `person_class`; `argmax` takes a class-id map (or the argmax
of C scores) and gives 1 where it equals `person_class`. One-channel outputs need no
`person_class` for `sigmoid`/`probability`.

The model file is looked up at `model` and then, by file name, in the model cache
(`--teacher-files`, default `portraitseg.teacher_files.cache_dir()`), so a user can keep the shipped spec and
put the file in their cache. A missing file raises `ModelMissingError` with `how_to_get`.
"""

import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import yaml

from portraitseg.teachers import SPECS_DIR, TeacherOptions, list_specs, register
from portraitseg.teachers.base import Teacher, TeacherError
from portraitseg.litert import TfliteFileError, open_tflite
from portraitseg.resize import Placement, letterbox, resize_probability, stretch

LAYOUTS = ("nhwc", "nchw")
INPUT_DTYPES = ("float32", "uint8", "int8")
FITS = ("stretch", "letterbox")
OUTPUT_KINDS = ("sigmoid", "softmax", "argmax", "probability")
SPEC_KEYS = (
    "model", "sha256", "how_to_get", "description", "input_size", "layout", "input_dtype", "value_range",
    "mean", "std", "fit", "pad_value", "output", "person_class", "output_index", "output_layout",
)  # fmt: skip
REQUIRED_KEYS = ("model", "input_size", "layout", "output")


@dataclass(frozen=True)
class FileTeacherSpec:
    """A validated spec; `load_spec` builds it from YAML."""

    path: Path  # the spec file (relative model paths start from its folder)
    model: str
    input_height: int
    input_width: int
    layout: str
    output: str
    input_dtype: str = "float32"
    value_range: tuple[float, float] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    fit: str = "stretch"
    pad_value: int = 0
    person_class: int | None = None
    output_index: int = 0
    output_layout: str | None = None  # None = same as `layout`
    sha256: str | None = None
    how_to_get: str | None = None
    description: str | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    def model_candidates(self, models_dir: Path | None) -> list[Path]:
        """Where the model file may be: as the spec says, then by file name in the model cache."""
        from portraitseg.teacher_files import cache_dir

        written = Path(self.model).expanduser()
        spec_relative = written if written.is_absolute() else self.path.parent / written
        cache = models_dir if models_dir is not None else cache_dir()
        return [spec_relative.resolve(), cache / written.name]

    def to_tensor(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        """(1, ...) model input in the spec's layout, range and dtype, and where the photo lies in it."""
        if self.fit == "letterbox":
            resized, placement = letterbox(image, self.input_width, self.input_height, self.pad_value)
        else:
            resized, placement = stretch(image, self.input_width, self.input_height)
        pixels = resized.astype(np.float32)  # (h, w, 3) at model size
        if self.value_range is not None:
            low, high = self.value_range
            values = low + pixels * ((high - low) / 255.0)
        else:
            values = (pixels / 255.0 - np.float32(self.mean)) / np.float32(self.std)
        if self.input_dtype != "float32":
            limits = np.iinfo(self.input_dtype)
            values = np.clip(np.rint(values), limits.min, limits.max)
        tensor = values.astype(self.input_dtype)
        if self.layout == "nchw":
            tensor = tensor.transpose(2, 0, 1)
        return np.ascontiguousarray(tensor[np.newaxis]), placement

    def person_probability(self, output: np.ndarray) -> np.ndarray:
        """(h, w) float32 person probability from one sample's output, (h, w), (h, w, C) or (C, h, w)."""
        if output.ndim == 3:
            channels_last = output if (self.output_layout or self.layout) == "nhwc" else np.moveaxis(output, 0, -1)
            if channels_last.shape[-1] == 1:
                output = channels_last[..., 0]
            else:
                return self.multi_channel_probability(channels_last)
        elif output.ndim != 2:
            raise TeacherError(f"{self.path}: model output of shape {output.shape} per image is not a map (h, w), (h, w, C) or (C, h, w)")
        if self.output == "argmax":
            ids = np.rint(output) if np.issubdtype(output.dtype, np.floating) else output
            return (ids == self.person_class).astype(np.float32)
        if self.output == "softmax":
            raise TeacherError(f"{self.path}: output: softmax needs class scores with several channels, the model gives one map {output.shape}")
        return self.activate(output.astype(np.float32))

    def multi_channel_probability(self, scores: np.ndarray) -> np.ndarray:
        """(h, w) person probability from (h, w, C) scores, C > 1."""
        classes = scores.shape[-1]
        if self.person_class is None:
            raise TeacherError(f"{self.path}: the model's output has {classes} channels; set person_class to the person's channel")
        if self.person_class >= classes:
            raise TeacherError(f"{self.path}: person_class {self.person_class} is not a channel of the model's {classes}-channel output")
        if self.output == "argmax":
            return (np.argmax(scores, axis=-1) == self.person_class).astype(np.float32)
        if self.output == "softmax":
            scores = scores.astype(np.float32)
            exponentials = np.exp(scores - scores.max(axis=-1, keepdims=True))  # shifted: no overflow
            return exponentials[..., self.person_class] / exponentials.sum(axis=-1)
        return self.activate(scores[..., self.person_class].astype(np.float32))

    def activate(self, values: np.ndarray) -> np.ndarray:
        if self.output == "sigmoid":
            return 1.0 / (1.0 + np.exp(-values))
        return np.clip(values, 0.0, 1.0)


def load_spec(path: Path) -> FileTeacherSpec:
    """Read and validate a spec file; every problem is a `TeacherError` naming the file and key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise TeacherError(f"cannot read teacher spec {path}: {error}") from error
    except yaml.YAMLError as error:
        raise TeacherError(f"teacher spec {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise TeacherError(f"teacher spec {path} must be a mapping of keys ({', '.join(REQUIRED_KEYS)}, ...)")
    check = SpecChecker(path, data)
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise TeacherError(f"teacher spec {path}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(SPEC_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise TeacherError(f"teacher spec {path}: missing key(s) {', '.join(missing)}")
    has_range = "value_range" in data
    has_statistics = "mean" in data or "std" in data
    if has_range == has_statistics:
        raise TeacherError(f"teacher spec {path}: give either value_range: [lo, hi] or both mean and std (not both, not neither)")
    if has_statistics and not ("mean" in data and "std" in data):
        raise TeacherError(f"teacher spec {path}: mean and std go together")
    output = check.choice("output", OUTPUT_KINDS)
    person_class = check.integer("person_class", minimum=0) if "person_class" in data else None
    if output in ("softmax", "argmax") and person_class is None:
        raise TeacherError(f"teacher spec {path}: output: {output} needs person_class (the person's class id / channel)")
    fit = check.choice("fit", FITS, default="stretch")
    if "pad_value" in data and fit != "letterbox":
        raise TeacherError(f"teacher spec {path}: pad_value only applies with fit: letterbox")
    height, width = check.size("input_size")
    std = check.triple("std") if has_statistics else None
    if std is not None and min(std) <= 0:
        raise TeacherError(f"teacher spec {path}: std values must be positive, got {list(std)}")
    return FileTeacherSpec(
        path=path.resolve(),
        model=check.text("model"),
        input_height=height,
        input_width=width,
        layout=check.choice("layout", LAYOUTS),
        output=output,
        input_dtype=check.choice("input_dtype", INPUT_DTYPES, "float32"),
        value_range=check.pair("value_range") if has_range else None,
        mean=check.triple("mean") if has_statistics else None,
        std=std,
        fit=fit,
        pad_value=check.integer("pad_value", minimum=0, maximum=255, default=0),
        person_class=person_class,
        output_index=check.integer("output_index", minimum=0, default=0),
        output_layout=check.choice("output_layout", LAYOUTS, default=None),
        sha256=check.digest("sha256"),
        how_to_get=check.text("how_to_get", default=None),
        description=check.text("description", default=None),
    )


class SpecChecker:
    """Typed reads of spec keys, each failing with the file, the key and what was expected."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    def fail(self, key: str, expected: str) -> TeacherError:
        return TeacherError(f"teacher spec {self.path}: {key} must be {expected}, got {self.data[key]!r}")

    def text(self, key: str, default: str | None = None) -> str | None:
        if key not in self.data:
            return default
        if not isinstance(self.data[key], str) or not self.data[key].strip():
            raise self.fail(key, "a non-empty string")
        return self.data[key].strip()

    def digest(self, key: str) -> str | None:
        if key not in self.data:
            return None
        value = self.data[key]
        # YAML reads an all-digit digest as a number, hence the hint to quote it.
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
            raise self.fail(key, "64 hex digits in quotes")
        return value.strip().lower()

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, str) or value.lower() not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}")
        return value.lower()

    def integer(self, key: str, minimum: int, maximum: int | None = None, default: int | None = None) -> int | None:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
            raise self.fail(key, f"an integer from {minimum}" + (f" to {maximum}" if maximum is not None else " up"))
        return value

    def numbers(self, key: str, count: int) -> tuple[float, ...]:
        value = self.data[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * count  # one number for all channels
        if not isinstance(value, list) or len(value) != count or not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
            raise self.fail(key, f"a list of {count} numbers")
        return tuple(float(item) for item in value)

    def pair(self, key: str) -> tuple[float, float]:
        low, high = self.numbers(key, 2)
        if low == high:
            raise self.fail(key, "[lo, hi] with lo != hi")
        return low, high

    def triple(self, key: str) -> tuple[float, float, float]:
        return self.numbers(key, 3)

    def size(self, key: str) -> tuple[int, int]:
        value = self.data[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if not isinstance(value, list) or len(value) != 2 or not all(isinstance(item, int) and not isinstance(item, bool) and item > 0 for item in value):
            raise self.fail(key, "[height, width] in pixels (or one number for a square input)")
        return value[0], value[1]


def resolve_spec_path(argument: str | None, runtime: str) -> Path:
    """The spec file for `tflite:ARG` / `onnx:ARG`: a YAML path, or the name of a shipped spec."""
    if not argument:
        shipped = ", ".join(list_specs()) or "none"
        raise TeacherError(f"{runtime} needs a spec: {runtime}:SPEC.yaml or {runtime}:NAME of a shipped spec ({shipped})")
    path = Path(argument).expanduser()
    if path.is_file():
        return path
    shipped = SPECS_DIR / f"{argument}.yaml"
    if shipped.is_file():
        return shipped
    raise TeacherError(f"teacher spec {argument!r} is neither a file nor a shipped spec ({', '.join(list_specs()) or 'none'})")


def find_model_file(spec: FileTeacherSpec, models_dir: Path | None) -> Path:
    """The spec's model file (verified when the spec pins a sha256), or `ModelMissingError`."""
    from portraitseg.teacher_files import ModelMissingError, file_sha256

    candidates = spec.model_candidates(models_dir)
    for candidate in candidates:
        if candidate.is_file():
            if spec.sha256 is not None and (actual := file_sha256(candidate)) != spec.sha256:
                raise ModelMissingError(
                    f"model file {candidate} for teacher spec {spec.path} has sha256 {actual}, the spec pins {spec.sha256}; "
                    f"it is corrupt or another file: replace it" + (f" ({spec.how_to_get})" if spec.how_to_get else "")
                )
            return candidate
    how = f"get it: {spec.how_to_get}; " if spec.how_to_get else ""
    raise ModelMissingError(
        f"model file {Path(spec.model).name} for teacher spec {spec.path} is not at {candidates[0]} nor in the model cache "
        f"({candidates[1]}); {how}then put it in the model cache, or copy the spec and point its `model:` at the file"
    )


class FileTeacher(Teacher):
    """A model file run by one runtime; subclasses load the file and run one input tensor."""

    extensions: ClassVar[tuple[str, ...]]  # model file suffixes this runtime reads

    def __init__(self, spec: FileTeacherSpec, model_file: Path, device: str = "cpu", threads: int | None = None):
        self.spec = spec
        self.model_file = Path(model_file)
        other = {".tflite": "tflite", ".onnx": "onnx"}.get(self.model_file.suffix.lower())
        if other is not None and self.model_file.suffix.lower() not in self.extensions:
            raise TeacherError(f"{self.model_file.name} is a {other} model; use {other}:{spec.path}")
        self.load(device, threads)
        self.check_input(self.model_input_shape(), self.model_input_dtype())

    @classmethod
    def build(cls, argument: str | None, options: TeacherOptions) -> "FileTeacher":
        spec = load_spec(resolve_spec_path(argument, cls.name))
        return cls(spec, find_model_file(spec, options.models_dir), device=options.device, threads=options.threads)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.spec.name}"

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_height, self.spec.input_width

    @abstractmethod
    def load(self, device: str, threads: int | None) -> None:
        """Open the model file with this runtime (`threads` CPU threads; None = its default)."""

    @abstractmethod
    def model_input_shape(self) -> tuple:
        """The input's shape as the model declares it; unknown dimensions are None."""

    @abstractmethod
    def model_input_dtype(self) -> str:
        """The input's numpy dtype name."""

    @abstractmethod
    def run(self, tensor: np.ndarray) -> np.ndarray:
        """The chosen output for a (1, ...) input, dequantised when it is a quantised score."""

    def check_input(self, shape: tuple, dtype: str) -> None:
        spec = self.spec
        expected = (1, spec.input_height, spec.input_width, 3) if spec.layout == "nhwc" else (1, 3, spec.input_height, spec.input_width)
        fits = len(shape) == 4 and all(actual is None or actual == wanted for actual, wanted in zip(shape, expected, strict=True))
        if not fits or dtype != spec.input_dtype:
            raise TeacherError(
                f"teacher spec {spec.path} does not match {self.model_file.name}: the spec feeds {list(expected)} {spec.input_dtype} "
                f"({spec.layout}), the model's input is {list(shape)} {dtype}"
            )

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self.predict_one(image) for image in images]

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        tensor, placement = self.spec.to_tensor(image)
        output = self.run(tensor)
        if output.ndim < 3 or output.shape[0] != 1:
            raise TeacherError(f"{self.model_file.name}: output {self.spec.output_index} has shape {output.shape}, not a batch of one map")
        probability = self.spec.person_probability(output[0])  # (h, w) at model resolution
        return resize_probability(placement.crop(probability), height, width)


@register
class TfliteTeacher(FileTeacher):
    name = "tflite"
    extensions = (".tflite",)

    def load(self, device: str, threads: int | None) -> None:
        # LiteRT runs on the CPU whatever `device` says.
        try:
            self.interpreter = open_tflite(self.model_file, threads)
        except TfliteFileError as error:
            raise TeacherError(str(error)) from error
        self.input = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        if self.spec.output_index >= len(outputs):
            raise TeacherError(f"teacher spec {self.spec.path}: output_index {self.spec.output_index}, but the model has {len(outputs)} outputs")
        self.output = outputs[self.spec.output_index]

    def model_input_shape(self) -> tuple:
        return tuple(None if size < 0 else int(size) for size in self.input["shape_signature"])

    def model_input_dtype(self) -> str:
        return np.dtype(self.input["dtype"]).name

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if scale and self.spec.output != "argmax":  # quantised scores: back to real values
            return (output.astype(np.float32) - zero_point) * scale
        return output


@register
class OnnxTeacher(FileTeacher):
    name = "onnx"
    extensions = (".onnx",)

    def load(self, device: str, threads: int | None) -> None:
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as failures

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0 = ONNX Runtime's default
        try:
            self.session = onnxruntime.InferenceSession(str(self.model_file), options, providers=providers)
        except (failures.Fail, failures.InvalidGraph, failures.InvalidProtobuf, failures.NoSuchFile, failures.InvalidArgument, failures.NotImplemented) as error:
            raise TeacherError(f"ONNX Runtime cannot load {self.model_file}: {error}") from error
        self.input = self.session.get_inputs()[0]
        outputs = self.session.get_outputs()
        if self.spec.output_index >= len(outputs):
            raise TeacherError(f"teacher spec {self.spec.path}: output_index {self.spec.output_index}, but the model has {len(outputs)} outputs")
        self.output_name = outputs[self.spec.output_index].name

    def model_input_shape(self) -> tuple:
        return tuple(size if isinstance(size, int) else None for size in self.input.shape)

    def model_input_dtype(self) -> str:
        onnx_types = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}
        return onnx_types.get(self.input.type, self.input.type)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input.name: tensor})[0]

"""One interface to run any artefact: a checkpoint, an ONNX model, a TFLite model or a TensorRT engine.

    runner = open_runner(Path("models/blazeseg/export/tflite-int8.tflite"), threads=2)
    probabilities = runner.predict(images)   # (N, H, W, C) RGB (+ prior) -> (N, H, W) float32 in [0, 1]

Every exported artefact holds `trainer.export.graph.InferenceGraph`: it takes the resized photo
as (1, H, W, C) float32 0..255 ((H, W) = `runner.input_size`: S x S, or e.g. a landscape
144 x 256; C = 3, or 4 for a student that also takes the previous frame's mask, given as 0..255
too; `in_channels`; both read from the artefact's static input shape) and does the ImageNet
normalisation, the layout change and the sigmoid itself, so a runner only casts to float and loops over the batch (artefacts have a
static batch of 1, which is also what latency is measured at). A checkpoint is wrapped in the
same graph, so all backends see identical preprocessing. `runner.as_predictor()` takes photos
of any size instead (`portraitseg.predictor`), as teachers do; scoring and timing use that.

The backend is picked by suffix: `.pt` (PyTorch), `.onnx` (ONNX Runtime), `.tflite` (LiteRT),
`.engine` (TensorRT, imported only when such a file is opened; needs a CUDA device).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from portraitseg.litert import TfliteFileError, open_tflite
from portraitseg.predictor import FixedInputPredictor
from portraitseg.resize import InputSize, as_input_size, format_input_size
from trainer.export import PRECISION_KEY

BACKEND_BY_SUFFIX = {".pt": "pytorch", ".onnx": "onnxruntime", ".tflite": "litert", ".engine": "tensorrt"}


class RunnerError(RuntimeError):
    """An artefact that cannot be opened or run, with the file and what to do."""


class Runner(ABC):
    """Runs one artefact on batches of resized RGB photos; subclasses implement `predict_one`."""

    backend: str = ""

    def __init__(self, path: Path, precision: str, input_size: InputSize, in_channels: int = 3):
        self.path = Path(path)
        self.precision = precision
        self.input_size = as_input_size(input_size)  # (height, width)
        self.in_channels = in_channels  # 4: RGB and the previous frame's mask (model_options.prior)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) RGB 0..255 (uint8, or float32 with a prior channel in 0..255), already resized to
        (H, W) = `input_size` -> (N, H, W) float32 person probabilities."""
        images = np.asarray(images)
        (height, width), channels = self.input_size, self.in_channels
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != (height, width, channels):
            what = "RGB images" if channels == 3 else "RGB images with the previous frame's mask as a 4th channel"
            raise RunnerError(
                f"{self.path} takes (N, {height}, {width}, {channels}) {what}, got {images.shape}; "
                f"resize to {width}x{height} (width x height) first"
            )
        out = np.empty((len(images), height, width), np.float32)
        for index, image in enumerate(images):
            batch = np.ascontiguousarray(image[None], dtype=np.float32)  # (1, H, W, C) 0..255
            out[index] = np.asarray(self.predict_one(batch), np.float32).reshape(height, width)
        return np.clip(out, 0.0, 1.0)

    def as_predictor(self, fit: str = "stretch", pad_rgb: tuple[int, int, int] = (0, 0, 0)) -> FixedInputPredictor:
        """This artefact as a `portraitseg.predictor.Predictor`: photos of any size in, probabilities at their size out
        (`fit`, `pad_rgb`: see FixedInputPredictor). A 4-channel artefact's predictor `takes_prior`:
        `predict(photos, priors)`, an empty prior where none is given."""
        return FixedInputPredictor(self.predict, self.input_size, fit, pad_rgb, takes_prior=self.in_channels == 4)

    @abstractmethod
    def predict_one(self, batch: np.ndarray) -> np.ndarray:
        """(1, H, W, C) float32 0..255 -> the artefact's (1, H, W) person probabilities."""

    def __repr__(self) -> str:
        channels = " +prior" if self.in_channels == 4 else ""
        return f"{type(self).__name__}({self.path}, {self.backend} {self.precision}, {format_input_size(self.input_size)}{channels})"


class PyTorchRunner(Runner):
    backend = "pytorch"

    def __init__(self, path: Path, threads: int, size: InputSize | None = None):
        import torch

        from trainer.export.graph import build_inference_graph
        from trainer.checkpoint import CheckpointError, load_model

        try:
            model, state = load_model(path)
        except CheckpointError as error:
            raise RunnerError(str(error)) from error
        # The students are fully convolutional: a checkpoint runs at any size, its training size by default.
        super().__init__(path, "fp32", size or as_input_size(state["config"]["size"]), model.in_channels)
        torch.set_num_threads(threads)
        self.graph = build_inference_graph(model)
        self.torch = torch

    def predict_one(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.graph(self.torch.from_numpy(batch)).numpy()


class OnnxRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidProtobuf types, not a common base
            raise RunnerError(
                f"{path} is not a readable ONNX model ({error}); export it again with `trainer export`"
            ) from error
        self.input = self.session.get_inputs()[0]
        metadata = self.session.get_modelmeta().custom_metadata_map
        super().__init__(path, metadata.get(PRECISION_KEY, "fp32"), *static_input(path, self.input.shape))

    def predict_one(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: batch})[0]


class LiteRTRunner(Runner):
    backend = "litert"

    def __init__(self, path: Path, threads: int):
        try:
            self.interpreter = open_tflite(path, threads)
        except TfliteFileError as error:
            raise RunnerError(f"{error}; export it again with `trainer export`") from error
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        super().__init__(path, tflite_precision(self.interpreter), *static_input(path, self.input["shape"]))

    def predict_one(self, batch: np.ndarray) -> np.ndarray:
        # A fully int8 model takes and gives quantized tensors: (q - zero_point) * scale = value.
        self.interpreter.set_tensor(self.input["index"], quantize(batch, self.input))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


class TensorRTRunner(Runner):
    """A serialized engine run with the TensorRT Python API; buffers are torch CUDA tensors."""

    backend = "tensorrt"

    def __init__(self, path: Path, threads: int):
        try:
            import tensorrt as trt
        except ImportError as error:
            raise RunnerError(
                f"{path}: running a TensorRT engine needs the `tensorrt` package and a CUDA device"
            ) from error
        import torch

        if not torch.cuda.is_available():
            raise RunnerError(f"{path}: running a TensorRT engine needs a CUDA device; none is visible")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RunnerError(
                f"{path} is not an engine this TensorRT {trt.__version__} can load; build it again on this machine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {name: self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self.input_name = next(name for name in names if is_input[name])
        self.output_name = next(name for name in names if not is_input[name])
        input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        output_shape = tuple(self.engine.get_tensor_shape(self.output_name))
        sidecar = Path(path).with_suffix(".json")
        precision = json.loads(sidecar.read_text()).get("precision", "fp32") if sidecar.is_file() else "fp32"
        super().__init__(path, precision, *static_input(path, input_shape))
        self.torch = torch
        self.device_input = torch.empty(input_shape, dtype=torch.float32, device="cuda")
        self.device_output = torch.empty(output_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, self.device_input.data_ptr())
        self.context.set_tensor_address(self.output_name, self.device_output.data_ptr())
        self.stream = torch.cuda.Stream()

    def predict_one(self, batch: np.ndarray) -> np.ndarray:
        self.device_input.copy_(self.torch.from_numpy(batch))
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return self.device_output.cpu().numpy()


RUNNERS: dict[str, type[Runner]] = {
    ".pt": PyTorchRunner,
    ".onnx": OnnxRunner,
    ".tflite": LiteRTRunner,
    ".engine": TensorRTRunner,
}


def open_runner(path: str | Path, threads: int = 2, size: "InputSize | int | None" = None) -> Runner:
    """The runner for `path`, chosen by its suffix (.pt, .onnx, .tflite, .engine).

    `size` (S or (height, width)) sets a checkpoint's input size (default: its training size);
    exported files have the static size they were built with.
    """
    size = as_input_size(size) if size is not None else None
    path = Path(path)
    if path.suffix not in RUNNERS:
        raise RunnerError(f"{path}: unsupported artefact type {path.suffix!r}; expected one of {', '.join(RUNNERS)}")
    if not path.is_file():
        raise RunnerError(f"no artefact at {path}; train or export it first")
    if path.suffix == ".pt":
        return PyTorchRunner(path, threads, size)
    runner = RUNNERS[path.suffix](path, threads)
    if size is not None and size != runner.input_size:
        built, wanted = format_input_size(runner.input_size), format_input_size(size)
        raise RunnerError(f"{path} was built for {built} inputs, not {wanted}; export it again at {wanted}")
    return runner


def static_input(path: Path, shape) -> tuple[InputSize, int]:
    """((H, W), C) from a static (1, H, W, C) input shape, C = 3 or 4 (a prior channel); anything else is not one of our artefacts."""
    shape = tuple(shape)
    ours = len(shape) == 4 and shape[0] == 1 and shape[3] in (3, 4)
    if not ours or not all(isinstance(side, int | np.integer) for side in shape[1:3]):  # a str dimension is dynamic
        raise RunnerError(
            f"{path} has input shape {shape}; expected (1, H, W, 3) or (1, H, W, 4) as `trainer export` writes "
            "(export it again)"
        )
    return (int(shape[1]), int(shape[2])), int(shape[3])


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values -> the tensor's dtype (unchanged for float tensors)."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer) or not scale:
        return values.astype(dtype)
    limits = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, limits.min, limits.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(values.dtype, np.integer) or not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflite_precision(interpreter) -> str:
    """int8 when any tensor is 8-bit quantized, fp16 when float16 constants hold the weights, else fp32."""
    dtypes = {np.dtype(detail["dtype"]) for detail in interpreter.get_tensor_details()}
    if np.dtype(np.int8) in dtypes or np.dtype(np.uint8) in dtypes:
        return "int8"
    if np.dtype(np.float16) in dtypes:
        return "fp16"
    return "fp32"

"""TensorRT engines, built from our ONNX file with the TensorRT Python API where that can run.

An engine is specific to the GPU and TensorRT version that build it, so it is built on the
deployment machine. Here it is built only when `tensorrt` imports and CUDA is available;
otherwise the result says "not verified here" with the commands that build it there, and no
engine file is written. fp16 sets the FP16 builder flag on the fp32 ONNX graph; int8 builds
from the QDQ-quantized ONNX graph (explicit quantization: the scales come from our calibration,
no TensorRT calibrator needed).
"""

from pathlib import Path

WORKSPACE_BYTES = 1 << 30


def unavailable_reason() -> str | None:
    """Why an engine cannot be built here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the `tensorrt` package is not installed"
    return None


def build_commands(onnx_path: Path, engine_path: Path, precision: str, checkpoint: Path, output_dir: Path) -> list[str]:
    """The commands that build the engine on a machine with CUDA + TensorRT."""
    flags = {"fp32": "", "fp16": " --fp16", "int8": " --int8"}[precision]
    return [
        f"trtexec --onnx={onnx_path} --saveEngine={engine_path}{flags}",
        f"trainer export --checkpoint {checkpoint} --format tensorrt --precision {precision} --output {output_dir}",
    ]


def build_engine(onnx_path: Path, output: Path, precision: str) -> Path:
    """Parse `onnx_path` and serialize an engine for this GPU to `output`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    output.write_bytes(bytes(engine))
    return output

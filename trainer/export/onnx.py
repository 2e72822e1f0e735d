"""ONNX export (fp32, static shapes, batch norm folded) and int8 static QDQ quantization.

fp32: `torch.onnx.export` with the TorchScript exporter (`dynamo=False`: the dynamo path needs
onnxscript), opset 17, a static (1, S, S, C) input (C = 3, or 4 with a prior channel): runtimes plan memory once and mobile
delegates refuse dynamic shapes.

int8: ONNX Runtime's static quantization in QDQ format (QuantizeLinear/DequantizeLinear pairs
around each op, the form TensorRT and the mobile EPs consume), weights per channel (symmetric
int8), activations uint8 calibrated with min/max over the calibration set. The graph is run
through ORT's `quant_pre_process` first (shape inference + graph optimisation), as ORT's
quantization guide recommends.
"""

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from portraitseg.resize import InputSize
from trainer.export import PRECISION_KEY
from trainer.export.graph import build_inference_graph, example_input

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probability"


def export_onnx(model: nn.Module, size: "InputSize | int", output: Path) -> Path:
    """Write the fp32 inference graph of `model` at (height, width) `size` to `output`."""
    graph = build_inference_graph(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example_input(size, graph.in_channels),),
            str(output),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    set_precision(output, "fp32")
    onnx.checker.check_model(str(output))
    return output


def set_precision(path: Path, precision: str) -> None:
    """Record the precision in the model's metadata, where `trainer.runtime` reads it."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=PRECISION_KEY, value=precision)
    onnx.save(model, str(path))


class ArrayCalibrationReader:
    """ORT's CalibrationDataReader over (N, S, S, C) samples in 0..255, one batch of 1 at a time."""

    def __init__(self, samples: np.ndarray):
        self.samples = samples
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.samples):
            return None
        sample = self.samples[self.index : self.index + 1].astype(np.float32)
        self.index += 1
        return {INPUT_NAME: sample}

    def rewind(self) -> None:
        self.index = 0


def quantize_onnx_int8(fp32_model: Path, samples: np.ndarray, output: Path) -> Path:
    """Static QDQ int8 quantization of `fp32_model`, calibrated on `samples` (N, S, S, C) in 0..255."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = output.with_name(output.stem + ".prep.onnx")
    quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared),
            str(output),
            ArrayCalibrationReader(samples),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
    set_precision(output, "int8")
    return output

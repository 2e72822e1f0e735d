"""TFLite export with litert-torch: fp32, fp16 weights, and int8 static (PT2E) quantization.

- fp32: `litert_torch.convert(graph, sample)`; litert-torch rewrites the NCHW graph for
  TFLite's NHWC kernels, and our graph's own NHWC input makes the first transpose cancel out.
- fp16: the fp32 model with its convolution / fully-connected weights cast to float16 by
  ai-edge-quantizer's FLOAT_CASTING weight-only recipe (half the file size; LiteRT's CPU
  kernels dequantize the weights once at load, GPU delegates run them in fp16).
- int8: PyTorch 2 Export quantization with litert-torch's `PT2EQuantizer` (symmetric int8,
  weights per channel, histogram observers), calibrated by running the calibration samples
  through the prepared graph, then converted; every op runs in int8 on LiteRT's XNNPack.
  Quantization-aware training (trainer.export.qat) prepares the same graph for training instead
  and converts it through the same `write_int8_tflite`.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from portraitseg.resize import InputSize
from trainer.export.graph import build_inference_graph, example_input


@contextlib.contextmanager
def quiet_litert() -> Iterator[None]:
    """litert-torch prints a rich progress log on stdout; library code reports through its callers."""
    import litert_torch

    shown = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    try:
        yield
    finally:
        litert_torch.config.show_progress = shown


def export_tflite(model: nn.Module, size: "InputSize | int", output: Path) -> Path:
    """Write the fp32 inference graph of `model` at (height, width) `size` as a .tflite file."""
    import litert_torch

    graph = build_inference_graph(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    with quiet_litert():
        litert_torch.convert(graph, (example_input(size, graph.in_channels),)).export(str(output))
    return output


def export_tflite_fp16(model: nn.Module, size: "InputSize | int", output: Path) -> Path:
    """fp32 conversion, then every supported op's weights cast to float16 (weight-only)."""
    float_model = export_tflite(model, size, output.with_name(output.stem + ".fp32-tmp.tflite"))
    try:
        return cast_weights_fp16(float_model, output)
    finally:
        float_model.unlink(missing_ok=True)


def cast_weights_fp16(float_model: Path, output: Path) -> Path:
    """Write `float_model` with its weights stored as float16 (ai-edge-quantizer FLOAT_CASTING)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    fp16 = quantizer.Quantizer(str(float_model))
    fp16.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    result = fp16.quantize(enable_progress_bar=False, enable_progress_report=False)
    output.write_bytes(bytes(result.quantized_model))
    return output


def int8_quantizer(config=None):
    """litert-torch's PT2E quantizer; `config` defaults to symmetric int8 with weights per channel."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    class FoldedGraphQuantizer(PT2EQuantizer):
        # litert-torch annotates conv + batch norm patterns for QAT by tracing them with a torchao
        # helper that, in torchao 0.18, refuses the function it is given. Our graphs fold batch norm
        # before export (trainer.export.graph), so those patterns never occur: skip them.
        STATIC_QAT_ONLY_OPS: list[str] = []

    return FoldedGraphQuantizer().set_global(config or get_symmetric_quantization_config(is_per_channel=True))


def export_tflite_int8(model: nn.Module, size: "InputSize | int", samples: np.ndarray, output: Path) -> Path:
    """Static int8 via PT2E: export, insert observers, calibrate on `samples` (N, S, S, C) in 0..255, convert."""
    from torchao.quantization.pt2e import quantize_pt2e

    graph = build_inference_graph(model)
    exported = torch.export.export(graph, (example_input(size, graph.in_channels),)).module()
    quantizer = int8_quantizer()
    prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for image in samples:
            prepared(torch.from_numpy(image[None].astype(np.float32)))
    return write_int8_tflite(prepared, quantizer, size, graph.in_channels, output)


def write_int8_tflite(prepared: torch.fx.GraphModule, quantizer, size: "InputSize | int", channels: int, output: Path) -> Path:
    """Convert a calibrated (or quantization-aware trained) PT2E graph and write it as a fully-int8 .tflite."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    move_exported_model_to_eval(prepared)
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    # The ops are in eval form now; exported graphs refuse .eval(), so the flag that litert-torch
    # checks (and warns about) is set by hand.
    quantized.training = False
    output.parent.mkdir(parents=True, exist_ok=True)
    with quiet_litert():
        edge_model = litert_torch.convert(
            quantized, (example_input(size, channels),), quant_config=QuantConfig(pt2e_quantizer=quantizer)
        )
        edge_model.export(str(output))
    return output

"""`trainer profile`: per-operator times from each backend's profiler on small real artefacts.

A checkpoint of the tiny export model (tests/export_fixtures.py) for PyTorch, and a small
stride-2 model exported once per module to ONNX and TFLite (the LiteRT conversion takes
seconds): its stride-2 convolution makes litert-torch emit the PAD that XNNPACK fuses. Timings
are never compared with fixed numbers, only with each other: non-negative, and adding up to no
more than ~1.5x the whole run. Runs use one thread, so that two busy shared cores do not make
the threads wait on each other.
"""

import json
import re

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from export_fixtures import register_tiny, write_checkpoint
from teacher_samples import cached_model
from trainer.cli import main
from trainer.export.onnx import export_onnx
from trainer.export.tflite import export_tflite
from trainer.profile import (
    LayerTime,
    OpTypeTime,
    Profile,
    ProfileError,
    format_profile,
    onnx_node_times,
    profile_artefact,
    sum_by_op_type,
    tflite_layer_name,
)

SIZE = 64  # big enough that the convolutions, not the per-call overhead, take the time
RUNS = 5


class StridedSegmenter(nn.Module):
    """conv 3x3 stride 2 + ReLU, 1x1 head, bilinear x2: the ops of a real student, at toy size."""

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.head(self.down(x)), scale_factor=2.0, mode="bilinear")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """{"pt": tiny checkpoint, "onnx": ..., "tflite": ...}, the tiny model registered for the module."""
    root = tmp_path_factory.mktemp("profile")
    model = StridedSegmenter().eval()
    with pytest.MonkeyPatch.context() as monkeypatch:
        register_tiny(monkeypatch)
        yield {
            "pt": write_checkpoint(root / "run"),
            "onnx": export_onnx(model, SIZE, root / "strided.onnx"),
            "tflite": export_tflite(model, SIZE, root / "strided.tflite"),
        }


def invoke(*args):
    return CliRunner().invoke(main, ["profile", *map(str, args)])


PROFILER_SLACK_MS = 0.1  # per-op timestamps cost a few microseconds each: at toy size (~0.1 ms a run) that is half a run


def check_consistent(profile: Profile) -> None:
    """Every time non-negative, the types summing the layers' counts, the total no more than ~1.5x
    one run (summing all RUNS runs instead would be 5x)."""
    assert profile.latency_ms > 0 and profile.runs == RUNS
    assert all(op.ms >= 0 and op.count >= 1 for op in profile.op_types)
    assert all(layer.ms >= 0 for layer in profile.layers)
    assert [op.ms for op in profile.op_types] == sorted((op.ms for op in profile.op_types), reverse=True)
    whole_run = max(profile.latency_ms, profile.profiled_run_ms or 0.0)
    assert 0 < profile.attributed_ms <= 1.5 * whole_run + PROFILER_SLACK_MS, (profile.attributed_ms, whole_run)


def test_onnx_profile_lists_the_nodes_ort_runs(artefacts):
    profile = profile_artefact(artefacts["onnx"], threads=1, runs=RUNS)
    check_consistent(profile)
    assert (profile.backend, profile.precision, profile.input_size) == ("onnxruntime", "fp32", (SIZE, SIZE))
    types = {op.op_type: op.count for op in profile.op_types}
    # ORT may fuse the ReLU into its convolution (FusedConv): two convolutions either way.
    assert sum(count for op_type, count in types.items() if "Conv" in op_type) == 2
    assert {"Sigmoid", "Mul", "Add"} <= set(types)
    assert sum(types.values()) == len(profile.layers)
    assert all(layer.output_shape and layer.output_shape[0] == 1 for layer in profile.layers)
    assert profile.profiled_run_ms is not None


def test_pytorch_profile_has_aten_operators_and_leaf_modules(artefacts):
    profile = profile_artefact(artefacts["pt"], threads=1, runs=RUNS, size=SIZE)
    check_consistent(profile)
    assert (profile.backend, profile.input_size) == ("pytorch", (SIZE, SIZE))
    types = {op.op_type: op.count for op in profile.op_types}
    assert types["aten::conv2d"] == 3 and types["aten::sigmoid"] == 1
    layers = {layer.name: layer for layer in profile.layers}
    assert layers["model.head"].op_type == "Conv2d" and layers["model.head"].output_shape == (1, 1, SIZE, SIZE)
    assert layers["model.body.3"].output_shape == (1, 8, SIZE, SIZE)
    assert "leaf nn.Modules" in profile.measured


def test_litert_profile_times_each_operator_with_what_xnnpack_fuses_into_it(artefacts):
    profile = profile_artefact(artefacts["tflite"], threads=1, runs=RUNS)
    check_consistent(profile)
    assert (profile.backend, profile.precision, profile.input_size) == ("litert", "fp32", (SIZE, SIZE))
    types = {op.op_type: op.count for op in profile.op_types}
    # The stride-2 convolution's explicit PAD is timed with it; the ReLU is fused in the file already.
    assert types["PAD+CONV_2D"] == 1 and types["CONV_2D"] == 1 and "PAD" not in types
    assert {"RESIZE_BILINEAR", "LOGISTIC", "MUL", "ADD"} <= set(types)
    layers = {layer.op_type: layer for layer in profile.layers}
    assert layers["PAD+CONV_2D"].output_shape == (1, SIZE // 2, SIZE // 2, 8)
    assert layers["PAD+CONV_2D"].name == "model.down.0;1"  # litert-torch's source location, shortened
    assert "XNNPACK" in profile.measured and "cut out" in profile.measured


@pytest.mark.parametrize(("name", "size"), [("mediapipe-selfie", (256, 256)), ("mediapipe-selfie-landscape", (144, 256))])
def test_mediapipe_model_is_profiled_from_the_model_cache(name, size):
    cached_model(name)  # skips with the fetch command when the file is not cached
    profile = profile_artefact(name, threads=1, runs=2)
    assert (profile.backend, profile.input_size) == ("litert", size)
    assert f"{size[0]}x{size[1]} input" in format_profile(profile, top=3)
    types = {op.op_type for op in profile.op_types}
    assert {"Convolution2DTransposeBias", "CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH"} <= types
    assert "CONV_2D+RELU" in types and "RELU" not in types  # every RELU follows a convolution
    assert any("DEQUANTIZE" in note for note in profile.notes)  # fp16 weights, dequantized once at load
    assert all(layer.ms >= 0 for layer in profile.layers)


def test_onnx_trace_is_averaged_over_the_runs_after_warm_up():
    def run(ts):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 50}

    def node(name, ts, dur, op="Conv"):
        args = {"op_name": op, "output_type_shape": [{"float": [1, 8, 4, 4]}]}
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": args}

    trace = [
        run(0), node("conv", 1, 1000),  # warm-up: left out
        run(100), node("conv", 101, 30), node("relu", 120, 4, "Relu"), node("conv", 125, 0, "Conv") | {"name": "conv_fence_after"},
        run(200), node("conv", 201, 50), node("relu", 220, 6, "Relu"),
    ]
    layers = onnx_node_times(trace, warmup=1, runs=2)
    assert layers == [LayerTime("conv", "Conv", (1, 8, 4, 4), 0.040), LayerTime("relu", "Relu", (1, 8, 4, 4), 0.005)]
    with pytest.raises(ProfileError, match="holds 3 runs, expected 4"):
        onnx_node_times(trace, warmup=2, runs=2)


def test_layer_names_and_tables():
    assert tflite_layer_name(
        "trainer.export.graph.InferenceGraph/trainer.models.mobile_unet.MobileUNet_model/"
        "torch.nn.modules.activation.ReLU6_2;;trainer.export.graph.InferenceGraph/"
        "trainer.models.mobile_unet.MobileUNet_model/torch.nn.modules.container.Sequential_encoder/"
        "torch.nn.modules.conv.Conv2d_0;"
    ) == "model.encoder.0"
    assert tflite_layer_name("trainer.export.graph.InferenceGraph;3") == "InferenceGraph;3"
    assert tflite_layer_name("conv2d_5") == "conv2d_5"
    layers = [LayerTime("a", "CONV_2D", (1, 4), 3.0), LayerTime("b", "ADD", None, 1.0), LayerTime("c", "CONV_2D", None, 1.0)]
    op_types = sum_by_op_type(layers)
    assert op_types == [OpTypeTime("CONV_2D", 2, 4.0), OpTypeTime("ADD", 1, 1.0)]
    profile = Profile("m.tflite", "litert", "fp32", (8, 8), 2, 3, "what was measured", 4.0, op_types, layers)
    text = format_profile(profile, top=2)
    assert "| CONV_2D | 2 | 4.000 | 80.0% |" in text and "| ADD | 1 | 1.000 | 20.0% |" in text
    assert "| a | CONV_2D | 1x4 | 3.000 | 60.0% |" in text and "| c |" not in text
    assert "median 4.000 ms" in text and "add up to 5.000 ms per run (1.25x" in text and "what was measured" in text


def test_cli_prints_markdown_and_writes_json(artefacts, tmp_path):
    output = tmp_path / "profile.json"
    result = invoke(artefacts["onnx"], "--threads", 1, "--runs", RUNS, "--top", 2, "--output", output)
    assert result.exit_code == 0, result.output
    assert "| op type | count | ms per run | share |" in result.output
    assert "Slowest 2 of" in result.output and f"-> {output}" in result.output
    saved = json.loads(output.read_text())
    assert saved["backend"] == "onnxruntime" and saved["runs"] == RUNS and len(saved["layers"]) > 2
    assert saved["attributed_ms"] == pytest.approx(sum(op["ms"] for op in saved["op_types"]))


def test_cli_profiles_a_checkpoint_at_another_size(artefacts):
    result = invoke(artefacts["pt"], "--threads", 1, "--runs", 2, "--size", 48)
    assert result.exit_code == 0, result.output
    assert "pytorch, fp32, 48x48 input" in result.output and "aten::conv2d" in result.output


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent.onnx", None, "no artefact at .*absent.onnx; train it"),
        ("model.h5", b"x", r"cannot profile '\.h5'; pass a checkpoint \(\.pt\)"),
        ("model.engine", b"x", "TensorRT engine: profile its .onnx"),
        ("model.onnx", b"\x00garbage", "is not a readable ONNX model"),
        ("model.tflite", b"garbage!" * 4, "is not a readable TFLite model"),
        ("model.pt", b"garbage", "is not a readable checkpoint"),
    ],
)
def test_bad_artefacts_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = invoke(path, "--runs", 1)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(message, result.output), result.output


def test_an_exported_file_at_another_size_is_refused(artefacts):
    result = invoke(artefacts["onnx"], "--size", 32)
    assert result.exit_code == 1 and f"built for {SIZE}x{SIZE} inputs, not 32" in result.output


def test_missing_mediapipe_file_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITSEG_TEACHER_FILES", str(tmp_path / "empty-cache"))
    result = invoke("mediapipe-selfie")
    assert result.exit_code == 1 and "datatool teacher-files fetch mediapipe-selfie" in result.output

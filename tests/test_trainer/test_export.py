"""`trainer export` / `trainer calibration-set`: every artefact is built, run and checked against PyTorch.

One tiny hand-set checkpoint (tests/export_fixtures.py) at 32 px; LiteRT conversions dominate
the time (a few seconds each), so each artefact is built once per module and shared.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from export_fixtures import SIZE, register_tiny, write_checkpoint, write_split
from portraitseg.records import read_split
from trainer.cli import main
from trainer.evaluate import EvaluateConfig, evaluate
from trainer.export.calibration import CalibrationError, load_calibration, write_calibration_set
from portraitseg.params import ConfigError, load_section
from trainer.export.pipeline import ExportConfig, ExportError, converter_errors, export_checkpoint
from trainer.export.tflite import cast_weights_fp16
from trainer.runtime import RunnerError, open_runner

FAST = ExportConfig(latency_runs=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(split_dir, checkpoint) with the tiny model registered for the whole module."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as monkeypatch:
        register_tiny(monkeypatch)
        split_dir = write_split(root / "split")
        yield split_dir, write_checkpoint(root / "run")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """Every CPU artefact, built once: {name: ExportResult}."""
    split_dir, checkpoint = tiny
    output = tmp_path_factory.mktemp("artefacts")
    # tflite fp16 is the fp32 conversion plus a weight cast: tested on the fp32 file below, which
    # saves a third LiteRT conversion (the slowest step here).
    pairs = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
    return {
        f"{fmt}-{precision}": export_checkpoint(checkpoint, fmt, precision, output, split_dir, FAST) for fmt, precision in pairs
    }


def invoke(*args: str):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_fp32_artefacts_match_pytorch_within_1e4(exported):
    for name in ("onnx-fp32", "tflite-fp32"):
        report = exported[name].report
        assert report["max_abs_diff"] < 1e-4, (name, report)
        assert report["status"] == "passed" and report["iou_drop"] == pytest.approx(0.0, abs=1e-9)
        assert report["reference_iou"] > 0.9 and report["images"] == 6
        assert report["latency_ms"] > 0
        saved = json.loads(exported[name].report_path.read_text())
        assert saved == report and saved["size_bytes"] == exported[name].artefact.stat().st_size


def test_parity_scores_an_artefact_as_evaluate_does(tiny, exported):
    # One scoring harness: the same photos give the same IoU in the export report and in `trainer evaluate`.
    split_dir, checkpoint = tiny
    config = EvaluateConfig(set="val", max_images=FAST.validation_images, reference="", warmup=0, repeats=1, overlay_images=0)
    artefacts = {name: exported[name].artefact for name in ("onnx-int8", "tflite-int8")}
    rows = evaluate([checkpoint, *artefacts.values()], split_dir, config).rows
    iou = {Path(row["path"]): row["iou"] for row in rows}
    for name, artefact in artefacts.items():
        report = exported[name].report
        assert report["iou"] == iou[artefact] and report["reference_iou"] == iou[checkpoint], name
        assert report["images"] == len(read_split(split_dir, "val"))
        assert 0 < report["latency_ms"] <= report["latency_p90_ms"]


def test_onnx_graph_is_static_opset_17_with_batch_norm_folded(exported):
    model = onnx.load(str(exported["onnx-fp32"].artefact))
    assert max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")) >= 17
    shape = [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, SIZE, SIZE, 3]
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}


def test_reduced_precision_artefacts_run_and_are_compared(exported):
    for name in ("onnx-int8", "tflite-int8"):
        report = exported[name].report
        assert open_runner(exported[name].artefact).precision == "int8"
        # Really quantized (not identical to fp32), and still close: the colour rule survives int8.
        assert 0 < report["max_abs_diff"] < 0.2, (name, report)
        assert report["iou"] > 0.85 and report["iou_drop"] == pytest.approx(report["reference_iou"] - report["iou"])
        assert report["calibration"]["images"] == 8  # the whole tiny train split
    assert exported["tflite-int8"].artefact.stat().st_size < exported["tflite-fp32"].artefact.stat().st_size


def test_quantization_aware_training_writes_an_int8_tflite_that_keeps_parity(tiny, exported, tmp_path):
    split_dir, checkpoint = tiny
    # A learning rate far above the default, so that 4 steps surely move int8 weights by whole steps.
    config = ExportConfig(latency_runs=0, qat_epochs=2, qat_batch_size=4, qat_lr=0.01)
    result = export_checkpoint(checkpoint, "tflite", "int8", tmp_path, split_dir, config)
    report = result.report
    assert open_runner(result.artefact).precision == "int8"
    assert report["quantization"]["method"].startswith("quantization-aware training")
    assert report["quantization"]["epochs"] == 2 and report["quantization"]["train_images"] == 8
    assert len(report["quantization"]["epoch_losses"]) == 2 and report["calibration"]["images"] == 8
    # Trained through fake quantization to reproduce the colour rule, it still segments the blobs.
    assert report["status"] == "passed" and report["iou"] > 0.85, report
    # ... and is not the post-training artefact under another name: its weights were fine-tuned.
    assert result.artefact.read_bytes() != exported["tflite-int8"].artefact.read_bytes()
    assert exported["tflite-int8"].report["quantization"] == {"method": "post-training"}


def test_onnx_int8_stays_post_training_when_qat_is_asked(tiny, tmp_path):
    split_dir, checkpoint = tiny
    config = ExportConfig(latency_runs=0, qat_epochs=2, validation_images=2)
    report = export_checkpoint(checkpoint, "onnx", "int8", tmp_path, split_dir, config).report
    assert report["quantization"] == {"method": "post-training"} and report["calibration"]["images"] == 8


def test_tflite_fp16_weights_run_close_to_fp32(exported, tmp_path):
    fp32 = exported["tflite-fp32"].artefact
    fp16 = open_runner(cast_weights_fp16(fp32, tmp_path / "tflite-fp16.tflite"))
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    assert fp16.precision == "fp16" and fp16.backend == "litert"
    assert np.abs(fp16.predict(images) - open_runner(fp32).predict(images)).max() < 1e-2


def test_cli_exports_onnx_and_prints_one_line(tiny, tmp_path):
    split_dir, checkpoint = tiny
    no_params = tmp_path / "none.yaml"  # absent: the export defaults apply
    result = invoke("export", "--checkpoint", checkpoint, "--format", "onnx", "--split-dir", split_dir, "--output", tmp_path,
                    "--params", no_params)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("onnx-fp32: passed - max |dp|") and len(result.output.splitlines()) == 1
    assert (tmp_path / "onnx-fp32.onnx").is_file() and (tmp_path / "onnx-fp32.json").is_file()


def test_export_at_another_size_matches_the_checkpoint_run_at_that_size(tiny, tmp_path):
    split_dir, checkpoint = tiny
    side = 2 * SIZE  # the students are fully convolutional
    result = invoke("export", "--checkpoint", checkpoint, "--format", "onnx", "--size", str(side), "--split-dir", split_dir, "--output", tmp_path,
                    "--params", tmp_path / "none.yaml")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "onnx-fp32.json").read_text())
    assert report["input_size"] == [side, side] and report["max_abs_diff"] <= 1e-4
    onnx_runner = open_runner(tmp_path / "onnx-fp32.onnx")
    assert onnx_runner.input_size == (side, side) and open_runner(checkpoint, size=side).input_size == (side, side)
    with pytest.raises(RunnerError, match=f"built for {side}x{side} inputs, not {SIZE}x{SIZE}"):
        open_runner(tmp_path / "onnx-fp32.onnx", size=SIZE)


def test_tensorrt_without_cuda_is_reported_not_verified(tiny, tmp_path):
    pytest.importorskip("torch")
    from trainer.export import tensorrt

    if tensorrt.unavailable_reason() is None:
        pytest.skip("TensorRT and CUDA are available here: the engine is built instead")
    split_dir, checkpoint = tiny
    result = invoke(
        "export", "--checkpoint", checkpoint, "--format", "tensorrt", "--precision", "fp16", "--output", tmp_path
    )
    assert result.exit_code == 0, result.output
    assert "tensorrt-fp16: not verified here:" in result.output and "trtexec --onnx=" in result.output
    report = json.loads((tmp_path / "tensorrt-fp16.json").read_text())
    assert report["status"].startswith("not verified here") and "--fp16" in report["commands"][0]
    assert not (tmp_path / "tensorrt-fp16.engine").exists() and (tmp_path / "tensorrt" / "tensorrt-fp16.onnx").is_file()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    result = invoke("export", "--checkpoint", damaged, "--format", "onnx", "--output", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{damaged} is not a readable checkpoint" in result.output


def test_unsupported_pair_is_a_usage_error_listing_the_pairs(tiny, tmp_path):
    result = invoke("export", "--checkpoint", tiny[1], "--format", "onnx", "--precision", "fp16", "--output", tmp_path)
    assert result.exit_code == 2
    assert "unsupported format/precision onnx fp16" in result.output
    assert "onnx fp32, onnx int8, tflite fp32, tflite fp16, tflite int8" in result.output


def test_empty_calibration_set_is_a_clear_error(tiny, tmp_path):
    empty = tmp_path / "calibration"
    empty.mkdir()
    result = invoke(
        "export", "--checkpoint", tiny[1], "--format", "onnx", "--precision", "int8",
        "--calibration", empty, "--split-dir", tiny[0], "--output", tmp_path / "out",
    )
    assert result.exit_code == 1 and f"calibration set {empty} is empty" in result.output
    with pytest.raises(CalibrationError, match="is empty"):
        write_calibration_set(tiny[0], tmp_path / "none", count=0, size=SIZE)


def test_parity_failure_exits_non_zero_unless_allowed(tiny, tmp_path):
    # Calibrating on near-black images clips every input at 10/255: the int8 model sees a flat grey photo.
    dark = tmp_path / "dark"
    dark.mkdir()
    for index in range(3):
        assert cv2.imwrite(str(dark / f"{index}.png"), np.full((SIZE, SIZE, 3), 10, np.uint8))
    args = ["export", "--checkpoint", tiny[1], "--format", "onnx", "--precision", "int8", "--calibration", dark, "--split-dir", tiny[0]]
    failed = invoke(*args, "--output", tmp_path / "strict")
    assert failed.exit_code == 1, failed.output
    assert "onnx-int8: failed" in failed.output and "--allow-drop" in failed.output
    report = json.loads((tmp_path / "strict" / "onnx-int8.json").read_text())
    assert report["status"] == "failed" and report["iou_drop"] > 0.01

    allowed = invoke(*args, "--output", tmp_path / "allowed", "--allow-drop")
    assert allowed.exit_code == 0, allowed.output
    assert "onnx-int8: failed" in allowed.output


def test_calibration_set_is_deterministic_and_reusable(tiny, tmp_path):
    split_dir, _ = tiny
    result = invoke(
        "calibration-set", "--split-dir", split_dir, "--output", tmp_path / "a", "--count", 5, "--size", SIZE, "--seed", 3
    )
    assert result.exit_code == 0 and "5 train images" in result.output
    write_calibration_set(split_dir, tmp_path / "b", count=5, size=SIZE, seed=3)
    first, second = (np.load(tmp_path / name / "samples.npy") for name in ("a", "b"))
    assert first.shape == (5, SIZE, SIZE, 3) and first.dtype == np.uint8 and np.array_equal(first, second)
    info = json.loads((tmp_path / "a" / "calibration.json").read_text())
    assert info["count"] == 5 and all(sample_id.startswith("train") for sample_id in info["ids"])
    assert np.array_equal(load_calibration(tmp_path / "a", SIZE), first)
    assert load_calibration(tmp_path / "a", 16).shape == (5, 16, 16, 3)  # resized to another model's input


def test_export_params_reject_unknown_keys_and_wrong_types(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("export: {max_parity_iou_drop: 0.02, validation_images: 8}\n")
    assert load_section(params, "export", ExportConfig) == ExportConfig(max_parity_iou_drop=0.02, validation_images=8)
    assert load_section(None, "export", ExportConfig, {"seed": 3}) == ExportConfig(seed=3)  # no params file
    params.write_text("export: {max_iou_drop: 0.02}\n")  # the key's old name
    with pytest.raises(ConfigError, match="unknown export key"):
        load_section(params, "export", ExportConfig)
    params.write_text("export: {validation_images: 8.5}\n")
    with pytest.raises(ConfigError, match="validation_images must be int"):
        load_section(params, "export", ExportConfig)


def test_missing_validation_split_is_a_clear_error_before_any_work(tiny, tmp_path):
    result = invoke(
        "export", "--checkpoint", tiny[1], "--format", "onnx", "--split-dir", tmp_path / "nosplit", "--output", tmp_path
    )
    assert result.exit_code == 1 and "no validation split at" in result.output and "--split-dir" in result.output
    assert not (tmp_path / "onnx-fp32.onnx").exists()


def test_a_converter_failure_is_an_export_error_naming_artefact_model_and_reason():
    with pytest.raises(ExportError, match=r"^tflite-int8: the converter cannot build it from tiny \(AssertionError: "
                                          r"Attempting to convert non-NHWC\)"):  # fmt: skip
        with converter_errors("tflite-int8", "tiny"):
            raise AssertionError("Attempting to convert non-NHWC\nsecond line of the converter's message")
    # Our own errors and the system's (a full disk) keep their type and message.
    with pytest.raises(OSError, match="No space left"):
        with converter_errors("onnx-fp32", "tiny"):
            raise OSError(28, "No space left on device")
    with pytest.raises(ExportError, match="^no validation split"):
        with converter_errors("onnx-fp32", "tiny"):
            raise ExportError("no validation split at x")

"""Non-square model inputs (`train.size: [H, W]`, e.g. MediaPipe's landscape 144x256) from the params
file through training items, export, the runners and the predictor, on the tiny colour-rule model
(tests/export_fixtures.py) at 24x40."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from export_fixtures import register_tiny, write_checkpoint, write_split
from torch import nn

from portraitseg.params import ConfigError, build_section
from portraitseg.resize import as_input_size, format_input_size
from trainer.cli import main
from trainer.complexity import count_macs
from trainer.config import TrainConfig
from trainer.data import PriorSimulation, SegmentationDataset
from trainer.export.pipeline import ExportConfig, export_checkpoint
from trainer.harness import time_predictors
from trainer.runtime import RunnerError, open_runner

LANDSCAPE = (24, 40)  # (height, width)


@pytest.mark.parametrize(
    ("given", "expected"), [(192, (192, 192)), ([144, 256], (144, 256)), ((144, 256), (144, 256)), ("144x256", (144, 256)), ("96", (96, 96))]
)
def test_a_size_is_a_side_or_height_and_width(given, expected):
    assert as_input_size(given) == expected
    assert format_input_size(expected) == f"{expected[0]}x{expected[1]}" and format_input_size(None) == "photo size"


@pytest.mark.parametrize("bad", [0, [144, 0], [1, 2, 3], "wide", "144x"])
def test_a_bad_size_is_refused(bad):
    with pytest.raises(ValueError, match="S or"):
        as_input_size(bad)


def test_train_size_in_params_is_a_side_or_a_list():
    assert build_section(TrainConfig, "train", {"size": 192}).input_size == (192, 192)
    landscape = build_section(TrainConfig, "train", {"size": [144, 256]})
    assert landscape.input_size == (144, 256) and landscape.to_dict()["size"] == [144, 256]
    for bad, message in (
        ([144, 0], "train.size: input size"),
        ([1, 2, 3], "train.size: input size"),
        ("144x256", "train.size must be int or list"),  # YAML strings are refused: one spelling in params
        (True, "train.size must be int or list"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_section(TrainConfig, "train", {"size": bad})


@pytest.fixture(scope="module")
def landscape(tmp_path_factory):
    """(split_dir, checkpoint trained at 24x40) with the tiny model registered for the whole module."""
    root = tmp_path_factory.mktemp("landscape")
    with pytest.MonkeyPatch.context() as monkeypatch:
        register_tiny(monkeypatch)
        yield write_split(root / "split"), write_checkpoint(root / "run", size=list(LANDSCAPE))


def test_training_items_are_height_by_width(landscape):
    split_dir, _ = landscape
    data = SegmentationDataset(
        split_dir, "train", list(LANDSCAPE), augment=True, with_teacher=True, with_second_view=True,
        copy_paste=1.0, prior=PriorSimulation(empty_share=0.0),
    )  # fmt: skip
    for index in range(len(data)):
        item = data[index]
        assert item["image"].shape == item["image_b"].shape == (3, *LANDSCAPE)
        for key in ("mask", "edge", "teacher", "prior"):
            assert item[key].shape == (1, *LANDSCAPE), key
    prior = PriorSimulation(empty_share=0.0, morphology_px=0, blur_sigma=0.0)(np.ones(LANDSCAPE, np.float32), np.random.default_rng(0))
    assert prior.shape == LANDSCAPE and 0.5 < prior.mean() <= 1.0  # warped, not transposed or cropped square


def test_macs_count_the_input_rectangle():
    conv = nn.Conv2d(3, 4, 1)
    assert count_macs(conv, (6, 10)) == 6 * 10 * 4 * 3


def test_a_landscape_student_exports_and_runs_at_its_size(landscape, tmp_path):
    split_dir, checkpoint = landscape
    config = ExportConfig(latency_runs=2, validation_images=4, calibration_images=8)
    photo = np.zeros((50, 70, 3), np.uint8)
    for fmt, precision in (("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "int8")):
        result = export_checkpoint(checkpoint, fmt, precision, tmp_path, split_dir, config)
        assert result.report["input_size"] == list(LANDSCAPE) and result.report["status"] == "passed", result.report
        runner = open_runner(result.artefact)
        assert runner.input_size == LANDSCAPE and "24x40" in repr(runner)
        assert runner.predict(np.zeros((2, *LANDSCAPE, 3), np.uint8)).shape == (2, *LANDSCAPE)
        with pytest.raises(RunnerError, match=r"takes \(N, 24, 40, 3\)"):
            runner.predict(np.zeros((1, 40, 24, 3), np.uint8))  # transposed
        with pytest.raises(RunnerError, match="built for 24x40 inputs, not 32x32"):
            open_runner(result.artefact, size=32)
        (probability,) = runner.as_predictor().predict([photo])
        assert probability.shape == photo.shape[:2]
    # A checkpoint runs at its training size by default, at any other when asked.
    assert open_runner(checkpoint).input_size == LANDSCAPE
    other = open_runner(checkpoint, size=(16, 48))
    assert other.input_size == (16, 48)
    (probability,) = other.as_predictor(fit="letterbox").predict([photo])
    assert probability.shape == photo.shape[:2]
    (latency,) = time_predictors([other.as_predictor()], photo, warmup=1, repeats=2)
    assert latency["latency_ms"] > 0


def test_calibration_set_takes_train_size_from_params(landscape, tmp_path):
    split_dir, _ = landscape
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  size: [24, 40]\nexport:\n  calibration_images: 3\n")
    result = CliRunner().invoke(main, ["calibration-set", "--split-dir", str(split_dir), "--output", str(tmp_path / "a"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "3 train images at 24x40" in result.output
    assert np.load(tmp_path / "a" / "samples.npy").shape == (3, 24, 40, 3)
    assert json.loads((tmp_path / "a" / "calibration.json").read_text())["size"] == [24, 40]
    # --size wins over params, in either spelling; a bad one is a usage error.
    result = CliRunner().invoke(main, ["calibration-set", "--split-dir", str(split_dir), "--output", str(tmp_path / "b"), "--params", str(params), "--size", "16x32"])
    assert result.exit_code == 0 and np.load(tmp_path / "b" / "samples.npy").shape == (3, 16, 32, 3)
    result = CliRunner().invoke(main, ["calibration-set", "--split-dir", str(split_dir), "--output", str(tmp_path / "c"), "--size", "16 by 32"])
    assert result.exit_code == 2 and "is not S or HxW" in result.output


def test_export_size_in_params_sets_the_artefacts_input(landscape, tmp_path):
    # export.size lets a student trained at one size ship at another (the self-distilled preset is
    # trained at 224 x 224 and exported at 208 x 272); 0 keeps the training size.
    split_dir, checkpoint = landscape
    config = ExportConfig(latency_runs=0, validation_images=4, size=[16, 48])
    result = export_checkpoint(checkpoint, "tflite", "fp32", tmp_path / "a", split_dir, config)
    assert result.report["input_size"] == [16, 48] and open_runner(result.artefact).input_size == (16, 48)
    result = export_checkpoint(checkpoint, "onnx", "fp32", tmp_path / "b", split_dir, ExportConfig(latency_runs=0, validation_images=4))
    assert result.report["input_size"] == list(LANDSCAPE)

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  size: [24, 40]\nexport:\n  calibration_images: 3\n  size: [16, 48]\n")
    result = CliRunner().invoke(main, ["calibration-set", "--split-dir", str(split_dir), "--output", str(tmp_path / "c"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "3 train images at 16x48" in result.output
    params.write_text("export:\n  size: [16, 0]\n")
    result = CliRunner().invoke(main, [
        "export", "--checkpoint", str(checkpoint), "--format", "onnx", "--split-dir", str(split_dir),
        "--output", str(tmp_path / "d"), "--params", str(params),
    ])  # fmt: skip
    assert result.exit_code == 2 and "export.size" in result.output
    with pytest.raises(ConfigError, match="export.size"):
        build_section(ExportConfig, "export", {"size": "wide"}, None)

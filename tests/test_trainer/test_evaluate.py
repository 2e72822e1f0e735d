"""`trainer evaluate`: the metric functions on hand-made cases, MAC counting, and the command end to end.

The end-to-end runs use a tiny split (48x40 photos of a warm blob on a cool noisy background),
a three-layer model registered for the test only, trained for a few epochs at 32 px, and its
ONNX export, so each run takes a few seconds.
"""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from export_fixtures import write_blob
from portraitseg.params import ConfigError, build_section
from trainer.checkpoint import load_model
from trainer.cli import main
from trainer.complexity import count_macs, count_parameters
from trainer.config import TrainConfig
from trainer.evaluate import (
    EvaluateConfig, EvaluationError, clips_of, discover_artefacts, evaluate, expand_artefacts, load_rows, model_name_of,
    unbuilt_artefacts,
)  # fmt: skip
from trainer.harness import QualityMetrics, score, score_clips, time_predictors
from trainer.models import MODELS, SegmentationModel
from trainer.train import fit

TINY = "tiny_evaluate_segmenter"


class TinySegmenter(SegmentationModel):
    output_stride = 1

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny_evaluate_segmenter(**options) -> SegmentationModel:
    return TinySegmenter(**options)


@pytest.fixture(scope="module")
def tiny_model():
    """Register the tiny model for this module's tests (the registry is restored afterwards)."""
    from trainer.models import list_models

    list_models()  # load the real families first, so they do not register over the patch
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MODELS, TINY, tiny_evaluate_segmenter)
        yield TINY


write_sample = write_blob  # a blob "person" on a noisy background (tests/export_fixtures.py)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("split")
    for split, count, offset in (("train", 8, 0), ("val", 3, 100), ("test", 4, 200)):
        rows = [{**write_sample(root / "blobs", f"{split}{i}", offset + i), "split": split} for i in range(count)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, split_dir, tiny_model) -> Path:
    """models/tiny/best.pt (a short real training run) and models/tiny/export/tiny.onnx."""
    config = build_section(
        TrainConfig, "train", {"model": TINY, "size": 32, "epochs": 3, "batch_size": 4, "lr": 0.02, "augment": False,
                               "loss_weights": {"bce": 1.0, "dice": 1.0}}
    )  # fmt: skip
    root = tmp_path_factory.mktemp("models")
    run = root / "tiny"
    fit(config, split_dir, run, show_progress=False)
    from trainer.export.graph import build_inference_graph, example_input

    model, _ = load_model(run / "best.pt")
    (run / "export").mkdir()
    torch.onnx.export(
        build_inference_graph(model), (example_input(32),), str(run / "export" / "tiny.onnx"), opset_version=17,
        dynamo=False, input_names=["image"], output_names=["probability"],
    )  # fmt: skip
    return root


def quick_params(tmp_path: Path, **changes) -> Path:
    section = {"warmup": 1, "repeats": 3, "reference": "", "overlay_images": 2, **changes}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"evaluate": section}))
    return path


def evaluate_command(models_dir: Path, split_dir: Path, output: Path, params: Path):
    """`trainer evaluate --models-dir` on one thread, which must succeed; the CLI's result."""
    result = CliRunner().invoke(
        main,
        ["evaluate", "--models-dir", str(models_dir), "--split-dir", str(split_dir), "--output", str(output),
         "--params", str(params), "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


# --- metrics on hand-made cases --------------------------------------------------------------


def square_mask() -> np.ndarray:
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 255  # 100 person pixels of 400
    return mask


def test_perfect_prediction_scores_one():
    mask = square_mask()
    metrics = QualityMetrics(boundary_width=1)
    metrics.update(mask / 255.0, mask)
    assert metrics.compute() == {
        "iou": 1.0, "pooled_iou": 1.0, "miou": 1.0, "boundary_f": 1.0, "pixel_accuracy": 1.0, "alpha_mae": 0.0
    }  # fmt: skip


def test_headline_iou_is_the_mean_over_photos_and_pooled_iou_weighs_pixels():
    large, small = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    large[:, :10] = 255  # 200 person pixels
    small[:2, :2] = 255  # 4 person pixels
    metrics = QualityMetrics(boundary_width=None)
    metrics.update(large / 255.0, large)  # IoU 1
    metrics.update(np.zeros((20, 20)), small)  # the small person missed: IoU 0
    result = metrics.compute()
    assert result["iou"] == pytest.approx(0.5)  # each photo counts once
    assert result["pooled_iou"] == pytest.approx(200 / 204)  # the large person dominates the pixels
    assert result["miou"] == pytest.approx((1.0 + (0.0 + 396 / 400) / 2) / 2)


def test_all_background_prediction_scores_zero_iou_and_known_accuracy():
    mask = square_mask()
    metrics = QualityMetrics(boundary_width=1)
    metrics.update(np.zeros(mask.shape, np.float32), mask)
    result = metrics.compute()
    assert result["iou"] == 0.0 and result["boundary_f"] == 0.0
    assert result["pixel_accuracy"] == pytest.approx(300 / 400)
    assert result["miou"] == pytest.approx((0.0 + 300 / 400) / 2)  # background IoU = 300 / 400
    assert result["alpha_mae"] == pytest.approx(100 / 400)


def test_half_overlap_and_soft_probabilities():
    mask = square_mask()
    probability = np.zeros(mask.shape, np.float32)
    probability[5:15, 10:20] = 0.75  # 50 of the person's pixels plus 50 background pixels
    metrics = QualityMetrics(boundary_width=1)
    metrics.update(probability, mask)
    result = metrics.compute()
    assert result["iou"] == pytest.approx(50 / 150)
    assert result["pixel_accuracy"] == pytest.approx(300 / 400)
    # |0.75 - 1| on 50 px, |0.75 - 0| on 50 px, |0 - 1| on 50 px
    assert result["alpha_mae"] == pytest.approx((50 * 0.25 + 50 * 0.75 + 50 * 1.0) / 400)
    assert 0.0 < result["boundary_f"] < 1.0
    with pytest.raises(ValueError, match="differ in size"):
        metrics.update(probability[:10], mask)


def test_score_measures_each_predictor_on_the_same_photos():
    mask = square_mask()

    class Fixed:  # a Predictor: person where the mask is, at `value`
        input_size = None

        def __init__(self, value: float):
            self.value = value

        def predict(self, images):
            return [np.where(mask > 0, self.value, 0.0).astype(np.float32) for _ in images]

    seen = []
    samples = [(np.zeros((*mask.shape, 3), np.uint8), mask)] * 2
    perfect, empty = score(
        [Fixed(1.0), Fixed(0.0)], samples, boundary_width=None,
        observe=lambda index, image, truth, maps: seen.append((index, len(maps))),
    )  # fmt: skip
    assert perfect == {"iou": 1.0, "pooled_iou": 1.0, "miou": 1.0, "pixel_accuracy": 1.0, "alpha_mae": 0.0}  # no boundary F
    assert empty["iou"] == 0.0 and empty["pixel_accuracy"] == pytest.approx(300 / 400)
    assert seen == [(0, 2), (1, 2)]


def test_macs_are_counted_per_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 10))  # fmt: skip
    expected = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 9 + 8 * 16 * 16 * 10
    assert count_macs(model, (16, 16)) == expected
    assert count_parameters(model) == (8 * 27 + 8) + (8 * 9 + 8) + (2048 * 10 + 10)
    transposed = nn.ConvTranspose2d(4, 2, 2, stride=2)
    assert count_macs(nn.Sequential(nn.Conv2d(3, 4, 1), transposed), (8, 8)) == 8 * 8 * 4 * 3 + 8 * 8 * 4 * 2 * 4


def test_latency_median_and_p90():
    class Recorder:
        input_size = (8, 8)

        def __init__(self):
            self.shapes = []

        def predict(self, images):
            self.shapes.append(images[0].shape)
            return [np.zeros(images[0].shape[:2], np.float32)]

    recorder = Recorder()
    (latency,) = time_predictors([recorder], np.zeros((40, 48, 3), np.uint8), warmup=2, repeats=20)
    assert 0 < latency["latency_ms"] <= latency["latency_p90_ms"]
    assert set(recorder.shapes) == {(8, 8, 3)}  # timed on the photo already at the input size: no resize inside


def evaluate_config(section, overrides=None) -> EvaluateConfig:
    return build_section(EvaluateConfig, "evaluate", section, overrides)


def test_config_rejects_unknown_keys_and_wrong_types():
    # A given option (not None) overrides params.yaml, which overrides the dataclass default.
    assert evaluate_config({"threads": 4, "repeats": 7}, {"threads": None, "repeats": 9, "max_images": 3}) == EvaluateConfig(
        threads=4, repeats=9, max_images=3
    )
    assert evaluate_config({"reference": None}).reference == ""  # `reference:` left empty
    with pytest.raises(ConfigError, match="unknown evaluate key"):
        evaluate_config({"thread": 2})
    with pytest.raises(ConfigError, match="evaluate.repeats must be int"):
        evaluate_config({"repeats": "many"})
    with pytest.raises(ConfigError, match="at least 1"):
        evaluate_config({"threads": 0})


# --- artefacts and the command ---------------------------------------------------------------


def test_sources_pick_the_rows_of_one_source(tmp_path):
    rows = [{"id": f"{source}{i}", "set": source, "image": "i.jpg", "mask": "m.png", "source": source}
            for source in ("people-dev", "synth") for i in range(3)]  # fmt: skip
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [row["id"] for row in load_rows(tmp_path, "test", 0, ["people-dev"])] == ["people-dev0", "people-dev1", "people-dev2"]
    assert len(load_rows(tmp_path, "test", 2, ["synth"])) == 2 and len(load_rows(tmp_path, "test", 0)) == 6
    with pytest.raises(EvaluationError, match="no row of sources photos; its sources are people-dev, synth"):
        load_rows(tmp_path, "test", 0, ["photos"])


def test_discovery_follows_the_models_layout(models_dir):
    found = discover_artefacts(models_dir)
    assert [path.relative_to(models_dir).as_posix() for path in found] == ["tiny/best.pt", "tiny/export/tiny.onnx"]
    assert expand_artefacts([models_dir / "tiny"]) == found
    assert {model_name_of(path) for path in found} == {"tiny"}


def test_evaluate_command_writes_every_report(tmp_path, split_dir, models_dir):
    output = tmp_path / "reports"
    result = evaluate_command(models_dir, split_dir, output, quick_params(tmp_path))
    metrics = json.loads((output / "metrics.json").read_text())
    pytorch, onnx = metrics["tiny"]["pytorch-fp32"], metrics["tiny"]["onnxruntime-fp32"]
    assert pytorch["iou"] > 0.3 and abs(pytorch["iou"] - onnx["iou"]) < 1e-3
    assert (pytorch["input_height"], pytorch["input_width"]) == (32, 32) and pytorch["params"] == onnx["params"] > 0
    assert pytorch["macs"] == count_macs(load_model(models_dir / "tiny" / "best.pt")[0], (32, 32))
    assert set(pytorch) >= {"miou", "boundary_f", "pixel_accuracy", "alpha_mae", "latency_ms", "latency_p90_ms", "file_mb"}
    points = json.loads((output / "plots" / "latency_vs_iou.json").read_text())
    assert {point["artefact"] for point in points} == {"tiny/pytorch-fp32", "tiny/onnxruntime-fp32"}
    grid = cv2.imread(str(output / "overlays.png"))
    assert grid.shape[1] == 160 * 4 and grid.shape[0] > 2 * 100  # input, truth, 2 predictions; header + 2 rows
    leaderboard = (output / "leaderboard.md").read_text()
    assert "| tiny | pytorch-fp32 | 32x32 |" in leaderboard and leaderboard in result.output
    assert "4 images of the `test` split" in leaderboard


def test_mediapipe_reference_is_evaluated_beside_the_students(tmp_path, split_dir, models_dir):
    from portraitseg.teacher_files import ModelMissingError, model_path

    try:
        model_path("mediapipe-selfie")
    except ModelMissingError as error:
        pytest.skip(f"the MediaPipe model file is not cached here: {error}")
    # The ensemble-of-one "mediapipe-selfie+mediapipe-selfie" stands in for the teachers the students learn from.
    config = EvaluateConfig(warmup=1, repeats=3, threads=1, overlay_images=1, teachers=["mediapipe-selfie+mediapipe-selfie"])
    result = evaluate([models_dir / "tiny" / "best.pt"], split_dir, config)
    reference = next(row for row in result.rows if row["reference"])
    teacher = next(row for row in result.rows if row["teacher"] and not row["reference"])
    assert teacher["model"] == "mediapipe-selfie+mediapipe-selfie" and teacher["iou"] == pytest.approx(reference["iou"])
    assert teacher["backend"] == "teacher"  # an ensemble is no single runtime; its member's file is LiteRT
    assert (reference["model"], reference["backend"], reference["input_size"]) == ("mediapipe-selfie", "litert-fp32", [256, 256])
    assert 0.0 <= reference["iou"] <= 1.0 and reference["latency_ms"] > 0 and reference["latency_ratio"] == 1.0
    assert result.speed["student"] == "tiny/pytorch-fp32"
    assert result.speed["latency_ratio"] == pytest.approx(result.rows[0 if not result.rows[0]["reference"] else 1]["latency_ratio"])

    from trainer.evaluation_report import render_leaderboard

    text = render_leaderboard(result)
    assert "**mediapipe-selfie** (reference)" in text and "mediapipe-selfie+mediapipe-selfie (teacher)" in text
    assert "latency ratio tiny/pytorch-fp32 / mediapipe-selfie at 32x32 vs 256x256" in text


def test_clear_errors(tmp_path, split_dir, models_dir):
    runner = CliRunner()
    params = str(quick_params(tmp_path))
    empty_models = tmp_path / "no-models"
    empty_models.mkdir()
    result = runner.invoke(main, ["evaluate", "--models-dir", str(empty_models), "--split-dir", str(split_dir), "--params", params])
    assert result.exit_code != 0 and "no artefacts to evaluate" in result.output

    empty_split = tmp_path / "empty-split"
    empty_split.mkdir()
    (empty_split / "test.jsonl").write_text("")
    result = runner.invoke(main, ["evaluate", "--models-dir", str(models_dir), "--split-dir", str(empty_split), "--params", params])
    assert result.exit_code != 0 and f"{empty_split / 'test.jsonl'} has no rows" in result.output

    missing_image = tmp_path / "missing-image"
    missing_image.mkdir()
    row = {"id": "gone", "set": str(split_dir / "blobs"), "image": "images/gone.jpg", "mask": "masks/gone.png"}
    (missing_image / "test.jsonl").write_text(json.dumps(row) + "\n")
    result = runner.invoke(main, ["evaluate", "--models-dir", str(models_dir), "--split-dir", str(missing_image), "--params", params])
    assert result.exit_code != 0 and "cannot read image" in result.output and "gone.jpg" in result.output

    corrupt = tmp_path / "broken" / "best.pt"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a checkpoint")
    result = runner.invoke(main, ["evaluate", "--artefact", str(corrupt), "--split-dir", str(split_dir), "--params", params])
    assert result.exit_code != 0 and f"cannot evaluate {corrupt}" in result.output

    result = runner.invoke(main, ["evaluate", "--artefact", str(tmp_path / "nope.onnx"), "--split-dir", str(split_dir)])
    assert result.exit_code != 0 and "does not exist" in result.output

    # A reference whose model file is not in the cache names the command that fetches it.
    with_reference = str(quick_params(tmp_path, reference="mediapipe-selfie"))
    result = runner.invoke(
        main,
        ["evaluate", "--models-dir", str(models_dir), "--split-dir", str(split_dir), "--params", with_reference,
         "--teacher-files", str(tmp_path / "empty-cache"), "--output", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code != 0 and "datatool teacher-files fetch mediapipe-selfie" in result.output


def test_exports_that_were_not_built_are_listed_under_not_evaluated(tmp_path, split_dir, models_dir):
    # `trainer export` leaves a report and no file where a converter failed (test_selfie_segmenter
    # makes one for real) or TensorRT has no CUDA; the leaderboard explains each missing format.
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    export = models / "tiny" / "export"
    base = {"format": "tflite", "precision": "int8", "model": "tiny"}
    not_built = "not built: the converter cannot build it from tiny (AssertionError: non-NHWC node)"
    (export / "tflite-int8.json").write_text(json.dumps({**base, "artefact": "tflite-int8", "status": not_built}))
    (export / "tiny.json").write_text(json.dumps({**base, "artefact": "tiny", "file": "tiny.onnx", "status": "passed"}))
    (export / "notes.json").write_text('["not a report"]')
    (export / "broken.json").write_text("{")
    assert unbuilt_artefacts([models / "tiny"]) == [f"{export / 'tflite-int8.json'}: {not_built}"]

    output = tmp_path / "reports"
    result = evaluate_command(models, split_dir, output, quick_params(tmp_path))
    assert "Not evaluated:" in result.output  # the leaderboard is printed too
    leaderboard = (output / "leaderboard.md").read_text()
    assert f"Not evaluated:\n\n- {export / 'tflite-int8.json'}: {not_built}\n" in leaderboard
    assert "| tiny | onnxruntime-fp32 |" in leaderboard


def test_engine_without_cuda_is_reported_not_verified(tmp_path, split_dir, models_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the engine path is then a real TensorRT run")
    engine = tmp_path / "export" / "tiny-fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"an engine built elsewhere")
    config = EvaluateConfig(warmup=1, repeats=3, threads=1, reference="", overlay_images=1)
    result = evaluate([models_dir / "tiny" / "best.pt", engine], split_dir, config)
    assert [row["backend"] for row in result.rows] == ["pytorch-fp32"]
    assert len(result.not_verified) == 1 and "not verified here" in result.not_verified[0]
    assert str(engine) in result.not_verified[0]


# --- video clips -----------------------------------------------------------------------------


class Scripted:
    """A Predictor that returns the given probability maps in turn (and records the priors it was fed)."""

    input_size = None

    def __init__(self, maps, takes_prior: bool = False):
        self.maps = list(maps)
        self.takes_prior = takes_prior
        self.priors = []

    def predict(self, images, priors=None):
        if self.takes_prior:
            self.priors.append(None if priors[0] is None else float(priors[0].mean()))
        return [self.maps.pop(0) for _ in images]


def test_score_clips_measures_flicker_per_frame_and_smoothed_and_never_pairs_across_clips():
    still = square_mask()
    frame = np.zeros((*still.shape, 3), np.uint8)
    on, off = still / 255.0, np.zeros(still.shape)
    # Two clips of 3 frames on a still truth: the steady predictor is exact; the flickering one
    # loses the person on every second frame (a jump of 1 on 100 of 400 pixels: dtSSD sqrt(100/400)).
    steady = Scripted([on] * 6)
    flicker = Scripted([on, off, on] * 2)
    # A prior student that returns 0.25 + its prior's mean, to show what it is fed.
    prior_student = Scripted([np.full(still.shape, 0.25 * k) for k in (1, 2, 3, 1, 2, 3)], takes_prior=True)
    clips = [[(frame, still)] * 3 for _ in range(2)]
    results = score_clips([steady, flicker, prior_student], clips, smooth=0.7, boundary_width=None)

    exact, flickering = results[0]["per-frame"], results[1]["per-frame"]
    assert exact["dtssd"] == 0.0 and exact["flip_rate"] == 0.0 and exact["iou"] == 1.0
    assert (exact["frames"], exact["clips"]) == (6, 2)
    assert flickering["dtssd"] == pytest.approx(0.5)  # 4 pairs (2 per clip), each sqrt(100 / 400)
    assert flickering["flip_rate"] == pytest.approx(100 / 400)
    assert flickering["iou"] == pytest.approx(4 / 6)
    # MediaPipe's smoothing holds uncertain pixels only; these jumps are between confident values: (almost) unchanged.
    assert results[1]["smoothed"]["dtssd"] == pytest.approx(0.5, abs=1e-3)
    # The prior student was fed nothing on each clip's first frame, then its own unsmoothed output.
    assert prior_student.priors == [None, 0.25, 0.5, None, 0.25, 0.5]


def test_smoothing_damps_uncertain_flicker():
    truth = np.zeros((8, 8), np.uint8)
    frame = np.zeros((8, 8, 3), np.uint8)
    wavering = Scripted([np.full((8, 8), value, np.float32) for value in (0.45, 0.55) * 3])
    result = score_clips([wavering], [[(frame, truth)] * 6], smooth=0.7, boundary_width=None)[0]
    assert result["per-frame"]["flip_rate"] == 1.0  # every pixel crosses 0.5 on every frame
    assert result["per-frame"]["dtssd"] == pytest.approx(0.1)
    assert result["smoothed"]["dtssd"] < 0.5 * result["per-frame"]["dtssd"]


@pytest.fixture(scope="module")
def clip_split_dir(tmp_path_factory) -> Path:
    """test.jsonl: 2 photos and 2 clips of 3 frames, the frames listed out of order."""
    root = tmp_path_factory.mktemp("clip-split")
    rows = [{**write_sample(root / "blobs", f"photo{i}", 300 + i), "split": "test"} for i in range(2)]
    for clip in range(2):
        for frame in (2, 0, 1):
            row = write_sample(root / "blobs", f"clip{clip}-f{frame}", 400 + 10 * clip + frame)
            rows.append({**row, "split": "test", "clip": f"clip{clip}", "frame": frame, "fps": 15.0, "group": f"clip{clip}"})
    (root / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_evaluate_scores_clips_frame_by_frame_beside_the_photos(tmp_path, clip_split_dir, models_dir):
    output = tmp_path / "reports"
    result = CliRunner().invoke(
        main,
        ["evaluate", "--artefact", str(models_dir / "tiny"), "--split-dir", str(clip_split_dir), "--output", str(output),
         "--params", str(quick_params(tmp_path, smooth=0.5)), "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    video = metrics["video_clips"]["tiny"]
    assert set(video) == {"pytorch-fp32", "onnxruntime-fp32"}
    for variants in video.values():
        assert set(variants) == {"per-frame", "smoothed"}
        for numbers in variants.values():
            assert (numbers["frames"], numbers["clips"]) == (6, 2)
            assert 0 <= numbers["iou"] <= 1 and numbers["dtssd"] >= 0 and 0 <= numbers["flip_rate"] <= 1
    assert abs(video["pytorch-fp32"]["per-frame"]["dtssd"] - video["onnxruntime-fp32"]["per-frame"]["dtssd"]) < 1e-3
    leaderboard = (output / "leaderboard.md").read_text()
    assert "2 images of the `test` split" in leaderboard  # the photo table: the rows without a clip
    assert "## Video clips" in leaderboard and "2 clips, 6 frames" in leaderboard and "--smooth 0.5" in leaderboard
    assert leaderboard.count("| tiny | pytorch-fp32 | per-frame |") == 1


def test_clips_are_cut_in_frame_order():
    rows = [
        {"set": "a", "clip": "x", "frame": 1}, {"set": "a", "clip": "y", "frame": 0}, {"set": "a", "clip": "x", "frame": 0},
        {"set": "b", "clip": "x", "frame": 0}, {"set": "a", "id": "photo"},
    ]  # fmt: skip
    assert [[(row["set"], row["clip"], row["frame"]) for row in clip] for clip in clips_of(rows)] == [
        [("a", "x", 0), ("a", "x", 1)], [("a", "y", 0)], [("b", "x", 0)],
    ]  # fmt: skip


def test_a_clip_only_set_scores_each_clips_first_frame_as_its_photos(tmp_path, clip_split_dir, models_dir):
    rows = [json.loads(line) for line in (clip_split_dir / "test.jsonl").read_text().splitlines()]
    frames = [{**row, "set": str(clip_split_dir / row["set"])} for row in rows if "clip" in row]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in frames))
    config = EvaluateConfig(warmup=1, repeats=3, threads=1, reference="", overlay_images=1)
    result = evaluate([models_dir / "tiny" / "best.pt"], tmp_path, config)
    assert result.images == 2 and (result.clips, result.frames) == (2, 6)
    assert sorted(row["variant"] for row in result.video) == ["per-frame", "smoothed"]

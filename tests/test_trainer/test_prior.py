"""Students that see the previous frame (`model_options.prior`): data, training, export, runtimes, predict.

The model side of every family is in test_models_zoo.py. Training uses the tiny model of test_train.py; export, runtimes and predict the hand-set tiny checkpoint of export_fixtures with a
prior channel whose weight is 2 (the prior raises the person probability where it lies) or 0.
"""

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from export_fixtures import SIZE, register_tiny, write_checkpoint, write_split
from test_predict import blob_photo, read_video, write_video
from test_train import TINY, tiny_config, tiny_test_segmenter
from portraitseg.params import ConfigError, build_section
from portraitseg.predictor import FrameStream
from trainer.checkpoint import CheckpointError, load_init_weights, load_model
from trainer.cli import main
from trainer.config import TrainConfig
from trainer.data import PriorSimulation, SegmentationDataset
from trainer.export.calibration import with_second_frame_priors
from trainer.export.graph import build_inference_graph
from trainer.export.parity import SecondFrame
from trainer.export.pipeline import ExportConfig, export_checkpoint
from trainer.models import MODELS, create_model, list_models
from trainer.runtime import RunnerError, open_runner
from trainer.train import fit

FAST = ExportConfig(latency_runs=2)


@pytest.fixture(scope="module")
def blob_split(tmp_path_factory) -> Path:
    """train.jsonl (8 rows) and val.jsonl (6 rows) of blob photos, as `datatool split` writes them."""
    return write_split(tmp_path_factory.mktemp("blob_split"))


@pytest.fixture
def tiny_student(monkeypatch) -> str:
    """test_train's three-layer model, registered for one test."""
    list_models()  # load the real families first, so they do not register over the patch
    monkeypatch.setitem(MODELS, TINY, tiny_test_segmenter)
    return TINY


def ellipse_mask(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (size // 2, size // 2), (size // 5, size // 3), 0, 0, 360, 1.0, -1)
    return mask


# --- the simulated prior -----------------------------------------------------------------------


def test_prior_simulation_is_deterministic_per_seed_and_empty_at_the_configured_rate():
    mask, simulate = ellipse_mask(), PriorSimulation(empty_share=0.2)
    first, again = simulate(mask, np.random.default_rng(7)), simulate(mask, np.random.default_rng(7))
    assert np.array_equal(first, again)
    rng = np.random.default_rng(0)
    priors = [simulate(mask, rng) for _ in range(1000)]
    empty = [not prior.any() for prior in priors]
    assert 0.16 < np.mean(empty) < 0.24  # 1000 draws: 0.2 +- 3 standard deviations
    for prior in (prior for prior, is_empty in zip(priors, empty) if not is_empty):
        assert prior.dtype == np.float32 and prior.shape == mask.shape and 0.0 <= prior.min() and prior.max() <= 1.0
        overlap = ((prior >= 0.5) & (mask >= 0.5)).sum() / ((prior >= 0.5) | (mask >= 0.5)).sum()
        assert 0.5 < overlap  # near the truth ...
    assert np.mean([np.abs(prior - mask).max() > 0.5 for prior in priors]) > 0.9  # ... but never the truth itself


def test_items_carry_a_prior_random_in_training_and_fixed_per_item_in_validation(blob_split):
    prior = PriorSimulation(empty_share=0.0)
    train_set = SegmentationDataset(blob_split, "train", 32, augment=True, prior=prior)
    torch.manual_seed(0)
    item = train_set[0]
    assert item["prior"].shape == (1, 32, 32) and item["prior"].dtype == torch.float32 and item["prior"].any()
    torch.manual_seed(0)
    assert torch.equal(train_set[0]["prior"], item["prior"])  # an item is a function of its seed
    val_set = SegmentationDataset(blob_split, "val", 32, augment=False, prior=prior)
    torch.manual_seed(0)
    first = val_set[1]["prior"]
    torch.manual_seed(1)
    assert torch.equal(val_set[1]["prior"], first)  # whatever torch's state: the same every epoch
    assert "prior" not in SegmentationDataset(blob_split, "val", 32, augment=False)[0]


def test_prior_empty_is_a_probability():
    assert build_section(TrainConfig, "train", {"model_options": {"prior": True}}).prior
    assert not TrainConfig().prior and TrainConfig().prior_empty == 0.2
    with pytest.raises(ConfigError, match="train.prior_empty is a probability"):
        build_section(TrainConfig, "train", {"prior_empty": 1.5})


# --- training ----------------------------------------------------------------------------------


def test_a_prior_student_trains_and_its_checkpoint_rebuilds_with_the_prior(tmp_path, blob_split, tiny_student):
    # The consistency term runs the second view through the model too: both views get the prior.
    config = tiny_config(epochs=1, model_options={"prior": True}, augment=True,
                         loss_weights={"bce": 1.0, "dice": 1.0, "consistency": 0.5})  # fmt: skip
    summary = fit(config, blob_split, tmp_path / "run", show_progress=False)
    assert 0.0 <= summary["val_iou"] <= 1.0
    model, state = load_model(tmp_path / "run" / "best.pt")
    assert state["model_options"] == {"prior": True} and model.in_channels == 4
    assert model(torch.zeros(2, 4, 32, 32)).shape == (2, 1, 32, 32)
    stem = model.body[0]
    assert stem.weight.shape[1] == 4 and stem.weight[:, 3].abs().sum() > 0  # the prior's weights trained


def test_import_encoder_weights_fill_the_rgb_part_of_a_prior_stem(tmp_path):
    # What `trainer import-encoder` writes: the encoder tensors of an RGB mobile_unet.
    torch.manual_seed(0)
    donor = create_model("mobile_unet").eval()
    encoder = {key: value for key, value in donor.state_dict().items() if key.startswith("encoder.")}
    init_file = tmp_path / "encoder.pt"
    torch.save({"state_dict": encoder, "model": "mobile_unet", "model_options": {}}, init_file)

    model = create_model("mobile_unet", prior=True)
    initialised = load_init_weights(model, init_file, "mobile_unet", {"prior": True})
    stem_key = next(key for key, value in model.state_dict().items() if value.ndim == 4 and value.shape[1] == 4)
    assert stem_key in initialised
    assert torch.equal(model.state_dict()[stem_key][:, :3], encoder[stem_key])
    assert not model.state_dict()[stem_key][:, 3].any()
    # Any other shape difference is still refused.
    other = {key: value[:, :2] if key == stem_key else value for key, value in encoder.items()}
    torch.save({"state_dict": other, "model": "mobile_unet", "model_options": {}}, init_file)
    with pytest.raises(CheckpointError, match="1 of another shape"):
        load_init_weights(create_model("mobile_unet", prior=True), init_file, "mobile_unet", {"prior": True})


# --- export, runtimes, parity -------------------------------------------------------------------


@pytest.fixture(scope="module")
def prior_export(blob_split, tmp_path_factory):
    """(split_dir, checkpoint with prior weight 2, {name: ExportResult}) with the tiny model registered."""
    root, split_dir = tmp_path_factory.mktemp("prior_export"), blob_split
    with pytest.MonkeyPatch.context() as monkeypatch:
        register_tiny(monkeypatch)
        checkpoint = write_checkpoint(root / "run", prior_weight=2.0)
        pairs = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
        results = {
            f"{fmt}-{precision}": export_checkpoint(checkpoint, fmt, precision, root / "export", split_dir, FAST)
            for fmt, precision in pairs
        }
        yield split_dir, checkpoint, results


def photo(seed: int) -> np.ndarray:
    from conftest import draw_blob

    return cv2.cvtColor(np.clip(draw_blob(seed)[0], 0, 255).astype(np.uint8), cv2.COLOR_BGR2RGB)


def test_four_channel_artefacts_pass_parity(prior_export):
    _, _, results = prior_export
    for name, result in results.items():
        assert result.status == "passed", (name, result.report)
        assert result.report["iou"] > 0.9 and result.report["prior"] == "second frame", name
    for name in ("onnx-fp32", "tflite-fp32"):
        assert results[name].report["max_abs_diff"] < 1e-4, name
    graph = onnx.load(str(results["onnx-fp32"].artefact)).graph
    assert [dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim] == [1, SIZE, SIZE, 4]
    assert results["onnx-int8"].report["calibration"]["prior"].startswith("the fp32 model's output")


def test_quantization_aware_training_of_a_prior_student_keeps_parity(prior_export, tmp_path):
    split_dir, checkpoint, _ = prior_export
    config = ExportConfig(latency_runs=0, qat_epochs=1, qat_batch_size=4)
    result = export_checkpoint(checkpoint, "tflite", "int8", tmp_path, split_dir, config)
    assert result.status == "passed" and result.report["quantization"]["epochs"] == 1, result.report


def test_runners_take_the_prior_as_a_fourth_channel_that_changes_the_output(prior_export):
    _, checkpoint, results = prior_export
    image = photo(3)
    resized = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    for path in (checkpoint, results["onnx-fp32"].artefact, results["tflite-fp32"].artefact, results["tflite-int8"].artefact):
        runner = open_runner(path, threads=1)
        assert runner.in_channels == 4, path
        empty = np.concatenate([resized, np.zeros((SIZE, SIZE, 1), np.uint8)], axis=-1)
        full = np.concatenate([resized, np.full((SIZE, SIZE, 1), 255, np.uint8)], axis=-1)
        raised = runner.predict(full) - runner.predict(empty)  # the prior adds to the person feature
        assert raised.max() > 0.05 and raised.min() > -0.05, path
        with pytest.raises(RunnerError, match=r"\(N, 32, 32, 4\) RGB images with the previous frame's mask"):
            runner.predict(resized[None])
        predictor = runner.as_predictor()
        assert predictor.takes_prior
        # No prior = an empty prior; a prior at the photo's size is stretched like the photo.
        np.testing.assert_array_equal(predictor.predict([image])[0], predictor.predict([image], priors=[None])[0])
        with_prior = predictor.predict([image], priors=[np.ones(image.shape[:2], np.float32)])[0]
        assert (with_prior - predictor.predict([image])[0]).max() > 0.05, path


def test_a_three_channel_predictor_refuses_a_prior(tmp_path, monkeypatch):
    register_tiny(monkeypatch)
    predictor = open_runner(write_checkpoint(tmp_path / "rgb")).as_predictor()
    assert not predictor.takes_prior and predictor.predict([photo(1)])[0].shape == (40, 48)
    with pytest.raises(ValueError, match="takes no prior"):
        predictor.predict([photo(1)], priors=[None])


def test_parity_compares_second_frames_and_calibration_appends_the_first_frame_output(prior_export):
    _, checkpoint, _ = prior_export
    reference = open_runner(checkpoint, threads=1).as_predictor()
    image = photo(4)
    first_frame = reference.predict([image])[0]
    second_frame = SecondFrame(reference, reference).predict([image])[0]
    np.testing.assert_allclose(second_frame, reference.predict([image], priors=[first_frame])[0])
    assert np.abs(second_frame - first_frame).max() > 0.05  # the prior channel is exercised

    model, _ = load_model(checkpoint)
    samples = np.stack([cv2.resize(photo(seed), (SIZE, SIZE)) for seed in range(3)])
    calibration = with_second_frame_priors(model, samples)
    assert calibration.shape == (3, SIZE, SIZE, 4) and calibration.dtype == np.float32
    np.testing.assert_array_equal(calibration[..., :3], samples)
    graph = build_inference_graph(model)
    first = np.concatenate([samples[:1], np.zeros((1, SIZE, SIZE, 1), np.uint8)], axis=-1).astype(np.float32)
    with torch.no_grad():
        expected = graph(torch.from_numpy(first)).numpy()[0] * 255.0
    np.testing.assert_allclose(calibration[0, ..., 3], expected, rtol=1e-6)


# --- video: the previous output fed back --------------------------------------------------------


def test_frame_stream_feeds_each_output_back_as_the_next_prior():
    class RecordingPredictor:
        input_size = 8
        takes_prior = True

        def __init__(self):
            self.priors = []

        def predict(self, images, priors=None):
            self.priors.append(priors)
            return [np.full(image.shape[:2], len(self.priors) / 10, np.float32) for image in images]

    predictor = RecordingPredictor()
    stream = FrameStream(predictor)
    frames = [np.zeros((4, 6, 3), np.uint8)] * 3
    outputs = stream.predict(frames[:2]) + stream.predict(frames[2:])
    assert predictor.priors[0] == [None]  # the first frame of a clip: an empty prior
    for prior, previous in zip(predictor.priors[1:], outputs[:-1]):
        assert len(prior) == 1 and prior[0] is previous
    stream.start_clip()
    stream.predict(frames[:1])
    assert predictor.priors[-1] == [None]


def test_predict_runs_a_four_channel_tflite_over_a_video(prior_export, tmp_path):
    _, _, results = prior_export
    photos = [cv2.cvtColor(blob_photo(seed, 48, 64)[0], cv2.COLOR_BGR2RGB) for seed in range(2)]
    source = tmp_path / "clip.mp4"
    write_video(source, [photos[index // 4] for index in range(8)], 10, 0.5)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["predict", "--model", str(results["tflite-fp32"].artefact), "--source", str(source),
               "--output", str(out), "--save", "mask", "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    masks, _, _ = read_video(out / "mask" / "clip.mp4")
    assert len(masks) == 8 and masks[0].shape == (48, 64, 3)
    truth = blob_photo(0, 48, 64)[1] > 0
    predicted = masks[2][..., 0] >= 128
    assert (predicted & truth).sum() / (predicted | truth).sum() > 0.8

"""`trainer.runtime`: one `predict` over checkpoints and exported files, and clear errors for bad ones."""

import numpy as np
import pytest

from export_fixtures import SIZE, register_tiny, write_checkpoint
from trainer.export.onnx import export_onnx
from portraitseg.predictor import Predictor
from portraitseg.resize import resize_image, resize_probability
from trainer.runtime import RunnerError, dequantize, open_runner, quantize
from trainer.checkpoint import load_model


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """(checkpoint, fp32 ONNX file) of the tiny model, registered for the whole module."""
    root = tmp_path_factory.mktemp("runtime")
    with pytest.MonkeyPatch.context() as monkeypatch:
        register_tiny(monkeypatch)
        checkpoint = write_checkpoint(root / "run")
        model, _ = load_model(checkpoint)
        yield checkpoint, export_onnx(model, SIZE, root / "onnx-fp32.onnx")


def images(count: int) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def test_checkpoint_and_onnx_runners_agree(artefacts):
    checkpoint, onnx_file = artefacts
    torch_runner, onnx_runner = open_runner(checkpoint), open_runner(onnx_file, threads=1)
    assert (torch_runner.backend, torch_runner.precision, torch_runner.input_size) == ("pytorch", "fp32", (SIZE, SIZE))
    assert (onnx_runner.backend, onnx_runner.precision, onnx_runner.input_size) == ("onnxruntime", "fp32", (SIZE, SIZE))
    batch = images(3)
    expected = torch_runner.predict(batch)
    assert expected.shape == (3, SIZE, SIZE) and expected.dtype == np.float32
    assert 0.0 <= expected.min() and expected.max() <= 1.0
    assert np.abs(onnx_runner.predict(batch) - expected).max() < 1e-4
    # Batch of one (latency) and a single HxWx3 image give the same numbers as inside a batch.
    assert np.allclose(onnx_runner.predict(batch[:1]), expected[:1], atol=1e-4)
    assert np.allclose(onnx_runner.predict(batch[0]), expected[:1], atol=1e-4)


def test_the_colour_rule_model_segments_the_person(artefacts):
    checkpoint, _ = artefacts
    photo = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    photo[:] = (60, 120, 200)  # blue background (RGB)
    photo[:, 8:24, 10:20] = (210, 90, 60)  # red person
    probabilities = open_runner(checkpoint).predict(photo)[0]
    assert probabilities[16, 15] > 0.9 and probabilities[2, 2] < 0.1


def test_a_runner_as_predictor_takes_photos_of_any_size(artefacts):
    runner = open_runner(artefacts[1], threads=1)
    predictor = runner.as_predictor()
    assert isinstance(predictor, Predictor) and predictor.input_size == (SIZE, SIZE)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 48, 3), (SIZE, SIZE, 3), (20, 70, 3))]
    maps = predictor.predict(photos)
    assert [probability.shape for probability in maps] == [photo.shape[:2] for photo in photos]
    assert all(probability.dtype == np.float32 for probability in maps)
    # The one resize rule of the teachers: photo -> S x S, probabilities back bilinearly.
    for photo, probability in zip(photos, maps, strict=True):
        at_input = runner.predict(resize_image(photo, SIZE, SIZE)[None])[0]
        assert np.array_equal(probability, resize_probability(at_input, *photo.shape[:2]))


def test_wrong_image_size_names_the_expected_shape(artefacts):
    with pytest.raises(RunnerError, match=rf"takes \(N, {SIZE}, {SIZE}, 3\)"):
        open_runner(artefacts[1]).predict(np.zeros((1, SIZE + 1, SIZE, 3), np.uint8))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("model.onnx", b"\x00garbage", "is not a readable ONNX model"),
        ("model.tflite", b"garbage!" * 4, "is not a readable TFLite model"),
        ("model.pt", b"garbage", "is not a readable checkpoint"),
        ("model.h5", b"garbage", "unsupported artefact type '.h5'"),
    ],
)
def test_unreadable_or_unsupported_files_are_runner_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RunnerError, match=message) as error:
        open_runner(path)
    assert str(path) in str(error.value)


def test_missing_file_and_engine_without_tensorrt(tmp_path):
    with pytest.raises(RunnerError, match="no artefact at"):
        open_runner(tmp_path / "absent.onnx")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RunnerError, match="needs the `tensorrt` package"):
            open_runner(engine)
    else:
        with pytest.raises(RunnerError):
            open_runner(engine)


def test_quantized_tensors_round_trip():
    detail = {"dtype": np.int8, "quantization": (1.0, -128)}
    values = np.array([0.0, 10.0, 255.0, 300.0], np.float32)
    quantized = quantize(values, detail)
    assert quantized.dtype == np.int8 and quantized.tolist() == [-128, -118, 127, 127]  # 300 saturates
    assert dequantize(quantized, detail).tolist() == [0.0, 10.0, 255.0, 255.0]
    float_detail = {"dtype": np.float32, "quantization": (0.0, 0)}
    assert quantize(values, float_detail) is not values and dequantize(values, float_detail).tolist() == values.tolist()

"""File teachers: YAML specs, every output kind on tiny ONNX models run by ONNX Runtime, spec errors."""

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from teacher_samples import SHARED_DEEPLAB, astronaut, cached_model, iou, people_dev_samples, shared_deeplab

from portraitseg.teacher_files import ModelMissingError
from portraitseg.teachers import SPECS_DIR, create_teacher, list_specs
from portraitseg.teachers.base import TeacherError
from portraitseg.teachers.file_teacher import load_spec

SIZE = 16  # model input side of the tiny test models


def save_onnx(path: Path, nodes, input_shape, output_shape, output_type=TensorProto.FLOAT, input_type=TensorProto.FLOAT) -> Path:
    """A one-input, one-output ONNX model (opset 17, IR 8: what every ONNX Runtime since 1.14 reads)."""
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", input_type, input_shape)],
        [helper.make_tensor_value_info("y", output_type, output_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def identity_model(path: Path, layout: str = "nchw", size: int | str = SIZE) -> Path:
    """Output = input: the three RGB channels act as three class scores (red = class 0)."""
    shape = [1, 3, size, size] if layout == "nchw" else [1, size, size, 3]
    return save_onnx(path, [helper.make_node("Identity", ["x"], ["y"])], shape, shape)


def red_logit_model(path: Path) -> Path:
    """One channel: 20 * (red - 0.5), a logit that is +10 on pure red and -10 without red."""
    constants = [
        helper.make_node("Constant", [], ["starts"], value=helper.make_tensor("starts", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["ends"], value=helper.make_tensor("ends", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["half"], value=helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])),
        helper.make_node("Constant", [], ["gain"], value=helper.make_tensor("gain", TensorProto.FLOAT, [], [20.0])),
    ]
    nodes = constants + [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["red"]),
        helper.make_node("Sub", ["red", "half"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["y"]),
    ]
    return save_onnx(path, nodes, [1, 3, SIZE, SIZE], [1, 1, SIZE, SIZE])


def class_id_model(path: Path) -> Path:
    """An ArgMax over the RGB channels: (1, H, W) int64 class ids, like DeepLab's exported graphs."""
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)
    return save_onnx(path, [node], [1, 3, SIZE, SIZE], [1, SIZE, SIZE], output_type=TensorProto.INT64)


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def two_colour_photo(height: int, width: int) -> np.ndarray:
    """Left half pure red, right half pure blue (RGB)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = 255
    image[:, width // 2 :, 2] = 255
    return image


def left_right(probability: np.ndarray) -> tuple[float, float]:
    """Mean probability well inside the left and the right half (away from the blended middle)."""
    width = probability.shape[1]
    return float(probability[:, : width // 4].mean()), float(probability[:, -(width // 4) :].mean())


# -- every output kind, real ONNX Runtime runs --------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("softmax", "person_class: 0"), ("argmax", "person_class: 0")],
)
def test_multi_class_scores_give_the_person_channel(tmp_path, kind, extra):
    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(
        tmp_path,
        f"model: identity.onnx\ninput_size: {SIZE}\nlayout: nchw\nvalue_range: [0, 10]\noutput: {kind}\n{extra}\n",
    )
    teacher = create_teacher(f"onnx:{spec}")
    (probability,) = teacher.predict([two_colour_photo(40, 60)])
    assert probability.shape == (40, 60) and probability.dtype == np.float32
    left, right = left_right(probability)
    assert left > 0.99 and right < 0.01  # red = class 0 = person on the left only
    assert probability.min() >= 0 and probability.max() <= 1


def test_softmax_value_is_the_softmax_of_the_scores(tmp_path):
    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(tmp_path, f"model: identity.onnx\ninput_size: {SIZE}\nlayout: nchw\nvalue_range: [0, 1]\noutput: softmax\nperson_class: 0\n")
    teacher = create_teacher(f"onnx:{spec}")
    photo = np.full((SIZE, SIZE, 3), (255, 0, 0), np.uint8)  # scores (1, 0, 0)
    (probability,) = teacher.predict([photo])
    assert probability == pytest.approx(np.full((SIZE, SIZE), np.e / (np.e + 2)), abs=1e-5)


def test_sigmoid_of_a_one_channel_logit(tmp_path):
    red_logit_model(tmp_path / "logit.onnx")
    spec = write_spec(tmp_path, f"model: logit.onnx\ninput_size: [{SIZE}, {SIZE}]\nlayout: nchw\nvalue_range: [0, 1]\noutput: sigmoid\n")
    (probability,) = create_teacher(f"onnx:{spec}").predict([two_colour_photo(31, 47)])
    left, right = left_right(probability)
    assert probability.shape == (31, 47)
    assert left == pytest.approx(1 / (1 + np.exp(-10)), abs=1e-4) and right == pytest.approx(1 / (1 + np.exp(10)), abs=1e-4)


def test_probability_output_is_used_as_is_and_clipped(tmp_path):
    identity_model(tmp_path / "identity.onnx", layout="nhwc")
    # nhwc, three channels: the person channel is chosen by person_class, values kept as they are.
    spec = write_spec(tmp_path, f"model: identity.onnx\ninput_size: {SIZE}\nlayout: nhwc\nvalue_range: [-0.5, 1.5]\noutput: probability\nperson_class: 1\n")
    photo = np.zeros((SIZE, SIZE, 3), np.uint8)
    photo[:, :, 1] = 255 // 2  # green 127 -> -0.5 + 127/255*2 = 0.496
    photo[:4, :, 1] = 255  # -> 1.5, clipped to 1
    photo[-4:, :, 1] = 0  # -> -0.5, clipped to 0
    (probability,) = create_teacher(f"onnx:{spec}").predict([photo])
    assert probability[6:10].mean() == pytest.approx(-0.5 + 127 / 255 * 2, abs=1e-5)
    assert probability[:3].min() == 1.0 and probability[-3:].max() == 0.0


def test_argmax_of_a_class_id_map(tmp_path):
    class_id_model(tmp_path / "ids.onnx")
    spec = write_spec(tmp_path, f"model: ids.onnx\ninput_size: {SIZE}\nlayout: nchw\nvalue_range: [0, 1]\noutput: argmax\nperson_class: 2\n")
    (probability,) = create_teacher(f"onnx:{spec}").predict([two_colour_photo(20, 20)])
    left, right = left_right(probability)
    assert (left, right) == (0.0, 1.0)  # blue = class 2 on the right


def test_argmax_map_is_resized_bilinearly(tmp_path):
    """A hard 0/1 map enlarged 4x: the edge becomes a short ramp, the 0.5 level stays in place."""
    class_id_model(tmp_path / "ids.onnx")
    spec = write_spec(tmp_path, f"model: ids.onnx\ninput_size: {SIZE}\nlayout: nchw\nvalue_range: [0, 1]\noutput: argmax\nperson_class: 0\n")
    (probability,) = create_teacher(f"onnx:{spec}").predict([two_colour_photo(64, 64)])
    row = probability[32]
    assert set(np.unique(row[:24])) == {1.0} and set(np.unique(row[40:])) == {0.0}
    assert 0 < row[31] < 1 and 0 < row[32] < 1  # soft values only at the edge
    assert (row >= 0.5).sum() == 32  # the person half stays exactly half


def test_letterbox_output_is_cropped_to_the_photo(tmp_path):
    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(
        tmp_path,
        f"model: identity.onnx\ninput_size: {SIZE}\nlayout: nchw\nvalue_range: [0, 10]\nfit: letterbox\npad_value: 0\noutput: softmax\nperson_class: 0\n",
    )
    photo = np.zeros((30, 60, 3), np.uint8)
    photo[..., 0] = 255  # all red: the padded bottom half of the model input is black
    (probability,) = create_teacher(f"onnx:{spec}").predict([photo])
    assert probability.shape == (30, 60)
    assert probability.min() > 0.99  # no padding rows were stretched into the photo


def test_dynamic_input_dimensions_take_the_spec_size(tmp_path):
    identity_model(tmp_path / "dynamic.onnx", size="side")
    spec = write_spec(tmp_path, "model: dynamic.onnx\ninput_size: [24, 40]\nlayout: nchw\nvalue_range: [0, 10]\noutput: argmax\nperson_class: 0\n")
    teacher = create_teacher(f"onnx:{spec}", threads=1)
    (probability,) = teacher.predict([two_colour_photo(48, 80)])
    assert probability.shape == (48, 80) and left_right(probability) == (1.0, 0.0)
    assert teacher.input_size == (24, 40)  # the spec's [height, width]: timed on a photo at that size


def test_odd_sizes_and_a_batch(tmp_path):
    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(tmp_path, f"model: identity.onnx\ninput_size: {SIZE}\nlayout: nchw\nmean: [0.5, 0.5, 0.5]\nstd: 0.25\noutput: softmax\nperson_class: 0\n")
    teacher = create_teacher(f"onnx:{spec}")
    sizes = [(1, 1), (3, 997), (997, 3), (17, 29)]
    maps = teacher.predict([np.full((h, w, 3), 90, np.uint8) for h, w in sizes])
    assert [m.shape for m in maps] == sizes
    for probability in maps:
        assert probability.dtype == np.float32
        assert probability == pytest.approx(np.full(probability.shape, 1 / 3), abs=1e-5)  # grey: equal scores


def test_very_large_photo_stays_within_memory(tmp_path):
    """8000x6000: shrunk as uint8 first; the only full-size float array is the output map."""
    import tracemalloc

    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(tmp_path, f"model: identity.onnx\ninput_size: {SIZE}\nlayout: nchw\nvalue_range: [0, 10]\noutput: softmax\nperson_class: 0\n")
    teacher = create_teacher(f"onnx:{spec}")
    photo = two_colour_photo(8000, 6000)
    output_bytes = 8000 * 6000 * 4
    tracemalloc.start()
    try:
        (probability,) = teacher.predict([photo])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert probability.shape == (8000, 6000) and probability.dtype == np.float32
    assert peak < 1.5 * output_bytes  # a float copy of the photo alone would be 3x the output
    assert left_right(probability) == pytest.approx((1.0, 0.0), abs=1e-3)


# -- spec values --------------------------------------------------------------------------------


def test_to_tensor_range_dtype_and_layout(tmp_path):
    path = write_spec(tmp_path, "model: m.onnx\ninput_size: [2, 3]\nlayout: nchw\ninput_dtype: uint8\nvalue_range: [0, 510]\noutput: sigmoid\n")
    spec = load_spec(path)
    image = np.array([[[0, 100, 200]] * 3] * 2, np.uint8)  # (2, 3, 3)
    tensor, placement = spec.to_tensor(image)
    assert tensor.shape == (1, 3, 2, 3) and tensor.dtype == np.uint8
    assert list(tensor[0, :, 0, 0]) == [0, 200, 255]  # 400 clipped to the uint8 maximum
    assert (placement.height, placement.width) == (2, 3)

    path = write_spec(tmp_path, "model: m.onnx\ninput_size: 2\nlayout: nhwc\ninput_dtype: int8\nvalue_range: [-128, 127]\noutput: sigmoid\n", "int8.yaml")
    tensor, _ = load_spec(path).to_tensor(np.full((2, 2, 3), 255, np.uint8))
    assert tensor.shape == (1, 2, 2, 3) and tensor.dtype == np.int8 and (tensor == 127).all()

    path = write_spec(tmp_path, "model: m.onnx\ninput_size: 1\nlayout: nhwc\nmean: [0.5, 0.25, 0.0]\nstd: [0.5, 0.25, 1.0]\noutput: sigmoid\n", "norm.yaml")
    tensor, _ = load_spec(path).to_tensor(np.full((1, 1, 3), 255, np.uint8))
    assert tensor.dtype == np.float32 and tensor[0, 0, 0] == pytest.approx([1.0, 3.0, 1.0])


# -- spec and model errors ----------------------------------------------------------------------

GOOD = "model: identity.onnx\ninput_size: 16\nlayout: nchw\nvalue_range: [0, 1]\noutput: softmax\nperson_class: 0\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "colour: rgb\n", "unknown key(s) colour"),
        (GOOD.replace("layout: nchw\n", ""), "missing key(s) layout"),
        (GOOD + "mean: [0, 0, 0]\nstd: [1, 1, 1]\n", "either value_range"),
        (GOOD.replace("value_range: [0, 1]\n", "mean: [0, 0, 0]\n"), "mean and std go together"),
        (GOOD.replace("person_class: 0\n", ""), "needs person_class"),
        (GOOD.replace("nchw", "chw"), "layout must be one of nhwc, nchw"),
        (GOOD.replace("softmax", "logits"), "output must be one of"),
        (GOOD.replace("input_size: 16", "input_size: [16, 0]"), "input_size must be [height, width]"),
        (GOOD.replace("input_size: 16", "input_size: 16x16"), "input_size must be [height, width]"),
        (GOOD.replace("[0, 1]", "[1, 1]"), "lo != hi"),
        (GOOD + "sha256: 1234\n", "sha256 must be 64 hex digits in quotes"),
        (GOOD + "pad_value: 0\n", "pad_value only applies with fit: letterbox"),
        (GOOD + "fit: letterbox\npad_value: 300\n", "pad_value must be an integer from 0 to 255"),
        (GOOD.replace("person_class: 0", "person_class: -1"), "person_class must be an integer"),
        (GOOD.replace("value_range: [0, 1]\n", "mean: [0, 0, 0]\nstd: [1, 0, 1]\n"), "std values must be positive"),
        ("- model: x.onnx\n", "must be a mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_spec_errors_name_the_problem(tmp_path, text, message):
    spec = write_spec(tmp_path, text)
    with pytest.raises(TeacherError) as caught:
        load_spec(spec)
    assert message in str(caught.value) and str(spec) in str(caught.value)


def test_spec_that_does_not_fit_the_model(tmp_path):
    identity_model(tmp_path / "identity.onnx")
    for change, message in [
        (("input_size: 16", "input_size: 32"), "the model's input is [1, 3, 16, 16] float32"),
        (("layout: nchw", "layout: nhwc"), "the model's input is [1, 3, 16, 16]"),
        (("layout: nchw", "layout: nchw\ninput_dtype: uint8"), "[1, 3, 16, 16] float32"),
        (("person_class: 0", "person_class: 0\noutput_index: 1"), "output_index 1, but the model has 1 outputs"),
    ]:
        spec = write_spec(tmp_path, GOOD.replace(*change))
        with pytest.raises(TeacherError) as caught:
            create_teacher(f"onnx:{spec}")
        assert message in str(caught.value), change


def test_person_class_beyond_the_output_channels(tmp_path):
    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(tmp_path, GOOD.replace("person_class: 0", "person_class: 5"))
    teacher = create_teacher(f"onnx:{spec}")
    with pytest.raises(TeacherError, match="person_class 5 is not a channel of the model's 3-channel output"):
        teacher.predict([np.zeros((8, 8, 3), np.uint8)])


def test_softmax_on_one_channel_is_an_error(tmp_path):
    red_logit_model(tmp_path / "logit.onnx")
    spec = write_spec(tmp_path, GOOD.replace("identity.onnx", "logit.onnx"))
    with pytest.raises(TeacherError, match="softmax needs class scores with several channels"):
        create_teacher(f"onnx:{spec}").predict([np.zeros((8, 8, 3), np.uint8)])


def test_missing_model_file_says_where_it_looked_and_how_to_get_it(tmp_path):
    spec = write_spec(tmp_path / "specs", GOOD.replace("identity.onnx", "../weights/tiny.onnx") + "how_to_get: ask the lab for tiny.onnx\n")
    with pytest.raises(ModelMissingError) as caught:
        create_teacher(f"onnx:{spec}", models_dir=tmp_path / "cache")
    message = str(caught.value)
    assert str(tmp_path / "weights" / "tiny.onnx") in message and str(tmp_path / "cache" / "tiny.onnx") in message
    assert "ask the lab for tiny.onnx" in message and "point its `model:` at the file" in message


def test_model_file_is_found_in_the_model_cache_by_name(tmp_path):
    identity_model(tmp_path / "cache" / "tiny.onnx")
    spec = write_spec(tmp_path / "specs", GOOD.replace("identity.onnx", "../../nowhere/tiny.onnx"))
    teacher = create_teacher(f"onnx:{spec}", models_dir=tmp_path / "cache")
    assert teacher.model_file == tmp_path / "cache" / "tiny.onnx"
    assert teacher.label == "onnx:spec"


def test_absolute_model_path_and_pinned_checksum(tmp_path):
    model = identity_model(tmp_path / "models" / "identity.onnx")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    spec = write_spec(tmp_path / "elsewhere", GOOD.replace("identity.onnx", str(model)) + f"sha256: {digest}\n")
    assert create_teacher(f"onnx:{spec}").model_file == model
    wrong = write_spec(tmp_path / "elsewhere", GOOD.replace("identity.onnx", str(model)) + f"sha256: '{'0' * 64}'\n", "wrong.yaml")
    with pytest.raises(ModelMissingError, match="the spec pins 0000"):
        create_teacher(f"onnx:{wrong}")


def test_runtime_must_match_the_model_file(tmp_path):
    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(tmp_path, GOOD)
    with pytest.raises(TeacherError, match=r"identity.onnx is a onnx model; use onnx:"):
        create_teacher(f"tflite:{spec}")


def test_corrupt_model_file(tmp_path):
    (tmp_path / "identity.onnx").write_bytes(b"not a model")
    spec = write_spec(tmp_path, GOOD)
    with pytest.raises(TeacherError, match="ONNX Runtime cannot load"):
        create_teacher(f"onnx:{spec}")


def test_spec_argument_errors(tmp_path):
    with pytest.raises(TeacherError, match=r"onnx needs a spec: onnx:SPEC.yaml .*deeplabv3-mnv2-pascal"):
        create_teacher("onnx")
    with pytest.raises(TeacherError, match="neither a file nor a shipped spec"):
        create_teacher(f"tflite:{tmp_path / 'absent.yaml'}")


# -- the shipped DeepLab spec on the shared tflite file -----------------------------------------


def test_shipped_deeplab_spec_is_valid():
    assert "deeplabv3-mnv2-pascal" in list_specs()
    spec = load_spec(SPECS_DIR / "deeplabv3-mnv2-pascal.yaml")
    assert (spec.input_height, spec.input_width, spec.layout, spec.input_dtype) == (513, 513, "nhwc", "uint8")
    assert (spec.output, spec.person_class, spec.fit) == ("argmax", 15, "letterbox")
    assert spec.model_candidates(None)[0] == SHARED_DEEPLAB.resolve()  # the shared file beside the repository


def test_shipped_deeplab_spec_without_the_file_says_how_to_get_it(tmp_path, monkeypatch):
    from portraitseg.teachers import file_teacher

    spec = load_spec(SPECS_DIR / "deeplabv3-mnv2-pascal.yaml")
    # As on a user's machine: the spec's relative path leads nowhere and the cache is empty.
    monkeypatch.setattr(file_teacher, "load_spec", lambda path: replace(spec, model=str(tmp_path / "gone.tflite")))
    with pytest.raises(ModelMissingError, match=r"google-coral/test_data.*then put it in the model cache"):
        create_teacher("tflite:deeplabv3-mnv2-pascal", models_dir=tmp_path)


def test_shipped_deeplab_finds_people(shared_data):
    model = shared_deeplab()
    teacher = create_teacher("tflite:deeplabv3-mnv2-pascal")
    assert teacher.model_file == model.resolve() and teacher.label == "tflite:deeplabv3-mnv2-pascal"
    samples = people_dev_samples(shared_data, 4)
    maps = teacher.predict([photo for photo, _ in samples])
    assert [m.shape for m in maps] == [truth.shape for _, truth in samples]
    # Wrong channel order, range or letterbox crop would drop this far below the ~0.87 measured on all of people-dev.
    assert np.mean([iou(m, truth) for m, (_, truth) in zip(maps, samples, strict=True)]) > 0.75


def test_shipped_deeplab_odd_sizes():
    shared_deeplab()
    teacher = create_teacher("tflite:deeplabv3-mnv2-pascal")
    maps = teacher.predict([np.full((7, 1001, 3), 120, np.uint8), np.zeros((1, 1, 3), np.uint8), astronaut()[:301, :199]])
    assert [m.shape for m in maps] == [(7, 1001), (1, 1), (301, 199)]
    assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in maps)
    assert maps[2][150:250, 80:180].mean() > 0.5  # the astronaut's chest


def test_multi_channel_probability_needs_the_person_channel(tmp_path):
    identity_model(tmp_path / "identity.onnx")
    spec = write_spec(tmp_path, GOOD.replace("softmax", "sigmoid").replace("person_class: 0\n", ""))
    with pytest.raises(TeacherError, match="output has 3 channels; set person_class"):
        create_teacher(f"onnx:{spec}").predict([np.zeros((4, 4, 3), np.uint8)])


def test_tflite_spec_reproduces_the_mediapipe_teacher(tmp_path):
    """The float tflite path: a spec written from MediaPipe's graph gives the built-in teacher's maps."""
    model = cached_model("mediapipe-selfie")
    spec = write_spec(tmp_path, f"model: {model}\ninput_size: 256\nlayout: nhwc\nvalue_range: [0, 1]\noutput: probability\n")
    teacher = create_teacher(f"tflite:{spec}")
    images = [astronaut(), np.full((33, 71, 3), 200, np.uint8)]
    for mine, builtin in zip(teacher.predict(images), create_teacher("mediapipe-selfie").predict(images), strict=True):
        assert mine == pytest.approx(builtin, abs=1e-4)  # x / 255 vs x * (1 / 255): float rounding only

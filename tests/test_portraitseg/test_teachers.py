"""Teachers: the registry, resizing between photo and model, the ensemble, MediaPipe and rembg.

MediaPipe and rembg run their real model files when the model cache has them
(`datatool teacher-files fetch mediapipe-selfie mediapipe-selfie-landscape rembg-u2netp`) and are skipped with the reason otherwise.
"""

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from teacher_samples import astronaut, cached_model, iou, people_dev_samples

from portraitseg.teacher_files import ModelMissingError
from portraitseg.teachers import TEACHERS, Teacher, create_teacher, list_specs, list_teachers
from portraitseg.teachers.base import TeacherError
from portraitseg.teachers.ensemble import EnsembleTeacher
from portraitseg.predictor import Predictor
from portraitseg.resize import letterbox, resize_image, resize_probability, stretch

ODD_SIZES = [(1, 1), (2, 999), (999, 2), (37, 53)]


class ConstantTeacher(Teacher):
    """Predicts the same probability everywhere (its spec argument), for registry and ensemble tests."""

    name = "constant"

    def __init__(self, value: float):
        self.value = value
        self.calls = 0

    @classmethod
    def build(cls, argument, options):
        return cls(float(argument or 0.5))

    @property
    def label(self) -> str:
        return f"constant:{self.value}"

    def predict(self, images):
        self.calls += 1
        return [np.full(image.shape[:2], self.value, np.float32) for image in images]


class LeftHalfTeacher(Teacher):
    """Person = the left half of the photo."""

    name = "left-half"

    def predict(self, images):
        maps = []
        for image in images:
            probability = np.zeros(image.shape[:2], np.float32)
            probability[:, : image.shape[1] // 2] = 1.0
            maps.append(probability)
        return maps


@pytest.fixture
def fake_teachers(monkeypatch):
    list_teachers()  # load the built-in teachers first, so the fakes are added beside them
    monkeypatch.setitem(TEACHERS, "constant", ConstantTeacher)


def check_maps(maps: list[np.ndarray], sizes: list[tuple[int, int]]) -> None:
    assert [m.shape for m in maps] == sizes
    for probability in maps:
        assert probability.dtype == np.float32
        assert 0.0 <= probability.min() and probability.max() <= 1.0


# -- registry -----------------------------------------------------------------------------------


def test_registry_lists_every_teacher():
    assert list_teachers() == ["deeplabv3", "mediapipe-selfie", "mediapipe-selfie-landscape", "onnx", "rembg", "tflite"]
    assert "deeplabv3-mnv2-pascal" in list_specs()


def test_typo_lists_the_valid_names():
    with pytest.raises(TeacherError) as caught:
        create_teacher("mediapipe")
    message = str(caught.value)
    assert "unknown teacher 'mediapipe'" in message
    for name in ("deeplabv3", "mediapipe-selfie", "rembg", "tflite", "onnx", "deeplabv3-mnv2-pascal"):
        assert name in message


def test_typo_in_an_ensemble_member_and_empty_members():
    with pytest.raises(TeacherError, match="unknown teacher 'rembgg'"):
        create_teacher("mediapipe-selfie+rembgg")
    with pytest.raises(TeacherError, match="empty teacher name"):
        create_teacher("mediapipe-selfie++rembg")


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(TeacherError, match="unknown teacher option.*model_dir; valid options: device, models_dir, threads, weights"):
        create_teacher("mediapipe-selfie", model_dir="/tmp")


@pytest.mark.parametrize("spec", ["mediapipe-selfie:landscape", "rembg:u2net"])
def test_teachers_without_arguments_reject_one(spec):
    with pytest.raises(TeacherError, match="takes no argument"):
        create_teacher(spec)


@pytest.mark.parametrize(("spec", "model"), [("mediapipe-selfie", "mediapipe-selfie"), ("rembg", "rembg-u2netp")])
def test_missing_model_file_says_how_to_fetch_it(tmp_path, spec, model):
    with pytest.raises(ModelMissingError, match=f"datatool teacher-files fetch {model}"):
        create_teacher(spec, models_dir=tmp_path)


def test_plus_builds_an_ensemble(fake_teachers):
    teacher = create_teacher("constant:0.2+constant:0.6")
    assert isinstance(teacher, EnsembleTeacher)
    assert [member.value for member in teacher.members] == [0.2, 0.6]
    assert teacher.label == "constant:0.2+constant:0.6"
    (probability,) = teacher.predict([np.zeros((3, 4, 3), np.uint8)])
    assert probability == pytest.approx(np.full((3, 4), 0.4))


# -- resizing between photo and model -----------------------------------------------------------


def test_shrinking_averages_and_enlarging_interpolates():
    stripes = np.zeros((8, 8, 3), np.uint8)
    stripes[:, ::2] = 200  # one-pixel stripes: sampling would alias them, averaging gives grey
    assert (resize_image(stripes, 4, 4) == 100).all()
    ramp = np.array([[[0] * 3, [200] * 3]], np.uint8)  # (1, 2, 3)
    assert list(resize_image(ramp, 4, 1)[0, :, 0]) == [0, 50, 150, 200]
    image = np.zeros((5, 6, 3), np.uint8)
    assert resize_image(image, 6, 5) is image  # model size already: no copy


def test_stretch_and_letterbox_placement():
    image = np.full((100, 200, 3), 255, np.uint8)
    stretched, placement = stretch(image, 64, 64)
    assert stretched.shape == (64, 64, 3) and (placement.height, placement.width) == (64, 64)
    boxed, placement = letterbox(image, 64, 64, pad_value=7)
    assert boxed.shape == (64, 64, 3)
    assert (boxed[:32] == 255).all() and (boxed[32:] == 7).all()  # content top-left, border below
    assert (placement.height, placement.width) == (32, 64)
    output = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)  # a model output at half resolution
    assert placement.crop(output).shape == (16, 32)


def test_resize_probability_shape_dtype_and_range():
    hard = np.zeros((4, 4), np.int64)
    hard[:, :2] = 1
    probability = resize_probability(hard, 9, 17)
    assert probability.shape == (9, 17) and probability.dtype == np.float32
    assert probability.min() == 0.0 and probability.max() == 1.0
    overshoot = resize_probability(np.array([[1.2, -0.1]], np.float32), 1, 2)
    assert list(overshoot[0]) == [1.0, 0.0]


# -- ensemble -----------------------------------------------------------------------------------


def test_ensemble_mean_and_members():
    left = LeftHalfTeacher()
    constant = ConstantTeacher(0.25)
    ensemble = EnsembleTeacher([left, constant])
    images = [np.zeros((4, 6, 3), np.uint8), np.zeros((5, 3, 3), np.uint8)]
    means = ensemble.predict(images)
    check_maps(means, [(4, 6), (5, 3)])
    assert means[0][:, :3] == pytest.approx(np.full((4, 3), 0.625)) and means[0][:, 3:] == pytest.approx(np.full((4, 3), 0.125))
    members = ensemble.predict_members(images)
    assert [list(maps) for maps in members] == [["left-half", "constant:0.25"]] * 2
    for maps, mean in zip(members, means, strict=True):
        assert np.mean(np.stack(list(maps.values())), axis=0) == pytest.approx(mean)
    assert (members[1]["left-half"][:, :1] == 1).all() and (members[1]["constant:0.25"] == 0.25).all()


def test_ensemble_of_one_teacher_twice_keeps_both_maps():
    ensemble = EnsembleTeacher([ConstantTeacher(0.1), ConstantTeacher(0.1)])
    assert ensemble.label == "constant:0.1+constant:0.1#2"
    (maps,) = ensemble.predict_members([np.zeros((2, 2, 3), np.uint8)])
    assert list(maps) == ["constant:0.1", "constant:0.1#2"]


def test_ensemble_needs_two_members():
    with pytest.raises(TeacherError, match="at least two"):
        EnsembleTeacher([ConstantTeacher(0.5)])


# -- MediaPipe selfie segmenter (real model file) -----------------------------------------------


@pytest.fixture(scope="module")
def mediapipe():
    cached_model("mediapipe-selfie")
    return create_teacher("mediapipe-selfie")


def test_mediapipe_odd_sizes(mediapipe):
    images = [np.full((*size, 3), 128, np.uint8) for size in ODD_SIZES]
    check_maps(mediapipe.predict(images), ODD_SIZES)


def test_teachers_are_predictors(mediapipe):
    # The contract students meet through Runner.as_predictor(): scored and timed alike (trainer.harness).
    assert isinstance(mediapipe, Predictor) and mediapipe.input_size == (256, 256)
    assert isinstance(ConstantTeacher(0.5), Predictor) and ConstantTeacher(0.5).input_size is None
    threaded = create_teacher("mediapipe-selfie", threads=1)
    photo = astronaut()
    assert np.array_equal(threaded.predict([photo])[0], mediapipe.predict([photo])[0])


def test_mediapipe_finds_the_astronaut(mediapipe):
    (probability,) = mediapipe.predict([astronaut()])
    assert probability[250:450, 150:350].mean() > 0.9  # face and chest
    assert probability[:60, :60].mean() < 0.1 and probability[:60, -60:].mean() < 0.2  # background corners


def test_mediapipe_agrees_with_people_dev(mediapipe, shared_data):
    samples = people_dev_samples(shared_data, 6)
    maps = mediapipe.predict([photo for photo, _ in samples])
    # Inputs in [0, 255] instead of [0, 1], or BGR, or a second sigmoid fall far below this (0.88 on all 193).
    assert np.mean([iou(m, truth) for m, (_, truth) in zip(maps, samples, strict=True)]) > 0.8


@pytest.fixture(scope="module")
def mediapipe_landscape():
    cached_model("mediapipe-selfie-landscape")
    return create_teacher("mediapipe-selfie-landscape")


def test_mediapipe_landscape_model_takes_144x256_frames(mediapipe_landscape):
    assert mediapipe_landscape.input_size == (144, 256) and mediapipe_landscape.label == "mediapipe-selfie-landscape"
    check_maps(mediapipe_landscape.predict([np.full((*size, 3), 128, np.uint8) for size in ODD_SIZES]), ODD_SIZES)
    (probability,) = mediapipe_landscape.predict([astronaut()])
    assert probability[250:450, 150:350].mean() > 0.9  # face and chest, squeezed into 144 rows


def test_mediapipe_landscape_agrees_with_people_dev(mediapipe_landscape, shared_data):
    samples = people_dev_samples(shared_data, 6)
    maps = mediapipe_landscape.predict([photo for photo, _ in samples])
    # 0.893 on these 6 (the general model: 0.937); a transposed input falls far below.
    assert np.mean([iou(m, truth) for m, (_, truth) in zip(maps, samples, strict=True)]) > 0.8


def test_the_general_model_file_is_not_taken_for_the_landscape_one(tmp_path):
    from portraitseg.teachers.mediapipe_selfie import MediaPipeSelfieLandscapeTeacher

    with pytest.raises(TeacherError, match=r"not the mediapipe-selfie-landscape model: input \(1, 256, 256, 3\)"):
        MediaPipeSelfieLandscapeTeacher(cached_model("mediapipe-selfie"))


def test_mediapipe_very_large_photo(mediapipe):
    photo = np.zeros((8000, 6000, 3), np.uint8)
    photo[2000:6000, 1500:4500] = astronaut()[256, 256]  # a flat patch: shape and memory are the point
    tracemalloc.start()
    try:
        (probability,) = mediapipe.predict([photo])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert probability.shape == (8000, 6000) and probability.dtype == np.float32
    assert peak < 1.5 * probability.nbytes  # no full-size float copy of the photo


# -- rembg with u2netp (real model file) --------------------------------------------------------


@pytest.fixture(scope="module")
def rembg():
    cached_model("rembg-u2netp")
    return create_teacher("rembg")


def test_rembg_odd_sizes_and_label(rembg):
    assert rembg.label == "rembg:u2netp" and rembg.input_size == (320, 320)
    images = [np.full((*size, 3), 128, np.uint8) for size in ODD_SIZES]
    check_maps(rembg.predict(images), ODD_SIZES)


def test_rembg_keeps_the_probability_where_rembg_predict_stretches_it(rembg):
    from PIL import Image

    black = np.zeros((120, 160, 3), np.uint8)
    (probability,) = rembg.predict([black])
    assert probability.max() < 0.5  # nobody there: the raw sigmoid output says so
    stretched = np.asarray(rembg.session.predict(Image.fromarray(black))[0], np.float32) / 255
    assert stretched.max() > 0.99  # rembg's per-image min-max makes its maximum "certain"


def test_rembg_matches_rembg_predict_on_a_portrait(rembg):
    from PIL import Image

    photo = astronaut()
    (probability,) = rembg.predict([photo])
    reference = np.asarray(rembg.session.predict(Image.fromarray(photo))[0], np.float32) / 255
    assert iou(probability, reference >= 0.5) > 0.97  # same network and pre-processing as rembg itself
    assert probability[250:450, 150:350].mean() > 0.9


def test_rembg_sets_u2net_home_only_while_loading(rembg):
    before = os.environ.get("U2NET_HOME")
    from portraitseg.teachers.rembg_u2netp import RembgTeacher

    teacher = RembgTeacher(rembg.model_file)
    assert os.environ.get("U2NET_HOME") == before
    assert teacher.session.inner_session is not None


def test_rembg_needs_the_file_name_rembg_looks_for(tmp_path):
    from portraitseg.teachers.rembg_u2netp import RembgTeacher

    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(TeacherError, match="needs a file named u2netp.onnx"):
        RembgTeacher(other)


def test_options_reach_the_teacher(fake_teachers, monkeypatch):
    seen = []
    monkeypatch.setattr(ConstantTeacher, "build", classmethod(lambda cls, argument, options: seen.append(options) or cls(0.5)))
    create_teacher("constant+constant", models_dir="~/models", device=None, weights="w.pth", threads=3)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[0].models_dir == Path("~/models").expanduser() and seen[0].device == "cpu" and seen[0].weights == "w.pth"
    assert seen[0].threads == 3

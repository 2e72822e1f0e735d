"""DeepLabV3 teacher: pre/post-processing with a stub network, loading weights files, never downloading.

torchvision's trained weights are used only when torchvision's cache has them (the test is
skipped otherwise); everything else runs on stub or randomly initialised models.
"""

import tracemalloc

import numpy as np
import pytest
import torch
from teacher_samples import astronaut

from portraitseg.teacher_files import ModelMissingError, deeplabv3_weights
from portraitseg.teachers import create_teacher
from portraitseg.teachers.base import TeacherError
from portraitseg.teachers.deeplabv3 import MEAN, PERSON_CLASS, DeepLabV3Teacher, build_model


class LeftHalfPersonNet(torch.nn.Module):
    """Stands in for DeepLabV3: logits favour `person` on the left half of its input, records its inputs."""

    def __init__(self):
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):  # x: (N, 3, h, w), normalised
        self.inputs.append(x.clone())
        logits = torch.zeros(x.shape[0], 21, *x.shape[2:])
        half = x.shape[3] // 2
        logits[:, PERSON_CLASS, :, :half] = 8.0
        logits[:, 0, :, half:] = 8.0
        return {"out": logits}


@pytest.fixture
def stub_teacher():
    return DeepLabV3Teacher(LeftHalfPersonNet(), "stub")


def test_person_probability_is_the_softmax_of_class_15(stub_teacher):
    (probability,) = stub_teacher.predict([np.zeros((40, 60, 3), np.uint8)])
    assert probability.shape == (40, 60) and probability.dtype == np.float32
    certain = np.exp(8) / (np.exp(8) + 20)  # 8 for the winning class, 0 for the 20 others
    assert probability[:, :20] == pytest.approx(np.full((40, 20), certain), abs=1e-5)
    assert probability[:, -20:] == pytest.approx(np.full((40, 20), 1 / (np.exp(8) + 20)), abs=1e-5)


def test_input_is_resized_to_torchvisions_size_and_normalised(stub_teacher):
    photo = np.empty((427, 640, 3), np.uint8)
    photo[:] = np.round(np.array(MEAN) * 255).astype(np.uint8)  # the ImageNet mean colour
    stub_teacher.predict([photo])
    (tensor,) = stub_teacher.model.inputs
    assert tensor.shape == (1, 3, 520, 779)  # shorter side 520, aspect ratio kept
    assert tensor.abs().max() < 0.01  # (mean - mean) / std


def test_same_size_photos_share_a_batch(stub_teacher):
    images = [np.zeros((100, 150, 3), np.uint8), np.zeros((50, 50, 3), np.uint8), np.zeros((100, 150, 3), np.uint8)]
    maps = stub_teacher.predict(images)
    assert [m.shape for m in maps] == [(100, 150), (50, 50), (100, 150)]
    assert sorted(tensor.shape[0] for tensor in stub_teacher.model.inputs) == [1, 2]


def test_panorama_longer_side_is_capped(stub_teacher):
    assert stub_teacher.model_size(100, 2000) == (52, 1040)
    assert stub_teacher.model_size(1000, 500) == (1040, 520)
    assert stub_teacher.model_size(1, 1) == (520, 520)


def test_very_large_photo(stub_teacher):
    photo = np.zeros((8000, 6000, 3), np.uint8)
    tracemalloc.start()
    try:
        (probability,) = stub_teacher.predict([photo])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert probability.shape == (8000, 6000) and probability.dtype == np.float32
    assert peak < 1.5 * probability.nbytes
    assert stub_teacher.model.inputs[0].shape == (1, 3, 693, 520)  # shrunk as uint8 before any tensor


def test_building_the_model_never_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torchvision tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    model = build_model("mobilenet_v3_large")
    assert model.classifier[-1].out_channels == 21 and model.aux_classifier is None


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A random mobilenet_v3_large state dict saved like torchvision's files (with the auxiliary head)."""
    from torchvision.models import segmentation

    torch.manual_seed(0)
    model = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    path = tmp_path_factory.mktemp("weights") / "deeplabv3_random.pth"
    torch.save(model.state_dict(), path)
    return path


def test_weights_file_loads_and_runs_at_odd_sizes(random_weights):
    teacher = create_teacher("deeplabv3:mobilenet_v3_large", weights=str(random_weights))
    assert teacher.label == "deeplabv3:mobilenet_v3_large"
    state = torch.load(random_weights, weights_only=True)
    assert torch.equal(teacher.model.classifier[-1].weight, state["classifier.4.weight"])
    teacher.short_side, teacher.max_side = 64, 128  # the real network, at a size a CPU test runs quickly
    sizes = [(1, 1), (3, 300), (37, 53)]
    maps = teacher.predict([np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes])
    assert [m.shape for m in maps] == sizes
    assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in maps)


def test_checkpoint_with_a_model_entry_loads(random_weights, tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": torch.load(random_weights, weights_only=True), "epoch": 3}, checkpoint)
    assert create_teacher("deeplabv3:mobilenet_v3_large", weights=checkpoint).variant == "mobilenet_v3_large"


def test_weights_that_do_not_fit(random_weights, tmp_path):
    state = torch.load(random_weights, weights_only=True)
    missing = dict(state)
    del missing["classifier.4.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(TeacherError, match=r"do not fit this model: 1 missing keys \['classifier.4.weight'\]"):
        create_teacher("deeplabv3:mobilenet_v3_large", weights=tmp_path / "missing.pth")
    reshaped = {**state, "classifier.4.weight": torch.zeros(5, 256, 1, 1), "classifier.4.bias": torch.zeros(5)}
    torch.save(reshaped, tmp_path / "five_classes.pth")
    with pytest.raises(TeacherError, match="do not fit this model.*size mismatch"):
        create_teacher("deeplabv3:mobilenet_v3_large", weights=tmp_path / "five_classes.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherError, match="cannot read DeepLabV3 weights"):
        create_teacher("deeplabv3:mobilenet_v3_large", weights=tmp_path / "garbage.pth")


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelMissingError, match=r"download https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth"):
        create_teacher("deeplabv3:mobilenet_v3_large")
    with pytest.raises(ModelMissingError, match="does not exist"):
        create_teacher("deeplabv3", weights=tmp_path / "absent.pth")


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(TeacherError, match="unknown DeepLabV3 variant 'resnet18'; choose one of: resnet50, resnet101, mobilenet_v3_large"):
        create_teacher("deeplabv3:resnet18")


@pytest.mark.parametrize("variant", ["resnet50", "resnet101", "mobilenet_v3_large"])
def test_trained_weights_find_the_astronaut(variant):
    try:
        deeplabv3_weights(variant)
    except ModelMissingError as error:
        pytest.skip(f"torchvision's DeepLabV3 {variant} weights are not cached on this machine: {error}")
    teacher = create_teacher(f"deeplabv3:{variant}")
    (probability,) = teacher.predict([astronaut()])
    assert probability[250:450, 150:350].mean() > 0.9

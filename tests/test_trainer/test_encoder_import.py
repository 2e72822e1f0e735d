"""`trainer import-encoder` on every MobileNetV2 file it reads: width and kind from the file itself.

The channel-rounding and embedding tests need no file. The end-to-end imports read the
half-width DeepLab and the ImageNet classifier files of ../shared/weights with the photos of
../shared/data/unlabeled-people, and skip with a reason where either is absent (the full-width
DeepLab file is tested in test_init_weights.py).
"""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision.models import mobilenet_v2

from conftest import SHARED, make_photo, write_image
from teacher_samples import cached_model
from test_train import TinySegmenter
from trainer.checkpoint import CheckpointError, load_init_weights
from trainer.cli import main
from trainer.models import create_model
from trainer.models.encoder_import import (
    SCOPES,
    EncoderImportError,
    FoldedConv,
    check_shape,
    conv_and_norm,
    copy_convolution,
    import_mobilenet_encoder,
)

PHOTOS = SHARED / "data" / "unlabeled-people"
# TensorFlow keeps 24 x 0.5 = 12 channels where torchvision rounds up to a multiple of 8 (16).
HALF_WIDTH_WIDENED = [
    "expanded_conv_1/project (12, 48) -> (16, 48)",
    "expanded_conv_2/expand (72, 12) -> (96, 16)",
    "expanded_conv_2/depthwise (72, 1) -> (96, 1)",
    "expanded_conv_2/project (12, 72) -> (16, 96)",
    "expanded_conv_3/expand (72, 12) -> (96, 16)",
    "expanded_conv_3/depthwise (72, 1) -> (96, 1)",
    "expanded_conv_3/project (16, 72) -> (16, 96)",
]


def shared_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (shared development weights and photos, not part of a user's checkout)")
    return path


# --- channel rounding (no file needed) ---------------------------------------------------------


def test_torchvision_rounds_only_the_stride_4_blocks_differently_at_half_width():
    base, half = mobilenet_v2(width_mult=1.0).features[:-1], mobilenet_v2(width_mult=0.5).features[:-1]
    differing = []
    for scope in SCOPES:
        ours = conv_and_norm(half, scope)[0].weight.shape
        full = conv_and_norm(base, scope)[0].weight.shape
        # DeepLab's depth multiplier 0.5 (divisible_by=1): every count halved, the RGB input and depthwise 1 kept.
        tensorflow = torch.Size([full[0] // 2, full[1] if full[1] in (1, 3) else full[1] // 2, *full[2:]])
        if check_shape(scope, tensorflow, ours, full, 0.5):
            differing.append(scope)
    assert differing == [line.split()[0] for line in HALF_WIDTH_WIDENED]


def test_a_shape_that_is_neither_ours_nor_tensorflows_rounding_is_refused():
    # A width-0.35 classifier's expanded_conv_1/project: 8 channels, neither 16 nor 24 x 0.5.
    with pytest.raises(EncoderImportError, match=r"expanded_conv_1/project: the file's weight is \(8, 48, 1, 1\)"):
        check_shape("expanded_conv_1/project", torch.Size([8, 48, 1, 1]), torch.Size([16, 48, 1, 1]),
                    torch.Size([24, 96, 1, 1]), 0.5)  # fmt: skip
    with pytest.raises(EncoderImportError, match="channel counts must be the same"):  # wider than ours
        check_shape("Conv", torch.Size([48, 3, 3, 3]), torch.Size([32, 3, 3, 3]), torch.Size([32, 3, 3, 3]), 1.0)


def test_a_narrower_file_layer_is_embedded_so_the_wider_stack_computes_its_features():
    torch.manual_seed(0)
    # The file: 3 -> 12 -> 5 channels; ours: 3 -> 16 -> 5, randomly initialised.
    file_convs = [nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 5, 1)]
    ours = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 5, 1, bias=False), nn.BatchNorm2d(5),
    )  # fmt: skip
    for (conv, norm), source in zip(((ours[0], ours[1]), (ours[3], ours[4])), file_convs):
        copy_convolution(conv, norm, FoldedConv(source.weight.detach(), source.bias.detach(), output_index=0))
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = file_convs[1](nn.functional.relu6(file_convs[0](images)))
        hidden = ours[:3].eval()(images)
        torch.testing.assert_close(ours.eval()(images), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden[:, :12], nn.functional.relu6(file_convs[0](images)).detach())
    assert hidden[:, 12:].abs().sum() > 0  # the extra channels keep their initialisation and can learn
    assert torch.equal(ours[3].weight[:, 12:], torch.zeros(5, 4, 1, 1))  # ... but are not read yet


# --- the real files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "kind", "width", "widened"),
    [
        ("deeplabv3_mnv2_dm05_pascal_quant.tflite", "deeplabv3-pascal", 0.5, HALF_WIDTH_WIDENED),
        ("mobilenet_v2_1.0_224_quant.tflite", "imagenet-classifier", 1.0, []),
    ],
)
def test_import_encoder_detects_the_width_and_loads_into_that_student(tmp_path, file, kind, width, widened):
    tflite, photos = shared_file(SHARED / "weights" / file), shared_file(PHOTOS)
    output = tmp_path / "encoder.pt"
    result = CliRunner().invoke(main, ["import-encoder", "--tflite", str(tflite), "--images", str(photos),
                                       "--output", str(output)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{kind} {file} (MobileNetV2 width {width})" in result.output
    assert f"mobile_unet {{'width_mult': {width}}} encoder" in result.output
    saved = torch.load(output, weights_only=True)
    assert saved["source_kind"] == kind and saved["model"] == "mobile_unet" and saved["model_options"] == {"width_mult": width}
    assert saved["check_correlation"] >= 0.99 and saved["calibration_images"] == 16
    assert saved["widened"] == widened and saved["tensors"] == 306  # the classifier's Conv_1 and logits are not read

    # What `trainer train model=mobile_unet model_options.width_mult=<width> init_weights=<output>` does.
    model = create_model("mobile_unet", width_mult=width)
    initialised = load_init_weights(model, output, "mobile_unet", {"width_mult": width})
    assert initialised == {f"encoder.{key}" for key, _ in model.encoder.named_parameters()}
    state = model.state_dict()
    for key in ("encoder.stages.0.0.0.weight", "encoder.stages.1.1.conv.0.0.weight", "encoder.stages.3.4.conv.2.weight",
                "encoder.stages.4.3.conv.3.running_var"):  # fmt: skip
        assert torch.equal(state[key], saved["state_dict"][key]), key
    assert state["encoder.stages.0.0.0.weight"].shape == (int(32 * width), 3, 3, 3)
    other = {"width_mult": 1.5 - width}  # the other width: refused (tensors of another shape), naming the file's width
    with pytest.raises(CheckpointError, match=rf"made for mobile_unet \{{'width_mult': {width}\}}"):
        load_init_weights(create_model("mobile_unet", **other), output, "mobile_unet", other)


def test_import_encoder_names_what_it_found_in_a_student_tflite(tmp_path):
    from trainer.export.tflite import export_tflite

    student = export_tflite(TinySegmenter(), 32, tmp_path / "student.tflite")
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", make_photo(64, 64))
    with pytest.raises(EncoderImportError, match=r"is none of the files .* found 0 MobilenetV2 body convolutions, "
                       r"heads none known; input \[1, 32, 32, 3\] float32, .* 3 convolutions, the first"):  # fmt: skip
        import_mobilenet_encoder(student, photos, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_mobilenet_importer_refuses_the_mediapipe_selfie_model(tmp_path):
    # `trainer import-encoder` sends MediaPipe's file to the selfie importer (test_selfie_segmenter.py);
    # the MobileNetV2 importer itself still says what it reads instead of importing part of it.
    model = cached_model("mediapipe-selfie")
    with pytest.raises(EncoderImportError, match="is none of the files the importer reads.*heads none known"):
        import_mobilenet_encoder(model, tmp_path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_import_encoder_without_photos_writes_nothing(tmp_path):
    model = cached_model("mediapipe-selfie")
    (tmp_path / "photos").mkdir()
    result = CliRunner().invoke(main, ["import-encoder", "--tflite", str(model), "--images", str(tmp_path / "photos"),
                                       "--output", str(tmp_path / "out.pt")])  # fmt: skip
    assert result.exit_code == 1
    assert "no readable images in" in result.output and "pass --images with a folder of photos" in result.output
    assert not (tmp_path / "out.pt").exists()

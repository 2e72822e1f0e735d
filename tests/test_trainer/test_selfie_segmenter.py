"""`selfie_segmenter`: MediaPipe's selfie segmenter network, started from MediaPipe's own model file.

The padding and shape tests need no file. The imports read the cached `mediapipe-selfie` and
`mediapipe-selfie-landscape` teacher files (`datatool teacher-files fetch --all`, part of the
README install) and skip with the fetch command where they are absent.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_photo, write_image
from teacher_samples import astronaut, cached_model
from portraitseg.teachers.mediapipe_selfie import input_probability
from trainer.checkpoint import load_init_weights
from trainer.cli import main
from trainer.models import create_model
from trainer.models.selfie_import import (
    NotSelfieFileError,
    import_selfie_segmenter,
    model_probabilities,
)
from trainer.data import input_normalisation
from trainer.export.graph import build_inference_graph, example_input
from trainer.models.base import add_prior_channel
from trainer.models.selfie_segmenter import BlackPaddedStem, SameConv2d, SubpixelHead


@pytest.mark.parametrize(("side", "kernel", "stride", "before"), [(8, 3, 2, 0), (9, 3, 2, 1), (8, 5, 2, 1), (8, 5, 1, 2)])
def test_same_padding_is_tensorflows(side, kernel, stride, before):
    # TensorFlow SAME: ceil(side / stride) outputs; the total padding is split with the odd pixel after.
    # A ramp input tells where the window starts: output 0 of a kernel that picks its top-left tap
    # reads input row -before (a padded zero when before > 0).
    conv = SameConv2d(1, 1, kernel, stride)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
        conv.bias.zero_()
    ramp = torch.arange(1, side + 1, dtype=torch.float32).view(1, 1, side, 1).expand(1, 1, side, side).contiguous()
    output = conv(ramp)
    assert output.shape[-2:] == (-(-side // stride), -(-side // stride))
    first_row = output[0, 0, 0, before].item()  # column `before` is inside the image, so only the row matters
    assert first_row == (0.0 if before else 1.0)
    if before:
        assert output[0, 0, 1, before].item() == stride + 1 - before  # the next window starts `stride` rows later


def test_subpixel_head_is_the_transposed_convolution():
    # Tap (i, j) of a 2 x 2 stride-2 transposed kernel is channel 2 i + j of the 1 x 1 convolution,
    # the mapping the importer applies to MediaPipe's Convolution2DTransposeBias.
    torch.manual_seed(0)
    transposed = torch.nn.ConvTranspose2d(16, 1, 2, stride=2)
    head = SubpixelHead(16)
    with torch.no_grad():
        head.conv.weight.copy_(transposed.weight[:, 0].reshape(16, 4).t().reshape(4, 16, 1, 1))
        head.conv.bias.copy_(transposed.bias.repeat(4))
    x = torch.randn(2, 16, 12, 20)
    with torch.inference_mode():
        torch.testing.assert_close(head(x), transposed(x))
    assert head(x).shape == (2, 1, 24, 40)


@pytest.mark.parametrize("channels", [3, 4])
def test_black_padded_stem_folds_the_normalisation_exactly(channels):
    # The stem pads its normalised input with black; the folded convolution reads 0..255 pixels and
    # pads them with 0, which is black: the two agree everywhere, the padded border included.
    torch.manual_seed(0)
    stem = BlackPaddedStem(channels, 8, 3, 2)
    pixels = torch.randint(0, 256, (2, channels, 9, 10)).float()
    scale, shift = input_normalisation(channels)
    folded = stem.fold_normalisation(scale, shift)
    with torch.no_grad():
        torch.testing.assert_close(folded(pixels), stem(pixels * scale + shift), atol=1e-4, rtol=1e-5)
        # Padding with 0 instead (the mean colour) would differ on the border row and column.
        plain = SameConv2d(channels, 8, 3, 2)
        plain.load_state_dict(stem.state_dict())
        assert (plain(pixels * scale + shift) - stem(pixels * scale + shift)).abs().amax(dim=(0, 1))[-1].max() > 1e-2


@pytest.mark.parametrize("prior", [False, True])
def test_inference_graph_folds_the_normalisation_into_the_stem(prior):
    # The graph has no multiply-add over the input, and computes what the model computes on the
    # trainer's normalisation of the same pixels.
    torch.manual_seed(0)
    model = create_model("selfie_segmenter").eval()
    if prior:
        model = add_prior_channel(model)
        with torch.no_grad():
            model.stem[0].weight[:, 3].normal_()  # a prior weight that is not zero
    graph = build_inference_graph(model)
    assert not graph.normalises and type(graph.model.stem[0]) is SameConv2d
    assert type(model.stem[0]) is BlackPaddedStem  # the model itself is not touched
    pixels = example_input((32, 48), model.in_channels)
    scale, shift = input_normalisation(model.in_channels)
    with torch.no_grad():
        expected = torch.sigmoid(model(pixels.permute(0, 3, 1, 2) * scale + shift))[:, 0]
        torch.testing.assert_close(graph(pixels), expected, atol=1e-5, rtol=1e-4)
    # A student whose stem pads with zeros keeps the multiply-add.
    assert build_inference_graph(create_model("blazeseg")).normalises


@pytest.mark.parametrize("size", [(256, 256), (192, 192), (144, 256)])
def test_network_runs_at_mediapipes_sizes(size):
    model = create_model("selfie_segmenter").eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1, *size)


def test_pretrained_is_refused_with_the_importer_named():
    with pytest.raises(ValueError, match="trainer import-encoder --tflite mediapipe-selfie"):
        create_model("selfie_segmenter", pretrained=True)


def photos(folder: Path) -> Path:
    """The astronaut (a person: the check compares real masks) and three synthetic photos, as PNG (BGR)."""
    write_image(folder / "astronaut.png", astronaut()[:, :, ::-1])
    for index in range(3):
        write_image(folder / f"photo_{index}.png", make_photo(160, 120, seed=index))
    return folder


@pytest.mark.parametrize(("teacher", "size"), [("mediapipe-selfie", (256, 256)), ("mediapipe-selfie-landscape", (144, 256))])
def test_import_reproduces_the_model_file(tmp_path, teacher, size):
    tflite = cached_model(teacher)
    output = tmp_path / "selfie.pt"
    # By teacher-file name, from the cache the pipeline's stage names (`--teacher-files`; here the user cache).
    result = CliRunner().invoke(main, [
        "import-encoder", "--tflite", teacher, "--images", str(photos(tmp_path / "photos")), "--output", str(output),
        "--teacher-files", str(tflite.parent.parent),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"({size[0]}x{size[1]}): 55 convolutions" in result.output
    saved = torch.load(output, weights_only=False)
    assert saved["input_size"] == list(size)
    assert saved["check_max_difference"] <= 1e-3

    # The init file starts a student that sees ImageNet-normalised input and masks as MediaPipe does.
    model = create_model("selfie_segmenter")
    assert len(load_init_weights(model, output, "selfie_segmenter", {})) == 110
    from portraitseg.litert import open_tflite

    interpreter = open_tflite(tflite, threads=1)
    image = astronaut()  # RGB
    reference = input_probability(interpreter, image)
    ours = model_probabilities(model, image, size)
    assert ours.shape == reference.shape == size
    assert 0.2 < (reference > 0.5).mean() < 0.8  # a person, not an empty mask
    # The stem pads with black, as the file pads its [0, 1] input, so the folded input scaling is exact.
    assert np.abs(ours - reference).max() < 1e-3


def test_import_refuses_a_file_that_is_not_mediapipes(tmp_path):
    not_tflite = tmp_path / "model.tflite"
    not_tflite.write_bytes(b"not a flatbuffer")
    with pytest.raises(NotSelfieFileError):
        import_selfie_segmenter(not_tflite, tmp_path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_prior_student_starts_from_the_imported_weights(tmp_path):
    # model_options.prior with MediaPipe's weights: the RGB weights load into the widened stem, the prior's start at 0.
    output = tmp_path / "selfie.pt"
    import_selfie_segmenter(cached_model("mediapipe-selfie"), photos(tmp_path / "photos"), output)
    rgb, prior = create_model("selfie_segmenter"), create_model("selfie_segmenter", prior=True)
    load_init_weights(rgb, output, "selfie_segmenter", {})
    load_init_weights(prior, output, "selfie_segmenter", {"prior": True})
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(prior.eval()(torch.cat([x, torch.rand(1, 1, 64, 64)], 1)), rgb.eval()(x))


def test_a_teacher_file_name_that_is_not_cached_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITSEG_TEACHER_FILES", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(
        main, ["import-encoder", "--tflite", "mediapipe-selfie", "--images", str(tmp_path), "--output", str(tmp_path / "o.pt")]
    )
    assert result.exit_code == 1
    assert "datatool teacher-files fetch mediapipe-selfie" in result.output
    assert not (tmp_path / "o.pt").exists()


def test_int8_tflite_export_is_recorded_as_not_built_with_the_converters_reason(tmp_path):
    # litert-torch's int8 layout pass cannot place the explicit SAME pad (fp32 and fp16 convert; see
    # above). `trainer export` records that in the artefact's report, removes a file an earlier
    # run left there, and exits 1 unless --keep-going (the pipeline's export stage passes it, and
    # `trainer evaluate` lists the report under "Not evaluated").
    from export_fixtures import save_model, write_split
    from trainer.evaluate import unbuilt_artefacts

    split_dir = write_split(tmp_path / "split")
    checkpoint = save_model(create_model("selfie_segmenter").eval(), "selfie_segmenter", tmp_path / "run", 64)
    output = tmp_path / "export"
    output.mkdir()
    (output / "tflite-int8.tflite").write_bytes(b"an int8 file of another checkpoint")
    command = ["export", "--checkpoint", str(checkpoint), "--format", "tflite", "--precision", "int8",
               "--split-dir", str(split_dir), "--output", str(output)]  # fmt: skip
    reason = r"the converter cannot build it from selfie_segmenter \(AssertionError: .*NHWC"

    stopped = CliRunner().invoke(main, command)
    assert stopped.exit_code == 1, stopped.output
    assert re.search(f"^tflite-int8: not built: {reason}", stopped.output, re.MULTILINE)
    assert "tflite-int8 was not built" in stopped.output and "--keep-going" in stopped.output
    report = json.loads((output / "tflite-int8.json").read_text())
    assert re.match(f"not built: {reason}", report["status"]) and report["model"] == "selfie_segmenter"
    assert sorted(path.name for path in output.iterdir()) == ["tflite-int8.json"]

    kept_going = CliRunner().invoke(main, [*command, "--keep-going"])
    assert kept_going.exit_code == 0, kept_going.output
    assert unbuilt_artefacts([output]) == [f"{output / 'tflite-int8.json'}: {report['status']}"]

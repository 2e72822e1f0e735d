"""Starting a run from pretrained weights: `train.init_weights` and `trainer import-encoder`.

The loader and optimizer tests use the tiny model of test_train.py. The importer's BatchNorm
and layer-mapping tests run without any TFLite file; the end-to-end import reads the real
DeepLab teacher file in ../shared/weights and skips with a reason where it is absent; the
half-width DeepLab and the ImageNet classifier files are tested in test_encoder_import.py.
"""

import importlib.resources
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision.models import mobilenet_v2

from conftest import SHARED, make_photo, write_image
from test_train import TINY, split_dir, tiny_config, tiny_model  # noqa: F401  (fixtures)
from trainer.checkpoint import CheckpointError, load_checkpoint, load_init_weights
from trainer.cli import main
from trainer.models import create_model
from trainer.models.encoder_import import (
    SCOPES,
    EncoderImportError,
    calibrate_batch_norms,
    conv_and_norm,
    import_mobilenet_encoder,
)
from trainer.train import build_optimizer, fit

DEEPLAB_TFLITE = SHARED / "weights" / "deeplabv3_mnv2_pascal_quant.tflite"


def save_init_file(path: Path, state: dict, model: str = TINY, options: dict | None = None) -> Path:
    torch.save({"state_dict": state, "model": model, "model_options": options or {}}, path)
    return path


# --- train.init_weights ----------------------------------------------------------------------


def test_init_weights_loads_part_of_a_model_and_scales_its_learning_rate(tmp_path, split_dir, tiny_model):
    donor = create_model(TINY)
    body = {f"body.{key}": value for key, value in donor.body.state_dict().items()}
    init_file = save_init_file(tmp_path / "body.pt", body)

    model = create_model(TINY)
    initialised = load_init_weights(model, init_file, TINY, {})
    assert initialised == {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias"}
    for key, value in body.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not torch.equal(model.mask_head.weight, donor.mask_head.weight)  # not in the file: left as built

    optimizer = build_optimizer(model, tiny_config(lr=0.01, init_lr_scale=0.1), initialised)
    fresh, pretrained = optimizer.param_groups
    assert fresh["lr"] == 0.01 and pretrained["lr"] == pytest.approx(0.001)
    assert {id(p) for p in pretrained["params"]} == {id(p) for k, p in model.named_parameters() if k in initialised}


def test_a_run_starts_from_init_weights_and_resumes_with_the_same_groups(tmp_path, split_dir, tiny_model):
    # A finished run's checkpoint is an init file too (fine-tuning).
    fit(tiny_config(epochs=3), split_dir, tmp_path / "first", show_progress=False)
    first = load_checkpoint(tmp_path / "first" / "best.pt")
    config = tiny_config(epochs=2, init_weights=str(tmp_path / "first" / "best.pt"), init_lr_scale=0.5)
    summary = fit(config, split_dir, tmp_path / "tuned", show_progress=False)
    # Starting from a trained model, the first epoch already scores near the first run's best.
    history = load_checkpoint(tmp_path / "tuned" / "last.pt")["history"]
    assert history[0]["val_iou"] > first["best_iou"] - 0.1
    assert summary["val_iou"] > 0.5
    # Resume rebuilds the same two parameter groups, so the optimizer state loads.
    fit(tiny_config(epochs=3, init_weights=config.init_weights, init_lr_scale=0.5), split_dir, tmp_path / "tuned",
        resume=True, show_progress=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["epoch"] == 3


def test_init_weights_errors_are_clear(tmp_path, split_dir, tiny_model):
    model = create_model(TINY)
    with pytest.raises(CheckpointError, match="no file at .*trainer import-encoder"):
        load_init_weights(model, tmp_path / "absent.pt", TINY, {})
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_init_weights(model, tmp_path / "junk.pt", TINY, {})
    torch.save({"weights": {}}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_init_weights(model, tmp_path / "bare.pt", TINY, {})
    body = {f"body.{key}": value for key, value in model.body.state_dict().items()}
    # Made for another model but every tensor fits: loads (mobile_unet's imported encoder also starts lraspp_mnv2).
    other = save_init_file(tmp_path / "other.pt", body, model="mobile_unet", options={"width_mult": 1.0})
    assert load_init_weights(model, other, TINY, {}) == {f"body.{key}" for key, _ in model.body.named_parameters()}
    wider = {f"body.{key}": value for key, value in create_model(TINY, width=16).body.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"made for tiny_test_segmenter \{'width': 16\} and does not fit .* 0 "
                       r"unknown tensors .* of another shape"):  # fmt: skip
        load_init_weights(model, save_init_file(tmp_path / "wide.pt", wider, options={"width": 16}), TINY, {})
    with pytest.raises(CheckpointError, match=r"1 unknown tensors \['neck.weight'\]"):
        load_init_weights(model, save_init_file(tmp_path / "neck.pt", {"neck.weight": torch.zeros(1)}), TINY, {})
    # Through fit: the run stops before training anything.
    with pytest.raises(CheckpointError, match="no file at"):
        fit(tiny_config(init_weights=str(tmp_path / "absent.pt")), split_dir, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_empty_tflite_writes_an_init_file_that_says_none(tmp_path, split_dir, tiny_model):
    # The pipeline's encoder stage with encoder.tflite "": train still names its output, and starts at random.
    result = CliRunner().invoke(main, ["import-encoder", "--tflite", "", "--images", str(tmp_path), "--output",
                                       str(tmp_path / "encoder.pt")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "says `none`, so the student starts from random weights" in result.output
    assert load_init_weights(create_model(TINY), tmp_path / "encoder.pt", TINY, {}) == set()
    summary = fit(tiny_config(epochs=1, init_weights=str(tmp_path / "encoder.pt")), split_dir, tmp_path / "run",
                  show_progress=False)  # fmt: skip
    assert summary["epochs"] == 1
    # A state_dict-free file that does not say none is still refused.
    torch.save({"state_dict": {}, "model": TINY, "model_options": {}}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_init_weights(create_model(TINY), tmp_path / "empty.pt", TINY, {})


# --- the importer's pieces (no TFLite file needed) --------------------------------------------


def test_calibrated_batch_norms_keep_eval_output_and_match_in_training_mode():
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()),
        nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)),
    )
    for norm in (features[0][1], features[1][1]):  # as imported: identity plus a folded bias
        norm.running_mean.zero_()
        norm.running_var.fill_(1 - norm.eps)
        norm.bias.data.normal_()
    images = torch.randn(6, 3, 16, 16) * 2 + 0.5
    with torch.no_grad():
        before = features.eval()(images)
        calibrate_batch_norms(features, images)
        after_eval = features.eval()(images)
        after_train = features.train()(images)  # batch statistics = the calibration statistics here
    torch.testing.assert_close(after_eval, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after_train, before, rtol=1e-3, atol=1e-3)
    assert features[0][1].weight.std() > 0.01  # gamma now carries each channel's scale


def test_every_tensorflow_scope_maps_to_a_torchvision_layer_of_the_right_kind():
    features = mobilenet_v2(width_mult=1.0).features[:-1]
    seen = set()
    for scope in SCOPES:
        conv, norm = conv_and_norm(features, scope)
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.num_features == conv.out_channels
        assert (conv.groups == conv.in_channels > 1) == scope.endswith("depthwise"), scope
        seen.add(id(conv))
    assert len(seen) == 51 == sum(isinstance(m, nn.Conv2d) for m in features.modules())  # all, each once


def test_import_refuses_a_file_that_is_not_a_deeplab_mobilenet(tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", make_photo(64, 64))
    with pytest.raises(EncoderImportError, match="not found"):
        import_mobilenet_encoder(tmp_path / "absent.tflite", photos, tmp_path / "out.pt")
    (tmp_path / "junk.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(EncoderImportError, match="not a readable TFLite model"):
        import_mobilenet_encoder(tmp_path / "junk.tflite", photos, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# --- the real DeepLab file --------------------------------------------------------------------


@pytest.fixture
def deeplab_tflite() -> Path:
    if not DEEPLAB_TFLITE.is_file():
        pytest.skip(f"needs the DeepLab teacher file {DEEPLAB_TFLITE} (shared development weights)")
    return DEEPLAB_TFLITE


def test_import_encoder_reproduces_the_tflite_features_and_starts_a_run(tmp_path, deeplab_tflite):
    # Public-domain photos of people that ship inside installed packages (the demo's sources).
    photos = tmp_path / "photos"
    photos.mkdir()
    for package, resource in (("skimage", "data/astronaut.png"), ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")):
        (photos / Path(resource).name).write_bytes((importlib.resources.files(package) / resource).read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated")  # reported and skipped, not fatal
    output = tmp_path / "encoder.pt"
    result = CliRunner().invoke(main, ["import-encoder", "--tflite", str(deeplab_tflite), "--images", str(photos),
                                       "--output", str(output)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "51 convolutions" in result.output and "306 tensors" in result.output
    saved = torch.load(output, weights_only=True)
    assert saved["check_correlation"] >= 0.99 and saved["calibration_images"] == 2
    assert [Path(item["file"]).name for item in saved["skipped_images"]] == ["broken.jpg"]
    assert "skipped" in result.output and "broken.jpg" in result.output
    assert saved["model"] == "mobile_unet" and saved["model_options"] == {"width_mult": 1.0}

    model = create_model("mobile_unet", width_mult=1.0)
    initialised = load_init_weights(model, output, "mobile_unet", {"width_mult": 1.0})
    encoder_parameters = {f"encoder.{key}" for key, _ in model.encoder.named_parameters()}
    assert initialised == encoder_parameters  # the whole encoder, none of the decoder
    # The first convolution sees ImageNet-normalised input: its weights carry DeepLab's [-1, 1] scaling.
    first = model.encoder.stages[0][0][0].weight
    assert first.shape == (32, 3, 3, 3) and first.abs().max() > 0

    result = CliRunner().invoke(main, ["import-encoder", "--tflite", str(deeplab_tflite), "--images",
                                       str(tmp_path / "empty"), "--output", str(tmp_path / "x.pt")])  # fmt: skip
    assert result.exit_code == 1 and "no readable images in" in result.output

"""Every registered student: size, shapes, gradients, determinism, aux outputs and ONNX export."""

import io

import numpy as np
import onnxruntime
import pytest
import torch

from trainer.complexity import count_parameters
from trainer.models import SegmentationModel, create_model, is_model, list_models
from trainer.models.base import fuse_conv_batch_norm
from trainer.models.blazeseg import BlazeSeg
from trainer.models.mobile_unet import mobile_unet, mobile_unet_v3

# Stated size of each family (parameters, default options, one output channel). A new model
# must add its range here: `test_every_model_states_its_size` fails otherwise.
PARAMETER_RANGES = {
    "blazeseg": (140_000, 180_000),  # the seed notes' ~0.16 M
    "mobile_unet": (400_000, 650_000),
    "mobile_unet_v3": (750_000, 1_050_000),
    "lraspp_mnv2": (450_000, 600_000),  # the encoder of mobile_unet (width 0.5) and a 128-channel head
    "lraspp_mnv3": (2_600_000, 3_100_000),  # MobileNetV3-Large, as torchvision's lraspp_mobilenet_v3_large
    "ffnet_mobile": (850_000, 1_150_000),  # ~1 M as in FFNet's mobile models
    "portraitnet": (1_700_000, 2_200_000),  # MobileNetV2 1.0 without its 1280-channel head
    "efficientnet_lite": (2_700_000, 3_300_000),
    "selfie_segmenter": (100_000, 110_000),  # MediaPipe's network: 106 k
}
AUX_OUTPUTS = {"portraitnet": {"mask", "edge"}}
MODELS = list_models()


@pytest.fixture(scope="module", params=MODELS)
def model_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(model_name) -> SegmentationModel:
    torch.manual_seed(0)
    return create_model(model_name)


def test_every_model_states_its_size():
    assert set(PARAMETER_RANGES) == set(MODELS)


def test_parameter_count(model_name, model):
    low, high = PARAMETER_RANGES[model_name]
    assert low <= count_parameters(model) <= high


@pytest.mark.parametrize("size", [128, 224, 256])
def test_output_shape(model, size):
    model.eval()
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, size, size))
    assert logits.shape == (1, 1, size, size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_forward_backward_reaches_every_parameter(model_name, model):
    model.train()
    outputs = model.forward_with_aux(torch.randn(2, 3, 128, 128))
    assert set(outputs) == AUX_OUTPUTS.get(model_name, {"mask"})
    assert all(output.shape == (2, 1, 128, 128) for output in outputs.values())
    model.zero_grad()
    sum(output.square().mean() for output in outputs.values()).backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing
    first_conv = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0  # the gradient reaches the input end


def test_eval_is_deterministic_and_forward_is_the_mask(model):
    model.eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        first, second, aux = model(x), model(x), model.forward_with_aux(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(aux["mask"], first)


def test_prior_option_adds_a_fourth_channel_that_starts_as_the_rgb_model(model_name):
    # model_options.prior widens the stem; with the prior's weights at zero the model computes
    # exactly what the RGB model of the same seed does, whatever the prior holds.
    torch.manual_seed(0)
    rgb = create_model(model_name).eval()
    torch.manual_seed(0)
    prior = create_model(model_name, prior=True).eval()
    assert (rgb.in_channels, prior.in_channels) == (3, 4)
    x, previous = torch.randn(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        logits = prior(torch.cat([x, previous], dim=1))
        assert logits.shape == (2, 1, 64, 64)
        torch.testing.assert_close(logits, rgb(x), rtol=0, atol=0)
    stem = next(module for module in prior.modules() if isinstance(module, torch.nn.Conv2d) and module.in_channels == 4)
    prior.train()
    prior(torch.cat([x, previous], dim=1)).square().mean().backward()
    assert stem.weight.grad[:, 3].abs().sum() > 0  # the prior's weights learn


def randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every batch norm trained-looking statistics, so a fresh model's output is not near-constant."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                channels = module.num_features
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter; the dynamo one needs onnxscript
def test_onnx_export_matches_pytorch(model_name):
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    randomise_batch_norm(model)
    x = torch.randn(1, 3, 128, 128)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, opset_version=17, dynamo=False, input_names=["image"], output_names=["mask"])
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        expected = model(x).numpy()
    assert exported.shape == (1, 1, 128, 128)
    np.testing.assert_allclose(exported, expected, atol=1e-4, rtol=1e-4)
    # Fresh models give small logits; compare at the output's own scale too, so 1e-4 means something.
    scale = expected.std()
    assert scale > 1e-4
    np.testing.assert_allclose(exported / scale, expected / scale, atol=1e-4)


def test_fused_batch_norm_keeps_the_output(model_name):
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    randomise_batch_norm(model)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        expected = model(x)
        fused = fuse_conv_batch_norm(model)
        assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in fused.modules())
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_batch_norm(create_model(model_name).train())


def test_typo_lists_the_registered_names():
    assert is_model("blazeseg") and not is_model("blazseg")
    with pytest.raises(ValueError, match="unknown model 'blazseg'.*blazeseg, efficientnet_lite"):
        create_model("blazseg")


@pytest.mark.parametrize("name", ["blazeseg", "ffnet_mobile", "efficientnet_lite", "mobile_unet", "lraspp_mnv2"])
def test_pretrained_without_weights_is_refused_before_any_download(name):
    # mobile_unet's default width 0.5 has no torchvision weights; the others none at all.
    with pytest.raises(ValueError, match="pretrained|width 1.0 only"):
        create_model(name, pretrained=True)


def test_options_reach_the_family():
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        assert mobile_unet(decoder="transpose").eval()(x).shape == (1, 1, 128, 128)
        assert mobile_unet_v3(variant="large").eval()(x).shape == (1, 1, 128, 128)
    assert isinstance(create_model("blazeseg", widths=(8, 16, 32, 64)), BlazeSeg)
    with pytest.raises(ValueError, match="upsample, transpose"):
        mobile_unet(decoder="pixelshuffle")
    with pytest.raises(ValueError, match="small, large"):
        mobile_unet_v3(variant="medium")


def test_blazeseg_needs_only_a_multiple_of_16():
    model = create_model("blazeseg").eval()
    assert model.output_stride == 16
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 144, 144)).shape == (1, 1, 144, 144)


def test_lraspp_runs_its_last_stage_dilated_at_stride_16_and_shares_mobile_unets_encoder():
    model = create_model("lraspp_mnv2").eval()
    assert model.output_stride == 16
    with torch.inference_mode():
        features = model.encoder(torch.randn(1, 3, 144, 256))  # MediaPipe's landscape shape
        assert [f.shape[-1] for f in features] == [128, 64, 32, 16, 16]
        assert model(torch.randn(1, 3, 144, 256)).shape == (1, 1, 144, 256)
    assert create_model("lraspp_mnv2", dilated=False).output_stride == 32
    with pytest.raises(ValueError, match="low_stride must be one of 4, 8"):
        create_model("lraspp_mnv2", low_stride=2)
    # The same tensor names as mobile_unet's encoder: one `trainer import-encoder` file starts either.
    unet_encoder = create_model("mobile_unet").encoder.state_dict()
    lraspp_encoder = model.encoder.state_dict()
    assert unet_encoder.keys() == lraspp_encoder.keys()
    assert all(unet_encoder[key].shape == lraspp_encoder[key].shape for key in unet_encoder)

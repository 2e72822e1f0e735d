"""Quantization-aware training (QAT) of the int8 TFLite artefact, with PT2E as torchao runs it.

Post-training int8 rounds weights and activations that the fp32 model never saw rounded; when
that costs more IoU than the parity guard allows, a short fine-tune with the rounding simulated
in the forward pass (fake quantization, straight-through gradients) lets the weights adapt:

    inference graph (batch norm folded, trainer.export.graph) -> torch.export, dynamic batch
      -> prepare_qat_pt2e with litert-torch's quantizer, its post-training observers wrapped
         as fake quantizers (histogram for activations, per-channel min/max for weights)
      -> calibration: the calibration samples set the activation ranges exactly as
         post-training int8 sets them; those ranges are then frozen
      -> `epochs` epochs on the split's train images, augmented as training augments, learning
         the fp32 graph's own probabilities (soft BCE + Dice, trainer.losses)
      -> convert_pt2e -> litert-torch, as post-training int8 (trainer.export.tflite)

Three choices, measured on the people-dev student (README "Quantization-aware training"; IoU
drop against fp32 on the parity photos, one epoch): ranges from calibration, not from training's
moving min/max (torchao's QAT default), which are wider than the histogram's (0.0157 against
0.0211 at lr 3e-5); the fp32 checkpoint's probabilities as the target, not the masks, so the
artefact learns to do what the checkpoint picked on validation does, which is what parity checks
(0.0041 against 0.0071 at 3e-6); and a small learning rate (0.0041 at 3e-6, 0.0057 at 1e-5,
0.0157 at 3e-5; post-training int8 alone: 0.0100).

It trains the graph every artefact holds, so the QAT artefact takes the same 0..255 input and
gives the same probability as every other. Only the TFLite int8 artefact is trained this way;
ONNX int8 stays post-training (ONNX Runtime's quantizer), and its report says so.
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from portraitseg.progress import progress
from portraitseg.records import SplitError
from portraitseg.resize import InputSize
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, PriorSimulation, SegmentationDataset
from trainer.export.graph import build_inference_graph, example_input
from trainer.export.tflite import int8_quantizer, write_int8_tflite
from trainer.losses import dice_loss, distillation_loss

PROBABILITY_EPS = 1e-6  # the graph ends in a sigmoid; its logit is taken back for the losses


def graph_input(images: torch.Tensor, priors: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised (N, 3, S, S) training images (and (N, 1, S, S) priors in [0, 1] for a prior
    student) -> the graph's (N, S, S, C) 0..255 input."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (images * std + mean) * 255.0
    if priors is not None:
        pixels = torch.cat([pixels, priors * 255.0], dim=1)
    return pixels.clamp(0.0, 255.0).permute(0, 2, 3, 1)


def qat_config():
    """Post-training int8's config with each observer wrapped in a fake quantizer (same ranges, trainable weights)."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize

    def fake_quantized(spec):
        wrapped = FakeQuantize.with_args(observer=spec.observer_or_fake_quant_ctr)  # FakeQuantize calls it
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=wrapped)

    config = get_symmetric_quantization_config(is_per_channel=True)
    return dataclasses.replace(
        config,
        input_activation=fake_quantized(config.input_activation),
        output_activation=fake_quantized(config.output_activation),
        weight=fake_quantized(config.weight),
        is_qat=True,
    )


def prepare_for_qat(model: nn.Module, size: "InputSize | int", quantizer) -> torch.fx.GraphModule:
    """The inference graph of `model`, exported with a free batch size and fake-quantized for training."""
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    graph = build_inference_graph(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    sample = example_input(size, graph.in_channels).expand(2, -1, -1, -1).contiguous()  # batch 2: a size-1 dim would be specialised
    exported = torch.export.export(graph, (sample,), dynamic_shapes=({0: batch},)).module()
    prepared = prepare_qat_pt2e(exported, quantizer)
    move_exported_model_to_train(prepared)
    return prepared


def calibrate_and_freeze_ranges(prepared: torch.fx.GraphModule, samples: np.ndarray, batch_size: int) -> None:
    """Set activation ranges from `samples` (N, S, S, C) in 0..255 as post-training int8 does, then freeze them.

    Weight quantizers (per channel) keep observing: their ranges follow the weights as they train.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize, disable_fake_quant, enable_fake_quant

    prepared.apply(disable_fake_quant)  # observe the fp32 activations, as calibration does
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            prepared(torch.from_numpy(samples[start : start + batch_size].astype(np.float32)))
    prepared.apply(enable_fake_quant)
    for module in prepared.modules():
        if isinstance(module, FakeQuantize) and not module.is_per_channel:
            module.disable_observer()


def export_tflite_int8_qat(
    model: nn.Module,
    size: "InputSize | int",
    samples: np.ndarray,
    split_dir: Path,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    output: Path,
    prior: PriorSimulation | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Calibrate `model`'s int8 graph on `samples`, fine-tune it on the train set of `split_dir`, write it to
    `output`; return what was done. A prior student (4 input channels) needs `prior`: how its
    training simulated the previous frame's mask."""
    if (model.in_channels == 4) != (prior is not None):
        raise ValueError(f"a model of {model.in_channels} input channels with prior simulation {prior}")
    torch.manual_seed(seed)
    started = time.perf_counter()
    # Its masks go unused; a prior student's items carry simulated priors, as in `trainer train`.
    train_set = SegmentationDataset(split_dir, "train", size, augment=True, with_edges=False, prior=prior)
    if len(train_set) == 0:
        raise SplitError(f"{split_dir}/train.jsonl has no usable rows for quantization-aware training")
    loader = DataLoader(
        train_set,
        batch_size=min(batch_size, len(train_set)),
        shuffle=True,
        drop_last=True,  # equal steps: no step's gradient comes from a batch of one or two photos
        generator=torch.Generator().manual_seed(seed),
    )
    reference = build_inference_graph(model)  # the fp32 graph whose outputs the int8 one learns
    quantizer = int8_quantizer(qat_config())
    prepared = prepare_for_qat(model, size, quantizer)
    calibrate_and_freeze_ranges(prepared, samples, batch_size)
    optimizer = torch.optim.AdamW([p for p in prepared.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for batch in progress(loader, desc=f"QAT epoch {epoch + 1}/{epochs}", unit="batch"):
            images = graph_input(batch["image"], batch.get("prior"))
            with torch.no_grad():
                target = reference(images)[:, None]
            logits = torch.logit(prepared(images), eps=PROBABILITY_EPS)[:, None]
            loss = distillation_loss(logits, target) + dice_loss(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(round(total / len(loader), 5))
    with torch.no_grad():
        write_int8_tflite(prepared, quantizer, size, model.in_channels, output)
    return output, {
        "method": "quantization-aware training (PT2E)",
        "target": "the fp32 checkpoint's probabilities",
        "epochs": epochs,
        "lr": lr,
        "batch_size": loader.batch_size,
        "train_images": len(train_set),
        "epoch_losses": losses,
        "seconds": round(time.perf_counter() - started, 1),
    }

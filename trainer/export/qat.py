"""Quantization-aware training (QAT) of the int8 TFLite artefact, with PT2E as torchao runs it.

Post-training int8 rounds weights and activations that the fp32 model never saw rounded; when
that costs more IoU than the parity guard allows, a short fine-tune with the rounding simulated
in the forward pass (fake quantization, straight-through gradients) lets the weights adapt:

    inference graph (batch norm folded, trainer.export.graph) -> torch.export, dynamic batch
      -> prepare_qat_pt2e with litert-torch's quantizer -> `epochs` epochs on the split's train
         set, augmented as training augments, BCE + Dice (trainer.losses) on the graph's output
      -> ranges frozen for the last epoch -> convert_pt2e -> litert-torch, as post-training int8

It trains the graph every artefact holds, so the QAT artefact takes the same 0..255 input and
gives the same probability as every other, and the parity check grades it like the rest.
Only the TFLite int8 artefact is trained this way; ONNX int8 stays post-training (ONNX
Runtime's quantizer), and its report says so.
"""

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from portraitseg.progress import progress
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, SegmentationDataset
from trainer.export.graph import build_inference_graph, example_input
from trainer.export.tflite import int8_quantizer, write_int8_tflite
from trainer.losses import bce_loss, dice_loss

PROBABILITY_EPS = 1e-6  # the graph ends in a sigmoid; its logit is taken back for the losses


def graph_input(images: torch.Tensor) -> torch.Tensor:
    """Normalised (N, 3, S, S) training images -> the graph's (N, S, S, 3) 0..255 input."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255.0).clamp(0.0, 255.0).permute(0, 2, 3, 1)


def prepare_for_qat(model: nn.Module, size: int, quantizer) -> torch.fx.GraphModule:
    """The inference graph of `model`, exported with a free batch size and fake-quantized for training."""
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    graph = build_inference_graph(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    sample = example_input(size).expand(2, -1, -1, -1).contiguous()  # batch 2: a size-1 dim would be specialised
    exported = torch.export.export(graph, (sample,), dynamic_shapes=({0: batch},)).module()
    prepared = prepare_qat_pt2e(exported, quantizer)
    move_exported_model_to_train(prepared)
    return prepared


def export_tflite_int8_qat(
    model: nn.Module, size: int, split_dir: Path, epochs: int, lr: float, batch_size: int, seed: int, output: Path
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune `model`'s int8 graph on the train set of `split_dir`, write it to `output`; return what was done."""
    from torchao.quantization.pt2e.fake_quantize import disable_observer

    torch.manual_seed(seed)
    started = time.perf_counter()
    train_set = SegmentationDataset(split_dir, "train", size, augment=True, with_edges=False)
    if len(train_set) == 0:
        raise ValueError(f"{split_dir}/train.jsonl has no usable rows for quantization-aware training")
    loader = DataLoader(
        train_set,
        batch_size=min(batch_size, len(train_set)),
        shuffle=True,
        drop_last=True,  # a last batch of one would give the fake-quant ranges a one-photo update
        generator=torch.Generator().manual_seed(seed),
    )
    quantizer = int8_quantizer(qat=True)
    prepared = prepare_for_qat(model, size, quantizer)
    optimizer = torch.optim.AdamW([p for p in prepared.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for epoch in range(epochs):
        if epochs > 1 and epoch == epochs - 1:
            # The last epoch trains the weights against fixed ranges: the ones the artefact will have.
            prepared.apply(disable_observer)
        total = 0.0
        for batch in progress(loader, desc=f"QAT epoch {epoch + 1}/{epochs}", unit="batch"):
            probability = prepared(graph_input(batch["image"]))
            logits = torch.logit(probability, eps=PROBABILITY_EPS)[:, None]
            loss = bce_loss(logits, batch["mask"]) + dice_loss(logits, batch["mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(round(total / len(loader), 5))
    with torch.no_grad():
        write_int8_tflite(prepared, quantizer, size, output)
    return output, {
        "method": "quantization-aware training (PT2E)",
        "epochs": epochs,
        "lr": lr,
        "batch_size": loader.batch_size,
        "train_images": len(train_set),
        "epoch_losses": losses,
        "seconds": round(time.perf_counter() - started, 1),
    }

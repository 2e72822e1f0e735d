"""A tiny "trained" checkpoint for the export and runtime tests, built in milliseconds.

The test images are red-ish ellipses (the person) on a blue-ish noisy background. A two-layer
model whose weights are set by hand to the colour rule "red minus blue" segments them well (val
IoU > 0.9), so a broken artefact shows up as a real IoU drop, without a training run (a fit on
two shared, busy cores takes tens of seconds). Its batch norm has non-trivial statistics, so
export's batch-norm folding is exercised. The checkpoint is in `trainer.checkpoint`'s format.

`write_checkpoint(..., prior_weight=w)` writes the same model with a prior channel
(`model_options.prior`) whose weight adds `w` x prior to the "person" feature: with w = 0 the
prior changes nothing, with w > 0 it raises the person probability where it lies.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from conftest import draw_blob
from trainer.checkpoint import Checkpoint, save_checkpoint
from portraitseg.params import build_section
from trainer.config import TrainConfig
from trainer.models import MODELS, SegmentationModel, list_models
from trainer.models.base import add_prior_channel

TINY = "tiny_export_segmenter"
SIZE = 32


class TinyExportSegmenter(SegmentationModel):
    output_stride = 1

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny_export_segmenter(**options) -> SegmentationModel:
    return TinyExportSegmenter(**options)


def register_tiny(monkeypatch) -> None:
    list_models()  # load the real families first, so they do not register over the patch
    monkeypatch.setitem(MODELS, TINY, tiny_export_segmenter)


def write_blob(set_dir: Path, sample_id: str, seed: int) -> dict:
    image, mask, _, _ = draw_blob(seed)
    for folder, array, suffix in (("images", image, "jpg"), ("masks", mask, "png")):
        (set_dir / folder).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(set_dir / folder / f"{sample_id}.{suffix}"), np.clip(array, 0, 255).astype(np.uint8))
    return {"id": sample_id, "set": "blobs", "image": f"images/{sample_id}.jpg", "mask": f"masks/{sample_id}.png",
            "mask_kind": "binary", "group": f"blobs/{sample_id}"}


def write_split(root: Path) -> Path:
    for split, count, offset in (("train", 8, 0), ("val", 6, 100)):
        rows = [{**write_blob(root / "blobs", f"{split}{i}", offset + i), "split": split} for i in range(count)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def set_colour_rule(model: TinyExportSegmenter) -> None:
    """Channel 0 = relu(R - B), channel 1 = relu(B - R) of the normalised input; logit = 3 (c0 - c1)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
        first, norm, _, second, _ = model.body
        first.weight[0, 0, 1, 1], first.weight[0, 2, 1, 1] = 1.0, -1.0
        first.weight[1, 0, 1, 1], first.weight[1, 2, 1, 1] = -1.0, 1.0
        # scale 2 / sqrt(4) = 1 and shift 0.5 - 0.5 * 1 = 0: an identity made of non-trivial statistics
        norm.running_var.fill_(4.0)
        norm.running_mean.fill_(0.5)
        norm.weight.fill_(2.0)
        norm.bias.fill_(0.5)
        second.weight[0, 0, 1, 1], second.weight[1, 1, 1, 1] = 1.0, 1.0
        model.head.weight[0, 0, 0, 0], model.head.weight[0, 1, 0, 0] = 3.0, -3.0
        model.head.bias.zero_()


def write_checkpoint(output: Path, prior_weight: float | None = None, size: int | list[int] = SIZE) -> Path:
    """best.pt of the colour-rule model in the checkpoint format `trainer.train.fit` writes, trained at
    `size` (train.size: S or [H, W]); with a prior channel of weight `prior_weight` unless that is None."""
    model_options = {} if prior_weight is None else {"prior": True}
    model = TinyExportSegmenter().eval()
    if prior_weight is not None:
        add_prior_channel(model)  # what create_model(TINY, prior=True) does
    set_colour_rule(model)
    if prior_weight is not None:
        with torch.no_grad():
            model.body[0].weight[:, 3] = 0.0
            model.body[0].weight[0, 3, 1, 1] = prior_weight  # channel 0 = relu(R - B + w * prior)
    return save_model(model, TINY, output, size, model_options)


def save_model(
    model: SegmentationModel, model_name: str, output: Path, size: int | list[int], model_options: dict | None = None
) -> Path:
    """`output`/best.pt holding `model` (registered as `model_name`) in the checkpoint format `trainer.train.fit` writes."""
    model_options = model_options or {}
    config = build_section(TrainConfig, "train", {"model": model_name, "size": size, "model_options": model_options})
    state = Checkpoint(
        model_name=model_name,
        model_options=model_options,
        model=model.state_dict(),
        optimizer={},
        scheduler={},
        scaler={},
        epoch=1,
        best_iou=0.0,
        best_epoch=1,
        pos_weight=1.0,
        config=config.to_dict(),
        history=[],
    )
    output.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state.to_dict(), output / "best.pt")
    return output / "best.pt"

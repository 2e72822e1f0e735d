"""The `train:` section of params.yaml as typed data.

One frozen dataclass holds every training default with a one-line reason, in the spirit of
nanoGPT's visible config block; `portraitseg.params.load_section(path, "train", TrainConfig,
overrides)` reads the section, applies `key=value` overrides from the command line and rejects
unknown keys and wrong types, so a typo in params.yaml fails before the first epoch instead of
being silently ignored. Paths (the split folder, the output folder) are not settings: they come
from the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from portraitseg.params import ConfigError
from portraitseg.resize import InputSize, as_input_size
from trainer.losses import LOSS_TERMS

SCHEDULES = ("cosine", "plateau")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; saved next to its checkpoints."""

    model: str = "blazeseg"  # a name from trainer.models.list_models()
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # passed to create_model
    size: int | list[int] = 128  # input side S in px (a square), or [height, width] (e.g. [144, 256], MediaPipe's
    # landscape input); BlazeSeg is designed for 128x128
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3  # AdamW peak learning rate; small from-scratch models like a high one
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine (after a linear warm-up) or plateau (halve on a val IoU plateau)
    warmup_epochs: int = 1  # linear warm-up avoids early divergence of from-scratch BatchNorm nets
    min_lr: float = 1e-5  # cosine floor
    plateau_patience: int = 3  # epochs without val IoU gain before the plateau schedule lowers the lr
    plateau_factor: float = 0.5
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    init_weights: str = ""  # a partial state dict to start from (e.g. `trainer import-encoder`'s pretrained
    # encoder, or a best.pt); "" = random init. --resume reads it again only to rebuild the optimizer's
    # parameter groups, then restores every weight from last.pt.
    init_lr_scale: float = 1.0  # learning-rate multiplier of the tensors init_weights loads (< 1 keeps
    # pretrained features from being scrambled by the random decoder's early gradients)
    ema_decay: float = 0.0  # > 0: validate and save an exponential moving average of the weights
    # (e.g. 0.999; steadier than the last step's weights on small, noisy sets); 0 = off
    loss_weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"bce": 1.0, "dice": 1.0, "boundary": 0.5}
    )  # terms of trainer.losses.LOSS_TERMS; consistency (a second view) and distillation (teacher
    # masks) also switch on the data they need when their weight is > 0
    pos_weight: float = 0.0  # BCE positive weight; 0 estimates #background/#foreground on the train set
    augment: bool = True  # albumentations augmentation of the train set
    copy_paste: float = 0.0  # probability of pasting another train sample's person onto an item
    prior_empty: float = 0.2  # with model_options {prior: true}: share of training items whose simulated
    # previous-frame mask is empty, as on a clip's first frame (trainer.data.PriorSimulation)
    clip_share: float = 0.25  # the most that frames of video clips (rows with a `clip`) make of the train
    # rows when there are photos too; more frames are thinned evenly within each clip (1 keeps them all)
    max_train_samples: int = 0  # 0 = all; a quick run or a test uses the first N (after a seeded shuffle)
    max_val_samples: int = 0  # 0 = all
    val_sources: list[str] = dataclasses.field(default_factory=list)  # validate only on rows of these
    # `source` names (e.g. [people-dev]: real photos, not composites); empty = every val row
    num_workers: int = 0  # DataLoader workers; 0 loads in the main process
    seed: int = 0  # torch, numpy and random seeds and the data order
    amp: bool = True  # mixed precision (bfloat16/float16 autocast); used only on CUDA
    channels_last: bool = True  # memory format for convolutions; used only on CUDA
    device: str = "auto"  # auto = cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        try:
            as_input_size(self.size)
        except ValueError as error:
            raise ConfigError(f"train.size: {error}") from None
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
        for name in ("copy_paste", "prior_empty", "clip_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("warmup_epochs", "max_train_samples", "max_val_samples", "num_workers", "plateau_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.init_lr_scale <= 0:
            raise ConfigError(f"train.init_lr_scale must be positive, got {self.init_lr_scale}")
        unknown_terms = sorted(set(self.loss_weights) - set(LOSS_TERMS))
        if unknown_terms:
            raise ConfigError(f"unknown train.loss_weights {unknown_terms}; valid: {', '.join(LOSS_TERMS)}")
        for name, weight in self.loss_weights.items():
            if weight < 0:
                raise ConfigError(f"train.loss_weights.{name} must not be negative, got {weight}")

    @property
    def input_size(self) -> InputSize:
        """The model input as (height, width)."""
        return as_input_size(self.size)

    @property
    def prior(self) -> bool:
        """Whether the student takes the previous frame's mask as a fourth input (model_options.prior)."""
        return bool(self.model_options.get("prior", False))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only: goes into checkpoints (loaded with weights_only=True) and config.json."""
        return dataclasses.asdict(self)

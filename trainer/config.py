"""The `train:` section of params.yaml as typed data.

One frozen dataclass holds every training default with a one-line reason, in the spirit of
nanoGPT's visible config block; `load_train_config` reads the section, applies `key=value`
overrides from the command line and rejects unknown keys and wrong types, so a typo in
params.yaml fails before the first epoch instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from trainer.losses import LOSS_TERMS

SCHEDULES = ("cosine", "plateau")


class ConfigError(ValueError):
    """A `train:` section or override that does not describe a valid run."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; saved next to its checkpoints."""

    model: str = "blazeseg"  # a name from trainer.models.list_models()
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # passed to create_model
    split_dir: str = "data/processed/split"  # folder with train.jsonl / val.jsonl (datatool split)
    size: int = 128  # square input side in px; BlazeSeg is designed for 128x128
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
        for name in ("size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.copy_paste <= 1.0:
            raise ConfigError(f"train.copy_paste is a probability in [0, 1], got {self.copy_paste}")
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

    def to_dict(self) -> dict[str, Any]:
        """Plain types only: goes into checkpoints (loaded with weights_only=True) and config.json."""
        return dataclasses.asdict(self)



def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_type(key: str, value: Any, expected: Any) -> Any:
    """Return `value` converted to `expected` where that is lossless (int -> float), else raise."""
    origin = typing.get_origin(expected)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"train.{key} must be a mapping, got {type(value).__name__} {value!r}")
        _, value_type = typing.get_args(expected)
        return {str(k): _check_type(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):  # `val_sources=people-dev` on the command line: a one-item list
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"train.{key} must be a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(expected)
        return [_check_type(f"{key}[{index}]", item, item_type) for index, item in enumerate(value)]
    if expected is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"unsupported field type for train.{key}: {expected}")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass: `epochs: true` must not pass as 1.
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"train.{key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["epochs=2", "loss_weights.dice=0.5"]` -> nested dict; values are parsed as YAML scalars."""
    parsed: dict[str, Any] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not key=value")
        value = yaml.safe_load(raw) if raw else ""
        target = parsed
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {override!r} conflicts with another override of {parent}")
        target[leaf] = value
    return parsed


def build_train_config(section: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Validate a `train:` mapping (plus overrides) into a TrainConfig.

    Keys the dataclass does not know are errors, except `students`, the list of models the
    pipeline trains, which belongs to the pipeline rather than to one run.
    """
    merged: dict[str, Any] = {key: value for key, value in section.items() if key != "students"}
    defaults = TrainConfig().to_dict()
    for key, value in (overrides or {}).items():
        # `loss_weights.dice=0.5` changes one weight and keeps the others (from params or defaults).
        base = merged.get(key, defaults.get(key))
        if isinstance(value, dict) and isinstance(base, dict):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    fields = _field_types()
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ConfigError(f"unknown train key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    checked = {key: _check_type(key, value, fields[key]) for key, value in merged.items()}
    return TrainConfig(**checked)


def read_params_section(params_path: str | Path, name: str) -> dict[str, Any]:
    """The `name:` section of a params YAML file ({} when absent); a file that cannot be read as a
    YAML mapping, or a section that is not one, is a ConfigError naming the file."""
    fix = "fix it or pass another --params"
    try:
        params = yaml.safe_load(Path(params_path).read_text(encoding="utf-8")) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{params_path} is not valid YAML ({where}{error.problem}); {fix}") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{params_path} cannot be read as YAML ({error}); {fix}") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{params_path} holds a YAML {type(params).__name__}, not a mapping of sections; {fix}")
    section = params.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{params_path}: {name} must be a mapping, got {type(section).__name__}")
    return section


def load_train_config(params_path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read the `train:` section of a params.yaml; a missing section means all defaults."""
    return build_train_config(read_params_section(params_path, "train"), parse_overrides(overrides))

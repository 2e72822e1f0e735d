"""A training run's folder and its checkpoints: the format, written and read in one place.

Layout of a run (`trainer train --output`, e.g. models/blazeseg/):

    config.json   the resolved TrainConfig of the run
    last.pt       the state after the latest finished epoch (what --resume continues from)
    best.pt       the state at the best validation IoU
    metrics.json  final summary DVC reads (val_iou, val_dice, val_boundary_f, params, ...)
    live/         dvclive per-epoch metrics and plots (live/plots/metrics/**.tsv)

A checkpoint is `Checkpoint.to_dict()`: plain types and tensors only (state_dicts, the config
as a dict), never a pickled model, so it loads with `torch.load(weights_only=True)`; the model
is rebuilt from the registry by name and options. `load_checkpoint` checks exactly the keys
`Checkpoint` writes.

    save_checkpoint(Checkpoint(...).to_dict(), path)   atomic write (fit, after each epoch)
    load_checkpoint(path) -> dict                       format and keys checked (resume, tools)
    load_model(path) -> (model in eval mode, dict)      inference: export, runtime, evaluate
    load_init_weights(model, path, name, options)       train.init_weights: encoder file or checkpoint
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.models import ModelError, create_model

CONFIG_FILE = "config.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_FILE = "metrics.json"
LIVE_DIR = "live"

CHECKPOINT_FORMAT = "portraitseg-train/1"
NO_ENCODER = "none"  # the source_kind of an init file that holds no weights (`write_no_encoder`)
CHECKPOINT_HINT = "pass a best.pt or last.pt written by `trainer train`"
INIT_WEIGHTS_HINT = "pass a `trainer import-encoder` output or a best.pt written by `trainer train`"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to the model being trained."""


@dataclass(kw_only=True)
class Checkpoint:
    """Everything a checkpoint holds, in the order it is saved (after "format": CHECKPOINT_FORMAT).

    The two fields with a default are the weight average's (train.ema_decay > 0): then "model"
    is the average (what is validated, exported and run) and "training_model" the raw weights
    that keep training; a run without the average saves neither.
    """

    model_name: str  # registry name and keyword options: how to rebuild the model
    model_options: dict[str, Any]
    model: dict[str, torch.Tensor]  # state_dict of the validated model
    training_model: dict[str, torch.Tensor] | None = None
    ema_steps: int | None = None  # optimizer steps averaged so far
    optimizer: dict[str, Any]  # state_dicts that --resume continues
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    epoch: int  # finished epochs
    best_iou: float  # best validation IoU so far, and its (1-based) epoch
    best_epoch: int
    pos_weight: float  # the BCE positive weight the run trains with
    config: dict[str, Any]  # TrainConfig.to_dict()
    history: list[dict[str, Any]]  # one entry per finished epoch: epoch, lr, train_*, val_*

    def to_dict(self) -> dict[str, Any]:
        """The dict `save_checkpoint` writes; the weight average's fields only when set."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return {"format": CHECKPOINT_FORMAT, **{k: v for k, v in values.items() if k not in EMA_KEYS or v is not None}}


REQUIRED_KEYS = ("format", *(field.name for field in fields(Checkpoint) if field.default is MISSING))
EMA_KEYS = tuple(field.name for field in fields(Checkpoint) if field.default is not MISSING)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file and rename: a run killed mid-save leaves the old file intact."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def read_weights(path: Path, what: str, hint: str, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; any failure is a CheckpointError "`what` (reason); `hint`".

    Every checkpoint and weights file goes through here. torch's own message advises loading
    with weights_only=False (unsafe for a file of unknown origin) and filing an issue; only its
    reason is kept.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a damaged or foreign file can make the unpickler raise almost anything
        text = str(error)
        _, marker, reason = text.partition("WeightsUnpickler error:")
        first_line = next((line.strip() for line in (reason if marker else text).splitlines() if line.strip()), "")
        raise CheckpointError(
            f"{what} (torch.load could not read it: {first_line or type(error).__name__}); {hint}"
        ) from error


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", hint: str = CHECKPOINT_HINT
) -> dict[str, Any]:
    """Read a checkpoint written by `fit`; a missing, damaged or foreign file is a CheckpointError ending in `hint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {hint}")
    state = read_weights(path, f"{path} is not a readable checkpoint", hint, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a portraitseg training checkpoint (expected format {CHECKPOINT_FORMAT}); {hint}"
        )
    expected = REQUIRED_KEYS + (EMA_KEYS if any(key in state for key in EMA_KEYS) else ())
    missing = [key for key in expected if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}, so trainer.train.fit did not write it; {hint}")
    return state


def restore_model(model: nn.Module, state: dict[str, Any], path: Path, name: str, options: dict[str, Any]) -> None:
    """Load the weights of `state` into `model`, refusing a checkpoint of another model."""
    if state["model_name"] != name or state["model_options"] != options:
        raise CheckpointError(
            f"{path} holds {state['model_name']} {state['model_options']}, "
            f"but this run trains {name} {options}; use another output folder or the same model"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # missing/unexpected keys or shape mismatches
        raise CheckpointError(f"{path} does not fit {name}: {error}") from error


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model of a checkpoint (by registry name and options) in eval mode."""
    state = load_checkpoint(path, map_location)
    try:
        model = create_model(state["model_name"], **state["model_options"])
    except ModelError as error:
        raise CheckpointError(f"{path} names a model this trainer cannot build ({error}); {CHECKPOINT_HINT}") from error
    restore_model(model, state, Path(path), state["model_name"], state["model_options"])
    return model.eval(), state


def write_no_encoder(output: Path, reason: str) -> None:
    """An init file that says "no pretrained encoder": `trainer train` starts from random weights.

    The pipeline's `encoder` stage writes it when no TFLite file is configured, so that `train`
    can always name the stage's output as a dependency, and switching the encoder on or off is a
    params change that DVC sees.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "source_kind": NO_ENCODER, "reason": reason, "model": None, "model_options": None}, output)


def load_init_weights(model: nn.Module, path: str | Path, name: str, options: dict[str, Any]) -> set[str]:
    """Copy the tensors of an init file into `model`; returns the names of the parameters it set.

    An init file is either `trainer import-encoder`'s output ({"state_dict", "model",
    "model_options", ...}: part of a model) or a training checkpoint (fine-tuning a previous run).
    Every tensor it holds must exist in `model` with the same name and shape: a silent partial
    load would train from scratch while claiming to start from pretrained weights. The model it
    was made for may differ: `mobile_unet` and `lraspp_mnv2` share their encoder's tensors, so
    one imported encoder starts either.

    One shape difference is allowed: a model with a prior channel (`model_options.prior`) has a
    (C, 4, k, k) stem where the file, made for the RGB model, holds (C, 3, k, k). The saved tensor
    fills the RGB part and the prior's weights are zero, so the model starts as the RGB model it
    was made for (`trainer.models.base.add_prior_channel`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"train.init_weights: no file at {path} (make one with `trainer import-encoder`)")
    saved = read_weights(path, f"train.init_weights: {path} is not a readable weights file", INIT_WEIGHTS_HINT)
    if isinstance(saved, dict) and saved.get("source_kind") == NO_ENCODER and saved.get("state_dict") == {}:
        return set()  # `trainer import-encoder --tflite ""`: no pretrained encoder, random weights
    if isinstance(saved, dict) and saved.get("format") == CHECKPOINT_FORMAT:
        saved = {"state_dict": saved["model"], "model": saved["model_name"], "model_options": saved["model_options"]}
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise CheckpointError(f"train.init_weights: {path} holds no state_dict (expected `trainer import-encoder` output or a checkpoint)")
    own = model.state_dict()
    tensors = {key: with_empty_prior_weights(value, own.get(key)) for key, value in saved["state_dict"].items()}
    unknown = sorted(key for key in tensors if key not in own)
    reshaped = sorted(key for key, value in tensors.items() if key in own and own[key].shape != value.shape)
    if unknown or reshaped or not tensors:
        raise CheckpointError(
            f"train.init_weights: {path} was made for {saved.get('model')} {saved.get('model_options')} and does not "
            f"fit this run's {name} {options}: {len(unknown)} unknown tensors {unknown[:3]}, {len(reshaped)} of "
            f"another shape {reshaped[:3]}; set train.model and train.model_options to a model it fits"
        )
    model.load_state_dict(tensors, strict=False)
    return {key for key, _ in model.named_parameters() if key in tensors}


def with_empty_prior_weights(saved: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
    """A saved RGB stem weight (C, 3, k, k) widened with zeros to a prior model's (C, 4, k, k); any other tensor as it is."""
    if own is None or saved.ndim != 4 or own.ndim != 4 or (saved.shape[1], own.shape[1]) != (3, 4):
        return saved
    if saved.shape[0] != own.shape[0] or saved.shape[2:] != own.shape[2:]:
        return saved  # another shape difference: refused by the caller's check
    return torch.cat([saved, torch.zeros_like(saved[:, :1])], dim=1)

"""Train one student model on the split manifests; read it top to bottom.

    fit(config, output_dir)
      ├─ seed everything, pick the device, join the process group under torchrun
      ├─ datasets + loaders (DistributedSampler: a seeded order per epoch, one shard per rank)
      ├─ model (create_model), AdamW, cosine-with-warm-up or plateau schedule, GradScaler
      ├─ resume from last.pt (optional)
      └─ for each epoch: train_one_epoch -> evaluate -> log (dvclive) -> last.pt / best.pt

Layout after a run (`output_dir`, e.g. models/blazeseg/):

    config.json   the resolved TrainConfig of the run
    last.pt       the state after the latest finished epoch (what --resume continues from)
    best.pt       the state at the best validation IoU
    metrics.json  final summary DVC reads (val_iou, val_dice, val_boundary_f, params, ...)
    live/         dvclive per-epoch metrics and plots (live/plots/metrics/**.tsv)

Checkpoints hold only plain types and tensors (state_dicts, the config as a dict), never a
pickled model, so they load with `torch.load(weights_only=True)`; the model is rebuilt from
the registry by name and options. Every epoch re-seeds from (seed, epoch), which makes a
resumed run follow the same data order, augmentation and dropout as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from trainer.config import TrainConfig
from trainer.data import SegmentationDataset, SplitError, estimate_pos_weight
from trainer.losses import SegmentationLoss
from trainer.metrics import SegmentationMetrics
from trainer.models import ModelError, create_model

CHECKPOINT_FORMAT = "portraitseg-train/1"
CHECKPOINT_KEYS = (
    "format",
    "model_name",
    "model_options",
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "best_iou",
    "best_epoch",
    "pos_weight",
    "config",
    "history",
)
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CHECKPOINT_HINT = "pass a best.pt or last.pt written by `trainer train`"
RESUME_HINT = "train without --resume to start over (that rewrites last.pt)"
LIVE_DIR = "live"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to the model being trained."""


# ---------------------------------------------------------------------------------------------
# Setup helpers


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: a function of (seed, epoch, rank) only, so a resumed
    run repeats it; ranks differ so that their augmentation draws do not repeat each other."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def pick_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no CUDA device is available")
        return torch.device("cuda", context.local_rank)
    return torch.device(name)


def first_samples(dataset: Dataset, limit: int, seed: int) -> Dataset:
    """The first `limit` samples after a seeded shuffle (limit 0 keeps everything)."""
    if limit <= 0 or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[:limit].tolist()))


def build_datasets(config: TrainConfig, quiet: bool = False) -> tuple[Dataset, Dataset]:
    """Train (augmented, with what the weighted loss terms need) and val (resize only) sets.

    Rows whose files are missing are left out and listed on stderr (unless `quiet`); a set left
    with no rows is a `SplitError` naming its manifest.
    """
    train_set = SegmentationDataset(
        config.split_dir,
        "train",
        config.size,
        augment=config.augment,
        with_edges=True,
        with_teacher=config.loss_weights.get("distillation", 0.0) > 0,
        with_second_view=config.loss_weights.get("consistency", 0.0) > 0,
        copy_paste=config.copy_paste if config.augment else 0.0,
    )
    val_set = SegmentationDataset(
        config.split_dir, "val", config.size, augment=False, with_edges=True, sources=config.val_sources
    )
    if len(train_set) == 0 or len(val_set) == 0:
        sources = f" of sources {', '.join(config.val_sources)}" if config.val_sources else ""
        missing = "".join(
            f"; every row of {dataset.manifest} names a missing file, e.g. {dataset.missing[0]['file']} "
            "(restore the files or re-run `datatool split`)"
            for dataset in (train_set, val_set)
            if len(dataset) == 0 and dataset.missing
        )
        found = f"found {len(train_set)} and {len(val_set)}"
        raise SplitError(f"{config.split_dir}: need train and val samples{sources}, {found}{missing}")
    for dataset in (train_set, val_set):
        if dataset.missing and not quiet:
            print(dataset.missing_summary(), file=sys.stderr, flush=True)
    return (
        first_samples(train_set, config.max_train_samples, config.seed),
        first_samples(val_set, config.max_val_samples, config.seed),
    )


def build_loaders(
    config: TrainConfig, train_set: Dataset, val_set: Dataset, context: DistributedContext, device: torch.device
) -> tuple[DataLoader, DataLoader, DistributedSampler]:
    # DistributedSampler also serves the single-process case (1 replica): its order depends on
    # (seed, epoch) through set_epoch, which is what makes resume repeat the data order.
    sampler = DistributedSampler(
        train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.seed
    )
    shard = len(sampler)
    # Drop a ragged last batch (BatchNorm on a batch of one fails) unless it is the only batch.
    drop_last = shard > config.batch_size
    common = {"num_workers": config.num_workers, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=drop_last, **common)
    val_loader = DataLoader(val_set, batch_size=config.batch_size, shuffle=False, **common)
    return train_loader, val_loader, sampler


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Cosine: per-step linear warm-up then cosine to min_lr. Plateau: per-epoch on val IoU."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
        )
    warmup_steps = config.warmup_epochs * steps_per_epoch
    total_steps = max(config.epochs * steps_per_epoch, warmup_steps + 1)
    floor = min(config.min_lr / config.lr, 1.0)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


class TrainingForward(nn.Module):
    """Every training output in one forward(), so DistributedDataParallel sees the whole graph.

    Returns forward_with_aux's dict ("mask", optional "edge") and, given the second view of the
    batch (consistency loss), its mask logits as "mask_b".
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, images_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outputs = self.model.forward_with_aux(images)
        if images_b is not None:
            outputs["mask_b"] = self.model(images_b)
        return outputs


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where the GPU has it (no loss scaling needed), else float16."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def move_batch(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    moved = {
        key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value for key, value in batch.items()
    }
    if channels_last:
        for key in ("image", "image_b"):
            if key in moved:
                moved[key] = moved[key].contiguous(memory_format=torch.channels_last)
    return moved


# ---------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: SegmentationLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    grad_clip: float = 0.0,
    after_step: Callable[[], None] | None = None,
    description: str = "train",
    show_progress: bool = True,
) -> dict[str, float]:
    """One pass over `loader`; returns the sample-weighted mean of the loss and each part.

    `model` returns a dict of logits (see TrainingForward); `scheduler` is stepped per batch
    (None for schedules that step per epoch); `after_step` runs after every optimizer step
    (the weight average's update).
    """
    model.train()
    totals: dict[str, float] = {}
    seen = 0
    progress = tqdm(loader, desc=description, leave=False, disable=None if show_progress else True)  # None: quiet off a terminal
    for batch in progress:
        batch = move_batch(batch, device, channels_last)
        with autocast(device, amp):
            # {"mask": (N, 1, H, W) logits, optional "edge" and "mask_b" (the second view's mask)}
            outputs = model(batch["image"], batch.get("image_b"))
        # The loss runs in float32: BCE/Dice on float16 logits lose the small-probability tail.
        outputs = {name: logits.float() for name, logits in outputs.items()}
        loss, parts = loss_fn(outputs, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} ({parts}); lower train.lr or check the data")

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()

        count = batch["image"].shape[0]
        seen += count
        for name, value in {"loss": loss.item(), **parts}.items():
            totals[name] = totals.get(name, 0.0) + float(value) * count
        progress.set_postfix(loss=f"{totals['loss'] / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if seen == 0:
        raise ValueError("the train loader produced no batch; lower train.batch_size or add samples")
    return {name: total / seen for name, total in totals.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    show_progress: bool = True,
) -> dict[str, float]:
    """IoU, Dice and boundary F-score of `model`'s mask logits over the whole loader."""
    model.eval()
    metrics = SegmentationMetrics()
    for batch in tqdm(loader, desc="val", leave=False, disable=None if show_progress else True):
        batch = move_batch(batch, device, channels_last)
        with autocast(device, amp):
            logits = model(batch["image"])  # (N, 1, H, W)
        metrics.update(logits.float(), batch["mask"])
    return {name: float(value) for name, value in metrics.compute().items()}


# ---------------------------------------------------------------------------------------------
# Checkpoints


def ema_with_warmup(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The update of an exponential moving average whose decay ramps up as min(decay, (1 + n) / (10 + n)).

    A fixed 0.999 from the first step would keep 0.999^n of the random initial weights in the
    average (still 64 % after 450 steps, a whole short run); the ramp (timm's ModelEmaV3 warm-up)
    follows the weights closely early on and averages over ~1 / (1 - decay) steps later.
    """

    def update(averaged: torch.Tensor, current: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        rate = min(decay, (1.0 + float(steps)) / (10.0 + float(steps)))
        return averaged + (current - averaged) * (1.0 - rate)

    return update


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
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
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


def load_init_weights(model: nn.Module, path: str | Path, name: str, options: dict[str, Any]) -> set[str]:
    """Copy the tensors of an init file into `model`; returns the names of the parameters it set.

    An init file is either `trainer import-encoder`'s output ({"state_dict", "model",
    "model_options", ...}: part of a model) or a training checkpoint (fine-tuning a previous run).
    Every tensor it holds must exist in `model` with the same shape: a silent partial load would
    train from scratch while claiming to start from pretrained weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"train.init_weights: no file at {path} (make one with `trainer import-encoder`)")
    saved = read_weights(
        path,
        f"train.init_weights: {path} is not a readable weights file",
        "pass a `trainer import-encoder` output or a best.pt written by `trainer train`",
    )
    if isinstance(saved, dict) and saved.get("format") == CHECKPOINT_FORMAT:
        saved = {"state_dict": saved["model"], "model": saved["model_name"], "model_options": saved["model_options"]}
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise CheckpointError(f"train.init_weights: {path} holds no state_dict (expected `trainer import-encoder` output or a checkpoint)")
    if saved.get("model") != name or saved.get("model_options") != options:
        raise CheckpointError(
            f"train.init_weights: {path} was made for {saved.get('model')} {saved.get('model_options')}, "
            f"but this run trains {name} {options}; set train.model and train.model_options to match"
        )
    own = model.state_dict()
    unknown = sorted(key for key in saved["state_dict"] if key not in own)
    reshaped = sorted(key for key, value in saved["state_dict"].items() if key in own and own[key].shape != value.shape)
    if unknown or reshaped:
        raise CheckpointError(
            f"train.init_weights: {path} does not fit {name}: {len(unknown)} unknown tensors "
            f"{unknown[:3]}, {len(reshaped)} of another shape {reshaped[:3]}"
        )
    model.load_state_dict(saved["state_dict"], strict=False)
    return {key for key, _ in model.named_parameters() if key in saved["state_dict"]}


def build_optimizer(model: nn.Module, config: TrainConfig, initialised: set[str]) -> torch.optim.AdamW:
    """AdamW; parameters loaded from init_weights learn at lr * init_lr_scale, the rest at lr."""
    pretrained = [parameter for key, parameter in model.named_parameters() if key in initialised]
    fresh = [parameter for key, parameter in model.named_parameters() if key not in initialised]
    groups = [{"params": fresh, "lr": config.lr}]
    if pretrained:
        groups.append({"params": pretrained, "lr": config.lr * config.init_lr_scale})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained model of a checkpoint (by registry name and options) in eval mode."""
    state = load_checkpoint(path, map_location)
    try:
        model = create_model(state["model_name"], **state["model_options"])
    except ModelError as error:
        raise CheckpointError(f"{path} names a model this trainer cannot build ({error}); {CHECKPOINT_HINT}") from error
    restore_model(model, state, Path(path), state["model_name"], state["model_options"])
    return model.eval(), state


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# ---------------------------------------------------------------------------------------------
# The loop


@contextlib.contextmanager
def open_live(output_dir: Path, resume: bool, start_epoch: int, enabled: bool) -> Iterator[Any]:
    """dvclive logger on rank 0 (None elsewhere); it never edits dvc.yaml or makes DVC experiments."""
    if not enabled:
        yield None
        return
    from dvclive import Live

    if resume:
        # A run killed between logging an epoch and saving last.pt logged more than it saved.
        trim_live_plots(output_dir / LIVE_DIR, start_epoch)
    live = Live(dir=str(output_dir / LIVE_DIR), resume=resume, save_dvc_exp=False, dvcyaml=False, report=None)
    live.step = start_epoch
    try:
        yield live
    finally:
        live.end()


def average_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all ranks (each rank saw its own shard of the train set)."""
    names = sorted(values)
    stacked = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return {name: float(total) / dist.get_world_size() for name, total in zip(names, stacked.tolist())}


def trim_live_plots(live_dir: Path, steps: int) -> None:
    """Keep only the rows of steps [0, steps) in dvclive's per-metric .tsv files."""
    for table in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        header, *rows = table.read_text(encoding="utf-8").splitlines()
        step_column = header.split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[step_column]) < steps]
        table.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")


def fit(
    config: TrainConfig, output_dir: str | Path, *, resume: bool = False, show_progress: bool = True
) -> dict[str, Any]:
    """Train `config.model` into `output_dir`; returns the final metrics (also in metrics.json)."""
    output_dir = Path(output_dir)
    context = init_distributed(config.device)
    device = pick_device(config.device, context)
    on_cuda = device.type == "cuda"
    amp, channels_last = config.amp and on_cuda, config.channels_last and on_cuda
    show_progress = show_progress and context.is_main
    seed_everything(config.seed)

    train_set, val_set = build_datasets(config, quiet=not context.is_main)
    train_loader, val_loader, sampler = build_loaders(config, train_set, val_set, context, device)

    model = create_model(config.model, **config.model_options)
    n_parameters = count_parameters(model)
    # Before --resume's restore (which overwrites every weight), so that the optimizer's parameter
    # groups are the same in a resumed run as in the run that saved it.
    initialised = (
        load_init_weights(model, config.init_weights, config.model, config.model_options) if config.init_weights else set()
    )
    if initialised and context.is_main and not resume:
        print(f"init_weights: {len(initialised)} parameter tensors of {config.model} from {config.init_weights}", flush=True)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    training_model: nn.Module = TrainingForward(model)
    if context.enabled:
        # Aux heads used only in training are still part of every forward, so no unused parameters.
        training_model = nn.parallel.DistributedDataParallel(
            training_model, device_ids=[device.index] if on_cuda else None
        )

    optimizer = build_optimizer(model, config, initialised)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=len(train_loader))
    per_batch_scheduler = None if config.schedule == "plateau" else scheduler
    # float16 autocast needs loss scaling; bfloat16 and float32 do not (the scaler is then a no-op).
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())

    # The weight average (EMA) is what is validated and saved as "model"; the raw weights that
    # keep training go to "training_model" so that --resume continues both.
    ema = AveragedModel(model, avg_fn=ema_with_warmup(config.ema_decay), use_buffers=True) if config.ema_decay > 0 else None
    evaluated_model = ema.module if ema is not None else model

    start_epoch, best_iou, best_epoch, history = 0, -1.0, -1, []
    pos_weight = config.pos_weight
    last_path, best_path = output_dir / "last.pt", output_dir / "best.pt"
    if resume:
        state = load_checkpoint(last_path, map_location=device, hint=RESUME_HINT)
        restore_model(model, state, last_path, config.model, config.model_options)
        if ema is not None:
            if "training_model" not in state:
                raise CheckpointError(f"{last_path} was trained without train.ema_decay; resume with the same setting")
            ema.module.load_state_dict(state["model"])
            ema.n_averaged.fill_(state["ema_steps"])
            model.load_state_dict(state["training_model"])
        elif "training_model" in state:  # its "model" is the average, not the weights to continue
            raise CheckpointError(f"{last_path} was trained with train.ema_decay; resume with the same setting")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_iou, best_epoch = state["epoch"], state["best_iou"], state["best_epoch"]
        history, pos_weight = list(state["history"]), state["pos_weight"]
    elif pos_weight <= 0:
        # Over the un-augmented train samples: padding and warps would change the balance.
        plain_train = SegmentationDataset(config.split_dir, "train", config.size, augment=False, with_edges=False)
        pos_weight = float(estimate_pos_weight(first_samples(plain_train, config.max_train_samples, config.seed)))
    loss_fn = SegmentationLoss(dict(config.loss_weights), pos_weight=pos_weight)

    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")

    with open_live(output_dir, resume, start_epoch, context.is_main) as live:
        for epoch in range(start_epoch, config.epochs):
            # The dataset draws each item's augmentation seed from torch's generator (DataLoader
            # workers are seeded from it too), so this fixes the epoch's augmentation and dropout.
            seed_everything(epoch_seed(config.seed, epoch, context.rank))
            sampler.set_epoch(epoch)
            train_parts = train_one_epoch(
                training_model,
                train_loader,
                loss_fn,
                optimizer,
                per_batch_scheduler,
                scaler,
                device,
                amp=amp,
                channels_last=channels_last,
                grad_clip=config.grad_clip,
                after_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
                description=f"epoch {epoch + 1}/{config.epochs}",
                show_progress=show_progress,
            )
            if context.enabled:
                train_parts = average_over_ranks(train_parts, device)
                # DDP syncs BatchNorm running stats from rank 0 before each forward, so after the
                # last one every rank holds its own; take rank 0's so all ranks evaluate one model.
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
            # Every rank evaluates the whole (small) val set: identical numbers, no reduction needed.
            val_metrics = evaluate(
                evaluated_model, val_loader, device, amp=amp, channels_last=channels_last, show_progress=show_progress
            )
            if config.schedule == "plateau":
                scheduler.step(val_metrics["iou"])
            is_best = val_metrics["iou"] > best_iou
            if is_best:
                best_iou, best_epoch = val_metrics["iou"], epoch + 1
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"],
                    **{f"train_{name}": value for name, value in train_parts.items()},
                    **{f"val_{name}": value for name, value in val_metrics.items()},
                }
            )
            if not context.is_main:
                continue

            for name, value in train_parts.items():
                live.log_metric(f"train/{name}", value)
            for name, value in val_metrics.items():
                live.log_metric(f"val/{name}", value)
            live.log_metric("lr", optimizer.param_groups[0]["lr"])
            live.next_step()

            state = {
                "format": CHECKPOINT_FORMAT,
                "model_name": config.model,
                "model_options": dict(config.model_options),
                "model": evaluated_model.state_dict(),
                **({"training_model": model.state_dict(), "ema_steps": int(ema.n_averaged)} if ema is not None else {}),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "best_iou": best_iou,
                "best_epoch": best_epoch,
                "pos_weight": pos_weight,
                "config": config.to_dict(),
                "history": history,
            }
            save_checkpoint(state, last_path)
            if is_best:
                save_checkpoint(state, best_path)

    summary = summarise(history, best_epoch, config, n_parameters)
    if context.is_main:
        (output_dir / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if context.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def summarise(history: list[dict[str, Any]], best_epoch: int, config: TrainConfig, n_parameters: int) -> dict[str, Any]:
    """The numbers DVC shows per experiment: the best epoch's validation metrics and the model size."""
    best = next(entry for entry in history if entry["epoch"] == best_epoch)
    return {
        "model": config.model,
        "val_iou": best["val_iou"],
        "val_dice": best["val_dice"],
        "val_boundary_f": best["val_boundary_f"],
        "best_epoch": best_epoch,
        "epochs": history[-1]["epoch"],
        "final_train_loss": history[-1]["train_loss"],
        "params": n_parameters,
        "size_mb": round(n_parameters * 4 / 1e6, 3),  # float32 weights
        "input_size": config.size,
    }

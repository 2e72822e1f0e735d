"""Train one student model on the split manifests; read it top to bottom.

    fit(config, split_dir, output_dir)
      ├─ seed everything, pick the device, join the process group under torchrun
      ├─ datasets + loaders (DistributedSampler: a seeded order per epoch, one shard per rank)
      ├─ model (create_model, init_weights), AdamW, cosine-with-warm-up or plateau schedule,
      │  GradScaler, weight average (EMA)
      ├─ resume from last.pt (optional)
      └─ for each epoch: train_one_epoch -> validate -> log (dvclive) -> last.pt / best.pt

The run folder and the checkpoint format are `trainer.checkpoint`'s. Every epoch re-seeds from
(seed, epoch), which makes a resumed run follow the same data order, augmentation and dropout
as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from portraitseg.records import SplitError
from trainer.checkpoint import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    LIVE_DIR,
    METRICS_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_init_weights,
    restore_model,
    save_checkpoint,
)
from trainer.complexity import count_parameters
from trainer.config import TrainConfig
from trainer.data import PriorSimulation, SegmentationDataset, estimate_pos_weight
from trainer.losses import SegmentationLoss
from trainer.metrics import SegmentationMetrics
from trainer.models import create_model

RESUME_HINT = "train without --resume to start over (that rewrites last.pt)"


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


def thin_clips(dataset: SegmentationDataset, share: float) -> Dataset:
    """`dataset` with the frames of its clips thinned to at most `share` of its rows (photos are all kept).

    A 2 s clip at 15 fps is 30 nearly identical frames of one person: kept whole, a few clips would
    outweigh every photo. Each clip keeps evenly spaced frames, in proportion to its length. A set
    of clips only, or `share` 1, keeps every frame.
    """
    frames = [index for index, row in enumerate(dataset.rows) if row.get("clip") is not None]
    photos = len(dataset.rows) - len(frames)
    if not frames or not photos or share >= 1:
        return dataset
    keep = min(len(frames), int(share / (1 - share) * photos)) if share > 0 else 0
    chosen = {frames[round(position)] for position in np.linspace(0, len(frames) - 1, keep)} if keep else set()
    return Subset(dataset, sorted(set(range(len(dataset.rows))) - set(frames) | chosen))


def build_datasets(config: TrainConfig, split_dir: str | Path, quiet: bool = False) -> tuple[Dataset, Dataset]:
    """Train (augmented, with what the weighted loss terms need) and val (resize only) sets of `split_dir`.

    A prior student's items carry a simulated previous-frame mask (`PriorSimulation`): random on
    the train set, fixed per item on the val set. Rows whose files are missing are left out and
    listed on stderr (unless `quiet`); a set left with no rows is a `SplitError` naming its manifest.
    """
    prior = PriorSimulation(empty_share=config.prior_empty) if config.prior else None
    train_set = SegmentationDataset(
        split_dir,
        "train",
        config.size,
        augment=config.augment,
        with_edges=True,
        with_teacher=config.loss_weights.get("distillation", 0.0) > 0,
        with_second_view=config.loss_weights.get("consistency", 0.0) > 0,
        copy_paste=config.copy_paste if config.augment else 0.0,
        prior=prior,
    )
    val_set = SegmentationDataset(
        split_dir, "val", config.size, augment=False, with_edges=True, sources=config.val_sources, prior=prior
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
        raise SplitError(f"{split_dir}: need train and val samples{sources}, {found}{missing}")
    for dataset in (train_set, val_set):
        if dataset.missing and not quiet:
            print(dataset.missing_summary(), file=sys.stderr, flush=True)
    thinned = thin_clips(train_set, config.clip_share)
    if thinned is not train_set and not quiet:
        frames = sum(1 for row in train_set.rows if row.get("clip") is not None)
        kept = len(thinned) - (len(train_set) - frames)
        print(f"train: {kept} of {frames} clip frames kept beside {len(train_set) - frames} photos "
              f"(train.clip_share {config.clip_share:g})", file=sys.stderr, flush=True)  # fmt: skip
    return (
        first_samples(thinned, config.max_train_samples, config.seed),
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


Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Scheduler:
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


def model_input(batch: dict[str, Any], key: str = "image") -> torch.Tensor:
    """What the model sees of `batch[key]` (an image view): (N, 3, S, S), or (N, 4, S, S) with the
    batch's simulated previous-frame mask appended for a prior student (its batches hold "prior")."""
    if "prior" not in batch:
        return batch[key]
    return torch.cat([batch[key], batch["prior"]], dim=1)


def move_batch(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    moved = {
        key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value for key, value in batch.items()
    }
    if channels_last:
        for key in ("image", "image_b", "prior"):
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
            outputs = model(model_input(batch), model_input(batch, "image_b") if "image_b" in batch else None)
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
def validate(
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
            logits = model(model_input(batch))  # (N, 1, H, W)
        metrics.update(logits.float(), batch["mask"])
    return {name: float(value) for name, value in metrics.compute().items()}


# ---------------------------------------------------------------------------------------------
# The model, its optimizer and its weight average


def initialise(model: nn.Module, config: TrainConfig, announce: bool) -> set[str]:
    """Load train.init_weights (when set) into `model`; returns the names of the parameters it set."""
    if not config.init_weights:
        return set()
    initialised = load_init_weights(model, config.init_weights, config.model, config.model_options)
    if announce:
        loaded = f"{len(initialised)} parameter tensors of {config.model}" if initialised else "none (random weights)"
        print(f"init_weights: {loaded} from {config.init_weights}", flush=True)
    return initialised


def prepare_for_training(
    model: nn.Module, device: torch.device, channels_last: bool, context: DistributedContext
) -> nn.Module:
    """Move `model` to `device`; returns it in a TrainingForward (inside DistributedDataParallel under torchrun)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    training_model: nn.Module = TrainingForward(model)
    if context.enabled:
        # Aux heads used only in training are still part of every forward, so no unused parameters.
        training_model = nn.parallel.DistributedDataParallel(
            training_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return training_model


def build_optimizer(model: nn.Module, config: TrainConfig, initialised: set[str]) -> torch.optim.AdamW:
    """AdamW; parameters loaded from init_weights learn at lr * init_lr_scale, the rest at lr."""
    pretrained = [parameter for key, parameter in model.named_parameters() if key in initialised]
    fresh = [parameter for key, parameter in model.named_parameters() if key not in initialised]
    groups = [{"params": fresh, "lr": config.lr}]
    if pretrained:
        groups.append({"params": pretrained, "lr": config.lr * config.init_lr_scale})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


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


def train_pos_weight(config: TrainConfig, split_dir: str | Path) -> float:
    """train.pos_weight, or (when it is 0 or less) the one estimated over the train samples of `split_dir`."""
    if config.pos_weight > 0:
        return config.pos_weight
    # Over the un-augmented train samples: padding and warps would change the balance.
    plain_train = SegmentationDataset(split_dir, "train", config.size, augment=False, with_edges=False)
    train_rows = first_samples(thin_clips(plain_train, config.clip_share), config.max_train_samples, config.seed)
    return float(estimate_pos_weight(train_rows))


# ---------------------------------------------------------------------------------------------
# What a run has done: saved after every epoch, restored by --resume


@dataclass
class RunProgress:
    """The finished epochs of a run, its best validation IoU, and the BCE positive weight it trains with."""

    pos_weight: float
    epoch: int = 0  # finished epochs
    best_iou: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, epoch: int, lr: float, train_parts: dict[str, float], val_metrics: dict[str, float]) -> bool:
        """Add finished epoch `epoch` (1-based); True when its validation IoU is the best so far."""
        is_best = val_metrics["iou"] > self.best_iou
        if is_best:
            self.best_iou, self.best_epoch = val_metrics["iou"], epoch
        self.epoch = epoch
        self.history.append(
            {
                "epoch": epoch,
                "lr": lr,
                **{f"train_{name}": value for name, value in train_parts.items()},
                **{f"val_{name}": value for name, value in val_metrics.items()},
            }
        )
        return is_best


def checkpoint_of(
    config: TrainConfig,
    progress: RunProgress,
    model: nn.Module,
    ema: AveragedModel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """The run as it stands, as `save_checkpoint` writes it; `resume_from` reads it back."""
    return Checkpoint(
        model_name=config.model,
        model_options=dict(config.model_options),
        model=(ema.module if ema is not None else model).state_dict(),
        training_model=model.state_dict() if ema is not None else None,
        ema_steps=int(ema.n_averaged) if ema is not None else None,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        epoch=progress.epoch,
        best_iou=progress.best_iou,
        best_epoch=progress.best_epoch,
        pos_weight=progress.pos_weight,
        config=config.to_dict(),
        history=progress.history,
    ).to_dict()


def resume_from(
    path: Path,
    config: TrainConfig,
    device: torch.device,
    model: nn.Module,
    ema: AveragedModel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    scaler: torch.amp.GradScaler,
) -> RunProgress:
    """Load what `checkpoint_of` saved in `path` into the run's objects; returns the run's progress."""
    state = load_checkpoint(path, map_location=device, hint=RESUME_HINT)
    restore_model(model, state, path, config.model, config.model_options)
    if ema is not None:
        if "training_model" not in state:
            raise CheckpointError(f"{path} was trained without train.ema_decay; resume with the same setting")
        ema.module.load_state_dict(state["model"])
        ema.n_averaged.fill_(state["ema_steps"])
        model.load_state_dict(state["training_model"])
    elif "training_model" in state:  # its "model" is the average, not the weights to continue
        raise CheckpointError(f"{path} was trained with train.ema_decay; resume with the same setting")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return RunProgress(
        pos_weight=state["pos_weight"],
        epoch=state["epoch"],
        best_iou=state["best_iou"],
        best_epoch=state["best_epoch"],
        history=list(state["history"]),
    )


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


def trim_live_plots(live_dir: Path, steps: int) -> None:
    """Keep only the rows of steps [0, steps) in dvclive's per-metric .tsv files."""
    for table in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        header, *rows = table.read_text(encoding="utf-8").splitlines()
        step_column = header.split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[step_column]) < steps]
        table.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")


def log_epoch(live: Any, train_parts: dict[str, float], val_metrics: dict[str, float], lr: float) -> None:
    """One dvclive step: train/<part>, val/<metric> and lr."""
    for name, value in train_parts.items():
        live.log_metric(f"train/{name}", value)
    for name, value in val_metrics.items():
        live.log_metric(f"val/{name}", value)
    live.log_metric("lr", lr)
    live.next_step()


def average_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all ranks (each rank saw its own shard of the train set)."""
    names = sorted(values)
    stacked = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return {name: float(total) / dist.get_world_size() for name, total in zip(names, stacked.tolist())}


def share_rank_zero_buffers(model: nn.Module) -> None:
    """DDP syncs BatchNorm running stats from rank 0 before each forward, so after the last one
    every rank holds its own; take rank 0's so that all ranks evaluate one model."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def fit(
    config: TrainConfig,
    split_dir: str | Path,
    output_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train `config.model` on the `split_dir` manifests into `output_dir`; returns the final metrics
    (also in metrics.json)."""
    output_dir = Path(output_dir)
    context = init_distributed(config.device)
    device = pick_device(config.device, context)
    on_cuda = device.type == "cuda"
    amp, channels_last = config.amp and on_cuda, config.channels_last and on_cuda
    show_progress = show_progress and context.is_main
    seed_everything(config.seed)

    train_set, val_set = build_datasets(config, split_dir, quiet=not context.is_main)
    train_loader, val_loader, sampler = build_loaders(config, train_set, val_set, context, device)

    model = create_model(config.model, **config.model_options)
    # Before --resume's restore (which overwrites every weight), so that the optimizer's parameter
    # groups are the same in a resumed run as in the run that saved it.
    initialised = initialise(model, config, announce=context.is_main and not resume)
    training_model = prepare_for_training(model, device, channels_last, context)
    optimizer = build_optimizer(model, config, initialised)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=len(train_loader))
    per_batch_scheduler = None if config.schedule == "plateau" else scheduler
    # float16 autocast needs loss scaling; bfloat16 and float32 do not (the scaler is then a no-op).
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    # The weight average (EMA) is what is validated and saved as "model"; the raw weights that
    # keep training go to "training_model" so that --resume continues both.
    ema = AveragedModel(model, avg_fn=ema_with_warmup(config.ema_decay), use_buffers=True) if config.ema_decay > 0 else None
    validated_model = ema.module if ema is not None else model

    last_path, best_path = output_dir / LAST_CHECKPOINT, output_dir / BEST_CHECKPOINT
    if resume:
        progress = resume_from(last_path, config, device, model, ema, optimizer, scheduler, scaler)
    else:
        progress = RunProgress(pos_weight=train_pos_weight(config, split_dir))
    loss_fn = SegmentationLoss(dict(config.loss_weights), pos_weight=progress.pos_weight)
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / CONFIG_FILE, config.to_dict())

    with open_live(output_dir, resume, progress.epoch, context.is_main) as live:
        for epoch in range(progress.epoch, config.epochs):
            # The dataset draws each item's augmentation seed from torch's generator (DataLoader
            # workers are seeded from it too), so this fixes the epoch's augmentation and dropout.
            seed_everything(epoch_seed(config.seed, epoch, context.rank))
            sampler.set_epoch(epoch)
            train_parts = train_one_epoch(
                training_model, train_loader, loss_fn, optimizer, per_batch_scheduler, scaler, device,
                amp=amp, channels_last=channels_last, grad_clip=config.grad_clip,
                after_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
                description=f"epoch {epoch + 1}/{config.epochs}", show_progress=show_progress,
            )
            if context.enabled:
                train_parts = average_over_ranks(train_parts, device)
                share_rank_zero_buffers(model)
            # Every rank evaluates the whole (small) val set: identical numbers, no reduction needed.
            val_metrics = validate(
                validated_model, val_loader, device, amp=amp, channels_last=channels_last, show_progress=show_progress
            )
            if config.schedule == "plateau":
                scheduler.step(val_metrics["iou"])
            lr = optimizer.param_groups[0]["lr"]
            is_best = progress.record(epoch + 1, lr, train_parts, val_metrics)
            if context.is_main:
                log_epoch(live, train_parts, val_metrics, lr)
                state = checkpoint_of(config, progress, model, ema, optimizer, scheduler, scaler)
                save_checkpoint(state, last_path)
                if is_best:
                    save_checkpoint(state, best_path)

    summary = summarise(progress.history, progress.best_epoch, config, count_parameters(model))
    if context.is_main:
        write_json(output_dir / METRICS_FILE, summary)
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
        "val_pooled_iou": best["val_pooled_iou"],
        "best_epoch": best_epoch,
        "epochs": history[-1]["epoch"],
        "final_train_loss": history[-1]["train_loss"],
        "params": n_parameters,
        "size_mb": round(n_parameters * 4 / 1e6, 3),  # float32 weights
        "input_size": config.size,
    }

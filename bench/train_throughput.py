"""Training throughput of every registered student on this CPU, against a baseline in the same run.

One training step = forward (`forward_with_aux`), BCE + Dice on the mask logits (the edge
head's loss too for models that have one), backward and an AdamW step, on a random batch of
`--batch-size` images. After `--warmup` steps, `--steps` steps per model are timed, the models
taking turns so that load from other processes slows all of them alike; samples/s is batch
size / median step time. The baseline is torchvision's MobileNetV3-Small classifier trained
with cross-entropy on the same batches, so the ratio column compares across machines.

    python bench/train_throughput.py [--models NAME ...] [--sizes 128 256] [--batch-size 8]
                                     [--steps 10] [--warmup 3] [--threads N]
"""

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_small

from trainer.losses import dice_loss
from trainer.models import create_model, list_models

BASELINE = "mobilenet_v3_small (classifier)"


def segmentation_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor) -> None:
    outputs = model.forward_with_aux(images)
    loss = F.binary_cross_entropy_with_logits(outputs["mask"], masks) + dice_loss(outputs["mask"], masks)
    if "edge" in outputs:  # PortraitNet's boundary head trains too
        loss = loss + F.binary_cross_entropy_with_logits(outputs["edge"], masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def classifier_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> None:
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(names: list[str], size: int, batch_size: int, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per training step for each model (and the baseline) at size x size."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, size, size, generator=generator)
    masks = (torch.rand(batch_size, 1, size, size, generator=generator) > 0.5).float()
    labels = torch.randint(0, 1000, (batch_size,), generator=generator)
    runners = {}
    for name in names:
        model = create_model(name).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        runners[name] = (lambda m=model, o=optimizer: segmentation_step(m, o, images, masks))
    baseline = mobilenet_v3_small().train()
    baseline_optimizer = torch.optim.AdamW(baseline.parameters(), lr=1e-3)
    runners[BASELINE] = lambda: classifier_step(baseline, baseline_optimizer, images, labels)

    for run in runners.values():
        for _ in range(warmup):
            run()
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(steps):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or list_models()

    print(f"training throughput, batch {args.batch_size}, {args.threads} threads, median of {args.steps} steps, "
          f"{datetime.date.today()} on {platform.processor() or platform.machine()}")  # fmt: skip
    header = "| model | " + " | ".join(f"{size}px samples/s | vs baseline" for size in args.sizes) + " |"
    results = {size: measure(names, size, args.batch_size, args.steps, args.warmup) for size in args.sizes}
    print(header)
    print("|" + "---|" * (1 + 2 * len(args.sizes)))
    for name in [*names, BASELINE]:
        cells = []
        for size in args.sizes:
            seconds = results[size][name]
            cells.append(f"{args.batch_size / seconds:.1f} | {results[size][BASELINE] / seconds:.2f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

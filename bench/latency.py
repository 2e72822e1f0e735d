"""Batch-1 CPU latency and parameter count of every registered student, in eager PyTorch.

For each model and input size: build it (random init; latency does not depend on the
weights), switch to eval mode, optionally fold batch norm into the convolutions (what any
deployment does), use channels-last memory (about 1.5x faster for the depthwise convolutions here), warm up, then
time `--runs` single-image forward passes under `torch.inference_mode()`, the models taking
turns, and report the median (and the 90th percentile, to show noise).
A baseline — torchvision's MobileNetV3-Small classifier at the same input size — is timed in
the same run, so the ratio column compares across machines and load. The BlazeSeg notes report
10.2 ms per 128 x 128 image in eager PyTorch on a laptop CPU; the table says whether BlazeSeg
meets 10 ms here. Prints a markdown table with the date and the machine.

    python bench/latency.py [--models NAME ...] [--sizes 128 256] [--runs 100] [--warmup 20]
                            [--threads N] [--no-fuse] [--contiguous]
"""

import argparse
import copy
import datetime
import os
import platform
import statistics
import time

import torch
from torch import nn
from torchvision.models import mobilenet_v3_small

from trainer.complexity import count_parameters
from trainer.models import create_model, list_models
from trainer.models.base import fuse_conv_batch_norm

BLAZESEG_BUDGET_MS = 10.0  # the seed notes: 10.2 ms per 128 x 128 image on a laptop CPU
BASELINE = "mobilenet_v3_small (classifier)"
# Non-default options worth a row of their own: the people-dev recipe's pretrained student.
VARIANTS = {"mobile_unet (width 1.0)": ("mobile_unet", {"width_mult": 1.0})}


def prepare(model: nn.Module, fuse: bool, channels_last: bool) -> nn.Module:
    model = model.eval()
    if fuse:
        model = fuse_conv_batch_norm(copy.deepcopy(model))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def time_models(
    models: dict[str, nn.Module], size: int, runs: int, warmup: int, channels_last: bool
) -> dict[str, list[float]]:
    """Milliseconds per batch-1 forward pass at size x size, `runs` per model, sorted.

    The models take turns, one pass each per round: a burst of load from other processes then
    slows every model alike instead of one, which keeps the ratios to the baseline honest.
    """
    x = torch.randn(1, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    timings: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(runs):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                timings[name].append((time.perf_counter() - start) * 1000.0)
    return {name: sorted(values) for name, values in timings.items()}


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[round(fraction * (len(sorted_values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model and variant")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--no-fuse", action="store_true", help="keep batch norm as separate layers")
    parser.add_argument(
        "--contiguous",
        action="store_true",
        help="NCHW memory layout (default: channels-last, faster for depthwise convs on CPU)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.models or [*list_models(), *VARIANTS]
    fuse, channels_last = not args.no_fuse, not args.contiguous
    models = {}
    for name in names:
        family, options = VARIANTS.get(name, (name, {}))
        models[name] = create_model(family, **options)
    models[BASELINE] = mobilenet_v3_small()  # random init: no download

    runnable = {name: prepare(model, fuse, channels_last) for name, model in models.items()}
    rows = [{"name": name, "parameters": count_parameters(model)} for name, model in models.items()]
    for size in args.sizes:
        timings = time_models(runnable, size, args.runs, args.warmup, channels_last)
        for row in rows:
            values = timings[row["name"]]
            row[size] = (statistics.median(values), percentile(values, 0.9))
            print(
                f"{row['name']:>32} {size:>4}px  median {row[size][0]:7.2f} ms  p90 {row[size][1]:7.2f} ms", flush=True
            )
    baseline = next(row for row in rows if row["name"] == BASELINE)

    print()
    print(
        f"Batch-1 eager CPU latency, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}, median of {args.runs} runs after {args.warmup} warm-up, "
        f"batch norm {'fused' if fuse else 'unfused'}, {'channels-last' if channels_last else 'contiguous NCHW'}. "
        f"Ratio = latency / {BASELINE} latency at the same size.\n"
    )
    header = (
        "| model | parameters (M) | " + " | ".join(f"{size}px ms (p90) | ratio @{size}" for size in args.sizes) + " |"
    )
    print(header)
    print("|" + "---|" * (2 + 2 * len(args.sizes)))
    for row in rows:
        cells = [row["name"], f"{row['parameters'] / 1e6:.3f}"]
        for size in args.sizes:
            median, p90 = row[size]
            cells += [f"{median:.2f} ({p90:.2f})", f"{median / baseline[size][0]:.2f}"]
        print("| " + " | ".join(cells) + " |")
    if "blazeseg" in names and 128 in args.sizes:
        blaze = next(row for row in rows if row["name"] == "blazeseg")[128][0]
        verdict = "meets" if blaze <= BLAZESEG_BUDGET_MS else "MISSES"
        print(f"\nBlazeSeg at 128x128: {blaze:.2f} ms, {verdict} the {BLAZESEG_BUDGET_MS:.0f} ms budget.")


if __name__ == "__main__":
    main()

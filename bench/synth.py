"""Synthesis throughput (composites per second) against a naive alpha blend measured in the same run.

Generates N synthetic 600x800 foregrounds (the AISegment frame size, soft alpha) as a canonical
set and a few 1024x768 backgrounds, then, at 256x256 and 512x512 output, times:
  - naive:      per composite cv2.imread of image, mask and background, resize, one alpha
                blend at a random place, cv2.imwrite of image and mask (no harmonisation,
                augmentation, feathering or checks);
  - synth:      `datatool.synth.synthesize` with the defaults (harmonisation + augmentation);
  - synth, plain: the same with harmonisation and augmentation off (what those two cost).
Single process, best of `--repeats`; prints composites/s and the ratio to the naive blend.

    python bench/synth.py [--foregrounds 100] [--per-foreground 2] [--repeats 2]
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from datatool.synth import SynthOptions, synthesize
from portraits import HEIGHT, WIDTH, PortraitGenerator

BACKGROUNDS = 6


def generate(root: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """A canonical set of smooth noisy photos with a blurred ellipse-and-head alpha, and some backgrounds."""
    rng = np.random.default_rng(seed)
    foregrounds, backgrounds = root / "fg", root / "bg"
    for folder in (foregrounds / "images", foregrounds / "masks", backgrounds):
        folder.mkdir(parents=True, exist_ok=True)
    portraits = PortraitGenerator(seed)
    rows = []
    for index in range(count):
        photo, mask = portraits.photo(), portraits.mask()
        mask = cv2.GaussianBlur(mask, (0, 0), 3)
        sample_id = f"{index:06d}"
        cv2.imwrite(str(foregrounds / f"images/{sample_id}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(foregrounds / f"masks/{sample_id}.png"), mask)
        rows.append({"id": sample_id, "image": f"images/{sample_id}.jpg", "mask": f"masks/{sample_id}.png", "source": "bench",
                     "width": WIDTH, "height": HEIGHT, "mask_kind": "alpha", "group": f"bench/{sample_id}"})  # fmt: skip
    (foregrounds / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for index in range(BACKGROUNDS):
        scene = np.clip(rng.normal(120, 50, (768 // 8, 1024 // 8, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(backgrounds / f"scene{index}.jpg"), cv2.resize(scene, (1024, 768), interpolation=cv2.INTER_CUBIC))
    return foregrounds, backgrounds


def naive_blend(foregrounds: Path, backgrounds: Path, output: Path, size: int, per_foreground: int, seed: int = 0) -> int:
    """The baseline: what a script without harmonisation, augmentation or checks would do."""
    rng = np.random.default_rng(seed)
    output.mkdir(parents=True, exist_ok=True)
    scenes = sorted(backgrounds.iterdir())
    rows = [json.loads(line) for line in (foregrounds / "manifest.jsonl").read_text().splitlines()]
    written = 0
    for row in rows:
        image = cv2.imread(str(foregrounds / row["image"]))
        alpha = cv2.imread(str(foregrounds / row["mask"]), cv2.IMREAD_GRAYSCALE)
        for k in range(per_foreground):
            canvas = cv2.resize(cv2.imread(str(scenes[int(rng.integers(len(scenes)))])), (size, size), interpolation=cv2.INTER_AREA)
            scale = rng.uniform(0.5, 0.95) * size / HEIGHT
            h, w = round(HEIGHT * scale), round(WIDTH * scale)
            person = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            weight = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            region = canvas[y : y + h, x : x + w].astype(np.float32)
            canvas[y : y + h, x : x + w] = (weight * person + (1 - weight) * region).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            mask[y : y + h, x : x + w] = (weight[..., 0] * 255).astype(np.uint8)
            cv2.imwrite(str(output / f"{row['id']}-{k}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(output / f"{row['id']}-{k}.png"), mask)
            written += 1
    return written


def timed(job, repeats: int) -> tuple[float, int]:
    """(fastest seconds, composites): the machine is shared, so the minimum is the least noisy estimate."""
    best, count = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        count = job()
        best = min(best, time.perf_counter() - started)
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--foregrounds", type=int, default=100, help="foreground samples")
    parser.add_argument("--per-foreground", type=int, default=2, help="composites per foreground")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        scratch = Path(tmp)
        foregrounds, backgrounds = generate(scratch, args.foregrounds)
        print(f"{args.foregrounds} foregrounds {WIDTH}x{HEIGHT} x {args.per_foreground}, {BACKGROUNDS} backgrounds 1024x768, "
              f"1 process, best of {args.repeats}")  # fmt: skip
        print(f"{'size':<9}{'job':<34}{'composites/s':>13}{'vs naive':>10}")
        for size in (256, 512):
            output = scratch / f"out-{size}"

            def run_synth(**overrides) -> int:
                shutil.rmtree(output, ignore_errors=True)
                options = SynthOptions(size=(size, size), per_foreground=args.per_foreground, **overrides)
                return synthesize(foregrounds, backgrounds, output, name="bench", options=options).composites

            def run_naive() -> int:
                shutil.rmtree(output, ignore_errors=True)
                return naive_blend(foregrounds, backgrounds, output, size, args.per_foreground)

            naive_seconds, count = timed(run_naive, args.repeats)
            jobs = [
                ("naive alpha blend", naive_seconds, count),
                ("synth (harmonise + augment)", *timed(run_synth, args.repeats)),
                ("synth, plain (both off)", *timed(lambda: run_synth(harmonise_strength=0.0, augment=False), args.repeats)),
            ]
            for label, seconds, composites in jobs:
                print(f"{size}x{size:<5}{label:<34}{composites / seconds:>13.1f}{naive_seconds / seconds * composites / count:>9.2f}x")


if __name__ == "__main__":
    main()

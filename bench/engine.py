"""The Ray engine against the local engine, on this machine, in the same run.

Generates 2N photo/mask pairs (600x800, `portraits.PortraitGenerator`; the first N of them are
also linked into a set of N), then runs, each in a fresh process so that peak memory is that
run's own:
  - `pseudolabel` with the MediaPipe selfie teacher: local (one process, the pipeline's default)
    and ray (a local Ray runtime with this machine's cores, one actor per core);
  - `ingest folder`: local (worker processes on all cores) and ray (one actor per core);
and each ray run again with the actors writing the files themselves (`writer: workers`).
The Ray runtime's start (`ray.init`) is timed apart. The steady-state throughput is the
difference of a run of 2N and a run of N, each without its wait for the first result (workers or
actors starting, the model loading): N / ((seconds(2N) - first(2N)) - (seconds(N) - first(N))).
What every run pays once after that (the batches already in flight at the first result, the
pipeline draining at the end) cancels out, for either engine. Prints photos/s, the ray / local throughput ratio (target >= 0.8x),
the wait for the first result, and the peak resident memory of the whole process tree (driver,
workers, and on ray the raylet, GCS and actors) of the 2N run. Then pseudolabels a small and a
large set on ray to show that peak memory is flat in N.

    python bench/engine.py [--photos 1000] [--memory-photos 500 5000] [--side 800]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from ingest import PeakMemory
from portraits import PortraitGenerator


def generate(root: Path, count: int, side: int, seed: int = 0) -> Path:
    """`count` photo-like JPEGs in root/images and 0/255 PNG masks in root/masks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    portraits = PortraitGenerator(seed)
    for index in range(count):
        photo, mask = portraits.photo(), portraits.mask()
        if max(photo.shape[:2]) != side:
            scale = side / max(photo.shape[:2])
            size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
            photo, mask = cv2.resize(photo, size, interpolation=cv2.INTER_AREA), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(root / f"images/{index:06d}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(root / f"masks/{index:06d}.png"), mask)
    return root


def child(args: argparse.Namespace) -> None:
    """One measured job in this fresh process; prints its numbers as JSON."""
    from datatool.engine import EngineOptions, connect
    from datatool.ingest import ingest
    from datatool.pseudolabel import pseudolabel
    from datatool.sources import create_source
    from portraitseg.teachers import create_teacher

    with PeakMemory() as memory:
        started = time.perf_counter()
        if args.engine == "ray":
            connect(None)
        runtime_seconds = time.perf_counter() - started
        started = time.perf_counter()
        if args.job == "pseudolabel":
            engine = EngineOptions(kind=args.engine, workers=0 if args.engine == "ray" else 1, writer=args.writer)
            result = pseudolabel(create_teacher("mediapipe-selfie"), args.input / "images", args.output, name="bench", engine=engine)
            done = result.labelled
        else:
            engine = EngineOptions(kind=args.engine, writer=args.writer)
            result = ingest(create_source("folder", args.input), args.output, name="bench", workers=0, engine=engine)
            done = result.ingested
        seconds = time.perf_counter() - started
    assert result.skipped == 0, result.report["skipped"][:3]
    print(json.dumps({
        "runtime_seconds": runtime_seconds, "seconds": seconds, "samples": done,
        "warmup_seconds": result.report["engine"]["warmup_seconds"], "peak_mb": (memory.main_peak + memory.workers_peak) / 2**20,
    }))  # fmt: skip


# The engines compared: (kind, who writes the files).
ENGINES = {"local": ("local", "driver"), "ray": ("ray", "driver"), "ray, workers write": ("ray", "workers")}


def measure(job: str, engine: str, source: Path, scratch: Path) -> dict:
    kind, writer = ENGINES[engine]
    output = scratch / f"out-{job}-{kind}-{writer}"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, __file__, "--child", "--job", job, "--engine", kind, "--writer", writer, "--input", str(source), "--output", str(output)]
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    finished = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
    shutil.rmtree(output, ignore_errors=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000, help="photos (and pairs) of the throughput runs")
    parser.add_argument("--memory-photos", type=int, nargs=2, default=(500, 5000), help="small and large set for the memory runs")
    parser.add_argument("--side", type=int, default=800, help="longer side of the generated photos")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", choices=["pseudolabel", "ingest"], help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--writer", choices=["driver", "workers"], default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    print(f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, {args.photos} photos, longer side {args.side}")
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        scratch = Path(tmp)
        large = generate(scratch / "set-2n", 2 * args.photos, args.side)
        small = scratch / "set-n"
        for folder in ("images", "masks"):
            (small / folder).mkdir(parents=True)
            for path in sorted((large / folder).iterdir())[: args.photos]:
                os.link(path, small / folder / path.name)
        print(
            "| job | engine | photos/s, steady (2N run - N run) | ray / local | Ray start, s | first result, s | photos/s, whole 2N run | peak MB (all processes) |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        ratios = {}
        for job in ("pseudolabel", "ingest"):
            steady = {}
            for engine in ENGINES:
                short, run = measure(job, engine, small, scratch), measure(job, engine, large, scratch)
                # Each run's own wait for its first result (actors starting: +-3 s) is taken off first;
                # what still differs between a 2N and an N run is steady work.
                busy = (run["seconds"] - run["warmup_seconds"]) - (short["seconds"] - short["warmup_seconds"])
                steady[engine] = (run["samples"] - short["samples"]) / busy
                ratios[job, engine] = steady[engine] / steady["local"]
                start = f"{run['runtime_seconds']:.1f}" if engine != "local" else "-"
                print(
                    f"| {job} | {engine} | {steady[engine]:.1f} | {ratios[job, engine]:.2f}x | {start} | {run['warmup_seconds']:.1f} "
                    f"| {run['samples'] / run['seconds']:.1f} | {run['peak_mb']:.0f} |"
                )
        for (job, engine), ratio in ratios.items():
            if engine != "local":
                print(f"{job}: {engine} at {ratio:.2f}x the local engine's throughput (target >= 0.8x): {'met' if ratio >= 0.8 else 'MISSED'}")
        shutil.rmtree(large)
        shutil.rmtree(small)

        peaks = {}
        for count in args.memory_photos:
            photos = generate(scratch / f"memory-{count}", count, args.side, seed=count)
            run = measure("pseudolabel", "ray", photos, scratch)
            peaks[count] = run["peak_mb"]
            print(f"ray pseudolabel of {count:>5} photos: peak {run['peak_mb']:.0f} MB, {run['samples'] / run['seconds']:.1f} photos/s")
            shutil.rmtree(photos)
        few, many = args.memory_photos
        flat = peaks[many] <= peaks[few] * 1.1 + 50
        print(f"peak memory {many} vs {few} photos: {peaks[many] / peaks[few]:.2f}x (target: flat, within 10% + 50 MB): {'met' if flat else 'MISSED'}")


if __name__ == "__main__":
    main()

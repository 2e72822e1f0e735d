"""Ingest throughput and memory against a naive copy measured in the same run.

Generates N synthetic 600x800 photo/mask pairs (the AISegment frame size), then times, each in
a fresh process so that peak memory is that run's own:
  - naive:    single process, cv2.imread + cv2.imwrite of every image and mask (no checks);
  - ingest:   `datatool ingest folder` with 1 worker and with all cores (full validation).
Prints images/s, the ratio to the naive copy and peak resident memory (main process and all
workers together). Then ingests a small and a large set to show that peak memory does not grow
with the number of images. Targets on a 2-core machine: all cores >= 1.5x the naive copy;
peak memory for the large set within 10% (+20 MB) of the small one.

    python bench/ingest.py [--pairs 500] [--memory-pairs 200 2000] [--repeats 3]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil
from portraits import HEIGHT, WIDTH, PortraitGenerator



def generate_pairs(root: Path, count: int, seed: int = 0) -> Path:
    """Photo-like JPEGs (smooth shapes + sensor noise, ~100 KB each) and 0/255 PNG masks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    portraits = PortraitGenerator(seed)
    for index in range(count):
        photo, mask = portraits.photo(), portraits.mask()
        cv2.imwrite(str(root / f"images/{index:06d}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(root / f"masks/{index:06d}.png"), mask)
    return root


def naive_copy(source: Path, output: Path) -> None:
    """The baseline: what a script without validation, parallelism or re-use would do."""
    for folder, flags in (("images", cv2.IMREAD_COLOR), ("masks", cv2.IMREAD_UNCHANGED)):
        (output / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / folder).iterdir()):
            cv2.imwrite(str(output / folder / path.name), cv2.imread(str(path), flags))


class PeakMemory:
    """Samples the resident memory of this process and of all its descendants (worker processes
    come from a forkserver, so `getrusage(RUSAGE_CHILDREN)` would not see them)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.main_peak = self.workers_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            workers = 0
            for process in me.children(recursive=True):
                try:
                    workers += process.memory_info().rss
                except psutil.Error:
                    pass  # a process that ended between listing and reading
            self.main_peak = max(self.main_peak, me.memory_info().rss)
            self.workers_peak = max(self.workers_peak, workers)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child(args: argparse.Namespace) -> None:
    """Run one measured job in this (fresh) process and print its numbers as JSON."""
    from datatool.ingest import ingest
    from datatool.sources import create_source, list_sources

    list_sources()  # imports every adapter: import time is a constant, not throughput
    with PeakMemory() as memory:
        started = time.perf_counter()
        if args.child == "naive":
            naive_copy(args.input, args.output)
        else:
            result = ingest(create_source("folder", args.input), args.output, name="bench", workers=args.workers)
            assert result.skipped == 0, result.report["skipped"][:3]
        seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": seconds,
        "main_peak_mb": max(memory.main_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,
        "worker_peak_mb": memory.workers_peak / 2**20,
    }))  # fmt: skip


def measure(job: str, source: Path, scratch: Path, workers: int = 1) -> dict:
    output = scratch / f"out-{job}-{workers}"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, __file__, "--child", job, "--input", str(source), "--output", str(output), "--workers", str(workers)]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    shutil.rmtree(output, ignore_errors=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def best_of(repeats: int, job: str, source: Path, scratch: Path, workers: int = 1) -> dict:
    """Fastest of `repeats` runs: the machine is shared, so the minimum is the least noisy estimate."""
    runs = [measure(job, source, scratch, workers) for _ in range(repeats)]
    return min(runs, key=lambda run: run["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500, help="pairs for the throughput runs")
    parser.add_argument("--memory-pairs", type=int, nargs=2, default=(200, 2000), help="small and large set sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    parser.add_argument("--child", choices=["naive", "ingest"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        scratch = Path(tmp)
        pairs = generate_pairs(scratch / "pairs", args.pairs)
        print(f"{args.pairs} generated {WIDTH}x{HEIGHT} photo/mask pairs, {cores} cores, best of {args.repeats}")
        naive = best_of(args.repeats, "naive", pairs, scratch)
        print(f"{'job':<28}{'images/s':>10}{'vs naive':>10}{'main MB':>10}{'workers MB':>11}")
        rows = [("naive imread+imwrite copy", naive)]
        rows.append(("ingest, 1 worker", best_of(args.repeats, "ingest", pairs, scratch, 1)))
        rows.append((f"ingest, {cores} workers (all cores)", best_of(args.repeats, "ingest", pairs, scratch, cores)))
        for label, run in rows:
            print(
                f"{label:<28}{args.pairs / run['seconds']:>10.1f}{naive['seconds'] / run['seconds']:>9.2f}x"
                f"{run['main_peak_mb']:>10.0f}{run['worker_peak_mb']:>11.0f}"
            )
        ratio = naive["seconds"] / rows[-1][1]["seconds"]
        print(f"all cores vs naive: {ratio:.2f}x (target >= 1.5x): {'met' if ratio >= 1.5 else 'MISSED'}")

        small_count, large_count = args.memory_pairs
        peaks = {}
        for count in (small_count, large_count):
            source = generate_pairs(scratch / f"memory-{count}", count, seed=count)
            run = measure("ingest", source, scratch, cores)
            peaks[count] = run["main_peak_mb"] + run["worker_peak_mb"]
            print(f"peak memory for {count:>5} pairs: main {run['main_peak_mb']:.0f} MB + workers {run['worker_peak_mb']:.0f} MB"
                  f" ({count / run['seconds']:.1f} images/s)")
            shutil.rmtree(source)
        growth = peaks[large_count] / peaks[small_count]
        flat = peaks[large_count] <= peaks[small_count] * 1.1 + 20
        print(f"memory {large_count} vs {small_count} pairs: {growth:.2f}x (target: flat, within 10% + 20 MB): {'met' if flat else 'MISSED'}")


if __name__ == "__main__":
    main()

"""End-to-end frames per second of `trainer predict` on a 720p clip: decode, model, blur, encode.

Makes a 1280x720 H.264 clip at 30 fps from the public-domain photos that ship with scikit-image
(astronaut) and matplotlib (Grace Hopper), slowly panned and zoomed, then runs it through
`trainer.predict.predict_video` with `--save blur` for the student and for the MediaPipe selfie
segmenter in the same process, the same threads, the same edge refinement and the same encoder,
taking turns (`--rounds` each, the median kept), so load from other processes falls on both.
Prints a markdown table with the date and the machine, and the student / MediaPipe fps ratio
(> 1: the student is faster end to end).

    python bench/predict.py --student models/x/export/tflite-fp32.tflite [--frames 90] [--rounds 2]
                            [--threads 2] [--edges guided] [--batch 4]
"""

import argparse
import datetime
import os
import platform
import statistics
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from trainer.predict import PredictOptions, PredictSummary, expand_sources, open_predictor, predict_video

WIDTH, HEIGHT, RATE = 1280, 720, 30


def public_domain_photos() -> list[np.ndarray]:
    import matplotlib.cbook
    from skimage import data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
        hopper = cv2.imdecode(np.frombuffer(file.read(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    return [data.astronaut(), np.ascontiguousarray(hopper)]


def write_clip(path: Path, frames: int) -> None:
    """`frames` 1280x720 frames: each photo on a blurred copy of itself, panned and zoomed a little per frame."""
    photos = public_domain_photos()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE, options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(frames):
            photo = photos[(index // (frames // len(photos) + 1)) % len(photos)]
            backdrop = cv2.GaussianBlur(cv2.resize(photo, (WIDTH, HEIGHT)), (0, 0), 25)
            scale = HEIGHT / photo.shape[0] * (1.0 + 0.002 * index)
            person = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)))
            left = (WIDTH - person.shape[1]) // 2 + 2 * index - frames
            canvas = backdrop.copy()
            x0, x1 = max(0, left), min(WIDTH, left + person.shape[1])
            canvas[:, x0:x1] = person[: HEIGHT, x0 - left : x1 - left]
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, RATE)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def run_once(predictor, clip: Path, output: Path, options: PredictOptions) -> PredictSummary:
    summary = PredictSummary()
    predict_video(predictor, expand_sources(str(clip))[0], output, options, summary, report=print)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="A checkpoint or exported file (trainer predict --model).")
    parser.add_argument("--reference", default="mediapipe-selfie", help="The teacher to compare with.")
    parser.add_argument("--frames", type=int, default=90, help="Clip length (30 fps).")
    parser.add_argument("--rounds", type=int, default=2, help="Runs per model, taking turns; the median is kept.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--edges", choices=["guided", "bilinear"], default="guided")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as folder:
        clip = Path(folder) / "clip720p.mp4"
        write_clip(clip, args.frames)
        models = {args.student: open_predictor(args.student, args.threads), args.reference: open_predictor(args.reference, args.threads)}
        options = PredictOptions(("blur",), edges=args.edges, batch=args.batch)
        run_once(models[args.student], clip, Path(folder) / "warmup", options)  # XNNPACK packing, encoder set-up
        fps: dict[str, list[float]] = {name: [] for name in models}
        for round_index in range(args.rounds):
            for name, predictor in models.items():
                summary = run_once(predictor, clip, Path(folder) / f"{round_index}", options)
                assert summary.frames == args.frames, (name, summary.frames)
                fps[name].append(summary.fps)

    print(f"# trainer predict end to end, {datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"{args.threads} threads")
    print(f"{args.frames} frames of {WIDTH}x{HEIGHT} at {RATE} fps: decode (PyAV), model, {args.edges} edges, "
          f"background blur, encode (libx264 veryfast); median of {args.rounds} runs each\n")
    print("| model | fps | ms per frame | runs (fps) |\n|---|---|---|---|")
    medians = {name: statistics.median(values) for name, values in fps.items()}
    for name, values in fps.items():
        runs = ", ".join(f"{value:.1f}" for value in values)
        print(f"| {name} | {medians[name]:.1f} | {1000 / medians[name]:.1f} | {runs} |")
    ratio = medians[args.student] / medians[args.reference]
    verdict = "at least as fast as" if ratio >= 1 else "slower than"
    print(f"\nstudent / {args.reference} fps ratio: {ratio:.2f} (the student is {verdict} {args.reference} end to end)")


if __name__ == "__main__":
    main()

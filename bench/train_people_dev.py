"""The people-dev recipe: from photos with masks to a trained student, timed, scored beside MediaPipe.

Runs the project's own commands, in the order the pipeline runs them, on a folder of photos
with masks (`../shared/data/people-dev`, 193 photos) and a folder of unlabelled photos
(`../shared/data/unlabeled-people`, 27), all under `--work`:

1. `datatool ingest folder` the labelled photos;
2. `datatool pseudolabel` the unlabelled photos with the teachers (soft masks);
3. `datatool backgrounds` cuts person-free backgrounds from the pseudo-labelled photos (never
   from people-dev, whose val and test photos would leak into training) plus the demo's;
4. `datatool synth` pastes every people-dev person onto them (`--per-foreground` each);
5. `datatool boundary` and `datatool split` (val/test by group: a composite lands with its
   person, so no person of val or test is seen in training);
6. `trainer import-encoder` (the default `--student pretrained`): a MobileNetV2 encoder read out
   of the DeepLab teacher's TFLite file (`../shared/weights/deeplabv3_mnv2_pascal_quant.tflite`),
   BatchNorm calibrated on the unlabelled photos;
7. `trainer train` with `val_sources=[people-dev]` (the validation IoU that picks `best.pt` is
   measured on real photos only, never on composites), copy-paste 0.5 and plain BCE weighting:
   `--student pretrained` fine-tunes mobile_unet (width 1.0) from that encoder (encoder at 0.3x
   the learning rate); `--student scratch` trains ffnet_mobile from random weights.

Then it scores `best.pt` on the real val and test photos and runs the MediaPipe selfie
segmenter on the same images at the same resolution: the baseline measured in the same run.
Training time is wall-clock on this machine (other load slows it; the machine's cores are
printed).

    python bench/train_people_dev.py [--student pretrained|scratch] [--data DIR] [--unlabeled DIR]
                                     [--encoder-tflite FILE] [--work DIR] [--model NAME] [--size PX]
                                     [--epochs N] [KEY=VALUE ...]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from trainer.data import SegmentationDataset
from trainer.metrics import SegmentationMetrics
from trainer.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEEPLAB_TFLITE = REPO.parent / "shared" / "weights" / "deeplabv3_mnv2_pascal_quant.tflite"
# What each --student trains unless --model/--size/--epochs say otherwise; both fit in about 20
# minutes of training on a quiet 2-core CPU (README "The people-dev recipe").
STUDENTS = {
    "pretrained": {"model": "mobile_unet", "size": 192, "epochs": 20,
                   "overrides": ["model_options.width_mult=1.0", "init_lr_scale=0.3"]},
    "scratch": {"model": "ffnet_mobile", "size": 192, "epochs": 60, "overrides": []},
}  # fmt: skip


def run(*command: str) -> float:
    """Run one project command (its output goes to the terminal); return its wall time in seconds."""
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def score_student(checkpoint: Path, split_dir: Path, split: str) -> dict[str, float]:
    model, state = load_model(checkpoint)
    dataset = SegmentationDataset(split_dir, split, state["config"]["size"], augment=False, sources=["people-dev"])
    metrics = SegmentationMetrics()
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            metrics.update(model(item["image"][None]), item["mask"][None])
    return {**metrics.compute(), "images": len(dataset)}


def score_teacher(teacher_name: str, split_dir: Path, split: str, size: int) -> dict[str, float]:
    """The teacher on the original photos, its probabilities resized to size x size like the student's input."""
    from portraitseg.teachers import create_teacher
    from portraitseg.imagefiles import read_rgb
    from portraitseg.records import resolve

    teacher = create_teacher(teacher_name)
    dataset = SegmentationDataset(split_dir, split, size, augment=False, sources=["people-dev"])
    metrics = SegmentationMetrics()
    for index, row in enumerate(dataset.rows):
        probability = teacher.predict([read_rgb(resolve(split_dir, row, "image"))])[0]
        probability = cv2.resize(probability, (size, size), interpolation=cv2.INTER_LINEAR)
        logits = torch.logit(torch.from_numpy(np.clip(probability, 1e-6, 1 - 1e-6)))[None, None]
        metrics.update(logits, dataset[index]["mask"][None])
    return {**metrics.compute(), "images": len(dataset)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "people-dev", help="photos with masks (folder layout)")
    parser.add_argument("--unlabeled", type=Path, default=SHARED / "unlabeled-people", help="photos without masks")
    parser.add_argument("--work", type=Path, default=Path("/tmp/people-dev-recipe"))
    parser.add_argument("--teacher", default="mediapipe-selfie+rembg", help="labels the unlabelled photos")
    parser.add_argument("--per-foreground", type=int, default=5, help="composites per people-dev person")
    parser.add_argument("--student", choices=sorted(STUDENTS), default="pretrained",
                        help="pretrained: mobile_unet from the DeepLab file's encoder; scratch: ffnet_mobile, random init")
    parser.add_argument("--encoder-tflite", type=Path, default=DEEPLAB_TFLITE, help="DeepLabV3-MobileNetV2 TFLite (--student pretrained)")
    parser.add_argument("--model", help="override the student's model")
    parser.add_argument("--size", type=int, help="override the student's input side")
    parser.add_argument("--epochs", type=int, help="override the student's epochs")
    parser.add_argument("--val", type=float, default=0.15)
    parser.add_argument("--test", type=float, default=0.15)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more trainer overrides, e.g. copy_paste=0.5")
    args = parser.parse_args()
    preset = STUDENTS[args.student]
    args.model, args.size, args.epochs = (args.model or preset["model"], args.size or preset["size"],
                                          args.epochs or preset["epochs"])  # fmt: skip
    for folder in (args.data, args.unlabeled):
        if not folder.is_dir():
            sys.exit(f"{folder} not found: pass --data / --unlabeled (people-dev lies in ../shared/data beside the repository)")
    if args.student == "pretrained" and not args.encoder_tflite.is_file():
        sys.exit(f"{args.encoder_tflite} not found: pass --encoder-tflite (google-coral/test_data's "
                 "deeplabv3_mnv2_pascal_quant.tflite) or use --student scratch")  # fmt: skip

    work = args.work
    seconds: dict[str, float] = {}
    seconds["ingest"] = run("datatool", "ingest", "folder", "--input", str(args.data), "--output", str(work / "people-dev"), "--name", "people-dev")
    seconds["pseudolabel"] = run("datatool", "pseudolabel", "--teacher", args.teacher, "--input", str(args.unlabeled), "--output", str(work / "unlabeled"), "--name", "unlabeled")
    seconds["backgrounds"] = run("datatool", "backgrounds", "--input", str(work / "unlabeled"), "--include", str(REPO / "data/raw/demo/backgrounds"), "--output", str(work / "backgrounds"))
    seconds["synth"] = run("datatool", "synth", "--foregrounds", str(work / "people-dev"), "--backgrounds", str(work / "backgrounds"), "--output", str(work / "synth"), "--per-foreground", str(args.per_foreground), "--size", "256", "256")
    for name in ("people-dev", "unlabeled", "synth"):
        seconds[f"boundary {name}"] = run("datatool", "boundary", "--input", str(work / name), "--output", str(work / "boundary" / name))
    sets = [str(work / "boundary" / name) for name in ("people-dev", "unlabeled", "synth")]
    seconds["split"] = run("datatool", "split", "--input", *sets, "--output", str(work / "split"), "--val", str(args.val), "--test", str(args.test), "--seed", "0")
    output = work / args.model
    overrides = [f"size={args.size}", f"epochs={args.epochs}", "val_sources=people-dev",
                 "copy_paste=0.5", "pos_weight=1", *preset["overrides"], *args.overrides]  # fmt: skip
    if args.student == "pretrained":
        encoder = work / "encoder.pt"
        seconds["import-encoder"] = run("trainer", "import-encoder", "--tflite", str(args.encoder_tflite),
                                        "--images", str(args.unlabeled), "--output", str(encoder))  # fmt: skip
        overrides.append(f"init_weights={encoder}")
    seconds["train"] = run("trainer", "train", "--params", str(REPO / "params.yaml"), "--split-dir", str(work / "split"),
                           "--model", args.model, "--output", str(output), *overrides)  # fmt: skip

    student = {split: score_student(output / "best.pt", work / "split", split) for split in ("val", "test")}
    teacher = {split: score_teacher("mediapipe-selfie", work / "split", split, args.size) for split in ("val", "test")}
    summary = json.loads((output / "metrics.json").read_text())
    print(f"\npeople-dev recipe, {os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"data preparation: {sum(value for key, value in seconds.items() if key != 'train'):.0f} s; "
          f"training ({args.student}) {args.model} at {args.size}x{args.size} for {args.epochs} epochs: {seconds['train'] / 60:.1f} min "
          f"(best epoch {summary['best_epoch']})")  # fmt: skip
    print(f"| real photos | images | {args.model} IoU | mediapipe-selfie IoU | ratio | {args.model} boundary F |")
    print("|---|---|---|---|---|---|")
    for split in ("val", "test"):
        ratio = student[split]["iou"] / teacher[split]["iou"]
        print(f"| {split} | {student[split]['images']} | {student[split]['iou']:.4f} | {teacher[split]['iou']:.4f} | {ratio:.3f} | {student[split]['boundary_f']:.4f} |")
    (work / "recipe.json").write_text(json.dumps({"seconds": seconds, "student": student, "mediapipe-selfie": teacher, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()

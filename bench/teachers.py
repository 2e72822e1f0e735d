"""Teacher quality and speed on people-dev: mean IoU against its masks and images/s, per teacher.

Ingests `../shared/data/people-dev` (193 photos with person masks) once into a temporary
canonical set, then labels that set with `datatool.pseudolabel` for every teacher that can be
built on this machine; a teacher that cannot (model file not cached, weights absent) gets a
line saying why. Per teacher it prints:
  - mean IoU: per photo, teacher mask >= 128 (p >= 0.5) against the people-dev mask >= 128 at
    the people-dev mask's own resolution (many masks are smaller than their photo: the teacher
    mask is shrunk to the mask with an area filter), averaged over the photos;
  - teacher images/s: the teacher's calls only (its own resizing included);
  - end-to-end images/s: decoding, teacher, writing the masks, the manifest and the report;
  - how many labels the default review thresholds flag, judged as if there were no ground
    truth (the `teacher_iou` rule is off), and the mean IoU of the flagged and of the other
    labels: the flag is useful when the flagged ones are clearly worse.
Then a markdown table for the README, with the date and the machine.

    python bench/teachers.py [--data ../shared/data/people-dev] [--teachers SPEC ...] [--limit N]
"""

import argparse
import datetime
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from datatool.canonical import read_manifest
from datatool.ingest import ingest
from portraitseg.teacher_files import ModelMissingError
from datatool.pseudolabel import PseudolabelOptions, ReviewThresholds, pseudolabel, teacher_iou
from datatool.sources import create_source
from portraitseg.teachers import create_teacher
from portraitseg.teachers.base import TeacherError

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "people-dev"
SHARED_DEEPLAB = "tflite:deeplabv3-mnv2-pascal"  # the shipped spec for ../shared/weights/deeplabv3_mnv2_pascal_quant.tflite
DEFAULT_TEACHERS = (
    "mediapipe-selfie",
    "rembg",
    SHARED_DEEPLAB,
    "deeplabv3",
    f"mediapipe-selfie+rembg+{SHARED_DEEPLAB}",
)


def limited_copy(data: Path, target: Path, limit: int) -> Path:
    """The first `limit` photo/mask pairs of people-dev as links, for a quick run."""
    for folder in ("Training_Images", "Ground_Truth"):
        (target / folder).mkdir(parents=True)
    for photo in sorted((data / "Training_Images").iterdir())[:limit]:
        (target / "Training_Images" / photo.name).symlink_to(photo)
        for mask in (data / "Ground_Truth").glob(f"{photo.stem}.*"):
            (target / "Ground_Truth" / mask.name).symlink_to(mask)
    return target


def mask_resolution_ious(labelled: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: IoU of the stored teacher mask and the original people-dev mask at the latter's
    size, and whether the label was flagged for review."""
    ious, flagged = [], []
    for row in read_manifest(labelled):
        truth = cv2.imread(str(data / row["source_mask"]), cv2.IMREAD_GRAYSCALE)
        teacher = cv2.imread(str(labelled / row["teacher_mask"]), cv2.IMREAD_UNCHANGED)
        ious.append(teacher_iou(teacher, truth))
        flagged.append(row["needs_review"])
    return np.array(ious), np.array(flagged, bool)


def measure(spec: str, canonical: Path, data: Path, output: Path, options: PseudolabelOptions) -> dict:
    teacher = create_teacher(spec)
    result = pseudolabel(teacher, canonical, output, options=options)
    ious, flagged = mask_resolution_ious(output, data)
    report = result.report
    return {
        "teacher": spec,
        "label": teacher.label,
        "photos": result.labelled,
        "iou": float(ious.mean()),
        "iou_min": float(ious.min()),
        "teacher_ips": report["teacher_images_per_second"],
        "total_ips": result.labelled / report["seconds"],
        "needs_review": int(flagged.sum()),
        "iou_flagged": float(ious[flagged].mean()) if flagged.any() else float("nan"),
        "iou_rest": float(ious[~flagged].mean()) if (~flagged).any() else float("nan"),
        "agreement": report["mean"]["teacher_agreement"],
    }


def number(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, no GPU used, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="people-dev folder (Training_Images/, Ground_Truth/)")
    parser.add_argument("--teachers", nargs="+", default=list(DEFAULT_TEACHERS), help="teacher specs to measure")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos (0 = all)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if not (args.data / "Training_Images").is_dir():
        print(f"people-dev not found at {args.data}: pass --data", file=sys.stderr)
        return 2

    # Flags as for photos without ground truth: the teacher_iou rule would make them trivially agree with the IoU.
    options = PseudolabelOptions(batch_size=args.batch_size, review=ReviewThresholds(min_teacher_iou=0.0))
    rows, unavailable = [], []
    with tempfile.TemporaryDirectory(prefix="bench-teachers-") as temporary:
        root = Path(temporary)
        data = limited_copy(args.data, root / "people-dev", args.limit) if args.limit else args.data
        ingested = ingest(create_source("folder", data), root / "canonical", name="people-dev", workers=0)
        print(f"people-dev: {ingested.ingested} photos with masks ingested ({ingested.skipped} skipped)", flush=True)
        for spec in args.teachers:
            output = root / "labelled" / re.sub(r"[^A-Za-z0-9.-]+", "_", spec)
            try:
                row = measure(spec, ingested.output, data, output, options)
            except (TeacherError, ModelMissingError, ImportError) as error:
                unavailable.append((spec, str(error)))
                print(f"{spec}: unavailable: {error}", flush=True)
                continue
            rows.append(row)
            agreement = f", member agreement {row['agreement']:.3f}" if row["agreement"] is not None else ""
            print(
                f"{spec}: mean IoU {row['iou']:.4f} (min {row['iou_min']:.3f}) on {row['photos']} photos, "
                f"teacher {row['teacher_ips']:.1f} images/s, end to end {row['total_ips']:.1f} images/s, "
                f"{row['needs_review']} flagged for review (IoU {number(row['iou_flagged'])} flagged, "
                f"{number(row['iou_rest'])} the rest){agreement}",
                flush=True,
            )

    print(f"\nMeasured on {datetime.date.today().isoformat()} on {machine()}.\n")
    print("| teacher | mean IoU on people-dev | teacher images/s | end-to-end images/s | flagged for review | IoU flagged / rest |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| `{row['teacher']}` | {row['iou']:.3f} | {row['teacher_ips']:.1f} | {row['total_ips']:.1f} | "
            f"{row['needs_review']} of {row['photos']} | {number(row['iou_flagged'])} / {number(row['iou_rest'])} |"
        )
    for spec, reason in unavailable:
        print(f"| `{spec}` | not available here: {reason.split(';')[0]} | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

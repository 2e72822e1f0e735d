"""The calibration set of int8 quantization: N train images resized to the model's input, seeded.

A pipeline artefact (stage `quantize`), written by `trainer calibration-set`:

    <output>/samples.npy       (N, H, W, 3) uint8 RGB at the model input (H, W), resized as training resizes (plain resize)
    <output>/calibration.json  split_dir, size ([H, W]), seed, count and the sample ids, in order

The samples are drawn from the *train* split only (calibrating on validation images would let
the parity check grade the quantizer on its own calibration data), without replacement, in an
order fixed by the seed; fewer train rows than asked for gives all of them.

A student with a prior channel (`model_options.prior`) calibrates on four channels:
`with_second_frame_priors` appends what the runtime feeds it on the second frame of a still
scene.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from portraitseg.imagefiles import IMAGE_SUFFIXES, read_rgb
from portraitseg.progress import progress
from portraitseg.records import read_split, resolve
from portraitseg.resize import InputSize, as_input_size, resize_image

SAMPLES_FILE = "samples.npy"
INFO_FILE = "calibration.json"


class CalibrationError(ValueError):
    """A calibration set that is empty, unreadable or of the wrong kind, with what to do."""


@dataclass(frozen=True)
class CalibrationInfo:
    split_dir: str
    size: list[int]  # [height, width]
    seed: int
    count: int
    ids: list[str]


def draw_train_samples(split_dir: Path, count: int, size: InputSize, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` seeded train images of `split_dir` at (height, width) `size`: ((N, H, W, 3) uint8, ids)."""
    try:
        rows = read_split(split_dir, "train")
    except (FileNotFoundError, ValueError) as error:
        raise CalibrationError(f"calibration set from {split_dir}: {error}") from error
    order = np.random.default_rng(seed).permutation(len(rows))[: max(count, 0)]
    chosen = [rows[index] for index in sorted(order)]
    if not chosen:
        raise CalibrationError(f"calibration set from {split_dir} is empty (count {count}); ask for at least one image")
    # Resized as every runtime's input is (portraitseg.resize, through the predictors and the
    # parity check), so int8 ranges are set on the pixels the artefact will be fed.
    images = [resize_image(read_rgb(resolve(split_dir, row)), size[1], size[0]) for row in progress(chosen, desc="calibration")]
    return np.stack(images), [str(row.get("id", index)) for index, row in enumerate(chosen)]


def write_calibration_set(split_dir: Path, output: Path, count: int, size: "InputSize | int", seed: int = 0) -> CalibrationInfo:
    """Write `count` seeded train images of `split_dir` to `output` (see the module doc)."""
    size = as_input_size(size)
    samples, ids = draw_train_samples(Path(split_dir), count, size, seed)
    output.mkdir(parents=True, exist_ok=True)
    np.save(output / SAMPLES_FILE, samples)
    info = CalibrationInfo(split_dir=str(split_dir), size=list(size), seed=seed, count=len(ids), ids=ids)
    (output / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def load_calibration(source: Path, size: "InputSize | int", count: int = 64, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 calibration samples from `source`, resized to (height, width) `size` where needed.

    `source` is a folder written by `write_calibration_set` (samples.npy), a split folder
    (train.jsonl: `count` images are drawn with `seed`) or a plain folder of images.
    """
    source, size = Path(source), as_input_size(size)
    if not source.is_dir():
        raise CalibrationError(
            f"calibration set {source} is not a folder; give a split folder or `trainer calibration-set` output"
        )
    if (source / SAMPLES_FILE).is_file():
        try:
            samples = np.load(source / SAMPLES_FILE, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise CalibrationError(
                f"{source / SAMPLES_FILE} is unreadable ({error}); write it again with `trainer calibration-set`"
            ) from error
        if samples.ndim != 4 or samples.shape[-1] != 3 or samples.dtype != np.uint8:
            raise CalibrationError(
                f"{source / SAMPLES_FILE} holds {samples.dtype} {samples.shape}, not (N, H, W, 3) uint8 images"
            )
        images = list(samples)
    elif (source / "train.jsonl").is_file():
        return draw_train_samples(source, count, size, seed)[0]
    else:
        files = sorted(path for path in source.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        images = [read_rgb(path) for path in files]
    if not images:
        raise CalibrationError(
            f"calibration set {source} is empty: no samples.npy, train.jsonl or images; "
            "write one with `trainer calibration-set --split-dir SPLIT --output DIR`"
        )
    return np.stack([resize_image(image, size[1], size[0]) for image in images])  # the same array when already at size


def with_second_frame_priors(model: nn.Module, samples: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 samples -> (N, H, W, 4) float32 0..255 for a prior student's calibration.

    The fourth channel is the fp32 model's own output on the sample with an empty prior, x 255:
    what the runtime feeds it on the second frame of a still scene, so the quantizer sees priors
    of the range and shape deployment gives (soft edges, values across 0..255). The truth is not
    used: a `trainer calibration-set` holds images only, and a perfect 0/1 prior would leave the
    in-between values uncalibrated.
    """
    from trainer.export.graph import build_inference_graph

    graph = build_inference_graph(model)
    first_frames = np.concatenate([samples, np.zeros((*samples.shape[:3], 1), np.uint8)], axis=-1).astype(np.float32)
    with torch.no_grad():
        outputs = np.concatenate([graph(torch.from_numpy(sample[None])).numpy() for sample in first_frames])  # (N, H, W)
    first_frames[..., 3] = outputs * 255.0
    return first_frames

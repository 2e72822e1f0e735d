"""What `trainer evaluate` writes: DVC metrics and plots, the overlay grid and the markdown leaderboard.

    <output>/metrics.json                 {model: {backend: {iou, miou, ..., latency_ms, ...}}} (DVC metrics),
                                          and for clips "video_clips": {model: {backend: {variant: {iou, dtssd, ...}}}}
    <output>/plots/latency_vs_iou.json    one point per model x backend (DVC plots, scatter)
    <output>/overlays.png                 rows = images; columns = input, truth, each prediction
    <output>/leaderboard.md               best IoU first, latency and its ratio to the reference
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from portraitseg.resize import format_input_size
from trainer.evaluate import EvaluationResult, speed_line

METRIC_KEYS = (
    "iou", "pooled_iou", "miou", "boundary_f", "pixel_accuracy", "alpha_mae", "latency_ms", "latency_p90_ms", "latency_ratio",
    "params", "macs", "file_mb",
)  # fmt: skip  (the input size goes in as input_height and input_width)
VIDEO_KEYS = ("iou", "pooled_iou", "boundary_f", "dtssd", "flip_rate", "frames", "clips")
PLOTS_FILE = Path("plots") / "latency_vs_iou.json"
CELL_WIDTH = 160  # px of one overlay column
HEADER_HEIGHT = 40
# Overlay colours (RGB): agreement with the truth in green, extra person in red, missed person in blue.
TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = (40, 200, 40), (230, 40, 40), (40, 90, 240)

COLUMNS = (
    ("Model", "model", "{}"),
    ("Backend", "backend", "{}"),
    ("Input", "input_size", "{}"),
    ("IoU", "iou", "{:.4f}"),
    ("Pooled IoU", "pooled_iou", "{:.4f}"),
    ("mIoU", "miou", "{:.4f}"),
    ("Boundary F", "boundary_f", "{:.4f}"),
    ("Pixel acc.", "pixel_accuracy", "{:.4f}"),
    ("Alpha MAE", "alpha_mae", "{:.4f}"),
    ("Latency ms (median)", "latency_ms", "{:.2f}"),
    ("p90 ms", "latency_p90_ms", "{:.2f}"),
    ("x reference", "latency_ratio", "{:.2f}"),
    ("Params (M)", "params", "{:.3f}"),
    ("MMACs", "macs", "{:.1f}"),
    ("File (MB)", "file_mb", "{:.2f}"),
)


def write_reports(result: EvaluationResult, output: Path) -> dict[str, Path]:
    """Write every report file into `output`; returns their paths by kind."""
    output = Path(output)
    (output / PLOTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": output / "metrics.json",
        "plots": output / PLOTS_FILE,
        "overlays": output / "overlays.png",
        "leaderboard": output / "leaderboard.md",
    }
    paths["metrics"].write_text(json.dumps(metrics_tree(result), indent=2) + "\n", encoding="utf-8")
    paths["plots"].write_text(json.dumps(plot_points(result), indent=2) + "\n", encoding="utf-8")
    grid = overlay_grid(result)
    if not cv2.imwrite(str(paths["overlays"]), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {paths['overlays']}")
    paths["leaderboard"].write_text(render_leaderboard(result), encoding="utf-8")
    return paths


def metrics_tree(result: EvaluationResult) -> dict[str, Any]:
    """model -> backend -> numbers (no strings: `dvc metrics diff` compares numbers), plus the speed target."""
    tree: dict[str, Any] = {}
    for row in result.rows:
        numbers = {key: row[key] for key in METRIC_KEYS if row.get(key) is not None}
        if row.get("input_size"):
            numbers["input_height"], numbers["input_width"] = row["input_size"]
        tree.setdefault(row["model"], {})[row["backend"]] = numbers
    for row in result.video:
        numbers = {key: row[key] for key in VIDEO_KEYS if row.get(key) is not None}
        tree.setdefault("video_clips", {}).setdefault(row["model"], {}).setdefault(row["backend"], {})[row["variant"]] = numbers
    if result.speed is not None:
        tree["speed_target"] = {
            key: result.speed[key]
            for key in ("latency_ratio", "student_latency_ms", "reference_latency_ms", "student_iou", "reference_iou")
        }
    return tree


def plot_points(result: EvaluationResult) -> list[dict[str, Any]]:
    return [
        {"artefact": f"{row['model']}/{row['backend']}", "latency_ms": row["latency_ms"], "iou": row["iou"]}
        for row in result.rows
    ]


def format_cell(row: dict[str, Any], key: str, template: str) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
    if key in ("params", "macs"):
        value = value / 1e6
    elif key == "input_size":
        value = format_input_size(value)
    return template.format(value)


def render_leaderboard(result: EvaluationResult) -> str:
    reference = next((row for row in result.rows if row["reference"]), None)
    lines = [
        "# Evaluation leaderboard",
        "",
        f"`trainer evaluate` on the {result.images} images of the `{result.set_name}` split, best person IoU first. "
        "Quality at ground-truth resolution (probabilities resized bilinearly to the mask, threshold 0.5); "
        f"latency is batch-1 on the CPU with {result.threads} threads (median and p90)"
        + (f", \"x reference\" its ratio to `{reference['model']}`." if reference else "."),
        "",
        "| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" if key in ("model", "backend") else "---:" for _, key, _ in COLUMNS) + "|",
    ]
    for row in result.rows:
        cells = [format_cell(row, key, template) for _, key, template in COLUMNS]
        if row["reference"]:
            cells[0] = f"**{cells[0]}** (reference)"
        elif row.get("teacher"):
            cells[0] = f"{cells[0]} (teacher)"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "What each latency covers:", ""]
    for row in result.rows:
        lines.append(f"- `{row['model']}/{row['backend']}` ({row['path']}): {row['timing']}")
    if result.not_verified:
        lines += ["", "Not evaluated:", ""] + [f"- {line}" for line in result.not_verified]
    if result.speed is not None:
        lines += ["", speed_line(result.speed, result.images)]
    if result.video:
        lines += ["", *video_table(result)]
    return "\n".join(lines) + "\n"


def video_table(result: EvaluationResult) -> list[str]:
    """The clips' table: per-frame quality and temporal instability, steadiest first."""
    lines = [
        "## Video clips",
        "",
        f"{result.clips} clips, {result.frames} frames, each clip frame by frame in order. dtSSD is RobustVideoMatting's "
        "temporal instability (mean over frame pairs of sqrt(mean(((P_t - P_t-1) - (G_t - G_t-1))^2)); RVM prints it x100); "
        "flip rate is the share of pixels whose prediction crosses 0.5 where the truth stays on one side. "
        f"\"smoothed\" is `trainer predict --smooth {result.smooth:g}`; a prior student (`model_options.prior`) "
        "is fed its own previous output.",
        "",
        "| Model | Backend | Frames | IoU | Pooled IoU | Boundary F | dtSSD x100 | Flip rate % |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result.video:
        name = f"**{row['model']}** (reference)" if row["reference"] else row["model"] + (" (teacher)" if row["teacher"] else "")
        name += " (prior)" if row["prior"] else ""
        dtssd, flips = row.get("dtssd"), row.get("flip_rate")
        cells = [
            name, row["backend"], row["variant"], f"{row['iou']:.4f}", f"{row['pooled_iou']:.4f}",
            format_cell(row, "boundary_f", "{:.4f}"),
            "n/a" if dtssd is None else f"{100 * dtssd:.3f}", "n/a" if flips is None else f"{100 * flips:.3f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------------------------------
# Overlay grid


def overlay_grid(result: EvaluationResult) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a header row of names, then one row per kept image."""
    # Students in leaderboard order, the reference last, as the grid reads.
    ordered = [row for row in result.rows if not row["reference"]] + [row for row in result.rows if row["reference"]]
    names = [f"{row['model']}/{row['backend']}" for row in ordered]
    titles = ["input", "truth", *names]
    rows = [header_row(titles)]
    for index, (image, mask) in enumerate(zip(result.overlay["images"], result.overlay["masks"], strict=True)):
        height = max(1, round(CELL_WIDTH * image.shape[0] / image.shape[1]))
        truth = mask >= 128
        cells = [fit(image, height), fit(tint(image, truth, truth), height)]
        for name in names:
            predicted = result.overlay["predictions"][name][index] > 0.5
            cells.append(fit(tint(image, predicted, truth), height))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def fit(image: np.ndarray, height: int) -> np.ndarray:
    return cv2.resize(image, (CELL_WIDTH, height), interpolation=cv2.INTER_AREA)


def tint(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The photo dimmed, with true positives green, false positives red and false negatives blue."""
    out = (image.astype(np.float32) * 0.45).astype(np.uint8)
    for selection, colour in (
        (predicted & truth, TRUE_POSITIVE),
        (predicted & ~truth, FALSE_POSITIVE),
        (~predicted & truth, FALSE_NEGATIVE),
    ):
        out[selection] = (0.5 * image[selection] + 0.5 * np.array(colour)).astype(np.uint8)
    return out


def header_row(titles: list[str]) -> np.ndarray:
    """White cells with each column's title, split at '/' over two lines."""
    header = np.full((HEADER_HEIGHT, CELL_WIDTH * len(titles), 3), 255, np.uint8)
    for column, title in enumerate(titles):
        first, _, second = title.partition("/")
        for line, text in enumerate((first, second)):
            cv2.putText(
                header, text[:26], (column * CELL_WIDTH + 4, 15 + 16 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA,
            )  # fmt: skip
    return header

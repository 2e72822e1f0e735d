"""`trainer runs`: a markdown table of every training run, best validation IoU first.

Not a leaderboard of artefacts: that is `trainer evaluate` (test-set quality and latency of every
exported model beside the reference); this lists the validation metrics `trainer train` recorded.

Reads the `metrics.json` that `trainer.train.fit` writes into each `<models_dir>/<name>/`; a
folder without one (a run still going, or killed before its first epoch) is not a result.
"""

import json
from pathlib import Path
from typing import Any

from portraitseg.resize import as_input_size, format_input_size
from trainer.checkpoint import METRICS_FILE

COLUMNS = (
    ("Model", "model", "{}"),
    ("Val IoU", "val_iou", "{:.4f}"),
    ("Pooled IoU", "val_pooled_iou", "{:.4f}"),
    ("Val Dice", "val_dice", "{:.4f}"),
    ("Boundary F", "val_boundary_f", "{:.4f}"),
    ("Params (M)", "params", "{:.3f}"),
    ("Size (MB, fp32)", "size_mb", "{:.2f}"),
    ("Input", "input_size", "{}"),
    ("Best epoch", "best_epoch", "{}"),
    ("Epochs", "epochs", "{}"),
)


class RunsError(ValueError):
    """A metrics.json that `trainer train` did not write (damaged or edited); names the file."""


def collect_results(models_dir: Path) -> list[dict[str, Any]]:
    """One metrics dict per `<models_dir>/<name>/metrics.json`, best val IoU first."""
    results = []
    for path in sorted(Path(models_dir).glob(f"*/{METRICS_FILE}")):
        fix = "train that model again or delete its folder"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:  # not UTF-8, or not JSON
            raise RunsError(f"{path} is not a JSON file ({error}); {fix}") from error
        if not isinstance(metrics, dict) or not isinstance(metrics.get("val_iou"), (int, float)):
            raise RunsError(f"{path} has no numeric val_iou, so `trainer train` did not write it; {fix}")
        results.append({**metrics, "folder": path.parent.name})
    return sorted(results, key=lambda result: -result["val_iou"])


def render_runs(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Training runs",
        "",
        "Validation metrics at each run's best epoch (`trainer train`), best IoU first. IoU and Dice are "
        "means over photos; pooled IoU is over the pooled pixels of all photos.",
        "",
        "| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" if key == "model" else "---:" for _, key, _ in COLUMNS) + "|",
    ]
    for result in results:
        cells = []
        for _, key, template in COLUMNS:
            value = result.get(key)
            if key == "params" and value is not None:
                value = value / 1e6
            elif key == "input_size" and value is not None:
                value = format_input_size(as_input_size(value))  # train.size: S or [H, W]
            cells.append("n/a" if value is None else template.format(value))
        if result["folder"] != result.get("model"):
            cells[0] += f" (`{result['folder']}/`)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_runs(models_dir: Path, output: Path) -> list[dict[str, Any]]:
    results = collect_results(models_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_runs(results), encoding="utf-8")
    return results

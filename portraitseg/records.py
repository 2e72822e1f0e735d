"""The sample record every stage passes on, and the split rows the model side reads.

A canonical set's `manifest.jsonl` holds one `Sample` per line; `datatool split` writes the
same rows into `train.jsonl`, `val.jsonl` and `test.jsonl` with `split` and `set` (the input
set's folder, relative to the split folder) added. Unknown fields are carried through untouched,
so a row stays a plain dict; `Sample` names the fields with their types.
"""

import json
import re
from pathlib import Path
from typing import Any, NotRequired, TypedDict

REQUIRED_FIELDS = ("id", "image", "mask", "source", "width", "height", "mask_kind", "group")
FILE_FIELDS = ("image", "mask", "teacher_mask", "edge")  # the fields that name a sample's files in the set
MASK_KINDS = ("binary", "alpha", "soft")
SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # what `make_id` gives; never a path or a dot-file
SPLIT_ROW_FIELDS = ("id", "set", "image", "mask")  # what every reader of a split row needs (`resolve`)


class Sample(TypedDict):
    """A manifest row: the contract (`validate_row`) and the common optional fields."""

    id: str  # file-name safe, stable across runs (`datatool.canonical.make_id`)
    image: str  # path relative to the set: images/<id>.jpg|png
    mask: str  # masks/<id>.png, uint8, 255 = person
    source: str
    width: int
    height: int
    mask_kind: str  # one of MASK_KINDS
    group: str  # what must stay in one split
    official_split: NotRequired[str | None]
    teacher_mask: NotRequired[str]  # pseudolabel over a canonical set
    edge: NotRequired[str]  # datatool boundary
    split: NotRequired[str]  # split rows: train, val or test
    set: NotRequired[str]  # split rows: the set's folder relative to the split folder
    clip: NotRequired[str]  # video sets: the clip's id (file-name safe); its frames share it
    frame: NotRequired[int]  # video sets: the frame's 0-based index in its clip
    fps: NotRequired[float]  # video sets: the clip's frames per second


def validate_row(row: dict[str, Any]) -> None:
    """Raise `ValueError` when a manifest row breaks the contract of `Sample`."""
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        raise ValueError(f"manifest row {row.get('id', '?')} lacks {', '.join(missing)}")
    if not isinstance(row["id"], str) or not SAFE_ID.fullmatch(row["id"]):
        # Ids name the files later stages write: "../x" or "a/b" would write outside the set.
        raise ValueError(f"manifest row id {row['id']!r} is not a file-name-safe id (letters, digits, . _ -)")
    for name in ("image", "mask"):
        value = row[name]
        if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"manifest row {row['id']}: {name} {value!r} is not a path inside the set")
    if row["mask_kind"] not in MASK_KINDS:
        raise ValueError(f"manifest row {row['id']}: mask_kind {row['mask_kind']!r} not in {MASK_KINDS}")


# -- split rows ----------------------------------------------------------------------------------


class SplitError(ValueError):
    """A split manifest that is not JSON lines of rows, or has no row to use; names the file (and line)."""


def resolve(split_dir: Path, row: dict[str, Any], field: str = "image") -> Path:
    """The file a split row names in `field` (image, mask, edge, ...)."""
    return Path(split_dir) / row["set"] / row[field]


def read_split(split_dir: Path, split: str) -> list[dict[str, Any]]:
    """The rows of `<split_dir>/<split>.jsonl`.

    A missing manifest is a `FileNotFoundError`; one that is not UTF-8 JSON lines of rows with the
    `SPLIT_ROW_FIELDS`, or has no row, is a `SplitError` naming the file (and line).
    """
    path = Path(split_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no split manifest {path} (run `datatool split` or `dvc repro split`)")
    rows = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    rows.append(parse_split_row(line, f"{path}:{number}"))
    except UnicodeDecodeError as error:
        raise SplitError(f"{path} is not UTF-8 text ({error.reason}); write it again with `datatool split`") from error
    if not rows:
        raise SplitError(f"split manifest {path} has no rows: nothing to train or evaluate on")
    return rows


def parse_split_row(line: str, where: str) -> dict[str, Any]:
    """One manifest line as a row with the `SPLIT_ROW_FIELDS` as strings; `where` (file:line) names it in errors."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise SplitError(f"{where}: not a JSON row ({error.msg}); fix the line or re-run `datatool split`") from error
    if not isinstance(row, dict):
        raise SplitError(f"{where}: a row must be a JSON object, got {type(row).__name__}; re-run `datatool split`")
    missing = [field for field in SPLIT_ROW_FIELDS if not isinstance(row.get(field), str)]
    if missing:
        raise SplitError(f"{where}: row lacks {', '.join(missing)} (or they are not strings); re-run `datatool split`")
    return row

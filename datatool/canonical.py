"""The canonical set: the directory layout and manifest every stage reads and writes.

A canonical set is a directory with `images/<id>.<jpg|png>` (RGB, orientation applied),
`masks/<id>.png` (uint8, one channel, 255 = person, soft values kept for mattes),
`manifest.jsonl` (one JSON object per sample) and `report.json`. Manifest paths are relative
to the set, so a set can be moved or cached by DVC as a whole.
"""

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
REPORT = "report.json"
IMAGES = "images"
MASKS = "masks"
REQUIRED_FIELDS = ("id", "image", "mask", "source", "width", "height", "mask_kind", "group")
MASK_KINDS = ("binary", "alpha", "soft")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def make_id(name: str, key: str) -> str:
    """A stable, file-name-safe sample id: readable stem + hash of the set name and source path.

    Derived from the path, never from an enumeration, so re-running a stage on the same input
    gives the same ids (idempotent outputs, valid DVC caches) and two sets with the same
    relative paths do not collide when they are merged later.
    """
    stem = _UNSAFE.sub("_", Path(key).stem).strip("._-")[:48] or "sample"
    digest = hashlib.sha1(f"{name}/{key}".encode()).hexdigest()[:10]
    return f"{stem}-{digest}"


def read_manifest(set_dir: Path) -> Iterator[dict[str, Any]]:
    """Stream the samples of a canonical set, one dict per line."""
    path = Path(set_dir) / MANIFEST
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error


def write_manifest(set_dir: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write `manifest.jsonl` atomically (a crash never leaves half a manifest); return the row count."""
    path = Path(set_dir) / MANIFEST
    temporary = path.with_name(f".{MANIFEST}.tmp")
    count = 0
    with temporary.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(temporary, path)
    return count


def validate_row(row: dict[str, Any]) -> None:
    """Raise `ValueError` when a manifest row misses a field of the contract."""
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        raise ValueError(f"manifest row {row.get('id', '?')} lacks {', '.join(missing)}")
    if row["mask_kind"] not in MASK_KINDS:
        raise ValueError(f"manifest row {row['id']}: mask_kind {row['mask_kind']!r} not in {MASK_KINDS}")

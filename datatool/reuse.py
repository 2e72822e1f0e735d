"""Re-use between runs: a stage redoes only the inputs whose files or options changed.

Each stage that writes a dataset keeps a hidden state file in its output: a header line with the
state's format and the run's *signature* (a hash of everything besides the input files that
decides the output: options, names, engine version), then one JSON line per work item with the
fingerprint of its input files (path, size, mtime) and what the item became. A later run with the same
signature reuses every sample whose fingerprint and output files are unchanged, without
decoding anything.
"""

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FORMAT = 2  # 2: an outcome has rows, skips and files (1 had one row or one skip)


@dataclass
class Outcome:
    """What one work item became: its manifest rows (usually one; several composites of one
    person; none for a background library), the skips with their reasons, the output files it
    owns, and report notes and counts.

    This is what the state file stores per item, so a re-run restores it without decoding.
    """

    sample_id: str
    inputs: list | None  # [[path relative to the input root, size, mtime_ns], ...]; None when a file is missing
    rows: list[dict[str, Any]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)  # {"file": ..., "reason": ..., and any details for the report}
    files: list[str] = field(default_factory=list)  # output files written or linked for it (set by the engine)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def signature(**described: Any) -> str:
    """A stable hash of what, besides the input files, decides a stage's output."""
    return hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(paths: Iterable[Path], root: Path) -> list | None:
    """[[path relative to root, size, mtime_ns], ...] of the input files; None when one is missing."""
    entries = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        entries.append([relative_to(path, root), stat.st_size, stat.st_mtime_ns])
    return entries


def row_fingerprint(paths: Iterable[Path], root: Path, row: dict[str, Any]) -> list | None:
    """`file_fingerprint` of a canonical row's files plus a hash of the row: a changed field (a
    new column, a re-labelled mask kind) reaches the output too."""
    entries = file_fingerprint(paths, root)
    if entries is not None:
        entries.append(hashlib.sha1(json.dumps(row, sort_keys=True).encode()).hexdigest())
    return entries


def load_state(path: Path, run_signature: str) -> dict[str, dict[str, Any]]:
    """The previous run's entries by `sample_id`, if that run had the same signature."""
    if not path.is_file():
        return {}
    with path.open() as lines:
        try:
            header = json.loads(next(lines, "{}"))
            if header.get("signature") != run_signature or header.get("format") != STATE_FORMAT:
                return {}
            entries = (json.loads(line) for line in lines if line.strip())
            return {entry["sample_id"]: entry for entry in entries}
        except (json.JSONDecodeError, KeyError):
            return {}  # a damaged state file only costs a full re-run


class StateWriter:
    """Streams the new state in place of the old one, one flushed line per finished sample.

    The previous state is read (`load_state`) before this starts. An interrupted run leaves a
    state of exactly the samples it finished, whose files are on disk, so the next run with the
    same signature reuses them and does the rest; the old state is gone, so nothing a killed run
    with other options replaced can be reused by mistake.
    """

    def __init__(self, path: Path, run_signature: str):
        self.path = path
        self.signature = run_signature

    def __enter__(self) -> "StateWriter":
        self.file = self.path.open("w")
        self.write({"format": STATE_FORMAT, "signature": self.signature})
        return self

    def write(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()  # on disk even when the process is killed

    def __exit__(self, error_type, error, traceback) -> None:
        self.file.close()


def relative_to(path: Path, root: Path) -> str:
    """`path` relative to `root` (posix) when inside it, else as it is."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)

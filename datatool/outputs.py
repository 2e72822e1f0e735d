"""A stage's output folder: checked before anything is written, and cleaned up only where the stage wrote.

Every stage that writes a dataset goes through `OutputFolder`, so three promises hold for all:

- **The user's data is never the output.** An output equal to an input, or holding one, is
  refused before anything is written (a stage's clean-up would otherwise delete the input), as
  is an output inside an input folder, which the next run would read back as input; only
  `pseudolabel` accepts one inside its photo folder, because it leaves it out of the scan. An
  output that is a file is refused too.
- **Clean-up only touches the stage's own files.** The folder keeps a ledger (`LEDGER`) of every
  file the stage may have written, claimed *before* writing it, so even a killed run knows
  them. At the end, files that were claimed but are no longer produced are removed and the
  ledger becomes exactly the produced files; anything else in the folder is never touched.
- **An interrupted run never leaves a manifest that disagrees with its files.** The old
  `manifest.jsonl` is removed before the first file is replaced and the new one is written
  (atomically) only at the end, so at any moment the folder holds either the old consistent set
  or a set without a manifest, which the next run completes.
"""

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from datatool.canonical import MANIFEST
from portraitseg.records import FILE_FIELDS

LEDGER = ".portraitseg-files.jsonl"


class OutputError(ValueError):
    """The output folder cannot be used (it is an input, holds one, lies in one, or is a file)."""


def check_output(output: Path | str, inputs: Sequence[Path | str], *, allow_inside: bool = False) -> Path:
    """The resolved output folder; raise `OutputError` when writing there could touch an input."""
    given = Path(output).expanduser()
    if given.exists() and not given.is_dir():
        raise OutputError(f"--output {given} is a file; name a folder (it is created when missing)")
    resolved = given.resolve()
    for input_path in inputs:
        source = Path(input_path).expanduser().resolve()
        if resolved == source:
            raise OutputError(
                f"--output {given} is the input {input_path}: writing there would replace and clean up the files "
                "being read. Name a new folder, e.g. data/interim/<name>"
            )
        if source.is_relative_to(resolved):
            raise OutputError(
                f"--output {given} contains the input {input_path}: the stage's clean-up could remove input files. "
                "Name a folder outside the input"
            )
        if resolved.is_relative_to(source) and not allow_inside:
            raise OutputError(
                f"--output {given} lies inside the input {input_path}: the next run would read the output as input. "
                "Name a folder outside the input"
            )
    return resolved


class OutputFolder:
    """Where one stage writes: `begin()` before the first file, `claim()` each file before writing
    it, `finish()` after the manifest (see the module doc)."""

    def __init__(self, output: Path | str, inputs: Sequence[Path | str], *, allow_inside: bool = False):
        self.path = check_output(output, inputs, allow_inside=allow_inside)
        self.ledger = self.path / LEDGER
        self.owned: set[str] = set()
        self._ledger_file = None

    def begin(self, folders: Iterable[str] = (), claims: Iterable[str] = ()) -> None:
        """Create the folder and `folders` in it, take over the old run's files, invalidate the old manifest."""
        for folder in [".", *folders]:
            (self.path / folder).mkdir(parents=True, exist_ok=True)
        self.owned = read_ledger(self.ledger) if self.ledger.is_file() else files_of_manifest(self.path)
        (self.path / MANIFEST).unlink(missing_ok=True)
        write_lines(self.ledger, sorted(self.owned))
        self._ledger_file = self.ledger.open("a")
        self.claim(claims)

    def claim(self, relative_paths: Iterable[str]) -> None:
        """Record files that are about to be written (before writing them: a killed run still knows them)."""
        new = [path for path in relative_paths if path not in self.owned]
        if not new:
            return
        self.owned.update(new)
        self._ledger_file.write("".join(json.dumps(path) + "\n" for path in new))
        self._ledger_file.flush()  # survives the process being killed

    def finish(self, produced: Iterable[str]) -> int:
        """Remove the files the stage wrote earlier and no longer produces; return how many were removed."""
        produced = set(produced)
        removed = 0
        for relative in sorted(self.owned - produced):
            if not is_inside(relative):
                continue  # a damaged ledger never points the clean-up outside the folder
            path = self.path / relative
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed += 1
        if self._ledger_file is not None:
            self._ledger_file.close()
        write_lines(self.ledger, sorted(produced))
        self.owned = produced
        return removed


def read_ledger(path: Path) -> set[str]:
    owned = set()
    with path.open() as lines:
        for line in lines:
            try:
                owned.add(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash; the file it named was not written yet
    return owned


def files_of_manifest(set_dir: Path) -> set[str]:
    """The files a manifest written before ledgers existed names (they are the stage's own)."""
    owned: set[str] = set()
    try:
        with (set_dir / MANIFEST).open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    owned.update(row[name] for name in FILE_FIELDS if isinstance(row.get(name), str) and is_inside(row[name]))
    except OSError:
        pass
    return owned


def is_inside(relative: str) -> bool:
    """A relative path that stays inside its folder (a manifest may not point the clean-up elsewhere)."""
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts


def write_lines(path: Path, paths: list[str]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(relative) + "\n" for relative in paths))
    os.replace(temporary, path)

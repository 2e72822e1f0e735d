"""The run report every stage writes: counts and every skipped, repaired or ignored input with its reason."""

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any


def printable(name: str) -> str:
    """A file name safe to print and to write as UTF-8 JSON, e.g. `bad\\xff.jpg`, `two\\nlines.jpg`.

    Python keeps the bytes of a name that is not UTF-8 as lone surrogates, which UTF-8 output
    (a terminal, `json.dumps(ensure_ascii=False)`) refuses: they are shown as `\\xNN` escapes
    of the original bytes, and control characters (a newline in a name) as `\\n`-style escapes.
    """
    if name.isprintable():
        return name
    name = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in name)


class Report:
    """Collects what a stage did to each input so nothing is dropped or changed silently.

    Three lists, each entry ``{"file": <path relative to the input root>, "reason": str}``:
    - ``skipped``: an input that did not become a sample (corrupt image, orphan mask, ...);
    - ``repaired``: a sample that was kept after a change (mask resized, EXIF applied, ...);
    - ``ignored``: a file that is not a sample at all (macOS junk, a second copy, ...).
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else None
        self.skipped: list[dict[str, Any]] = []
        self.repaired: list[dict[str, Any]] = []
        self.ignored: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.started = time.perf_counter()

    def relative(self, file: Path | str) -> str:
        """A path as the user knows it: relative to the input root when it lies inside it (`printable`)."""
        path = Path(file)
        if self.root is not None and path.is_absolute():
            try:
                return printable(path.relative_to(self.root).as_posix())
            except ValueError:
                pass
        return printable(path.as_posix())

    def skip(self, file: Path | str, reason: str, **extra: Any) -> None:
        self.skipped.append({"file": self.relative(file), "reason": reason, **extra})

    def repair(self, file: Path | str, reason: str, **extra: Any) -> None:
        self.repaired.append({"file": self.relative(file), "reason": reason, **extra})

    def ignore(self, file: Path | str, reason: str, **extra: Any) -> None:
        self.ignored.append({"file": self.relative(file), "reason": reason, **extra})

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @staticmethod
    def reason_counts(entries: list[dict[str, Any]]) -> Counter[str]:
        """How many entries share each reason, with file-specific details cut off after ':'."""
        return Counter(entry["reason"].split(":")[0] for entry in entries)

    def to_dict(self, **header: Any) -> dict[str, Any]:
        return {
            **header,
            "counts": dict(sorted(self.counts.items())),
            "seconds": round(self.seconds, 3),
            "skipped_reasons": dict(self.reason_counts(self.skipped).most_common()),
            "repaired_reasons": dict(self.reason_counts(self.repaired).most_common()),
            "ignored_reasons": dict(self.reason_counts(self.ignored).most_common()),
            "skipped": self.skipped,
            "repaired": self.repaired,
            "ignored": self.ignored,
        }

    def write(self, path: Path, **header: Any) -> dict[str, Any]:
        """Write `report.json` and return what was written."""
        summary = self.to_dict(**header)
        path.write_text(json.dumps(summary, indent=2) + "\n")
        return summary

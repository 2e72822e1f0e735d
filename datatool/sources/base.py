"""The interface every source adapter implements, and the helpers they share.

A source adapter knows one dataset's layout on disk. It does two things:
- ``scan(report)``: walk the input cheaply (no decoding), pair images with masks by an
  explicit mapping, and return one `Record` per candidate sample. Junk files, orphans and
  duplicate copies go into the report; an input that is not this dataset at all raises
  `LayoutError` naming the expected layout.
- ``read_mask(record)``: decode the record's mask in the dataset's own encoding and return it
  normalised (uint8, 255 = person) with the original encoding. Runs in worker processes, so
  adapters hold only small, picklable state (paths and options).
Everything else (image decoding, EXIF, size checks, writing, caching, parallelism) is the
ingest engine's job, the same for every source.
"""

import errno
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from datatool.images import file_type
from datatool.masks import Mask, decode_mask_file
from datatool.report import Report


class LayoutError(Exception):
    """The input is not this source at all (missing, empty or another layout); says what was expected."""


@dataclass(frozen=True)
class Record:
    """One candidate sample found by a scan: where its files are; nothing decoded yet."""

    key: str  # the image's path relative to the input root (posix); the sample id derives from it
    image: Path  # absolute path of the image file
    mask: Path  # absolute path of the file the mask is decoded from (.png, .mat, .json, ...)
    group: str  # what must stay in one split, unique within the source (e.g. a photo series)
    official_split: str | None = None  # the dataset's own split ("train", "val", "test"), if any
    extra: Mapping[str, Any] = field(default_factory=dict)  # source-specific manifest fields


class Source(ABC):
    """A dataset layout on disk. Subclasses set `name` and `layout` and implement `scan`."""

    name: ClassVar[str]  # the SOURCE argument of `datatool ingest`
    layout: ClassVar[str]  # the expected layout, shown when the input does not match

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()

    @abstractmethod
    def scan(self, report: Report) -> list[Record]:
        """Find every candidate sample, sorted by key; report junk, orphans and duplicates."""

    def read_mask(self, record: Record) -> Mask:
        """Decode `record.mask`; the default detects the encoding from the file's values."""
        return decode_mask_file(record.mask)

    def inputs(self, record: Record) -> tuple[Path, ...]:
        """The files whose size and mtime decide whether a previous run's output can be reused."""
        return (record.image, record.mask)

    def options(self) -> dict[str, Any]:
        """Options that change the output; part of the re-use signature (override when there are some)."""
        return {}

    # -- helpers for subclasses -------------------------------------------------------------

    def require_root(self) -> None:
        """Raise `LayoutError` when the input directory is missing or empty."""
        if not self.root.exists():
            raise LayoutError(f"input directory {self.root} does not exist. Expected {self.name} layout:\n{self.layout}")
        if not self.root.is_dir():
            raise LayoutError(f"input {self.root} is not a directory. Expected {self.name} layout:\n{self.layout}")
        with os.scandir(self.root) as entries:
            empty = all(is_junk(entry.name) for entry in entries)
        if empty:
            raise LayoutError(f"input directory {self.root} is empty. Expected {self.name} layout:\n{self.layout}")

    def layout_error(self, problem: str) -> LayoutError:
        return LayoutError(f"{self.root} does not look like {self.name}: {problem}. Expected layout:\n{self.layout}")


def is_junk(name: str) -> bool:
    """macOS AppleDouble (`._x`), `.DS_Store`, Windows `Thumbs.db`/`desktop.ini` and other dot-files."""
    return name.startswith(".") or name in {"Thumbs.db", "desktop.ini", "__MACOSX"}


def walk_files(directory: Path, report: Report, suffixes: frozenset[str] | None = None) -> Iterator[Path]:
    """Every regular file under `directory` (recursive, sorted), minus junk, which is reported.

    Files with a suffix outside `suffixes` are reported as ignored too: nothing a user put in
    the folder disappears without a line in the report. Nothing is opened here, and what cannot
    be a sample is reported and passed over: FIFOs, sockets and devices (reading one blocks
    forever), broken symbolic links, link loops and unreadable folders. Folders reached through
    a symbolic link are walked after the real tree and each folder only once (by device and
    inode): a link back to an ancestor ends, and a folder reachable both ways keeps its real path.
    """
    scanned: dict[tuple[int, int], Path] = {}
    linked = [Path(directory)]
    while linked:
        yield from walk_folder(linked.pop(0), report, suffixes, scanned, linked)


def walk_folder(
    folder: Path, report: Report, suffixes: frozenset[str] | None, scanned: dict[tuple[int, int], Path], linked: list[Path]
) -> Iterator[Path]:
    """`walk_files` for one folder and the real folders below it; linked folders are appended to `linked`."""
    try:
        info = os.stat(folder)
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:
        report.skip(folder, f"unreadable folder: {error.strerror or error}")
        report.counts["unreadable_folders"] += 1
        return
    identity = (info.st_dev, info.st_ino)
    if identity in scanned:
        report.ignore(folder, f"symbolic link to a folder already scanned: {report.relative(scanned[identity])}")
        report.counts["ignored_repeated_folders"] += 1
        return
    scanned[identity] = folder
    for entry in entries:
        path = Path(entry.path)
        if is_junk(entry.name):
            report.ignore(path, "junk file (macOS/Windows metadata or hidden file)")
            report.counts["ignored_junk"] += 1
            continue
        try:
            info = entry.stat()  # follows symbolic links; never opens the file
        except OSError as error:
            report.skip(path, unusable_entry(entry, error))
            report.counts["unusable_links"] += 1
            continue
        if stat.S_ISDIR(info.st_mode):
            if entry.is_symlink():
                linked.append(path)
            else:
                yield from walk_folder(path, report, suffixes, scanned, linked)
        elif not stat.S_ISREG(info.st_mode):
            report.ignore(path, f"not a regular file ({file_type(info.st_mode)})")
            report.counts["ignored_special_files"] += 1
        elif suffixes is not None and path.suffix.lower() not in suffixes:
            report.ignore(path, f"not an image/mask file ({path.suffix or 'no extension'})")
            report.counts["ignored_other"] += 1
        else:
            yield path


def unusable_entry(entry: os.DirEntry, error: OSError) -> str:
    """Why a folder entry (almost always a symbolic link) could not even be looked at."""
    if entry.is_symlink() and error.errno == errno.ELOOP:
        return "symbolic link loop"
    if entry.is_symlink() and error.errno == errno.ENOENT:
        return "broken symbolic link"
    return f"unreadable: {error.strerror or error}"


def index_by_stem(files: Iterable[Path], report: Report, what: str, stem: Callable[[Path], str] = lambda path: path.stem) -> dict[str, Path]:
    """Map stem -> file; a second file with the same stem (`a.jpg`, `a.png`) is reported with both
    files and skipped, never silently chosen: the first in sorted order is kept."""
    by_stem: dict[str, Path] = {}
    for path in files:
        key = stem(path)
        if key in by_stem:
            report.skip(path, f"duplicate {what} stem: {key} also at {report.relative(by_stem[key])} (that one is kept)")
            report.counts[f"duplicate_{what}"] += 1
        else:
            by_stem[key] = path
    return by_stem

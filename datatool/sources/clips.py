"""Video clips as frame folders with per-frame masks (the layout of video-matting and video-segmentation sets).

    INPUT/<clip>/frames/<n>.jpg|png     (also images/, imgs/, img/, rgb/)
    INPUT/<clip>/masks/<n>.png          (also alphas/, alpha/, pha/ (VideoMatte240K), mattes/, gt/, annotations/)

A frame and its mask share a stem (a mask may end in _mask, _alpha, ...: the folder adapter's
pairing, reused). Frames are ordered by the natural sort of their stems (`2` before `10`); a
record's `frame` is its index among all the clip's frame files, so a frame skipped for a missing
mask leaves a gap in the numbering instead of making two frames that were not adjacent look
adjacent. `clip` is the clip folder's name made file-name safe, `group` the clip (a clip never
crosses splits), and `fps` the `--fps` given (left out when 0, unknown). An INPUT that itself holds
frames/ and masks/ is one clip. Records come in clip order, then frame order (not key order), so
the manifest reads each clip from its first frame to its last.
"""

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from datatool.report import Report
from datatool.sources import register
from datatool.sources.base import Record, is_junk, walk_files
from datatool.sources.folder import FolderSource, relative_stem
from portraitseg.imagefiles import IMAGE_SUFFIXES

FRAME_DIR_NAMES = ("frames", "images", "imgs", "img", "rgb")
MASK_DIR_NAMES = ("masks", "alphas", "alpha", "pha", "mattes", "gt", "annotations")
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@register
class ClipsSource(FolderSource):
    name = "clips"
    layout = (
        "  DIR/<clip>/frames/<n>.<jpg|png>   (also images/, imgs/, rgb/)\n"
        "  DIR/<clip>/masks/<n>.png          (also alphas/, pha/, mattes/, gt/)\n"
        "  one folder per clip; frame and mask paired by file stem, frames in natural order of\n"
        "  their stems (1, 2, ..., 10); DIR itself may be a single clip."
    )

    def __init__(self, root: Path | str, fps: float = 0.0):
        super().__init__(root)
        if fps < 0:
            raise ValueError(f"--fps must not be negative, got {fps}")
        self.fps = float(fps)

    def options(self) -> dict[str, Any]:
        return {"fps": self.fps}

    def scan(self, report: Report) -> list[Record]:
        self.require_root()
        if frame_and_mask_dirs(self.root) is not None:
            clip_dirs = [self.root]
        else:
            clip_dirs = []
            for child in sorted(self.root.iterdir(), key=lambda path: natural_key(path.name)):
                if is_junk(child.name):
                    report.ignore(child, "junk file (macOS/Windows metadata or hidden file)")
                elif child.is_dir():
                    clip_dirs.append(child)
                else:
                    report.ignore(child, "not inside a clip folder (expected DIR/<clip>/frames and DIR/<clip>/masks)")
            if not clip_dirs:
                raise self.layout_error("found no clip folder")
        records: list[Record] = []
        clips: dict[str, Path] = {}
        found_a_clip = False
        for clip_dir in clip_dirs:
            dirs = frame_and_mask_dirs(clip_dir)
            if dirs is None:
                contents = sorted(child.name for child in clip_dir.iterdir() if not is_junk(child.name))
                reason = "empty clip folder" if not contents else f"clip folder without frames/ and masks/ (holds {', '.join(contents[:5])})"
                report.skip(clip_dir, reason)
                report.counts["skipped_clips"] += 1
                continue
            found_a_clip = True
            clip = unique_clip_name(clip_dir.name, clips)
            clips[clip] = clip_dir
            records.extend(self.clip_records(clip, clip_dir, *dirs, report))
        if not found_a_clip:
            raise self.layout_error("no clip folder holds frames/ and masks/")
        report.counts["clips"] = len(clips)
        return records

    def clip_records(self, clip: str, clip_dir: Path, frames_dir: Path, masks_dir: Path, report: Report) -> list[Record]:
        """The clip's paired frames in natural order, numbered among all its frame files."""
        # Every frame file, paired or not, counts for the numbering; a throwaway report, because
        # `pair_folder` reports this folder's junk and duplicates itself.
        stems = {relative_stem(path, frames_dir) for path in walk_files(frames_dir, Report(self.root), IMAGE_SUFFIXES)}
        if not stems:
            report.skip(clip_dir, f"empty clip: no frame files in {report.relative(frames_dir)}")
            report.counts["skipped_clips"] += 1
        index = {stem: number for number, stem in enumerate(sorted(stems, key=natural_key))}
        records = []
        for record in self.pair_folder(frames_dir, masks_dir, report):
            frame = index[relative_stem(record.image, frames_dir)]
            extra = {"clip": clip, "frame": frame, **({"fps": self.fps} if self.fps else {})}
            records.append(replace(record, group=clip, official_split=None, extra=extra))
        return sorted(records, key=lambda record: record.extra["frame"])


def frame_and_mask_dirs(folder: Path) -> tuple[Path, Path] | None:
    """(frames, masks) folders directly inside `folder` (names compared case-insensitively), or None."""
    children = {child.name.lower(): child for child in sorted(folder.iterdir()) if child.is_dir() and not is_junk(child.name)}
    frames = next((children[name] for name in FRAME_DIR_NAMES if name in children), None)
    masks = next((children[name] for name in MASK_DIR_NAMES if name in children), None)
    return (frames, masks) if frames is not None and masks is not None else None


def natural_key(text: str) -> tuple:
    """`frame2` before `frame10`: digit runs compare as numbers (strings at even places, ints at odd)."""
    return tuple(int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", text)))


def unique_clip_name(folder_name: str, taken: dict[str, Path]) -> str:
    """The folder name made file-name safe; when two folders come out the same, the later gets a short hash."""
    clip = UNSAFE.sub("_", folder_name).strip("._-") or "clip"
    if clip in taken:
        clip = f"{clip}-{hashlib.sha1(folder_name.encode()).hexdigest()[:8]}"
    return clip

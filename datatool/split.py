"""`datatool split`: train / val / test manifests over one or more canonical sets, without leakage.

Rules, in order:

1. **Exclusions.** Samples whose id is in the exclusions file are left out (counted and
   listed in the report with their reason; ids found in no input are listed as not found).
   The file is JSON: a list of ids, or an object with an `ids` list (what label QA writes,
   `datatool qa sync`); its `samples` entries, if any, give each id's QA tag, reported as
   "excluded in QA: <tag>"; other keys of the object are ignored.
2. **Groups stay whole.** `group` is what must not be split (the photo behind its
   composites: synth gives a composite its foreground's group; the person of a series).
   Every row of a group lands in the same split.
3. **Official splits are kept.** A group whose rows carry an `official_split` (train, val or
   test) goes there. If its rows disagree, the most held-out split wins (test, then val,
   then train), so no image a dataset reserves for evaluation is ever trained on; each such
   group is listed in the report. Other `official_split` values are reported and ignored.
4. **The rest by hash.** A group without an official split gets
   u = sha1("<seed>:<group>") read as a number in [0, 1): test if u < test_fraction, val if
   u < test_fraction + val_fraction, else train. Each group's split depends only on the seed,
   the fractions and its own name, so adding or removing other groups (a new source, new
   composites) never moves a group, and the same seed writes the same bytes.

Output, in the output folder: `train.jsonl`, `val.jsonl`, `test.jsonl` (always all three,
possibly empty) with every input row unchanged plus `split` and `set`, the input set's folder
relative to the output folder, so a file resolves as `<output>/<set>/<image>` wherever the
data tree is checked out (`resolve`); and `report.json` with counts per source, per input set
and per split. Rows keep the order of the inputs (sets as given, then manifest order). An id
seen twice (the same set given twice, or a set and one derived from it, which keep ids) is
kept once, the first time, and reported.

Two streaming passes over the manifests: the first collects each group's official splits,
the second writes rows; memory holds per-group and per-id bookkeeping, never the rows.
"""

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatool import __version__
from datatool.canonical import MANIFEST, REPORT, read_rows
from datatool.outputs import check_output
from datatool.report import Report

SPLITS = ("train", "val", "test")
HELD_OUT_ORDER = ("test", "val", "train")  # which official split wins when a group's rows disagree


@dataclass(frozen=True)
class SplitOptions:
    val_fraction: float = 0.1  # share of groups without an official split that go to val
    test_fraction: float = 0.1  # ... and to test; the rest go to train
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.val_fraction + self.test_fraction > 1.0:
            raise ValueError(f"val + test fractions exceed 1 ({self.val_fraction} + {self.test_fraction})")


@dataclass
class SplitResult:
    output: Path
    counts: dict[str, int]  # rows per split
    excluded: int
    report: dict[str, Any]


def hashed_split(group: str, options: SplitOptions) -> str:
    """The split of a group without an official split: a uniform draw from sha1(seed, group)."""
    digest = hashlib.sha1(f"{options.seed}:{group}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if draw < options.test_fraction:
        return "test"
    if draw < options.test_fraction + options.val_fraction:
        return "val"
    return "train"


def read_exclusions(path: Path) -> list[str]:
    """Sample ids from a JSON list of ids or an object `{"ids": [...]}`; anything else is a `ValueError` naming the file."""
    return list(read_exclusion_reasons(path))


def read_exclusion_reasons(path: Path) -> dict[str, str]:
    """Sample id -> why it is excluded: "excluded in QA: <tag>" from label QA's `samples`, else "excluded by list".

    A file that is not UTF-8 JSON of that shape is a `ValueError` naming the file and what is wrong.
    """
    def refuse(detail: str) -> ValueError:
        return ValueError(
            f'{path}: not a JSON list of sample ids or {{"ids": [...]}} ({detail}); '
            "fix it, or write it again with `datatool qa sync`"
        )

    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as error:
        raise refuse(f"cannot read it: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise refuse(f"not UTF-8 text: {error.reason}") from error
    except json.JSONDecodeError as error:
        raise refuse(f"invalid JSON at line {error.lineno}: {error.msg}") from error
    ids = data.get("ids") if isinstance(data, dict) else data
    if not isinstance(ids, list):
        raise refuse("an object without an ids list" if isinstance(data, dict) else f"a JSON {type(data).__name__}")
    if not all(isinstance(sample_id, str) for sample_id in ids):
        raise refuse("an id that is not a string")
    tags = {}
    if isinstance(data, dict) and isinstance(data.get("samples"), list):
        tags = {entry["id"]: entry["tag"] for entry in data["samples"] if isinstance(entry, dict) and "id" in entry and "tag" in entry}
    return {sample_id: f"excluded in QA: {tags[sample_id]}" if sample_id in tags else "excluded by list" for sample_id in ids}


def split_sets(
    inputs: list[Path], output: Path, options: SplitOptions | None = None, *, exclusions: list[str] | dict[str, str] | None = None
) -> SplitResult:
    """Write train/val/test manifests over the canonical sets `inputs` into `output` (see the module doc).

    `exclusions` are sample ids, or a mapping id -> reason (`read_exclusion_reasons`) for the report.
    """
    options = options or SplitOptions()
    sets = [Path(set_dir).expanduser() for set_dir in inputs]
    if not sets:
        raise ValueError("name at least one input set")
    for set_dir in sets:
        if not (set_dir / MANIFEST).is_file():
            raise ValueError(f"input {set_dir} is not a canonical set (no {MANIFEST})")
    output = check_output(output, [])  # split files never replace a set's files: only a file in the way is refused
    output.mkdir(parents=True, exist_ok=True)
    excluded_ids = set(exclusions or [])
    reasons = exclusions if isinstance(exclusions, dict) else {}
    report = Report()

    # Pass 1: each group's official splits (excluded and duplicate rows do not count).
    official: dict[str, set[str]] = defaultdict(set)
    for _, row in usable_rows(sets, excluded_ids, Report()):
        if row.get("official_split") in SPLITS:
            official[row["group"]].add(row["official_split"])
    conflicts = []
    split_of_group: dict[str, str] = {}
    for group, splits in official.items():
        split_of_group[group] = next(split for split in HELD_OUT_ORDER if split in splits)
        if len(splits) > 1:
            conflicts.append({"group": group, "official_splits": sorted(splits), "chosen": split_of_group[group]})

    # Pass 2: stream every row into its split's file.
    per_source: dict[str, Counter[str]] = defaultdict(Counter)
    per_set: dict[str, Counter[str]] = defaultdict(Counter)
    groups: dict[str, set[str]] = {split: set() for split in SPLITS}
    excluded_found: list[str] = []
    set_names = {set_dir: os.path.relpath(set_dir.resolve(), output.resolve()) for set_dir in sets}
    with SplitWriters(output) as writers:
        for set_dir, row in usable_rows(sets, excluded_ids, report, excluded_found):
            group = row["group"]
            split = split_of_group.get(group) or hashed_split(group, options)
            split_of_group[group] = split
            writers.write(split, {**row, "split": split, "set": Path(set_names[set_dir]).as_posix()})
            per_source[str(row["source"])][split] += 1
            per_set[str(set_dir)][split] += 1
            groups[split].add(group)
    counts = writers.counts

    found = set(excluded_found)
    report.counts.update({f"{split}_rows": counts[split] for split in SPLITS})
    report.counts.update({f"{split}_groups": len(groups[split]) for split in SPLITS})
    report.counts["excluded"] = len(excluded_found)
    report.counts["official_split_conflicts"] = len(conflicts)
    header = {
        "stage": "split",
        "version": __version__,
        "inputs": [str(set_dir) for set_dir in sets],
        "output": str(output.resolve()),
        "options": {"val_fraction": options.val_fraction, "test_fraction": options.test_fraction, "seed": options.seed},
        "rows_per_split": {split: counts[split] for split in SPLITS},
        "groups_per_split": {split: len(groups[split]) for split in SPLITS},
        "per_source": {source: with_all_splits(tally) for source, tally in sorted(per_source.items())},
        "per_set": {set_dir: with_all_splits(tally) for set_dir, tally in per_set.items()},
        "excluded": {"count": len(excluded_found), "ids": sorted(found)},
        "excluded_samples": [{"id": sample_id, "reason": reasons.get(sample_id, "excluded by list")} for sample_id in sorted(found)],
        "exclusions_not_found": sorted(excluded_ids - found),
        "official_split_conflicts": conflicts,
    }
    summary = report.write(output / REPORT, **header)
    return SplitResult(output=output, counts={split: counts[split] for split in SPLITS}, excluded=len(excluded_found), report=summary)


def usable_rows(
    sets: list[Path], excluded_ids: set[str], report: Report, excluded_found: list[str] | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(set, row) for each valid, not excluded, first-seen row of the sets, in order; the others reported."""
    seen: dict[str, Path] = {}
    for set_dir in sets:
        for row in read_rows(set_dir, report, shown=str(set_dir / MANIFEST)):
            sample_id = row["id"]
            if sample_id in seen:
                report.skip(set_dir / MANIFEST, f"duplicate id: {sample_id} is also in {seen[sample_id]} (kept the first occurrence)", id=sample_id)
                continue
            seen[sample_id] = set_dir
            if sample_id in excluded_ids:
                if excluded_found is not None:
                    excluded_found.append(sample_id)
                continue
            value = row.get("official_split")
            if value is not None and value not in SPLITS:
                report.repair(set_dir / MANIFEST, f"unknown official_split: {value!r} of {sample_id} (ignored)", id=sample_id)
            yield set_dir, row


def with_all_splits(tally: Counter[str]) -> dict[str, int]:
    return {split: tally[split] for split in SPLITS}


class SplitWriters:
    """One JSON-lines file per split, written beside its final name and moved there only on success."""

    def __init__(self, output: Path):
        self.paths = {split: output / f"{split}.jsonl" for split in SPLITS}
        self.temporaries = {split: path.with_name(f".{path.name}.tmp") for split, path in self.paths.items()}
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> "SplitWriters":
        self.files = {split: path.open("w") for split, path in self.temporaries.items()}
        return self

    def write(self, split: str, row: dict[str, Any]) -> None:
        self.files[split].write(json.dumps(row, ensure_ascii=False) + "\n")
        self.counts[split] += 1

    def __exit__(self, error_type, error, traceback) -> None:
        for file in self.files.values():
            file.close()
        if error_type is None:
            # All old splits go before any new one arrives: a run killed in between leaves missing
            # split files (a clear error downstream), never a new train beside an old val.
            for path in self.paths.values():
                path.unlink(missing_ok=True)
            for split, temporary in self.temporaries.items():
                os.replace(temporary, self.paths[split])
        else:
            for temporary in self.temporaries.values():
                temporary.unlink(missing_ok=True)


__all__ = [
    "SPLITS", "SplitOptions", "SplitResult", "hashed_split", "read_exclusion_reasons", "read_exclusions", "split_sets",
]  # fmt: skip

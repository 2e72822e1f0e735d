"""`datatool split`: groups never cross splits, official splits are kept, same seed = same bytes."""

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datatool.canonical import write_manifest
from datatool.cli import main
from datatool.split import SPLITS, SplitOptions, hashed_split, read_exclusions, split_sets
from portraitseg.records import resolve

OFFICIAL = st.sampled_from([None, None, "train", "val", "test"])


def row(set_name: str, index: int, group: str, official: str | None = None, **extra) -> dict:
    sample_id = f"{set_name}-{index}"
    return {
        "id": sample_id, "image": f"images/{sample_id}.jpg", "mask": f"masks/{sample_id}.png", "source": set_name,
        "width": 8, "height": 8, "mask_kind": "binary", "group": group, "official_split": official, **extra,
    }  # fmt: skip


def make_set(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, rows)
    return root


def read_splits(output: Path) -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (output / f"{split}.jsonl").read_text().splitlines()] for split in SPLITS}


@st.composite
def split_problems(draw):
    """Up to 3 sets of rows over shared groups, each row with a random official split; fractions; seed; exclusions."""
    groups = draw(st.lists(st.text("abcxyz/", min_size=1, max_size=6), min_size=1, max_size=12, unique=True))
    sets = []
    for set_index in range(draw(st.integers(1, 3))):
        rows = [
            row(f"s{set_index}", index, draw(st.sampled_from(groups)), draw(OFFICIAL))
            for index in range(draw(st.integers(0, 15)))
        ]
        sets.append(rows)
    test = draw(st.floats(0, 1))
    val = draw(st.floats(0, 1 - test))
    ids = [item["id"] for rows in sets for item in rows]
    excluded = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    return sets, SplitOptions(val_fraction=val, test_fraction=test, seed=draw(st.integers(0, 2**32))), excluded


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split_problems())
def test_property_no_group_crosses_splits_and_every_row_lands_once(problem):
    sets, options, excluded = problem
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        set_dirs = [make_set(root / f"set{index}", rows) for index, rows in enumerate(sets)]
        result = split_sets(set_dirs, root / "out", options, exclusions=excluded)
        written = read_splits(root / "out")

    landed = [(item["id"], split) for split in SPLITS for item in written[split]]
    all_rows = [item for rows in sets for item in rows]
    # Every row lands exactly once, except the excluded ones.
    assert sorted(sample_id for sample_id, _ in landed) == sorted(item["id"] for item in all_rows if item["id"] not in excluded)
    assert result.excluded == len(excluded)
    # No group in two splits.
    splits_of_group = defaultdict(set)
    for split in SPLITS:
        for item in written[split]:
            assert item["split"] == split
            splits_of_group[item["group"]].add(split)
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    # Official splits kept: a row with one lands there unless its group disagrees, then the most held-out wins.
    official_of_group = defaultdict(set)
    for item in all_rows:
        if item["id"] not in excluded and item["official_split"]:
            official_of_group[item["group"]].add(item["official_split"])
    for group, splits in official_of_group.items():
        expected = next(split for split in ("test", "val", "train") if split in splits)
        assert splits_of_group[group] == {expected}
    assert len(result.report["official_split_conflicts"]) == sum(len(splits) > 1 for splits in official_of_group.values())
    # Groups without an official split follow the hash.
    for group, splits in splits_of_group.items():
        if group not in official_of_group:
            assert splits == {hashed_split(group, options)}


def three_sets(tmp_path: Path) -> list[Path]:
    return [
        make_set(tmp_path / "sets" / "people", [row("people", index, f"people/{index // 2}") for index in range(40)]),
        make_set(tmp_path / "sets" / "official", [row("official", index, f"official/{index}", SPLITS[index % 3]) for index in range(9)]),
        # Composites carry their foreground's group: they must follow it into its split.
        make_set(tmp_path / "sets" / "synth", [row("synth", index, f"people/{index % 20}", foreground_id=f"people-{index % 20}") for index in range(20)]),
    ]  # fmt: skip


def test_same_seed_gives_identical_files_and_another_seed_moves_groups(tmp_path):
    sets = three_sets(tmp_path)
    options = SplitOptions(val_fraction=0.2, test_fraction=0.2, seed=7)
    split_sets(sets, tmp_path / "a", options)
    split_sets(sets, tmp_path / "b", options)
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in "ab"]
    for report in reports:
        report.pop("seconds"), report.pop("output")
    assert reports[0] == reports[1]

    split_sets(sets, tmp_path / "c", SplitOptions(val_fraction=0.2, test_fraction=0.2, seed=8))
    first, other = read_splits(tmp_path / "a"), read_splits(tmp_path / "c")
    assignment = {item["id"]: split for split in SPLITS for item in first[split]}
    moved = [item["id"] for split in SPLITS for item in other[split] if assignment[item["id"]] != split]
    assert moved and not any(sample_id.startswith("official") for sample_id in moved)


def test_adding_a_group_does_not_move_the_others(tmp_path):
    sets = three_sets(tmp_path)
    options = SplitOptions(val_fraction=0.3, test_fraction=0.3, seed=1)
    split_sets(sets[:1], tmp_path / "one", options)
    split_sets(sets, tmp_path / "all", options)
    before, after = read_splits(tmp_path / "one"), read_splits(tmp_path / "all")
    for split in SPLITS:
        assert {item["id"] for item in before[split]} <= {item["id"] for item in after[split]}


def test_rows_carry_split_and_a_set_path_that_resolves(tmp_path):
    sets = three_sets(tmp_path)
    result = split_sets(sets, tmp_path / "out" / "split", SplitOptions(0.2, 0.2, seed=3))
    written = read_splits(tmp_path / "out" / "split")
    assert sum(result.counts.values()) == 69
    item = written["train"][0]
    assert item["set"] == "../../sets/people"  # relative: the bytes do not depend on the checkout's location
    assert resolve(tmp_path / "out" / "split", item).resolve() == (tmp_path / "sets" / "people" / item["image"]).resolve()
    for split in SPLITS:  # composites land with their foreground
        people_groups = {entry["group"] for entry in written[split] if entry["source"] == "people"}
        synth_groups = {entry["group"] for entry in written[split] if entry["source"] == "synth"}
        assert synth_groups <= people_groups
    report = result.report
    assert report["per_source"]["official"] == {"train": 3, "val": 3, "test": 3}
    assert sum(report["per_source"]["synth"].values()) == 20
    assert sum(report["rows_per_split"].values()) == 69


def test_exclusions_both_formats_counted_and_unknown_ids_reported(tmp_path):
    sets = three_sets(tmp_path)
    (tmp_path / "list.json").write_text(json.dumps(["people-0", "synth-3", "nobody"]))
    (tmp_path / "qa.json").write_text(json.dumps({"ids": ["people-0", "synth-3", "nobody"], "reviewer": "qa"}))
    assert read_exclusions(tmp_path / "list.json") == read_exclusions(tmp_path / "qa.json") == ["people-0", "synth-3", "nobody"]
    result = split_sets(sets, tmp_path / "out", SplitOptions(0.2, 0.2, seed=3), exclusions=read_exclusions(tmp_path / "qa.json"))
    written = read_splits(tmp_path / "out")
    ids = {item["id"] for split in SPLITS for item in written[split]}
    assert "people-0" not in ids and "synth-3" not in ids and len(ids) == 67
    assert result.report["excluded"] == {"count": 2, "ids": ["people-0", "synth-3"]}
    assert result.report["exclusions_not_found"] == ["nobody"]
    (tmp_path / "bad.json").write_text(json.dumps({"samples": ["people-0"]}))
    with pytest.raises(ValueError, match="list of sample ids"):
        read_exclusions(tmp_path / "bad.json")


def test_conflicting_official_splits_duplicates_and_unknown_values_are_reported(tmp_path):
    first = make_set(tmp_path / "first", [row("x", 0, "g", "train"), row("x", 1, "g", "test"), row("x", 2, "h", "trainval")])
    result = split_sets([first, first], tmp_path / "out", SplitOptions(0.0, 0.0, seed=0))
    assert result.counts == {"train": 1, "val": 0, "test": 2}  # g -> test (most held out); h -> hash -> train
    assert result.report["official_split_conflicts"] == [{"group": "g", "official_splits": ["test", "train"], "chosen": "test"}]
    assert len(result.report["skipped"]) == 3 and all("duplicate id" in entry["reason"] for entry in result.report["skipped"])
    assert "unknown official_split" in result.report["repaired"][0]["reason"]


def test_fractions_are_checked():
    with pytest.raises(ValueError, match="exceed 1"):
        SplitOptions(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="val_fraction"):
        SplitOptions(val_fraction=-0.1)


def test_cli_multiple_sets_and_exclusions(tmp_path):
    sets = three_sets(tmp_path)
    (tmp_path / "qa.json").write_text(json.dumps({"ids": ["people-1"]}))
    arguments = ["split", "--input", *map(str, sets), "--output", str(tmp_path / "out"), "--val", "0.2", "--test", "0.2", "--seed", "5"]
    result = CliRunner().invoke(main, [*arguments, "--exclusions", str(tmp_path / "qa.json")])
    assert result.exit_code == 0, result.output
    assert "1 excluded" in result.output and "official" in result.output
    assert {path.name for path in (tmp_path / "out").iterdir()} == {"train.jsonl", "val.jsonl", "test.jsonl", "report.json"}
    assert sum(len(rows) for rows in read_splits(tmp_path / "out").values()) == 68
    refused = CliRunner().invoke(main, [*arguments[:-6], "--val", "0.7", "--test", "0.7", "--seed", "5"])
    assert refused.exit_code != 0 and "exceed 1" in refused.output


def test_cli_takes_the_sets_named_in_params_from_a_folder(tmp_path):
    """The pipeline's form: DIR/<name> for every name of params.yaml's `sets:`, in that order."""
    sets = three_sets(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("sets:\n" + "".join(f"  {path.name}: data/interim/ingest/{path.name}\n" for path in sets))
    options = ["--output", str(tmp_path / "named"), "--val", "0.2", "--test", "0.2", "--seed", "5"]
    result = CliRunner().invoke(main, ["split", "--sets-dir", str(tmp_path / "sets"), "--params", str(params), *options])
    assert result.exit_code == 0, result.output
    split_sets(sets, tmp_path / "listed", SplitOptions(val_fraction=0.2, test_fraction=0.2, seed=5))
    for name in SPLITS:
        assert (tmp_path / "named" / f"{name}.jsonl").read_bytes() == (tmp_path / "listed" / f"{name}.jsonl").read_bytes()
    alone = CliRunner().invoke(main, ["split", "--sets-dir", str(tmp_path / "sets"), *options])
    assert alone.exit_code == 2 and "--sets-dir and --params go together" in alone.output

"""Kaggle people_segmentation adapter: tiny fixtures in the exact layout, 0/1 masks and the official split."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_person_mask, make_photo, write_image

from datatool.cli import main
from datatool.ingest import ingest
from datatool.report import Report
from datatool.sources import create_source
from datatool.sources.base import LayoutError
from datatool.sources.kaggle_people import KagglePeopleSource

HEIGHT, WIDTH = 12, 16
TRAIN = ["ballet-dance-dancer-ballerina-39572", "pexels-photo-1000"]
VAL = ["pexels-photo-2000"]
IN_BOTH = "pexels-photo-3000"  # listed in train.txt and val.txt
UNSPLIT = "pexels-photo-4000"  # an image in no split file
LISTED_WITHOUT_IMAGE = "pexels-photo-5000"


def mask01(seed: int) -> np.ndarray:
    """The set's encoding: 1 = person, 0 = background (looks black in a viewer)."""
    return (make_person_mask(HEIGHT, WIDTH, seed) // 255).astype(np.uint8)


def write_sample(dataset: Path, stem: str, seed: int, *, image: bool = True, mask: bool = True) -> None:
    if image:
        write_image(dataset / "images" / f"{stem}.jpg", make_photo(HEIGHT, WIDTH, seed))
    if mask:
        write_image(dataset / "masks" / f"{stem}.png", mask01(seed))


def write_split(dataset: Path, file_name: str, stems: list[str]) -> None:
    (dataset / "segmentation").mkdir(parents=True, exist_ok=True)
    (dataset / "segmentation" / file_name).write_text("".join(f"{stem}\n" for stem in stems))


def people_segmentation(dataset: Path) -> dict[str, int]:
    """The set with every quirk; returns stem -> seed of the samples that should be ingested."""
    seeds = {stem: seed for seed, stem in enumerate([*TRAIN, *VAL, IN_BOTH, UNSPLIT])}
    for stem, seed in seeds.items():
        write_sample(dataset, stem, seed)
    write_sample(dataset, "pexels-photo-6000", 6, image=False)  # orphan mask
    write_sample(dataset, "pexels-photo-7000", 7, mask=False)  # image without mask
    (dataset / "images" / "._pexels-photo-1000.jpg").write_bytes(b"\x00\x05\x16\x07")
    (dataset / "masks" / ".DS_Store").write_bytes(b"junk")
    write_split(dataset, "train.txt", [*TRAIN, IN_BOTH])
    write_split(dataset, "val.txt", [*VAL, IN_BOTH, LISTED_WITHOUT_IMAGE])
    # trainval.txt should be the union; this one lacks a val stem and names an unknown one.
    write_split(dataset, "trainval.txt", [*TRAIN, IN_BOTH, LISTED_WITHOUT_IMAGE, "pexels-photo-8000"])
    return seeds


def scan(root: Path) -> tuple[list, Report]:
    report = Report(root)
    return KagglePeopleSource(root).scan(report), report


def files(entries: list[dict], prefix: str) -> list[str]:
    return sorted(entry["file"] for entry in entries if entry["reason"].startswith(prefix))


def test_scan_pairs_by_stem_and_keeps_the_official_split(tmp_path):
    root = tmp_path / "people_segmentation"
    people_segmentation(root)
    records, _ = scan(root)
    expected = {
        "ballet-dance-dancer-ballerina-39572": "train",
        "pexels-photo-1000": "train",
        "pexels-photo-2000": "val",
        "pexels-photo-3000": "train",  # in both lists: train, so val never holds a training image
        "pexels-photo-4000": None,
    }
    assert [record.key for record in records] == [f"images/{stem}.jpg" for stem in sorted(expected)]
    assert {record.group: record.official_split for record in records} == expected
    for record in records:
        assert record.mask == root / "masks" / f"{record.group}.png"
        assert record.image.stem == record.group


def test_scan_reports_every_quirk(tmp_path):
    root = tmp_path / "people_segmentation"
    people_segmentation(root)
    _, report = scan(root)
    assert files(report.ignored, "junk file") == ["images/._pexels-photo-1000.jpg", "masks/.DS_Store"]
    assert files(report.skipped, "orphan mask") == ["masks/pexels-photo-6000.png"]
    assert files(report.skipped, "image without mask") == ["images/pexels-photo-7000.jpg"]
    assert [entry["reason"] for entry in report.skipped if entry["reason"].startswith("listed")] == [
        f"listed in the split file but no image: {LISTED_WITHOUT_IMAGE}"
    ]
    assert files(report.skipped, "listed") == ["segmentation/val.txt"]
    assert [(entry["file"], entry["reason"]) for entry in report.repaired] == [
        ("segmentation/val.txt", f"stem in both train.txt and val.txt: {IN_BOTH} (official_split set to train)")
    ]
    mismatches = {
        entry["reason"].split(":")[0]: entry for entry in report.ignored if entry["file"].endswith("trainval.txt")
    }
    assert mismatches["stems in trainval.txt but in neither train.txt nor val.txt"]["reason"].endswith(
        ": 1 (pexels-photo-8000)"
    )
    assert mismatches["stems in train.txt/val.txt but not in trainval.txt"]["reason"].endswith(
        ": 1 (pexels-photo-2000)"
    )
    assert (report.counts["split_train"], report.counts["split_val"], report.counts["split_none"]) == (3, 1, 1)


def test_root_may_be_the_parent_of_people_segmentation(tmp_path):
    people_segmentation(tmp_path / "download" / "people_segmentation")
    (tmp_path / "download" / "people_segmentation.zip").write_bytes(b"PK")  # the archive beside it
    records, report = scan(tmp_path / "download")
    assert records[0].key == "people_segmentation/images/ballet-dance-dancer-ballerina-39572.jpg"
    assert {record.official_split for record in records} == {"train", "val", None}
    assert "people_segmentation/masks/pexels-photo-6000.png" in files(report.skipped, "orphan mask")


def test_without_split_files_every_image_is_unsplit(tmp_path):
    root = tmp_path / "people_segmentation"
    write_sample(root, "pexels-photo-1", 1)
    write_sample(root, "pexels-photo-2", 2)
    records, report = scan(root)
    assert [(record.group, record.official_split) for record in records] == [
        ("pexels-photo-1", None),
        ("pexels-photo-2", None),
    ]
    assert report.counts["split_file_missing_train"] == 1 and report.counts["split_file_missing_val"] == 1


def test_split_lines_tolerate_blank_lines_crlf_and_extensions(tmp_path):
    root = tmp_path / "people_segmentation"
    write_sample(root, "pexels-photo-1", 1)
    write_sample(root, "pexels-photo-2", 2)
    (root / "segmentation").mkdir()
    (root / "segmentation" / "train.txt").write_bytes(b"pexels-photo-1\r\n\r\n")
    (root / "segmentation" / "val.txt").write_bytes(b"pexels-photo-2.jpg\r\n")
    records, report = scan(root)
    assert [record.official_split for record in records] == ["train", "val"]
    assert report.skipped == []


def test_read_mask_turns_0_1_into_0_255(tmp_path):
    root = tmp_path / "people_segmentation"
    write_sample(root, "pexels-photo-1", 1)
    source = KagglePeopleSource(root)
    (record,) = source.scan(Report(root))
    mask = source.read_mask(record)
    assert (mask.kind, mask.encoding) == ("binary", "gray 0/1")
    assert set(np.unique(mask.pixels).tolist()) == {0, 255}
    np.testing.assert_array_equal(mask.pixels, mask01(1) * 255)  # not emptied by a /255 threshold


def test_layout_errors_name_the_expected_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    aisegment = tmp_path / "aisegment"
    write_image(aisegment / "clip_img" / "1803201916" / "clip_00000000" / "1803201916-00000001.jpg", make_photo(8, 6))
    hollow = tmp_path / "hollow"
    (hollow / "images").mkdir(parents=True)
    (hollow / "masks").mkdir()
    two_copies = tmp_path / "two"
    write_sample(two_copies / "people_segmentation", "a", 1)
    write_sample(two_copies / "people_segmentation_old", "a", 1)
    for root, problem in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "empty", "is empty"),
        (aisegment, "no images/ and masks/ folders"),
        (hollow, "hold no image or mask files"),
        (two_copies, "several folders hold images/ and masks/ .people_segmentation, people_segmentation_old."),
    ]:
        with pytest.raises(LayoutError, match=problem) as raised:
            KagglePeopleSource(root).scan(Report(root))
        assert "segmentation/train.txt, val.txt" in str(raised.value)


def test_ingest_writes_0_255_masks_with_the_official_split(tmp_path):
    root = tmp_path / "download"
    seeds = people_segmentation(root / "people_segmentation")
    output = tmp_path / "canonical"

    result = ingest(KagglePeopleSource(root), output, name="people")

    assert (result.ingested, result.skipped) == (5, 3)
    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    splits = {Path(row["source_image"]).stem: row["official_split"] for row in rows}
    assert splits == {
        "ballet-dance-dancer-ballerina-39572": "train",
        "pexels-photo-1000": "train",
        "pexels-photo-2000": "val",
        "pexels-photo-3000": "train",
        "pexels-photo-4000": None,
    }
    for row in rows:
        stem = Path(row["source_image"]).stem
        assert row["source_image"] == f"people_segmentation/images/{stem}.jpg"
        assert row["source_mask"] == f"people_segmentation/masks/{stem}.png"
        assert (row["source"], row["source_format"], row["group"]) == ("people", "kaggle-people", f"people/{stem}")
        assert (row["mask_kind"], row["mask_encoding"]) == ("binary", "gray 0/1")
        assert (row["width"], row["height"]) == (WIDTH, HEIGHT)
        written = cv2.imread(str(output / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(written).tolist()) == {0, 255}
        np.testing.assert_array_equal(written, mask01(seeds[stem]) * 255)

    report = json.loads((output / "report.json").read_text())
    assert files(report["skipped"], "orphan mask") == ["people_segmentation/masks/pexels-photo-6000.png"]
    assert files(report["skipped"], "image without mask") == ["people_segmentation/images/pexels-photo-7000.jpg"]
    assert files(report["skipped"], "listed in the split file") == ["people_segmentation/segmentation/val.txt"]
    assert files(report["repaired"], "stem in both") == ["people_segmentation/segmentation/val.txt"]
    assert len(files(report["ignored"], "junk file")) == 2
    assert report["mask_encodings"] == {"gray 0/1": 5}


def test_cli_ingests_kaggle_people_and_explains_a_wrong_input(tmp_path):
    root = tmp_path / "people_segmentation"
    people_segmentation(root)
    assert isinstance(create_source("kaggle-people", root), KagglePeopleSource)
    runner = CliRunner()
    arguments = ["ingest", "kaggle-people", "--input", str(root), "--output", str(tmp_path / "out"), "--workers", "1"]
    result = runner.invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "kaggle-people: 5 samples ingested" in result.output
    assert len((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()) == 5

    not_the_set = tmp_path / "out" / "masks"
    wrong = runner.invoke(
        main, ["ingest", "kaggle-people", "--input", str(not_the_set), "--output", str(tmp_path / "o")]
    )
    assert wrong.exit_code == 1
    assert "does not look like kaggle-people" in wrong.output and "segmentation/train.txt" in wrong.output

"""The clips source: frame folders with per-frame masks, frames in natural order, bad files reported."""

import json

import cv2
import pytest
from click.testing import CliRunner

from conftest import make_person_mask, make_photo, write_image
from datatool.canonical import read_manifest
from datatool.cli import main
from datatool.ingest import ingest
from datatool.report import Report
from datatool.sources import LayoutError, create_source


def build_clips(root):
    """Two clips in the layouts of public video sets, with the defects they ship with."""
    for n, stem in enumerate(("1", "2", "10")):  # natural order 1, 2, 10 (string order would put 10 second)
        write_image(root / f"walk/frames/{stem}.jpg", make_photo(40, 48, seed=n))
        write_image(root / f"walk/masks/{stem}.png", make_person_mask(40, 48, seed=n))
    write_image(root / "walk/masks/10.png", make_person_mask(20, 24, seed=2))  # half size: resized, reported
    for n in range(3):  # VideoMatte240K-style names: images/ and pha/
        write_image(root / f"talk 2/images/{n:04d}.png", make_photo(40, 48, seed=10 + n))
    write_image(root / "talk 2/pha/0000.png", make_person_mask(40, 48, seed=10))
    write_image(root / "talk 2/pha/0002.png", make_person_mask(40, 48, seed=12))  # 0001 has no mask
    write_image(root / "talk 2/pha/0007.png", make_person_mask(40, 48, seed=17))  # orphan: no frame 0007
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("how the clips were shot")
    (root / "walk/frames/.DS_Store").write_bytes(b"junk")


def test_scan_orders_frames_naturally_and_reports_what_it_cannot_pair(tmp_path):
    build_clips(tmp_path)
    report = Report(tmp_path)
    records = create_source("clips", tmp_path, fps=25).scan(report)
    assert [(r.extra["clip"], r.extra["frame"], r.key) for r in records] == [
        ("talk_2", 0, "talk 2/images/0000.png"),
        ("talk_2", 2, "talk 2/images/0002.png"),  # frame 1 has no mask: a gap, not a renumbering
        ("walk", 0, "walk/frames/1.jpg"),
        ("walk", 1, "walk/frames/2.jpg"),
        ("walk", 2, "walk/frames/10.jpg"),
    ]
    assert all(r.group == r.extra["clip"] and r.official_split is None and r.extra["fps"] == 25 for r in records)
    skipped = {entry["file"]: entry["reason"] for entry in report.skipped}
    assert skipped["talk 2/images/0001.png"].startswith("image without mask")
    assert skipped["talk 2/pha/0007.png"].startswith("orphan mask")
    assert skipped["empty"] == "empty clip folder"
    assert {entry["file"] for entry in report.ignored} == {"notes.txt", "walk/frames/.DS_Store"}


def test_ingest_writes_clip_frame_fps_and_the_clip_as_group(tmp_path):
    build_clips(tmp_path / "in")
    result = ingest(create_source("clips", tmp_path / "in", fps=25), tmp_path / "out", name="mine")
    rows = list(read_manifest(tmp_path / "out"))
    assert result.ingested == 5
    assert [(row["clip"], row["frame"]) for row in rows] == [("talk_2", 0), ("talk_2", 2), ("walk", 0), ("walk", 1), ("walk", 2)]
    assert {row["group"] for row in rows} == {"mine/talk_2", "mine/walk"}
    assert all(row["fps"] == 25.0 for row in rows)
    resized = next(row for row in rows if row["source_image"] == "walk/frames/10.jpg")
    assert cv2.imread(str(tmp_path / "out" / resized["mask"]), cv2.IMREAD_UNCHANGED).shape == (40, 48)
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert any(entry["file"] == "walk/frames/10.jpg" and entry["reason"].startswith("mask resized") for entry in report["repaired"])
    assert len(report["skipped"]) == 3


def test_a_folder_with_frames_and_masks_is_one_clip_and_unknown_fps_is_left_out(tmp_path):
    for n in range(2):
        write_image(tmp_path / f"shot/frames/{n}.png", make_photo(30, 40, seed=n))
        write_image(tmp_path / f"shot/masks/{n}.png", make_person_mask(30, 40, seed=n))
    records = create_source("clips", tmp_path / "shot").scan(Report(tmp_path / "shot"))
    assert [(r.extra["clip"], r.extra["frame"]) for r in records] == [("shot", 0), ("shot", 1)]
    assert "fps" not in records[0].extra


def test_no_clip_folder_names_the_expected_layout(tmp_path):
    (tmp_path / "a").mkdir()
    write_image(tmp_path / "a/photo.jpg", make_photo(20, 20))
    with pytest.raises(LayoutError, match="(?s)no clip folder holds frames/ and masks/.*DIR/<clip>/frames"):
        create_source("clips", tmp_path).scan(Report(tmp_path))


def test_cli_ingests_clips_and_keeps_fps_to_the_clips_source(tmp_path):
    build_clips(tmp_path / "in")
    args = ["ingest", "clips", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--fps", "30", "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "in: 5 samples ingested" in result.output
    assert {row["fps"] for row in read_manifest(tmp_path / "out")} == {30.0}
    wrong = CliRunner().invoke(main, ["ingest", "folder", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o2"), "--fps", "30"])
    assert wrong.exit_code != 0 and "--fps applies to the 'clips' source only" in wrong.output

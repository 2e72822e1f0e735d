"""The generic folder source: pair detection, stem pairing, orphans, smaller masks, splits from folders."""

import json

import cv2
import numpy as np
import pytest

from conftest import make_person_mask, make_photo, write_image
from datatool.canonical import read_manifest
from datatool.ingest import ingest
from datatool.report import Report
from datatool.sources import LayoutError, create_source


def build_people_dev_like(root):
    """`Training_Images/<n>.jpg` + `Ground_Truth/<n>.png` with the quirks of ../shared/data/people-dev."""
    write_image(root / "Training_Images/1.jpg", make_photo(120, 160, 1))
    write_image(root / "Ground_Truth/1.png", make_person_mask(120, 160, 1))  # same size
    write_image(root / "Training_Images/2.jpg", make_photo(120, 160, 2))
    write_image(root / "Ground_Truth/2.png", make_person_mask(60, 80, 2))  # half size, same aspect
    write_image(root / "Training_Images/3.jpg", make_photo(120, 160, 3))
    write_image(root / "Ground_Truth/3.png", make_person_mask(100, 100, 3))  # other aspect: quarantine
    write_image(root / "Training_Images/4.jpg", make_photo(120, 160, 4)[..., 0])  # greyscale photo
    write_image(root / "Ground_Truth/4.png", make_person_mask(120, 160, 4))
    write_image(root / "Training_Images/5.jpg", make_photo(50, 50, 5))  # no mask
    write_image(root / "Ground_Truth/6.png", make_person_mask(50, 50, 6))  # orphan mask
    (root / "Training_Images/._1.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "Ground_Truth/.DS_Store").write_bytes(b"junk")
    (root / "Ground_Truth/notes.txt").write_text("not a mask")


def test_scan_pairs_by_stem_and_reports_orphans_and_junk(tmp_path):
    build_people_dev_like(tmp_path)
    report = Report(tmp_path)
    records = create_source("folder", tmp_path).scan(report)
    assert [r.key for r in records] == [f"Training_Images/{n}.jpg" for n in (1, 2, 3, 4)]
    assert all(r.mask.name == r.image.with_suffix(".png").name for r in records)
    skipped = {e["file"]: e["reason"] for e in report.skipped}
    assert skipped["Training_Images/5.jpg"].startswith("image without mask")
    assert skipped["Ground_Truth/6.png"].startswith("orphan mask")
    ignored = {e["file"] for e in report.ignored}
    assert ignored == {"Training_Images/._1.jpg", "Ground_Truth/.DS_Store", "Ground_Truth/notes.txt"}


def test_ingest_resizes_smaller_masks_and_quarantines_other_aspects(tmp_path):
    build_people_dev_like(tmp_path / "in")
    result = ingest(create_source("folder", tmp_path / "in"), tmp_path / "out", name="dev")
    rows = {row["source_image"]: row for row in read_manifest(tmp_path / "out")}
    assert sorted(rows) == ["Training_Images/1.jpg", "Training_Images/2.jpg", "Training_Images/4.jpg"]
    for row in rows.values():
        image = cv2.imread(str(tmp_path / "out" / row["image"]))
        mask = cv2.imread(str(tmp_path / "out" / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.ndim == 2 and mask.shape == image.shape[:2] == (row["height"], row["width"])
        assert set(np.unique(mask)) <= {0, 255}
    resized = cv2.imread(str(tmp_path / "out" / rows["Training_Images/2.jpg"]["mask"]), cv2.IMREAD_UNCHANGED)
    expected = cv2.resize(make_person_mask(60, 80, 2), (160, 120), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(resized, expected)

    report = json.loads((tmp_path / "out/report.json").read_text())
    repaired = {e["file"]: e["reason"] for e in report["repaired"]}
    assert repaired["Training_Images/2.jpg"] == "mask resized: 80x60 to image size 160x120 (nearest)"
    assert repaired["Training_Images/4.jpg"] == "greyscale image converted to RGB"
    skipped = {e["file"]: e["reason"] for e in report["skipped"]}
    assert skipped["Ground_Truth/3.png"].startswith("aspect ratio mismatch: mask 100x100 vs image 160x120")
    assert result.ingested == 3 and result.skipped == 3


def test_explicit_dirs_mask_suffixes_and_split_folders(tmp_path):
    for split in ("train", "test"):
        write_image(tmp_path / split / "imgs/a.png", make_photo(30, 40))
        write_image(tmp_path / split / "gt/a_mask.png", make_person_mask(30, 40) // 255)
    records = create_source("folder", tmp_path).scan(Report(tmp_path))
    assert [(r.key, r.official_split) for r in records] == [("test/imgs/a.png", "test"), ("train/imgs/a.png", "train")]
    explicit = create_source("folder", tmp_path, images_dir="train/imgs", masks_dir="train/gt").scan(Report(tmp_path))
    assert [r.key for r in explicit] == ["train/imgs/a.png"]


def test_not_a_folder_layout_names_the_expected_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff/readme.txt").write_text("hi")
    with pytest.raises(LayoutError, match="Training_Images"):
        create_source("folder", tmp_path).scan(Report(tmp_path))
    with pytest.raises(LayoutError, match="does not exist"):
        create_source("folder", tmp_path / "missing").scan(Report(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/.DS_Store").write_bytes(b"")
    with pytest.raises(LayoutError, match="is empty"):
        create_source("folder", tmp_path / "empty").scan(Report(tmp_path))


def test_people_dev_acceptance(shared_data, tmp_path):
    """`datatool ingest folder --input ../shared/data/people-dev`: 193 samples, masks fit, 0/255."""
    result = ingest(create_source("folder", shared_data / "people-dev"), tmp_path, name="people-dev", workers=2)
    rows = list(read_manifest(tmp_path))
    assert result.ingested == len(rows) == 193 and result.skipped == 0
    for row in rows:
        mask = cv2.imread(str(tmp_path / row["mask"]), cv2.IMREAD_UNCHANGED)
        height, width = cv2.imread(str(tmp_path / row["image"])).shape[:2]
        assert mask.shape == (height, width) == (row["height"], row["width"])
        assert set(np.unique(mask)) <= {0, 255}
    resized = [e for e in result.report["repaired"] if e["reason"].startswith("mask resized")]
    assert len(resized) > 100 and all(e["mask"].startswith("Ground_Truth/") for e in resized)

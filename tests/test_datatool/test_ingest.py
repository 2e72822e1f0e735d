"""The ingest engine: EXIF, corrupt inputs, re-use without decoding, stale files, max side, workers, CLI."""

import json
import os

import cv2
import numpy as np
from click.testing import CliRunner
from conftest import make_person_mask, make_photo, save_jpeg_with_orientation, write_image

import datatool.ingest as engine
from datatool.canonical import read_manifest
from datatool.cli import main
from datatool.ingest import ingest
from datatool.sources import create_source
from portraitseg.records import REQUIRED_FIELDS


def build_folder(root, count=4):
    for n in range(count):
        write_image(root / f"images/p{n}.jpg", make_photo(60, 80, n))
        write_image(root / f"masks/p{n}.png", make_person_mask(60, 80, n))
    return root


def test_manifest_contract_and_stable_ids(tmp_path):
    source = create_source("folder", build_folder(tmp_path / "in"))
    ingest(source, tmp_path / "a", name="set")
    ingest(source, tmp_path / "b", name="set")
    rows = list(read_manifest(tmp_path / "a"))
    assert [r["id"] for r in rows] == [r["id"] for r in read_manifest(tmp_path / "b")]
    assert len({r["id"] for r in rows}) == 4
    for row in rows:
        assert set(REQUIRED_FIELDS) <= set(row) and row["source"] == "set" and row["group"].startswith("set/")
        assert row["source_image"] == f"images/{row['source_image'].split('/')[-1]}"
        assert (tmp_path / "a" / row["image"]).is_file() and (tmp_path / "a" / row["mask"]).is_file()
    other = ingest(source, tmp_path / "c", name="other-set")
    assert not {r["id"] for r in rows} & {r["id"] for r in read_manifest(other.output)}


def test_exif_orientation_is_applied_to_image_and_mask(tmp_path):
    photo, mask = make_photo(60, 80, 1), make_person_mask(60, 80, 1)
    save_jpeg_with_orientation(tmp_path / "in/images/raw.jpg", photo, 6)
    write_image(tmp_path / "in/masks/raw.png", mask)  # drawn on the stored pixels
    save_jpeg_with_orientation(tmp_path / "in/images/upright.jpg", photo, 6)
    write_image(tmp_path / "in/masks/upright.png", np.rot90(mask, -1))  # drawn on the rotated photo
    result = ingest(create_source("folder", tmp_path / "in"), tmp_path / "out")
    rows = {r["source_image"]: r for r in read_manifest(tmp_path / "out")}
    for key in ("images/raw.jpg", "images/upright.jpg"):
        out_mask = cv2.imread(str(tmp_path / "out" / rows[key]["mask"]), cv2.IMREAD_UNCHANGED)
        out_image = cv2.imread(str(tmp_path / "out" / rows[key]["image"]), cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR)
        assert (rows[key]["width"], rows[key]["height"]) == (60, 80) and out_image.shape[:2] == (80, 60)
        np.testing.assert_array_equal(out_mask, np.rot90(mask, -1))  # 6 = rotate 90 degrees clockwise
    reasons = {e["file"]: e["reason"] for e in result.report["repaired"]}
    assert reasons["images/raw.jpg"] == "EXIF orientation 6 applied to image and mask"
    assert reasons["images/upright.jpg"].endswith("the mask was already upright")


def test_bad_inputs_are_reported_and_the_run_continues(tmp_path):
    root = build_folder(tmp_path / "in", count=2)
    (root / "images/truncated.jpg").write_bytes((root / "images/p0.jpg").read_bytes()[:900])
    write_image(root / "masks/truncated.png", make_person_mask(60, 80))
    (root / "images/text.jpg").write_text("not a photo")
    write_image(root / "masks/text.png", make_person_mask(60, 80))
    write_image(root / "images/classes.png", make_photo(60, 80))
    write_image(root / "masks/classes.png", (make_person_mask(60, 80) // 255) * np.uint8(3) + 1)
    write_image(root / "images/badmask.jpg", make_photo(60, 80))
    (root / "masks/badmask.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = ingest(create_source("folder", root), tmp_path / "out")
    skipped = {e["file"]: e["reason"] for e in result.report["skipped"]}
    assert "truncated" in skipped["images/truncated.jpg"]
    assert skipped["images/text.jpg"].startswith("corrupt image")
    assert skipped["masks/classes.png"].startswith("unknown mask encoding")
    assert skipped["masks/badmask.png"].startswith("unreadable mask")
    assert result.ingested == 2 and result.skipped == 4


def test_second_run_reuses_without_decoding(tmp_path, monkeypatch):
    root = build_folder(tmp_path / "in")
    write_image(root / "masks/p1.png", make_person_mask(30, 40, 1))  # a repaired sample
    (root / "images/bad.jpg").write_text("corrupt")  # a skipped one
    write_image(root / "masks/bad.png", make_person_mask(60, 80))
    source = create_source("folder", root)
    first = ingest(source, tmp_path / "out")
    manifest = (tmp_path / "out/manifest.jsonl").read_text()

    def no_decoding(path):
        raise AssertionError(f"decoded {path} on a re-run over unchanged input")

    monkeypatch.setattr(engine, "read_image", no_decoding)
    second = ingest(source, tmp_path / "out")
    assert (second.reused, second.ingested) == (5, 4)
    assert (tmp_path / "out/manifest.jsonl").read_text() == manifest
    assert second.report["repaired"] == first.report["repaired"] and second.report["skipped"] == first.report["skipped"]

    monkeypatch.undo()
    changed = root / "images/p2.jpg"
    write_image(changed, make_photo(60, 80, 99))
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse file systems
    third = ingest(source, tmp_path / "out")
    assert third.reused == 4 and third.report["counts"]["processed"] == 1
    assert ingest(source, tmp_path / "out", max_side=40).reused == 0  # other options: no re-use


def test_stale_outputs_are_removed(tmp_path):
    root = build_folder(tmp_path / "in")
    ingest(create_source("folder", root), tmp_path / "out")
    (root / "images/p3.jpg").unlink()
    (root / "masks/p3.png").unlink()
    result = ingest(create_source("folder", root), tmp_path / "out")
    assert result.report["counts"]["removed_stale_files"] == 2
    assert len(os.listdir(tmp_path / "out/images")) == len(os.listdir(tmp_path / "out/masks")) == 3


def test_max_side_downscales_and_keeps_binary_masks_binary(tmp_path):
    root = build_folder(tmp_path / "in", count=1)
    ingest(create_source("folder", root), tmp_path / "out", max_side=40)
    row = next(read_manifest(tmp_path / "out"))
    mask = cv2.imread(str(tmp_path / "out" / row["mask"]), cv2.IMREAD_UNCHANGED)
    assert (row["width"], row["height"]) == (40, 30) and mask.shape == (30, 40)
    assert set(np.unique(mask)) == {0, 255}


def test_parallel_workers_give_the_same_set(tmp_path):
    source = create_source("folder", build_folder(tmp_path / "in", count=12))
    ingest(source, tmp_path / "one", workers=1)
    ingest(source, tmp_path / "two", workers=2)
    assert (tmp_path / "one/manifest.jsonl").read_text() == (tmp_path / "two/manifest.jsonl").read_text()
    for row in read_manifest(tmp_path / "one"):
        for field in ("image", "mask"):
            assert (tmp_path / "one" / row[field]).read_bytes() == (tmp_path / "two" / row[field]).read_bytes()


def test_cli_summary_exit_codes_and_strict(tmp_path):
    root = build_folder(tmp_path / "in", count=2)
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", "folder", "--input", str(root), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "in: 2 samples ingested (0 reused" in result.output
    write_image(root / "masks/orphan.png", make_person_mask(60, 80))
    args = ["ingest", "folder", "--input", str(root), "--output", str(tmp_path / "out")]
    relaxed = runner.invoke(main, args)
    assert relaxed.exit_code == 0 and "orphan mask" in relaxed.output
    strict = runner.invoke(main, [*args, "--strict"])
    assert strict.exit_code != 0 and "--strict: 1 inputs were skipped" in strict.output
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["skipped"] == [{"file": "masks/orphan.png", "reason": "orphan mask: no image with its stem in images"}]


def test_cli_wrong_layout_and_nothing_ingested(tmp_path):
    runner = CliRunner()
    (tmp_path / "other").mkdir()
    (tmp_path / "other/file.txt").write_text("x")
    wrong = runner.invoke(main, ["ingest", "kaggle-people", "--input", str(tmp_path / "other"), "--output", str(tmp_path / "o")])
    assert wrong.exit_code != 0 and "Expected" in wrong.output and "masks/" in wrong.output
    missing = runner.invoke(main, ["ingest", "folder", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    (tmp_path / "bad/images").mkdir(parents=True)
    (tmp_path / "bad/masks").mkdir()
    (tmp_path / "bad/images/a.jpg").write_text("corrupt")
    write_image(tmp_path / "bad/masks/a.png", make_person_mask(10, 10))
    nothing = runner.invoke(main, ["ingest", "folder", "--input", str(tmp_path / "bad"), "--output", str(tmp_path / "o")])
    assert nothing.exit_code != 0 and "no sample could be ingested" in nothing.output
    misuse = runner.invoke(main, ["ingest", "pfcn", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--neutral", "person"])
    assert misuse.exit_code == 2 and "supervisely" in misuse.output

"""PFCN adapter: .mat masks, split lists, images fetched by the user (many missing)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from conftest import make_person_mask, make_photo, write_image

from datatool.cli import main
from datatool.ingest import ingest
from datatool.masks import MaskError
from datatool.report import Report
from datatool.sources import LayoutError, create_source
from datatool.sources.base import Record
from datatool.sources.pfcn import PfcnSource

HEIGHT, WIDTH = 800, 600  # every PFCN mask and cropped image is 800 high x 600 wide
MASK_IDS = ["00001", "00002", "00004", "00007", "00602"]
FETCHED_IDS = ["00001", "00002", "00007", "00602", "00009"]  # 00004's URL is dead; 00009 has no mask


def write_mat(path: Path, **variables) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables)  # MATLAB 5 format, like the release
    return path


def build_release(root: Path) -> dict[str, np.ndarray]:
    """A PFCN release in its exact layout; returns the 0/1 mask of each mask id.

    00001, 00002: train, fetched.   00004: train, image never fetched (dead link).
    00007: in neither split list.   00602: test, its mask file is corrupt.
    00009: a fetched image without a mask.
    """
    masks = {}
    for seed, sample_id in enumerate(MASK_IDS):
        masks[sample_id] = (make_person_mask(HEIGHT, WIDTH, seed) > 0).astype(np.uint8)
        write_mat(root / "images_mask" / f"{sample_id}_mask.mat", mask=masks[sample_id])
        write_mat(root / "images_tracker" / f"{sample_id}.mat", tracker=np.zeros((49, 2)))
    (root / "images_mask" / "00602_mask.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    for seed, sample_id in enumerate(FETCHED_IDS):
        write_image(root / "images_data_crop" / f"{sample_id}.jpg", make_photo(HEIGHT, WIDTH, seed))
    write_mat(root / "trainlist.mat", trainlist=np.array([[1, 2, 4]], np.uint16))
    write_mat(root / "testlist.mat", testlist=np.array([[602]], np.uint16))
    (root / "alldata_urls.txt").write_text("".join(f"{i}.jpg http://example.invalid/{i}.jpg\n" for i in MASK_IDS))
    (root / "crop.txt").write_text("".join(f"{i}.jpg 0 800 0 600\n" for i in MASK_IDS))
    (root / "images_mask" / "._00001_mask.mat").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble junk
    (root / "images_data_crop" / ".DS_Store").write_bytes(b"\x00")
    return masks


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "EG_code_data_release" / "data"
    return root, build_release(root)


def scan(root: Path) -> tuple[list[Record], Report]:
    report = Report(root)
    return PfcnSource(root).scan(report), report


def test_scan_pairs_by_id_with_official_splits(release):
    root, _ = release
    records, _ = scan(root)
    assert [record.key for record in records] == [
        "images_data_crop/00001.jpg",
        "images_data_crop/00002.jpg",
        "images_data_crop/00007.jpg",
        "images_data_crop/00602.jpg",
    ]
    by_group = {record.group: record for record in records}
    assert {group: record.official_split for group, record in by_group.items()} == {
        "00001": "train",
        "00002": "train",
        "00007": None,  # in neither list, like 58 released masks
        "00602": "test",
    }
    assert by_group["00007"].mask == root / "images_mask" / "00007_mask.mat"
    assert by_group["00007"].image == root / "images_data_crop" / "00007.jpg"


def test_scan_reports_missing_images_orphans_and_junk_but_not_release_files(release):
    root, _ = release
    _, report = scan(root)
    skipped = {entry["file"]: entry["reason"] for entry in report.skipped}
    assert set(skipped) == {"images_mask/00004_mask.mat", "images_data_crop/00009.jpg"}
    missing = skipped["images_mask/00004_mask.mat"]
    # The hint comes before the first ':', which is what the CLI's per-reason summary shows.
    assert missing.split(":")[0] == "image missing, `datatool fetch pfcn --release DIR` downloads it"
    assert "images_data_crop/00004.jpg not found" in missing
    assert "image without a mask" in skipped["images_data_crop/00009.jpg"]
    ignored = {entry["file"] for entry in report.ignored}
    assert ignored == {"images_mask/._00001_mask.mat", "images_data_crop/.DS_Store"}
    assert report.counts["missing_image"] == 1
    assert report.counts["orphan_image"] == 1
    assert report.counts["in_no_split_list"] == 1
    assert report.counts["masks_found"] == 5


def test_read_mask_normalises_0_1_to_255(release):
    root, masks = release
    record = next(record for record in scan(root)[0] if record.group == "00002")
    mask = PfcnSource(root).read_mask(record)
    assert mask.pixels.dtype == np.uint8 and mask.pixels.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(mask.pixels, masks["00002"] * 255)
    assert mask.pixels.max() == 255 and 0 < mask.pixels.mean() < 255
    assert (mask.kind, mask.encoding) == ("binary", "mat mask 0/1")


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"label": np.ones((8, 6), np.uint8)}, "no variable 'mask' in the .mat file (found: label)"),
        ({"mask": np.ones((8, 6), np.float64)}, "variable 'mask' is float64, expected uint8"),
        ({"mask": np.ones((8, 6, 3), np.uint8)}, "variable 'mask' has shape (8, 6, 3)"),
        ({"mask": np.array([[0, 1], [2, 3]], np.uint8)}, "look like class indices"),
    ],
)
def test_read_mask_rejects_wrong_contents(tmp_path, variables, reason):
    path = write_mat(tmp_path / "images_mask" / "00001_mask.mat", **variables)
    record = Record(key="images_data_crop/00001.jpg", image=tmp_path / "x.jpg", mask=path, group="00001")
    with pytest.raises(MaskError, match="^.*" + reason.replace("(", r"\(").replace(")", r"\)")):
        PfcnSource(tmp_path).read_mask(record)


@pytest.mark.parametrize("content", [None, b"", b"MATLAB 5.0 MAT-file" + bytes(300)])
def test_read_mask_unreadable_file_is_a_mask_error(tmp_path, content):
    path = tmp_path / "00001_mask.mat"
    if content is not None:
        path.write_bytes(content)
    record = Record(key="images_data_crop/00001.jpg", image=tmp_path / "x.jpg", mask=path, group="00001")
    with pytest.raises(MaskError, match="unreadable .mat mask"):
        PfcnSource(tmp_path).read_mask(record)


def test_corrupt_mask_of_the_release_is_a_mask_error(release):
    root, _ = release
    record = next(record for record in scan(root)[0] if record.group == "00602")
    with pytest.raises(MaskError, match="unreadable .mat mask"):
        PfcnSource(root).read_mask(record)


def test_not_pfcn_at_all_raises_layout_error(tmp_path):
    with pytest.raises(LayoutError, match="empty"):
        scan(tmp_path)
    write_image(tmp_path / "images" / "a.jpg", make_photo(8, 6))
    write_image(tmp_path / "masks" / "a.png", make_person_mask(8, 6))
    with pytest.raises(LayoutError, match=r"no images_mask/ folder.*Expected layout:\n.*NNNNN_mask\.mat"):
        scan(tmp_path)


def test_release_without_any_fetched_image_says_how_to_fetch(release):
    root, _ = release
    for image in (root / "images_data_crop").iterdir():
        image.unlink()
    (root / "images_data_crop").rmdir()
    with pytest.raises(LayoutError, match="run `datatool fetch pfcn --release DIR`"):
        scan(root)


def test_masks_folder_without_mat_files_is_a_layout_error(tmp_path):
    write_image(tmp_path / "images_mask" / "00001.png", make_person_mask(8, 6))
    with pytest.raises(LayoutError, match=r"no \*_mask.mat files"):
        scan(tmp_path)


def test_split_lists_may_be_stored_as_double_and_one_may_be_missing(release):
    root, _ = release
    write_mat(root / "trainlist.mat", trainlist=np.array([[1.0, 7.0]]))
    (root / "testlist.mat").unlink()
    records, report = scan(root)
    assert {record.group: record.official_split for record in records} == {
        "00001": "train",
        "00002": None,
        "00007": "train",
        "00602": None,
    }
    missing_list = {"file": "testlist.mat", "reason": "split list not found: its ids get no official test split"}
    assert missing_list in report.ignored


@pytest.mark.parametrize(
    ("file", "variables", "problem"),
    [
        ("trainlist.mat", {"ids": np.array([[1]], np.uint16)}, "no variable 'trainlist'"),
        ("testlist.mat", {"testlist": np.array([[0, 3]], np.uint16)}, "does not hold positive integer ids"),
        ("testlist.mat", {"testlist": np.array([[2.5]])}, "does not hold positive integer ids"),
    ],
)
def test_broken_split_lists_are_reported_and_their_samples_kept_unsplit(release, file, variables, problem):
    root, _ = release
    write_mat(root / file, **variables)
    records, report = scan(root)
    assert len(records) == 4
    broken_ids = {"trainlist.mat": {"00001", "00002"}, "testlist.mat": {"00602"}}[file]
    assert all(record.official_split is None for record in records if record.group in broken_ids)
    (reason,) = [entry["reason"] for entry in report.skipped if entry["file"] == file]
    assert reason.startswith("unusable split list, its ids get no official") and problem in reason


def test_an_id_in_both_split_lists_goes_to_train_and_is_reported(release):
    root, _ = release
    write_mat(root / "testlist.mat", testlist=np.array([[2, 602]], np.uint16))
    records, report = scan(root)
    assert {record.group: record.official_split for record in records}["00002"] == "train"
    conflict = {"file": "testlist.mat", "reason": "id in both trainlist.mat and testlist.mat: 00002 (official_split set to train)"}
    assert conflict in report.repaired


def test_unreadable_split_list_is_reported_and_its_samples_kept_unsplit(release):
    root, _ = release
    (root / "trainlist.mat").write_bytes(b"not a mat file")
    records, report = scan(root)
    assert {record.group: record.official_split for record in records} == {
        "00001": None,
        "00002": None,
        "00007": None,
        "00602": "test",
    }
    (reason,) = [entry["reason"] for entry in report.skipped if entry["file"] == "trainlist.mat"]
    assert reason.startswith("unusable split list, its ids get no official train split: unreadable .mat file")


def test_registered_as_pfcn(release):
    root, _ = release
    assert isinstance(create_source("pfcn", root), PfcnSource)


def test_ingest_end_to_end(release, tmp_path):
    root, masks = release
    output = tmp_path / "canonical"
    result = ingest(PfcnSource(root), output)
    assert (result.ingested, result.reused) == (3, 0)

    rows = {row["group"]: row for row in map(json.loads, (output / "manifest.jsonl").read_text().splitlines())}
    assert set(rows) == {"pfcn/00001", "pfcn/00002", "pfcn/00007"}
    assert {group: row["official_split"] for group, row in rows.items()} == {
        "pfcn/00001": "train",
        "pfcn/00002": "train",
        "pfcn/00007": None,
    }
    row = rows["pfcn/00007"]
    assert (row["width"], row["height"]) == (WIDTH, HEIGHT)
    assert (row["source_image"], row["source_mask"]) == ("images_data_crop/00007.jpg", "images_mask/00007_mask.mat")
    assert (row["mask_kind"], row["mask_encoding"], row["source_format"]) == ("binary", "mat mask 0/1", "pfcn")
    written = cv2.imread(str(output / row["mask"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, masks["00007"] * 255)

    skipped = {entry["file"]: entry["reason"] for entry in result.report["skipped"]}
    assert set(skipped) == {"images_mask/00004_mask.mat", "images_data_crop/00009.jpg", "images_mask/00602_mask.mat"}
    assert "datatool fetch pfcn" in skipped["images_mask/00004_mask.mat"]
    assert skipped["images_mask/00602_mask.mat"].startswith("unreadable .mat mask")

    again = ingest(PfcnSource(root), output)
    assert (again.ingested, again.reused) == (3, 4)  # the corrupt mask's outcome is re-used too


def test_cli_ingest_shows_the_fetch_hint(release, tmp_path):
    root, _ = release
    output = tmp_path / "canonical"
    arguments = ["ingest", "pfcn", "--input", str(root), "--output", str(output), "--workers", "2"]
    outcome = CliRunner().invoke(main, arguments)
    assert outcome.exit_code == 0, outcome.output
    assert "pfcn: 3 samples ingested" in outcome.output
    hint = "image missing, `datatool fetch pfcn --release DIR` downloads it  (e.g. images_mask/00004_mask.mat)"
    assert hint in outcome.output
    assert len((output / "manifest.jsonl").read_text().splitlines()) == 3

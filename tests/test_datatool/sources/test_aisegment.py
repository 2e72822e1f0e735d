"""AISegment adapter: tiny fixtures in the exact `clip_img/` + `matting/` layout, with the set's quirks."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_person_mask, make_photo, write_image

from datatool.cli import main
from datatool.ingest import ingest
from datatool.masks import MaskError
from datatool.report import Report
from datatool.sources import create_source
from datatool.sources.aisegment import AISegmentSource
from datatool.sources.base import LayoutError

HEIGHT, WIDTH = 16, 12  # the set's 800x600 portrait shape, scaled down
GROUP_A, GROUP_B = "1803201916", "1803241125"


def soft_alpha(seed: int) -> np.ndarray:
    """A matte with soft edges: a blurred person, so values between 0 and 255 occur."""
    alpha = cv2.GaussianBlur(make_person_mask(HEIGHT, WIDTH, seed), (5, 5), 0)
    assert 0 < np.count_nonzero((alpha > 0) & (alpha < 255)), "the fixture matte must be soft"
    return alpha


def image_path(copy: Path, group: str, number: int, clip: int = 0) -> Path:
    return copy / "clip_img" / group / f"clip_{clip:08d}" / f"{group}-{number:08d}.jpg"


def matte_path(copy: Path, group: str, number: int, clip: int = 0) -> Path:
    return copy / "matting" / group / f"matting_{clip:08d}" / f"{group}-{number:08d}.png"


def write_pair(copy: Path, group: str, number: int, *, image: bool = True, matte: bool = True) -> np.ndarray:
    """One portrait and its RGBA matte (RGB = the cut-out person, alpha = the matte); returns the alpha."""
    seed = int(group[-3:]) + number
    photo = make_photo(HEIGHT, WIDTH, seed)
    alpha = soft_alpha(seed)
    if image:
        write_image(image_path(copy, group, number), photo)
    if matte:
        cutout = (photo.astype(np.float32) * (alpha[:, :, None] / 255.0)).astype(np.uint8)
        write_image(matte_path(copy, group, number), np.dstack([cutout, alpha]))
    return alpha


def write_junk(copy: Path) -> None:
    """The AppleDouble files of the published archive."""
    (copy / "matting" / GROUP_A).mkdir(parents=True, exist_ok=True)
    # A file where a folder would be.
    (copy / "matting" / GROUP_A / "._matting_00000000").write_bytes(b"\x00\x05\x16\x07")
    junk_image = image_path(copy, GROUP_B, 5).with_name(f"._{GROUP_B}-00000005.jpg")
    junk_image.parent.mkdir(parents=True, exist_ok=True)
    junk_image.write_bytes(b"\x00\x05\x16\x07")


@pytest.fixture
def one_copy(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Three good pairs in two sessions, junk, an orphan matte and an image without matte."""
    root = tmp_path / "aisegment"
    alphas = {
        f"{GROUP_A}-00000001": write_pair(root, GROUP_A, 1),
        f"{GROUP_A}-00000002": write_pair(root, GROUP_A, 2),
        f"{GROUP_B}-00000005": write_pair(root, GROUP_B, 5),
    }
    write_pair(root, GROUP_A, 117, image=False)  # the orphan matte the real set has
    write_pair(root, GROUP_B, 9, matte=False)
    write_junk(root)
    return root, alphas


def scan(root: Path) -> tuple[list, Report]:
    report = Report(root)
    return AISegmentSource(root).scan(report), report


def entries(entries_list: list[dict], prefix: str) -> list[str]:
    return sorted(entry["file"] for entry in entries_list if entry["reason"].startswith(prefix))


def test_scan_pairs_by_stem_with_session_groups(one_copy):
    root, _ = one_copy
    records, report = scan(root)
    assert [record.key for record in records] == [
        f"clip_img/{GROUP_A}/clip_00000000/{GROUP_A}-00000001.jpg",
        f"clip_img/{GROUP_A}/clip_00000000/{GROUP_A}-00000002.jpg",
        f"clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000005.jpg",
    ]
    for record in records:
        assert record.mask == matte_path(root, record.group, int(record.image.stem[-8:]))
        assert record.image.stem == record.mask.stem
        assert record.official_split is None
    assert [record.group for record in records] == [GROUP_A, GROUP_A, GROUP_B]


def test_scan_reports_junk_orphans_and_missing_mattes(one_copy):
    root, _ = one_copy
    _, report = scan(root)
    assert entries(report.ignored, "junk file") == [
        f"clip_img/{GROUP_B}/clip_00000000/._{GROUP_B}-00000005.jpg",
        f"matting/{GROUP_A}/._matting_00000000",
    ]
    assert entries(report.skipped, "orphan matte") == [f"matting/{GROUP_A}/matting_00000000/{GROUP_A}-00000117.png"]
    assert entries(report.skipped, "image without matte") == [
        f"clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000009.jpg"
    ]
    assert len(report.skipped) == 2
    assert report.counts["orphan_matte"] == 1 and report.counts["image_without_matte"] == 1


def kaggle_archive(root: Path) -> None:
    """The Kaggle archive: the set at the top and again in `matting_human_half/`.

    The nested copy has one pair the top copy lacks (it must still be ingested) and one image
    whose bytes differ from the top copy's (reported, the top copy's is kept).
    """
    nested = root / "matting_human_half"
    for copy in (root, nested):
        write_pair(copy, GROUP_A, 1)
        write_pair(copy, GROUP_B, 5)
        write_junk(copy)
    write_pair(nested, GROUP_B, 7)
    write_image(image_path(nested, GROUP_A, 1), make_photo(HEIGHT, WIDTH, seed=99), [cv2.IMWRITE_JPEG_QUALITY, 50])


def test_kaggle_archive_ingests_one_copy_and_reports_the_other(tmp_path):
    root = tmp_path / "archive"
    kaggle_archive(root)
    records, report = scan(root)
    assert [record.key for record in records] == [
        f"clip_img/{GROUP_A}/clip_00000000/{GROUP_A}-00000001.jpg",
        f"clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000005.jpg",
        f"matting_human_half/clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000007.jpg",
    ]
    # The pair only in the nested copy is taken from there, matte included.
    assert records[2].mask == matte_path(root / "matting_human_half", GROUP_B, 7)
    assert [record.group for record in records] == [GROUP_A, GROUP_B, GROUP_B]

    duplicates = {entry["file"]: entry for entry in report.ignored if entry["reason"].startswith("duplicate copy")}
    assert sorted(duplicates) == ["matting_human_half/clip_img", "matting_human_half/matting"]
    assert duplicates["matting_human_half/clip_img"]["duplicates"] == 2
    assert duplicates["matting_human_half/matting"]["duplicates"] == 2
    assert report.counts["duplicate_clip_img_files"] == 2 and report.counts["duplicate_matting_files"] == 2
    assert entries(report.ignored, "second copy differs") == [
        f"matting_human_half/clip_img/{GROUP_A}/clip_00000000/{GROUP_A}-00000001.jpg"
    ]
    assert len(entries(report.ignored, "junk file")) == 4  # both copies' AppleDouble files
    assert report.skipped == []


@pytest.mark.parametrize("layout", ["nested copy as the root", "parent of the nested copy only"])
def test_root_may_be_the_nested_copy_or_its_parent(tmp_path, layout):
    download = tmp_path / "download"
    nested = download / "matting_human_half"
    write_pair(nested, GROUP_A, 1)
    write_pair(nested, GROUP_B, 5)
    root = nested if layout == "nested copy as the root" else download
    records, report = scan(root)
    prefix = "" if root == nested else "matting_human_half/"
    assert [record.key for record in records] == [
        f"{prefix}clip_img/{GROUP_A}/clip_00000000/{GROUP_A}-00000001.jpg",
        f"{prefix}clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000005.jpg",
    ]
    assert [record.group for record in records] == [GROUP_A, GROUP_B]
    assert report.ignored == [] and report.skipped == []


def test_read_mask_keeps_the_soft_alpha_exactly(one_copy):
    root, alphas = one_copy
    source = AISegmentSource(root)
    records, _ = scan(root)
    for record in records:
        mask = source.read_mask(record)
        assert (mask.kind, mask.encoding) == ("alpha", "rgba alpha")
        assert mask.pixels.dtype == np.uint8 and mask.pixels.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(mask.pixels, alphas[record.image.stem])


def test_read_mask_accepts_a_grey_matte_and_rejects_rgb(tmp_path):
    root = tmp_path / "aisegment"
    write_pair(root, GROUP_A, 1, matte=False)
    write_pair(root, GROUP_A, 2, matte=False)
    write_pair(root, GROUP_A, 3, matte=False)
    write_pair(root, GROUP_A, 4, matte=False)
    grey = soft_alpha(1)
    write_image(matte_path(root, GROUP_A, 1), grey)
    write_image(matte_path(root, GROUP_A, 2), make_photo(HEIGHT, WIDTH))  # RGB, no alpha: no matte
    write_image(matte_path(root, GROUP_A, 3), grey)
    matte_path(root, GROUP_A, 3).write_bytes(matte_path(root, GROUP_A, 3).read_bytes()[:-12])  # IEND chunk cut off
    matte_path(root, GROUP_A, 4).parent.mkdir(parents=True, exist_ok=True)
    matte_path(root, GROUP_A, 4).write_bytes(b"")
    source = AISegmentSource(root)
    records = {record.image.stem[-1]: record for record in source.scan(Report(root))}

    mask = source.read_mask(records["1"])
    assert (mask.kind, mask.encoding) == ("alpha", "gray matte 0..255 soft")
    np.testing.assert_array_equal(mask.pixels, grey)
    with pytest.raises(MaskError, match="unknown matte encoding"):
        source.read_mask(records["2"])
    with pytest.raises(MaskError, match="truncated"):
        source.read_mask(records["3"])
    with pytest.raises(MaskError, match="empty file"):
        source.read_mask(records["4"])


def test_layout_errors_name_the_expected_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"junk")  # junk alone is still empty
    other = tmp_path / "people_segmentation"
    write_image(other / "images" / "a.jpg", make_photo(HEIGHT, WIDTH))
    write_image(other / "masks" / "a.png", make_person_mask(HEIGHT, WIDTH))
    hollow = tmp_path / "hollow"
    (hollow / "clip_img" / GROUP_A).mkdir(parents=True)
    (hollow / "matting").mkdir()
    for root, problem in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "empty", "is empty"),
        (other, "no clip_img/ or matting/ folder"),
        (hollow, "hold no image or matte files"),
    ]:
        with pytest.raises(LayoutError, match=problem) as raised:
            AISegmentSource(root).scan(Report(root))
        assert "clip_img/<group>/clip_<8 digits>/<group>-<8 digits>.jpg" in str(raised.value)


def test_ingest_writes_soft_mattes_and_reports_every_quirk(tmp_path):
    root = tmp_path / "archive"
    kaggle_archive(root)
    write_pair(root, GROUP_A, 117, image=False)
    write_pair(root, GROUP_B, 9, matte=False)
    output = tmp_path / "canonical"

    result = ingest(AISegmentSource(root), output)

    assert (result.ingested, result.skipped) == (3, 2)
    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    assert [row["source_image"] for row in rows] == [
        f"clip_img/{GROUP_A}/clip_00000000/{GROUP_A}-00000001.jpg",
        f"clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000005.jpg",
        f"matting_human_half/clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000007.jpg",
    ]
    for row in rows:
        stem = Path(row["source_image"]).stem
        group, number = stem.split("-")
        assert row["source_mask"].endswith(f"matting/{group}/matting_00000000/{stem}.png")
        assert (row["source"], row["source_format"]) == ("aisegment", "aisegment")
        assert (row["mask_kind"], row["mask_encoding"]) == ("alpha", "rgba alpha")
        assert (row["width"], row["height"]) == (WIDTH, HEIGHT)
        assert row["group"] == f"aisegment/{group}"
        assert row["official_split"] is None
        written = cv2.imread(str(output / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert written.ndim == 2
        np.testing.assert_array_equal(written, soft_alpha(int(group[-3:]) + int(number)))  # soft values exact
        assert cv2.imread(str(output / row["image"])).shape == (HEIGHT, WIDTH, 3)

    report = json.loads((output / "report.json").read_text())
    assert (report["skipped"], report["ignored"]) == (result.report["skipped"], result.report["ignored"])
    assert entries(report["skipped"], "orphan matte") == [
        f"matting/{GROUP_A}/matting_00000000/{GROUP_A}-00000117.png"
    ]
    assert entries(report["skipped"], "image without matte") == [
        f"clip_img/{GROUP_B}/clip_00000000/{GROUP_B}-00000009.jpg"
    ]
    assert entries(report["ignored"], "duplicate copy") == ["matting_human_half/clip_img", "matting_human_half/matting"]
    assert len(entries(report["ignored"], "junk file")) == 4
    assert report["mask_encodings"] == {"rgba alpha": 3}


def test_cli_ingests_aisegment_and_explains_a_wrong_input(tmp_path, one_copy):
    root, _ = one_copy
    assert isinstance(create_source("aisegment", root), AISegmentSource)
    runner = CliRunner()
    arguments = ["ingest", "aisegment", "--input", str(root), "--output", str(tmp_path / "out"), "--workers", "1"]
    result = runner.invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "aisegment: 3 samples ingested" in result.output
    assert "orphan matte" in result.output and "image without matte" in result.output

    wrong = runner.invoke(
        main, ["ingest", "aisegment", "--input", str(tmp_path / "out"), "--output", str(tmp_path / "o")]
    )
    assert wrong.exit_code == 1
    assert "does not look like aisegment" in wrong.output and "clip_img/<group>" in wrong.output

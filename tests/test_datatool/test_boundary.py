"""`datatool boundary`: edge bands exactly where the outline is, and a complete output set."""

import json
import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from datatool.boundary import build_boundaries, edge_map
from datatool.canonical import read_manifest, write_manifest
from datatool.cli import main
from conftest import make_person_mask, make_photo, write_image


def half_mask(height: int = 20, width: int = 30, column: int = 15) -> np.ndarray:
    """Person on the columns from `column` on: one straight vertical outline."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, column:] = 255
    return mask


def band_columns(edge: np.ndarray, row: int = 10) -> list[int]:
    return np.nonzero(edge[row])[0].tolist()


@pytest.mark.parametrize(
    ("width", "columns"),
    [(1, [15]), (2, [14, 15]), (3, [14, 15, 16]), (4, [13, 14, 15, 16]), (6, [12, 13, 14, 15, 16, 17])],
)
def test_morph_band_has_the_width_and_straddles_the_outline(width, columns):
    edge = edge_map(half_mask(), width, "morph")
    assert set(np.unique(edge)) == {0, 255}
    # Every row of a straight vertical outline has the same band; the frame is not an outline.
    assert (edge == edge[10]).all()
    assert band_columns(edge) == columns


def test_morph_band_of_a_square_is_a_ring_without_the_frame_edge():
    mask = np.zeros((30, 30), np.uint8)
    mask[10:20, 10:] = 255  # a block touching the right border of the frame
    edge = edge_map(mask, 4, "morph")
    assert band_columns(edge, 15) == [8, 9, 10, 11]  # left outline: 2 px outside, 2 inside
    assert np.nonzero(edge[:, 25])[0].tolist() == [8, 9, 10, 11, 18, 19, 20, 21]  # top and bottom
    assert not edge[15, 12:].any()  # deep inside, and along the frame, nothing
    assert not edge[0].any() and not edge[29].any()


def test_soft_masks_are_thresholded_at_128():
    soft = np.zeros((20, 30), np.uint8)
    soft[:, 13] = 100  # below the person level: background
    soft[:, 14] = 127
    soft[:, 15:] = 128  # from here: person
    soft[:, 20:] = 200
    assert np.array_equal(edge_map(soft, 4, "morph"), edge_map(half_mask(), 4, "morph"))


@pytest.mark.parametrize("method", ["canny", "sobel"])
@pytest.mark.parametrize("width", [2, 4, 8])
def test_canny_and_sobel_bands_are_thickened_to_the_width(method, width):
    edge = edge_map(half_mask(40, 40, 20), width, method)
    columns = band_columns(edge, 20)
    assert len(columns) == width
    assert columns == list(range(columns[0], columns[0] + width))  # one contiguous band
    assert columns[0] <= 19 and columns[-1] >= 20  # across the outline (19 background, 20 person)


def test_methods_differ_and_unknown_ones_are_refused():
    mask = make_person_mask(64, 48, seed=3)
    maps = {method: edge_map(mask, 5, method) for method in ("morph", "canny", "sobel")}
    assert not np.array_equal(maps["morph"], maps["canny"])
    assert not np.array_equal(maps["canny"], maps["sobel"])
    for edge in maps.values():  # every band lies near the outline: within the width of it
        outline = cv2.dilate(maps["morph"], np.ones((5, 5), np.uint8))
        assert edge.any() and not (edge & ~outline).any()
    with pytest.raises(ValueError, match="unknown edge method"):
        edge_map(mask, 4, "laplace")
    with pytest.raises(ValueError, match="at least 1"):
        edge_map(mask, 0, "morph")


def test_empty_and_full_masks_have_no_edges():
    for value in (0, 255):
        assert not edge_map(np.full((16, 16), value, np.uint8), 4, "morph").any()


def make_set(root, count=3, soft=False):
    """A tiny canonical set with a teacher_masks/ folder and one extra field per row."""
    rows = []
    for index in range(count):
        sample_id = f"person{index}-0123456789"
        write_image(root / "images" / f"{sample_id}.jpg", make_photo(40, 32, seed=index))
        mask = make_person_mask(40, 32, seed=index)
        write_image(root / "masks" / f"{sample_id}.png", cv2.GaussianBlur(mask, (7, 7), 3) if soft else mask)
        write_image(root / "teacher_masks" / f"{sample_id}.png", mask)
        rows.append({
            "id": sample_id, "image": f"images/{sample_id}.jpg", "mask": f"masks/{sample_id}.png", "source": "tiny",
            "width": 32, "height": 40, "mask_kind": "soft" if soft else "binary", "group": f"tiny/{index}",
            "teacher_mask": f"teacher_masks/{sample_id}.png", "confidence": 0.9,
        })  # fmt: skip
    (root / ".pseudolabel-state.jsonl").write_text("{}\n")
    write_manifest(root, rows)
    return rows


def test_output_set_links_every_file_and_adds_edges(tmp_path):
    rows = make_set(tmp_path / "in")
    result = build_boundaries(tmp_path / "in", tmp_path / "out", width=3, method="morph")
    assert result.written == 3 and result.skipped == 0
    out_rows = list(read_manifest(tmp_path / "out"))
    assert [row["id"] for row in out_rows] == [row["id"] for row in rows]
    for row, out_row in zip(rows, out_rows, strict=True):
        assert out_row == {**row, "edge": f"edges/{row['id']}.png"}  # every field carried
        for field in ("image", "mask", "teacher_mask"):
            assert os.path.samefile(tmp_path / "in" / row[field], tmp_path / "out" / row[field])  # hard links
        edge = cv2.imread(str(tmp_path / "out" / out_row["edge"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / "in" / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert edge.dtype == np.uint8 and np.array_equal(edge, edge_map(mask, 3, "morph"))
    assert not (tmp_path / "out" / ".pseudolabel-state.jsonl").exists()  # state of another stage stays behind
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["linked_files"] == 9 and report["options"]["width"] == 3


def test_rerun_is_idempotent_and_drops_removed_samples(tmp_path):
    rows = make_set(tmp_path / "in")
    build_boundaries(tmp_path / "in", tmp_path / "out")
    first = (tmp_path / "out" / "manifest.jsonl").read_bytes()
    build_boundaries(tmp_path / "in", tmp_path / "out")
    assert (tmp_path / "out" / "manifest.jsonl").read_bytes() == first
    write_manifest(tmp_path / "in", rows[1:])
    build_boundaries(tmp_path / "in", tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out" / "edges").iterdir()) == [f"{row['id']}.png" for row in rows[1:]]
    assert not (tmp_path / "out" / rows[0]["image"]).exists()


def test_unreadable_mask_is_reported_and_left_out(tmp_path):
    rows = make_set(tmp_path / "in")
    (tmp_path / "in" / rows[1]["mask"]).write_bytes(b"not a png")
    result = build_boundaries(tmp_path / "in", tmp_path / "out")
    assert result.written == 2 and result.skipped == 1
    assert "unreadable mask" in result.report["skipped"][0]["reason"]
    assert not (tmp_path / "out" / rows[1]["image"]).exists()


def test_cli_soft_masks_and_method(tmp_path):
    make_set(tmp_path / "in", soft=True)
    runner = CliRunner()
    result = runner.invoke(main, ["boundary", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--width", "2", "--method", "sobel"])
    assert result.exit_code == 0, result.output
    assert "out: 3 of 3 edge maps (sobel, 2 px)" in result.output  # named after the output set
    row = next(read_manifest(tmp_path / "out"))
    edge = cv2.imread(str(tmp_path / "out" / row["edge"]), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(tmp_path / "in" / row["mask"]), cv2.IMREAD_UNCHANGED)
    assert ((mask > 0) & (mask < 255)).any()  # really a soft mask
    thresholded = np.where(mask >= 128, 255, 0).astype(np.uint8)
    assert np.array_equal(edge, edge_map(thresholded, 2, "sobel"))
    refused = runner.invoke(main, ["boundary", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "in")])
    assert refused.exit_code != 0 and "is the input" in refused.output

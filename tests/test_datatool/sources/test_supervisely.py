"""Supervisely Person adapter: fixtures in the exact export layout, bitmaps encoded as Supervisely does."""

import base64
import io
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_photo, write_image
from datatool.masks import MaskError
from datatool.report import Report
from datatool.sources import LayoutError, create_source
from datatool.sources.supervisely import SuperviselySource

HEIGHT, WIDTH = 30, 40
# An asymmetric 4-row x 5-column shape: a transposed or mirrored paste would not match it.
L_SHAPE = np.array(
    [
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0],
    ],
    bool,
)
META = {
    "classes": [
        {"title": "person_poly", "shape": "polygon", "color": "#FF0000"},
        {"title": "person_bmp", "shape": "bitmap", "color": "#00FF00"},
        {"title": "neutral", "shape": "polygon", "color": "#0000FF"},
    ],
    "tags": [{"name": "not-marked-people", "value_type": "none"}],
}


def png_of(bitmap: np.ndarray) -> bytes:
    """A 1-bit palette PNG with transparency on index 0, written the way Supervisely's SDK writes it."""
    image = Image.fromarray(bitmap.astype(np.uint8))
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0, optimize=0)
    return buffer.getvalue()


def encode_bitmap(bitmap: np.ndarray) -> str:
    """Supervisely's `bitmap.data`: base64 of the zlib-compressed PNG."""
    return base64.b64encode(zlib.compress(png_of(bitmap))).decode("ascii")


def truncated_png() -> str:
    """A bitmap whose PNG stream was cut in the middle of its image data."""
    return base64.b64encode(zlib.compress(png_of(np.ones((20, 20), bool))[:45])).decode("ascii")


def bitmap_object(bitmap: np.ndarray, origin: list[int], title: str = "person_bmp", **fields) -> dict:
    return {"classTitle": title, "geometryType": "bitmap", "bitmap": {"origin": origin, "data": encode_bitmap(bitmap)}, **fields}


def polygon_object(exterior: list, interior: list | None = None, title: str = "person_poly") -> dict:
    return {"classTitle": title, "geometryType": "polygon", "points": {"exterior": exterior, "interior": interior or []}}


def annotation(objects: list, height: int = HEIGHT, width: int = WIDTH, tags: list | None = None) -> dict:
    return {"description": "", "tags": tags or [], "size": {"height": height, "width": width}, "objects": objects}


def square(left: int, top: int, right: int, bottom: int) -> list[list[int]]:
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


class Project:
    """A Supervisely project folder under construction."""

    def __init__(self, root: Path, meta: dict | None = META):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if meta is not None:
            (root / "meta.json").write_text(json.dumps(meta))

    def image(self, dataset: str, name: str, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> Path:
        return write_image(self.root / dataset / "img" / name, make_photo(height, width, seed))

    def annotation(self, dataset: str, file_name: str, content: dict | str) -> Path:
        path = self.root / dataset / "ann" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    def sample(self, dataset: str, name: str, objects: list, **size) -> None:
        """An image with its annotation under the current name, `<image name>.json`."""
        self.image(dataset, name, size.get("height", HEIGHT), size.get("width", WIDTH))
        self.annotation(dataset, f"{name}.json", annotation(objects, **size))


def record_for(source: SuperviselySource, key: str):
    records = {record.key: record for record in source.scan(Report(source.root))}
    return records[key]


def render(tmp_path: Path, objects: list, neutral: str = "background", **size):
    """Scan a one-image project and draw its mask."""
    project = Project(tmp_path / "project")
    project.sample("ds1", "photo.png", objects, **size)
    source = SuperviselySource(project.root, neutral=neutral)
    return source.read_mask(record_for(source, "ds1/img/photo.png"))


def entry(entries: list[dict], file: str) -> dict:
    matches = [item for item in entries if item["file"] == file]
    assert len(matches) == 1, (file, entries)
    return matches[0]


# -- scan ---------------------------------------------------------------------------------------


def test_scan_pairs_both_annotation_names_and_reports_the_rest(tmp_path):
    project = Project(tmp_path / "supervisely_person")
    project.sample("ds1", "pexels-photo-358010.png", [])  # current name: <image name>.json
    project.image("ds1", "woman-portrait.jpg")
    project.annotation("ds1", "woman-portrait.json", annotation([]))  # old name: <stem>.json
    project.image("ds2", "both.png")
    project.annotation("ds2", "both.png.json", annotation([]))
    project.annotation("ds2", "both.json", annotation([]))  # old copy beside the new one
    project.annotation("ds2", "orphan.jpg.json", annotation([]))
    project.image("ds2", "lonely.jpg")
    (project.root / "ds1" / "img" / "._pexels-photo-358010.png").write_bytes(b"\x00\x05\x16\x07")
    (project.root / "ds2" / "ann" / "notes.txt").write_text("exported by hand")
    (project.root / "README.md").write_text("Supervisely Person")

    report = Report(project.root)
    source = SuperviselySource(project.root)
    records = source.scan(report)

    assert [record.key for record in records] == [
        "ds1/img/pexels-photo-358010.png",
        "ds1/img/woman-portrait.jpg",
        "ds2/img/both.png",
    ]
    by_key = {record.key: record for record in records}
    first = by_key["ds1/img/pexels-photo-358010.png"]
    assert first.image == project.root / "ds1/img/pexels-photo-358010.png"
    assert first.mask == project.root / "ds1/ann/pexels-photo-358010.png.json"
    assert first.group == "ds1/pexels-photo-358010"
    assert first.official_split is None
    assert dict(first.extra) == {"dataset": "ds1"}
    assert by_key["ds1/img/woman-portrait.jpg"].mask == project.root / "ds1/ann/woman-portrait.json"
    assert by_key["ds2/img/both.png"].mask == project.root / "ds2/ann/both.png.json"
    assert source.inputs(first) == (first.image, first.mask)

    assert "superseded by ann/both.png.json" in entry(report.ignored, "ds2/ann/both.json")["reason"]
    assert entry(report.skipped, "ds2/ann/orphan.jpg.json")["reason"].startswith("annotation without image")
    assert entry(report.skipped, "ds2/img/lonely.jpg")["reason"] == (
        "image without annotation: no ann/lonely.jpg.json or ann/lonely.json"
    )
    assert "junk" in entry(report.ignored, "ds1/img/._pexels-photo-358010.png")["reason"]
    assert entry(report.ignored, "ds2/ann/notes.txt")
    assert entry(report.ignored, "README.md")
    assert len(report.skipped) == 2
    assert report.counts["orphan_annotation"] == 1
    assert report.counts["orphan_image"] == 1
    assert report.counts["duplicate_annotation"] == 1
    assert report.counts["old_annotation_names"] == 1
    assert report.counts["images_found"] == 4
    assert report.counts["missing_meta_json"] == 0


def test_old_name_shared_by_two_images_is_ambiguous(tmp_path):
    project = Project(tmp_path / "project")
    project.image("ds1", "twin.png")
    project.image("ds1", "twin.jpg")
    project.annotation("ds1", "twin.json", annotation([]))

    report = Report(project.root)
    assert SuperviselySource(project.root).scan(report) == []
    for name in ("twin.jpg", "twin.png"):
        assert entry(report.skipped, f"ds1/img/{name}")["reason"].startswith("ambiguous annotation: ann/twin.json fits 2")
    assert not any("twin.json" in item["file"] for item in report.skipped + report.ignored)


def test_missing_meta_json_is_reported_not_fatal(tmp_path):
    project = Project(tmp_path / "project", meta=None)
    project.sample("ds1", "a.png", [])

    report = Report(project.root)
    assert [record.key for record in SuperviselySource(project.root).scan(report)] == ["ds1/img/a.png"]
    assert entry(report.ignored, "meta.json")["reason"].startswith("meta.json not found")
    assert report.counts["missing_meta_json"] == 1


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: write_image(root / "images" / "a.jpg", make_photo(8, 8)), "no dataset folder with img/ and ann/"),
        (lambda root: (root / "ds1" / "img").mkdir(parents=True), "no dataset folder with img/ and ann/"),
        (
            lambda root: [(root / "img").mkdir(), (root / "ann").mkdir()],
            "give the project folder above this dataset folder",
        ),
    ],
    ids=["other-layout", "no-ann-folder", "dataset-folder-given"],
)
def test_not_a_supervisely_project_is_a_layout_error(tmp_path, build, message):
    root = tmp_path / "input"
    root.mkdir()
    build(root)
    with pytest.raises(LayoutError, match=message):
        SuperviselySource(root).scan(Report(root))


def test_project_of_other_classes_is_a_layout_error(tmp_path):
    project = Project(tmp_path / "cars", meta={"classes": [{"title": "car", "shape": "polygon"}]})
    project.sample("ds1", "a.png", [])
    with pytest.raises(LayoutError, match="none of"):
        SuperviselySource(project.root).scan(Report(project.root))


def test_missing_input_is_a_layout_error(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        SuperviselySource(tmp_path / "nowhere").scan(Report())


# -- masks --------------------------------------------------------------------------------------


def test_bitmap_lands_at_its_origin(tmp_path):
    mask = render(tmp_path, [bitmap_object(L_SHAPE, origin=[7, 11])])  # origin = [x (column), y (row)]

    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[11:15, 7:12] = L_SHAPE * 255
    assert mask.pixels.shape == (HEIGHT, WIDTH)
    assert np.array_equal(mask.pixels, expected)
    assert (mask.kind, mask.encoding, mask.notes) == ("binary", "supervisely bitmap", [])


def test_bitmap_png_is_one_bit_palette_with_transparent_index_0():
    """The fixture encoder must produce what Supervisely exports, or the tests above prove nothing."""
    raw = zlib.decompress(base64.b64decode(encode_bitmap(L_SHAPE)))
    image = Image.open(io.BytesIO(raw))
    assert (image.mode, raw[24], raw[25]) == ("P", 1, 3)  # bit depth 1, colour type 3 (palette)
    assert image.info["transparency"] == 0
    assert np.array_equal(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)[:, :, 3] > 0, L_SHAPE)


def test_plain_base64_png_bitmap_is_accepted(tmp_path):
    item = bitmap_object(L_SHAPE, origin=[0, 0])
    item["bitmap"]["data"] = base64.b64encode(png_of(L_SHAPE)).decode("ascii")

    mask = render(tmp_path, [item])
    assert np.array_equal(mask.pixels[:4, :5], L_SHAPE * 255)
    assert int(mask.pixels.sum()) == int(L_SHAPE.sum()) * 255


def test_bitmap_beyond_the_image_is_clipped_and_reported(tmp_path):
    block = np.ones((4, 5), bool)
    mask = render(tmp_path, [bitmap_object(block, origin=[WIDTH - 2, -1])])

    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[0:3, WIDTH - 2 :] = 255  # rows -1..2 and columns 38..42 of a 30x40 image
    assert np.array_equal(mask.pixels, expected)
    assert mask.notes == [
        "bitmap clipped: object 0 (person_bmp) 5x4 at origin [38, -1] exceeds the 40x30 image (14 object pixels cut off)"
    ]


def test_polygon_hole_is_cleared(tmp_path):
    mask = render(tmp_path, [polygon_object(square(2, 2, 17, 17), interior=[square(6, 6, 11, 11)])])

    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[2:18, 2:18] = 255  # fillPoly includes the boundary pixels
    expected[6:12, 6:12] = 0
    assert np.array_equal(mask.pixels, expected)
    assert mask.pixels[8, 8] == 0 and mask.pixels[3, 3] == 255
    assert mask.encoding == "supervisely polygon"


def test_hole_does_not_erase_another_person(tmp_path):
    ring = polygon_object(square(2, 2, 17, 17), interior=[square(6, 6, 11, 11)])
    inside_hole = bitmap_object(np.ones((2, 2), bool), origin=[8, 8])
    mask = render(tmp_path, [inside_hole, ring])  # the bitmap is drawn first

    assert np.all(mask.pixels[8:10, 8:10] == 255)
    assert mask.pixels[7, 7] == 0 and mask.pixels[10, 10] == 0
    assert mask.encoding == "supervisely bitmap+polygon"


def test_geometry_is_picked_by_key_when_geometry_type_is_missing(tmp_path):
    bitmap = bitmap_object(L_SHAPE, origin=[1, 1])
    del bitmap["geometryType"]
    bitmap["points"] = {"exterior": [], "interior": []}  # old exports carry an empty ring too
    polygon = polygon_object(square(20, 20, 25, 25))
    del polygon["geometryType"]

    mask = render(tmp_path, [bitmap, polygon])
    assert np.array_equal(mask.pixels[1:5, 1:6], L_SHAPE * 255)
    assert np.all(mask.pixels[20:26, 20:26] == 255)
    assert int(mask.pixels.sum()) == (int(L_SHAPE.sum()) + 36) * 255
    assert mask.encoding == "supervisely bitmap+polygon"


@pytest.mark.parametrize(
    ("neutral", "neutral_value"),
    [("background", 0), ("person", 255)],
)
def test_neutral_policy(tmp_path, neutral, neutral_value):
    objects = [polygon_object(square(1, 1, 5, 5)), polygon_object(square(20, 10, 30, 20), title="neutral")]
    mask = render(tmp_path, objects, neutral=neutral)

    assert np.all(mask.pixels[1:6, 1:6] == 255)
    assert np.all(mask.pixels[10:21, 20:31] == neutral_value)
    assert mask.notes == []


def test_neutral_skip_drops_the_image_with_a_reason(tmp_path):
    with pytest.raises(MaskError, match="neutral object present"):
        render(tmp_path, [polygon_object(square(1, 1, 5, 5), title="neutral")], neutral="skip")


def test_neutral_policy_is_an_option_and_validated(tmp_path):
    assert SuperviselySource(tmp_path).options() == {"neutral": "background"}
    assert create_source("supervisely", tmp_path, neutral="skip").options() == {"neutral": "skip"}
    with pytest.raises(ValueError, match="background, person, skip"):
        SuperviselySource(tmp_path, neutral="maybe")


def test_unknown_class_is_reported_and_not_drawn(tmp_path):
    mask = render(tmp_path, [polygon_object(square(1, 1, 5, 5), title="car"), polygon_object(square(10, 10, 12, 12))])

    assert mask.pixels[3, 3] == 0
    assert np.all(mask.pixels[10:13, 10:13] == 255)
    assert mask.notes == ["ignored object of class 'car'"]


def test_image_without_objects_gives_an_empty_mask(tmp_path):
    mask = render(tmp_path, [], height=12, width=16)

    assert mask.pixels.shape == (12, 16)
    assert not mask.pixels.any()
    assert (mask.kind, mask.encoding, mask.notes) == ("binary", "supervisely empty", [])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"size": {"height": 30, "width": 40}, "objects": [', "malformed annotation JSON"),
        (json.dumps({"objects": []}), "annotation has no 'size'"),
        (json.dumps({"size": {"height": 0, "width": 40}, "objects": []}), "invalid size"),
        (json.dumps({"size": {"height": 10**6, "width": 10**6}, "objects": []}), "implausibly large"),
        (json.dumps(annotation([{"classTitle": "person_bmp", "bitmap": {"origin": [0, 0], "data": "not base64!"}}])), "bad base64"),
        (
            json.dumps(annotation([{"classTitle": "person_bmp", "bitmap": {"origin": [0, 0], "data": "aGVsbG8="}}])),
            "neither zlib-compressed nor a PNG",
        ),
        (
            json.dumps(annotation([{"classTitle": "person_bmp", "bitmap": {"origin": [0, 0], "data": truncated_png()}}])),
            "unreadable bitmap PNG",
        ),
        (json.dumps(annotation([{"classTitle": "person_bmp", "bitmap": {"data": encode_bitmap(L_SHAPE)}}])), "origin None"),
        (json.dumps(annotation([{"classTitle": "person_poly"}])), "neither 'bitmap' nor 'points'"),
        (json.dumps(annotation([polygon_object([[1, 2, 3]])])), "malformed polygon"),
    ],
    ids=["truncated-json", "no-size", "zero-size", "huge-size", "bad-base64", "not-zlib", "truncated-png", "no-origin", "no-geometry", "bad-ring"],
)
def test_malformed_annotation_raises_mask_error(tmp_path, content, reason):
    project = Project(tmp_path / "project")
    project.image("ds1", "a.jpg")
    project.annotation("ds1", "a.jpg.json", content)
    source = SuperviselySource(project.root)

    with pytest.raises(MaskError, match=reason):
        source.read_mask(record_for(source, "ds1/img/a.jpg"))


# -- end to end ---------------------------------------------------------------------------------


def build_mixed_project(root: Path) -> Project:
    project = Project(root)
    project.sample("ds1", "bitmap.png", [bitmap_object(L_SHAPE, origin=[7, 11])])
    project.image("ds1", "old-name.jpg", seed=1)
    project.annotation("ds1", "old-name.json", annotation([polygon_object(square(2, 2, 17, 17), [square(6, 6, 11, 11)])]))
    project.sample("ds1", "with-car.png", [polygon_object(square(1, 1, 5, 5), title="car")])
    project.sample("ds2", "empty.png", [], height=HEIGHT, width=WIDTH)
    project.sample("ds2", "neutral.png", [polygon_object(square(20, 10, 30, 20), title="neutral")])
    project.image("ds2", "broken.png")
    project.annotation("ds2", "broken.png.json", "{not json")
    project.image("ds2", "wrong-aspect.png")  # 40x30, but the annotation says 30x30
    project.annotation("ds2", "wrong-aspect.png.json", annotation([], height=HEIGHT, width=HEIGHT))
    project.annotation("ds2", "orphan.png.json", annotation([]))
    return project


def read_rows(output: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    return {row["source_image"]: row for row in rows}


def read_mask_png(output: Path, row: dict) -> np.ndarray:
    return cv2.imread(str(output / row["mask"]), cv2.IMREAD_UNCHANGED)


def test_ingest_end_to_end(tmp_path):
    from datatool.ingest import ingest

    project = build_mixed_project(tmp_path / "supervisely_person")
    output = tmp_path / "canonical"
    result = ingest(SuperviselySource(project.root), output)

    rows = read_rows(output)
    assert sorted(rows) == [
        "ds1/img/bitmap.png",
        "ds1/img/old-name.jpg",
        "ds1/img/with-car.png",
        "ds2/img/empty.png",
        "ds2/img/neutral.png",
    ]
    assert result.ingested == 5
    bitmap_row = rows["ds1/img/bitmap.png"]
    assert bitmap_row["source_mask"] == "ds1/ann/bitmap.png.json"
    assert (bitmap_row["group"], bitmap_row["dataset"]) == ("supervisely/ds1/bitmap", "ds1")
    assert (bitmap_row["mask_kind"], bitmap_row["mask_encoding"]) == ("binary", "supervisely bitmap")
    assert bitmap_row["official_split"] is None
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[11:15, 7:12] = L_SHAPE * 255
    assert np.array_equal(read_mask_png(output, bitmap_row), expected)

    old_row = rows["ds1/img/old-name.jpg"]
    assert (old_row["source_mask"], old_row["mask_encoding"]) == ("ds1/ann/old-name.json", "supervisely polygon")
    hole_mask = read_mask_png(output, old_row)
    assert hole_mask[3, 3] == 255 and hole_mask[8, 8] == 0
    assert rows["ds2/img/empty.png"]["mask_encoding"] == "supervisely empty"
    assert not read_mask_png(output, rows["ds2/img/neutral.png"]).any()  # neutral = background by default

    report = result.report
    assert report["options"]["neutral"] == "background"
    assert report["counts"]["empty_masks"] == 3  # empty.png, neutral.png, with-car.png
    assert entry(report["repaired"], "ds1/img/with-car.png")["reason"] == "ignored object of class 'car'"
    assert entry(report["skipped"], "ds2/ann/broken.png.json")["reason"].startswith("malformed annotation JSON")
    assert "aspect ratio mismatch" in entry(report["skipped"], "ds2/ann/wrong-aspect.png.json")["reason"]
    assert entry(report["skipped"], "ds2/ann/orphan.png.json")["reason"].startswith("annotation without image")
    assert result.skipped == 3
    assert json.loads((output / "report.json").read_text())["skipped"] == report["skipped"]


def test_neutral_skip_end_to_end_reports_the_image(tmp_path):
    from datatool.ingest import ingest

    project = build_mixed_project(tmp_path / "supervisely_person")
    result = ingest(SuperviselySource(project.root, neutral="skip"), tmp_path / "canonical")

    assert "ds2/img/neutral.png" not in read_rows(tmp_path / "canonical")
    assert "neutral policy 'skip'" in entry(result.report["skipped"], "ds2/ann/neutral.png.json")["reason"]
    assert result.ingested == 4


@pytest.mark.parametrize(("neutral", "ingested", "neutral_pixels"), [("person", 5, 11 * 11), ("skip", 4, None)])
def test_cli_neutral_option(tmp_path, neutral, ingested, neutral_pixels):
    from datatool.cli import main

    project = build_mixed_project(tmp_path / "supervisely_person")
    output = tmp_path / "canonical"
    result = CliRunner().invoke(
        main,
        ["ingest", "supervisely", "--input", str(project.root), "--output", str(output), "--workers", "1", "--neutral", neutral],
    )

    assert result.exit_code == 0, result.output
    assert f"supervisely: {ingested} samples ingested" in result.output
    rows = read_rows(output)
    assert len(rows) == ingested
    assert json.loads((output / "report.json").read_text())["options"]["neutral"] == neutral
    if neutral_pixels is None:
        assert "ds2/img/neutral.png" not in rows
    else:
        assert int(np.count_nonzero(read_mask_png(output, rows["ds2/img/neutral.png"]))) == neutral_pixels


def test_cli_not_a_supervisely_project_fails_with_the_layout(tmp_path):
    from datatool.cli import main

    write_image(tmp_path / "input" / "images" / "a.jpg", make_photo(8, 8))
    result = CliRunner().invoke(main, ["ingest", "supervisely", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "out")])

    assert result.exit_code != 0
    assert "does not look like supervisely" in result.output
    assert "<dataset>/img/" in result.output

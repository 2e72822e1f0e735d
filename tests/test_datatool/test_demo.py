"""`datatool demo`: the demo sources are in each dataset's exact layout, their masks agree across
encodings, look like people, are byte-for-byte reproducible, and ingest with their quirks reported."""

import base64
import hashlib
import io
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

from datatool.canonical import read_manifest
from datatool.cli import main
from datatool.demo import (
    BACKGROUNDS,
    LAYOUTS,
    PERSON_PHOTOS,
    DemoError,
    build_demo,
    encode_bitmap,
    feather,
    mask_polygons,
    segment_person,
)
from datatool.ingest import ingest
from datatool.sources import create_source

SAMPLES = 6

# Points in photo pixels, inside each photo's GrabCut outline but in none of its hand-drawn
# strokes: GrabCut alone decides them. Checked by eye on the photos.
PERSON_POINTS = {
    "astronaut": [(100, 250), (340, 300), (280, 100), (30, 450)],  # shoulders, hair, sleeve
    "grace_hopper": [(470, 480), (60, 520), (175, 230), (300, 400), (355, 270)],  # uniform, face, shirt, hair
    "camera": [(100, 200), (130, 400), (170, 150), (250, 280)],  # coat, ear, sleeve
}
BACKGROUND_POINTS = {
    "astronaut": [(145, 60), (320, 190), (100, 200), (290, 140)],  # wall beside head and neck ring
    "grace_hopper": [(400, 345), (182, 298)],  # wall above the shoulder, flag fringe beside the neck
    "camera": [(254, 235), (270, 100), (20, 180)],  # the gap between the arms, sky, buildings
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo") / "demo", seed=0, samples_per_source=SAMPLES)


def file_digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# -- layouts -------------------------------------------------------------------------------------


def test_every_layout_has_its_samples_quirk_and_the_folder_its_extras(demo):
    root = demo.output
    assert {layout: len(demo.samples_of(layout)) for layout in LAYOUTS} == dict.fromkeys(LAYOUTS, SAMPLES)
    assert {quirk.layout for quirk in demo.quirks} == set(LAYOUTS)
    assert all(quirk.file.is_file() for quirk in demo.quirks)
    readme = (root / "README.md").read_text()
    assert "demo-grade" in readme
    for photo in PERSON_PHOTOS:
        assert photo.resource in readme and photo.licence in readme
    assert json.loads((root / "demo.json").read_text())["seed"] == 0
    for photo in BACKGROUNDS:  # copied unchanged from the package
        assert (root / "backgrounds" / photo.file_name).read_bytes() == photo.read_bytes()
    for photo in PERSON_PHOTOS:  # unlabelled input of the pseudolabel stage, unchanged
        assert (root / "photos" / photo.file_name).read_bytes() == photo.read_bytes()
    assert sorted(demo.photos) == sorted(root / "photos" / photo.file_name for photo in PERSON_PHOTOS)


def test_aisegment_layout_and_soft_mattes(demo):
    root = demo.output / "aisegment"
    for sample in demo.samples_of("aisegment"):
        image_rel = sample.image.relative_to(root)
        group, clip, name = image_rel.parts[1:]
        assert image_rel.parts[0] == "clip_img" and clip == "clip_00000000"
        assert name == f"{group}-{name[-12:-4]}.jpg" and name[-12:-4].isdigit() and len(group) == 10
        assert sample.annotation == root / "matting" / group / "matting_00000000" / f"{Path(name).stem}.png"
        assert cv2.imread(str(sample.image)).shape == (800, 600, 3)

        matte = cv2.imread(str(sample.annotation), cv2.IMREAD_UNCHANGED)
        assert matte.shape == (800, 600, 4)
        alpha = matte[:, :, 3]
        np.testing.assert_array_equal(alpha >= 128, sample.mask > 0)
        soft = (alpha > 0) & (alpha < 255)
        assert soft.sum() > 500  # a real soft edge, not a binary mask
        # ... and only along the edge: no soft pixel is far from the person's outline.
        edge = cv2.morphologyEx(sample.mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        near_edge = cv2.dilate(edge.astype(np.uint8), np.ones((13, 13), np.uint8)) > 0
        assert not (soft & ~near_edge).any()
    junk = list(root.rglob("._*"))  # AppleDouble files: magic 0x00051607
    assert len(junk) == 2 and all(path.read_bytes()[:4] == b"\x00\x05\x16\x07" for path in junk)


def test_kaggle_people_layout_masks_and_split(demo):
    dataset = demo.output / "kaggle-people" / "people_segmentation"
    stems = set()
    for sample in demo.samples_of("kaggle-people"):
        stem = sample.image.stem
        stems.add(stem)
        assert sample.image == dataset / "images" / f"{stem}.jpg"
        assert sample.annotation == dataset / "masks" / f"{stem}.png"
        mask = cv2.imread(str(sample.annotation), cv2.IMREAD_UNCHANGED)
        assert mask.ndim == 2 and set(np.unique(mask).tolist()) == {0, 1}  # the dataset's 0/1 encoding
        np.testing.assert_array_equal(mask * 255, sample.mask)
    train = (dataset / "segmentation" / "train.txt").read_text().split()
    val = (dataset / "segmentation" / "val.txt").read_text().split()
    assert not set(train) & set(val)
    assert all("." not in stem for stem in train + val)  # stems, no extension
    assert stems < set(train + val) and len(set(train + val) - stems) == 1  # one listed stem has no image
    assert all(stem.startswith("woman-navy-officer") for stem in val)  # one photo held out, all its variants


def test_pfcn_layout_mat_masks_and_split_lists(demo):
    root = demo.output / "pfcn"
    mask_ids = {path.name[:5] for path in (root / "images_mask").iterdir()}
    image_ids = {path.stem for path in (root / "images_data_crop").iterdir()}
    assert len(mask_ids - image_ids) == 1 and image_ids < mask_ids  # one mask whose image is missing
    for sample in demo.samples_of("pfcn"):
        sample_id = sample.image.stem
        assert len(sample_id) == 5 and sample.annotation == root / "images_mask" / f"{sample_id}_mask.mat"
        assert cv2.imread(str(sample.image)).shape == (800, 600, 3)
        mask = scipy.io.loadmat(sample.annotation)["mask"]
        assert mask.dtype == np.uint8 and mask.shape == (800, 600) and set(np.unique(mask).tolist()) == {0, 1}
        np.testing.assert_array_equal(mask * 255, sample.mask)
    listed = set()
    for name in ("trainlist", "testlist"):
        ids = scipy.io.loadmat(root / f"{name}.mat")[name]
        assert ids.dtype == np.uint16 and ids.shape[0] == 1
        listed |= {f"{int(number):05d}" for number in ids.ravel()}
    assert listed == mask_ids


def decode_supervisely(annotation: dict) -> np.ndarray:
    """The Supervisely format as documented: bitmaps pasted at origin, polygons minus holes."""
    mask = np.zeros((annotation["size"]["height"], annotation["size"]["width"]), np.uint8)
    for item in annotation["objects"]:
        if item.get("bitmap"):
            png = zlib.decompress(base64.b64decode(item["bitmap"]["data"]))
            assert png[24] == 1 and png[25] == 3 and b"tRNS" in png  # 1-bit palette PNG with transparency
            opaque = np.asarray(Image.open(io.BytesIO(png))) != 0
            x, y = item["bitmap"]["origin"]
            mask[y : y + opaque.shape[0], x : x + opaque.shape[1]][opaque] = 255
        else:
            layer = np.zeros_like(mask)
            cv2.fillPoly(layer, [np.array(item["points"]["exterior"], np.int32)], 255)
            for ring in item["points"]["interior"]:
                cv2.fillPoly(layer, [np.array(ring, np.int32)], 0)
            mask |= layer
    return mask


def test_supervisely_layout_bitmaps_polygons_and_both_naming_styles(demo):
    root = demo.output / "supervisely"
    classes = {entry["title"] for entry in json.loads((root / "meta.json").read_text())["classes"]}
    assert {"person_bmp", "person_poly"} <= classes
    seen = set()
    for sample in demo.samples_of("supervisely"):
        assert sample.image.parent == root / "ds1" / "img" and sample.image.suffix in (".png", ".jpg")
        new_style = sample.annotation.name == f"{sample.image.name}.json"
        assert new_style or sample.annotation.name == f"{sample.image.stem}.json"
        annotation = json.loads(sample.annotation.read_text())
        (item,) = annotation["objects"]
        assert ("geometryType" in item) == new_style  # old exports lack it
        seen.add((item["classTitle"], new_style, sample.image.suffix))
        np.testing.assert_array_equal(decode_supervisely(annotation), sample.mask)
        if item["classTitle"] == "person_poly":
            assert len(item["points"]["interior"]) == count_holes(sample.mask)
    assert {title for title, _, _ in seen} == {"person_bmp", "person_poly"}
    assert {new for _, new, _ in seen} == {True, False}
    assert {suffix for _, _, suffix in seen} == {".png", ".jpg"}
    # The camera photo's gap between the arms makes at least one polygon with a hole.
    polygons = [json.loads(s.annotation.read_text())["objects"][0] for s in demo.samples_of("supervisely")]
    assert any(item.get("points", {}).get("interior") for item in polygons)


def count_holes(mask: np.ndarray) -> int:
    count, _, stats, _ = cv2.connectedComponentsWithStats((mask == 0).astype(np.uint8), connectivity=4)
    height, width = mask.shape
    return sum(
        1
        for x, y, w, h, _ in stats[1:count]
        if x > 0 and y > 0 and x + w < width and y + h < height
    )


def test_same_variant_gives_same_mask_in_every_encoding():
    """A mask written as matte, 0/1 PNG, .mat, bitmap and polygon decodes to the same pixels."""
    mask = np.zeros((120, 90), np.uint8)
    cv2.ellipse(mask, (45, 80), (35, 40), 0, 0, 360, 255, -1)
    cv2.circle(mask, (45, 30), 16, 255, -1)
    cv2.circle(mask, (45, 85), 8, 0, -1)  # a hole
    np.testing.assert_array_equal(feather(mask) >= 128, mask > 0)
    data, origin = encode_bitmap(mask)
    bitmap = {"size": {"height": 120, "width": 90}, "objects": [{"bitmap": {"data": data, "origin": origin}}]}
    polygon = {"size": {"height": 120, "width": 90}, "objects": [{"points": rings} for rings in mask_polygons(mask)]}
    assert len(polygon["objects"][0]["points"]["interior"]) == 1
    np.testing.assert_array_equal(decode_supervisely(bitmap), mask)
    np.testing.assert_array_equal(decode_supervisely(polygon), mask)


# -- masks look like people ----------------------------------------------------------------------


def test_sample_masks_are_plausible_people(demo):
    for sample in demo.samples:
        mask = sample.mask
        assert mask.shape == cv2.imread(str(sample.image)).shape[:2]
        assert 0.10 <= (mask > 0).mean() <= 0.70, sample.image
        assert cv2.connectedComponents(mask, connectivity=8)[0] == 2, sample.image  # background + one person
        rows = np.flatnonzero(mask.any(axis=1))
        assert rows[-1] == mask.shape[0] - 1  # half-body portraits: the person reaches the bottom edge
        assert rows[0] < mask.shape[0] * 0.25  # ... and the head is near the top


@pytest.mark.parametrize("photo", PERSON_PHOTOS, ids=lambda photo: photo.name)
def test_grabcut_masks_person_and_not_background(photo):
    mask = segment_person(photo)
    assert 0.2 <= (mask > 0).mean() <= 0.65
    assert [point for point in PERSON_POINTS[photo.name] if not mask[point[1], point[0]]] == []
    assert [point for point in BACKGROUND_POINTS[photo.name] if mask[point[1], point[0]]] == []


# -- reproducible, replaceable ---------------------------------------------------------------------


def test_same_seed_gives_identical_files(demo, tmp_path):
    again = build_demo(tmp_path / "again", seed=0, samples_per_source=SAMPLES)
    assert file_digests(again.output) == file_digests(demo.output)


def test_cli_rebuild_replaces_the_folder_and_refuses_foreign_ones(demo, tmp_path):
    output = tmp_path / "demo"
    runner = CliRunner()
    first = runner.invoke(main, ["demo", "--output", str(output), "--samples-per-source", "2"])
    assert first.exit_code == 0, first.output
    assert "8 samples" in first.output and "demo-grade" in first.output
    digests = file_digests(output)
    (output / "aisegment" / "stray.txt").write_text("left from an older run")

    second = runner.invoke(main, ["demo", "--output", str(output), "--samples-per-source", "2", "--seed", "1"])
    assert second.exit_code == 0, second.output
    assert not (output / "aisegment" / "stray.txt").exists()
    rebuilt = file_digests(output)
    assert rebuilt.keys() == digests.keys()
    changed = {name for name in rebuilt if rebuilt[name] != digests[name]}
    assert any(name.endswith(".jpg") for name in changed)  # another seed, other variants
    assert not any(name.startswith("backgrounds/") for name in changed)

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    refused = runner.invoke(main, ["demo", "--output", str(foreign)])
    assert refused.exit_code != 0 and "not replacing" in refused.output
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"
    with pytest.raises(DemoError):
        build_demo(foreign)


# -- ingest ----------------------------------------------------------------------------------------

# The one defect each layout carries, as the ingest report must list it.
EXPECTED_QUIRKS = {
    "aisegment": ("ignored", "._"),
    "kaggle-people": ("skipped", "segmentation/train.txt"),
    "pfcn": ("skipped", "images_mask/"),
    "supervisely": ("skipped", "ds1/ann/"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_ingests_with_its_quirk_reported(demo, layout, tmp_path):
    source_root = demo.inputs()[layout]
    result = ingest(create_source(layout, source_root), tmp_path / "set", name=f"demo-{layout}")
    assert result.ingested == SAMPLES

    section, marker = EXPECTED_QUIRKS[layout]
    quirk_files = {quirk.file.relative_to(source_root).as_posix() for quirk in demo.quirks if quirk.layout == layout}
    reported = {entry["file"] for entry in result.report[section]}
    assert quirk_files <= reported and all(marker in name for name in quirk_files)

    samples = {sample.image.relative_to(source_root).as_posix(): sample for sample in demo.samples_of(layout)}
    rows = list(read_manifest(tmp_path / "set"))
    assert {row["source_image"] for row in rows} == set(samples)
    for row in rows:
        mask = cv2.imread(str(tmp_path / "set" / row["mask"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask >= 128, samples[row["source_image"]].mask > 0)

"""`datatool pseudolabel`: photo folders and canonical sets in, soft masks with documented quality fields out.

Engine tests use small real teachers that implement the `Teacher` contract with a rule a
person can check by hand (the person probability is one colour channel / 255); the real
models run in the acceptance test at the end when their files are cached.
"""

import json
import os
import tracemalloc

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_photo, save_jpeg_with_orientation, write_image
from PIL import Image

from datatool.canonical import read_manifest
from datatool.cli import main
from datatool.ingest import ingest
from datatool.pseudolabel import (
    PseudolabelOptions,
    ReviewThresholds,
    mask_quality,
    mean_pairwise_iou,
    pseudolabel,
    teacher_iou,
)
from datatool.sources import create_source
from portraitseg.teachers.base import Teacher, TeacherError
from portraitseg.teachers.ensemble import EnsembleTeacher
from portraitseg.records import MASK_KINDS, REQUIRED_FIELDS

RED, GREEN = 0, 1  # channel indices in RGB


class ChannelTeacher(Teacher):
    """Person probability = one colour channel / 255: a teacher whose output is known exactly."""

    name = "channel"

    def __init__(self, channel: int = RED):
        self.channel = channel
        self.batches: list[int] = []

    @property
    def label(self) -> str:
        return f"channel-{'rgb'[self.channel]}"

    def predict(self, images):
        self.batches.append(len(images))
        for image in images:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        return [image[..., self.channel].astype(np.float32) / 255 for image in images]


class WrongSizeTeacher(ChannelTeacher):
    def predict(self, images):
        return [np.zeros((3, 3), np.float32) for _ in images]


def rgb_image(red: np.ndarray, green: np.ndarray | None = None) -> np.ndarray:
    """A BGR array (for cv2) with the given red (and green) channel; blue is a fixed 40."""
    green = np.zeros_like(red) if green is None else green
    return np.dstack([np.full_like(red, 40), green, red]).astype(np.uint8)


def read_gray(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def rows_by_source_image(output):
    return {row["source_image"]: row for row in read_manifest(output)}


# -- definitions, hand-computed ------------------------------------------------------------------


def test_quality_fields_match_hand_computed_values():
    mask = np.array([[0, 26, 128, 255], [25, 229, 230, 51]], np.uint8)
    # confidence: |2v - 255| / 255 = 255, 203, 1, 255, 205, 203, 205, 153 (/255), mean 1480 / 2040
    # uncertain (0.1 < v/255 < 0.9 <=> 26 <= v <= 229): 26, 128, 229, 51; person (v >= 128): 128, 255, 229, 230
    assert mask_quality(mask) == {"confidence": round(1480 / 2040, 4), "uncertain_fraction": 0.5, "person_fraction": 0.5}
    assert mask_quality(np.full((3, 3), 255, np.uint8)) == {"confidence": 1.0, "uncertain_fraction": 0.0, "person_fraction": 1.0}


def test_agreement_and_teacher_iou_match_hand_computed_values():
    top, middle = np.zeros((10, 10), np.float32), np.zeros((10, 10), np.float32)
    top[0:5], middle[3:8] = 0.9, 0.6  # 50 px each, 20 px shared, 80 px together
    assert mean_pairwise_iou([top, middle]) == pytest.approx(0.25)
    assert mean_pairwise_iou([top, middle, top]) == pytest.approx((0.25 + 1 + 0.25) / 3)
    assert mean_pairwise_iou([np.zeros((4, 4)), np.zeros((4, 4))]) == 1.0  # both find nobody: they agree
    teacher, truth = np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8)
    teacher[0:20], truth[10:30] = 200, 255
    assert teacher_iou(teacher, truth) == pytest.approx(400 / 1200)
    assert teacher_iou(teacher[::2, ::2], truth) == pytest.approx(400 / 1200)  # resized to the truth's size
    assert teacher_iou(np.full((5, 5), 127, np.uint8), np.zeros((5, 5), np.uint8)) == 1.0


def test_review_reasons_name_each_failed_threshold():
    thresholds = ReviewThresholds(min_confidence=0.8, max_uncertain_fraction=0.1, min_person_fraction=0.01, min_agreement=0.7, min_teacher_iou=0.5)
    assert thresholds.reasons({"confidence": 0.9, "uncertain_fraction": 0.05, "person_fraction": 0.3}) == []
    assert thresholds.reasons(
        {"confidence": 0.5, "uncertain_fraction": 0.2, "person_fraction": 0.0, "teacher_agreement": 0.6, "teacher_iou": 0.4}
    ) == [
        "confidence 0.5 < 0.8",
        "uncertain_fraction 0.2 > 0.1",
        "person_fraction 0 < 0.01",
        "teacher_agreement 0.6 < 0.7",
        "teacher_iou 0.4 < 0.5",
    ]


# -- photo folders -------------------------------------------------------------------------------


def test_stored_masks_and_fields_equal_the_hand_computed_ones(tmp_path):
    red = np.array([[0, 26, 128, 255], [25, 229, 230, 51]], np.uint8)
    write_image(tmp_path / "in/values.png", rgb_image(red))
    result = pseudolabel(ChannelTeacher(), tmp_path / "in", tmp_path / "out")
    (row,) = read_manifest(tmp_path / "out")
    np.testing.assert_array_equal(read_gray(tmp_path / "out" / row["mask"]), red)  # p x 255, rounded
    assert (row["confidence"], row["uncertain_fraction"], row["person_fraction"]) == (round(1480 / 2040, 4), 0.5, 0.5)
    assert row["teacher"] == "channel-r" and row["mask_kind"] == "soft" and "teacher_agreement" not in row
    assert row["needs_review"] and row["review_reasons"] == ["confidence 0.7255 < 0.85", "uncertain_fraction 0.5 > 0.1"]
    assert result.needs_review == 1 and result.report["mean"]["confidence"] == round(1480 / 2040, 4)


def test_photo_folder_with_odd_names_junk_corrupt_files_and_every_colour_format(tmp_path):
    root = tmp_path / "photos"
    photo = make_photo(48, 64, 3)
    write_image(root / "holiday pics/IMG 0001 (copy).jpg", photo)
    write_image(root / "IMG_2020.01.01 [final].JPEG", make_photo(40, 30, 4))
    gray = make_photo(30, 40, 5)[..., 1]
    write_image(root / "grey.png", gray)
    write_image(root / "rgba.png", np.dstack([photo, np.full(photo.shape[:2], 90, np.uint8)]))
    write_image(root / "deep.png", photo.astype(np.uint16) * 257)
    root.joinpath("cmyk.jpg").parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo[..., ::-1]).convert("CMYK").save(root / "cmyk.jpg", format="JPEG", quality=95)
    left_red = rgb_image(np.where(np.arange(60) < 30, 255, 0).astype(np.uint8)[None, :].repeat(40, 0))
    save_jpeg_with_orientation(root / "sub/dir/rotated.jpg", left_red, 6)  # stored 60 wide, shown 40 wide
    good = cv2.imencode(".jpg", photo)[1].tobytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "corrupt.jpg").write_bytes(b"this is not an image")
    (root / "empty.png").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "holiday pics/._IMG 0001 (copy).jpg").write_bytes(b"\0\5\26\7")
    (root / "notes.txt").write_text("not a photo")

    teacher = ChannelTeacher()
    result = pseudolabel(teacher, root, tmp_path / "out", options=PseudolabelOptions(batch_size=3))
    out = tmp_path / "out"
    rows = rows_by_source_image(out)
    assert set(rows) == {
        "holiday pics/IMG 0001 (copy).jpg", "IMG_2020.01.01 [final].JPEG", "grey.png", "rgba.png", "deep.png",
        "cmyk.jpg", "sub/dir/rotated.jpg",
    }  # fmt: skip
    # Batches are of photos in input order (3 unreadable ones leave gaps), never above batch_size.
    assert result.labelled == 7 and result.photos == 10 and sum(teacher.batches) == 7 and max(teacher.batches) <= 3
    assert {entry["file"] for entry in result.report["skipped"]} == {"truncated.jpg", "corrupt.jpg", "empty.png"}
    assert {entry["file"] for entry in result.report["ignored"]} == {".DS_Store", "holiday pics/._IMG 0001 (copy).jpg", "notes.txt"}
    reasons = {entry["file"]: entry["reason"] for entry in result.report["skipped"]}
    assert reasons["truncated.jpg"].startswith("truncated") and reasons["empty.png"] == "unreadable image: empty file"
    for row in rows.values():
        assert set(REQUIRED_FIELDS) <= set(row) and row["mask_kind"] in MASK_KINDS and row["source"] == "photos"
        image, mask = read_rgb(out / row["image"]), read_gray(out / row["mask"])
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2] == (row["height"], row["width"])
    # The teacher saw what was stored: for copied JPEGs and lossless PNGs the mask is the red channel exactly.
    for key in ("holiday pics/IMG 0001 (copy).jpg", "IMG_2020.01.01 [final].JPEG", "rgba.png", "deep.png"):
        np.testing.assert_array_equal(read_gray(out / rows[key]["mask"]), read_rgb(out / rows[key]["image"])[..., RED])
    np.testing.assert_array_equal(read_gray(out / rows["grey.png"]["mask"]), gray)
    np.testing.assert_array_equal(read_gray(out / rows["deep.png"]["mask"]), photo[..., 2])
    cmyk_error = np.abs(read_gray(out / rows["cmyk.jpg"]["mask"]).astype(int) - photo[..., 2]).mean()
    assert cmyk_error < 12, "a CMYK JPEG must come out as its RGB colours, not inverted or as channels"
    rotated = read_gray(out / rows["sub/dir/rotated.jpg"]["mask"])
    assert rotated.shape == (60, 40) and rotated[:25].mean() > 230 and rotated[35:].mean() < 25  # left half is now on top
    repaired = {(entry["file"], entry["reason"]) for entry in result.report["repaired"]}
    assert {("grey.png", "greyscale image converted to RGB"), ("rgba.png", "alpha channel of the image dropped"),
            ("deep.png", "16-bit image converted to 8-bit"), ("sub/dir/rotated.jpg", "EXIF orientation 6 applied")} <= repaired  # fmt: skip
    assert len({row["id"] for row in rows.values()}) == 7
    assert {path.stem for path in (out / "images").iterdir()} == {row["id"] for row in rows.values()}


def test_an_8000x6000_jpeg_is_decoded_at_reduced_scale_without_a_full_size_buffer(tmp_path):
    big = np.zeros((6000, 8000, 3), np.uint8)
    big[:, :4000, 2] = 255  # red (person) on the left half
    write_image(tmp_path / "in/huge photo.jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 80])
    del big
    tracemalloc.start()  # numpy and OpenCV's Python arrays are traced; a full decode would be 144 MB
    try:
        result = pseudolabel(ChannelTeacher(), tmp_path / "in", tmp_path / "out", options=PseudolabelOptions(max_side=1600))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (row,) = read_manifest(tmp_path / "out")
    assert (row["width"], row["height"]) == (1600, 1200) and read_rgb(tmp_path / "out" / row["image"]).shape == (1200, 1600, 3)
    mask = read_gray(tmp_path / "out" / row["mask"])
    assert mask[:, :780].min() > 240 and mask[:, 820:].max() < 15
    assert result.report["counts"]["decoded_at_reduced_scale"] == 1
    assert peak < 60e6, f"peak traced memory {peak / 1e6:.0f} MB"


def test_ensemble_rows_carry_agreement_and_the_mean_of_the_members(tmp_path):
    red, green = np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)
    red[0:5], green[3:8] = 255, 255
    write_image(tmp_path / "in/pair.png", rgb_image(red, green))
    ensemble = EnsembleTeacher([ChannelTeacher(RED), ChannelTeacher(GREEN)])
    pseudolabel(ensemble, tmp_path / "in", tmp_path / "out", options=PseudolabelOptions(review=ReviewThresholds(min_agreement=0.3)))
    (row,) = read_manifest(tmp_path / "out")
    expected = np.zeros((10, 10), np.uint8)
    expected[0:3] = expected[5:8] = 128  # one member says person: p = 0.5, stored as rint(127.5) = 128
    expected[3:5] = 255
    np.testing.assert_array_equal(read_gray(tmp_path / "out" / row["mask"]), expected)
    assert row["teacher"] == "channel-r+channel-g" and row["teacher_agreement"] == 0.25
    assert "teacher_agreement 0.25 < 0.3" in row["review_reasons"]


def test_rerun_reuses_unchanged_photos_and_recomputes_review_flags(tmp_path):
    root = tmp_path / "in"
    write_image(root / "firm.png", rgb_image(np.full((8, 8), 255, np.uint8)))
    write_image(root / "empty.png", rgb_image(np.zeros((8, 8), np.uint8)))
    write_image(root / "unsure.png", rgb_image(np.full((8, 8), 128, np.uint8)))
    out = root / "labelled"  # inside the input: must not be labelled itself on the next run
    teacher = ChannelTeacher()
    first = pseudolabel(teacher, root, out)
    flags = {key: row["review_reasons"] for key, row in rows_by_source_image(out).items()}
    assert flags == {
        "firm.png": [],
        "empty.png": ["person_fraction 0 < 0.01"],
        "unsure.png": ["confidence 0.0039 < 0.85", "uncertain_fraction 1 > 0.1"],
    }
    assert first.needs_review == 2 and teacher.batches == [3]

    lenient = PseudolabelOptions(review=ReviewThresholds(min_person_fraction=0.0, min_confidence=0.0, max_uncertain_fraction=1.0))
    second = pseudolabel(teacher, root, out, options=lenient)
    assert teacher.batches == [3] and second.reused == 3 and second.needs_review == 0
    assert not any(row["needs_review"] for row in read_manifest(out))

    write_image(root / "firm.png", rgb_image(np.full((8, 8), 30, np.uint8)))
    os.utime(root / "firm.png", ns=(1, 1))  # a changed file, whatever the file system's mtime resolution
    (root / "empty.png").unlink()
    third = pseudolabel(teacher, root, out)
    assert teacher.batches == [3, 1] and third.reused == 1 and third.labelled == 2
    rows = rows_by_source_image(out)
    assert set(rows) == {"firm.png", "unsure.png"} and rows["firm.png"]["person_fraction"] == 0.0
    assert {path.stem for path in (out / "masks").iterdir()} == {row["id"] for row in rows.values()}

    other = ChannelTeacher(GREEN)  # another teacher: nothing is reused
    fourth = pseudolabel(other, root, out)
    assert fourth.reused == 0 and other.batches == [2]


def test_a_teacher_breaking_the_contract_stops_the_run(tmp_path):
    write_image(tmp_path / "in/a.png", make_photo(20, 20))
    with pytest.raises(TeacherError, match=r"returned a \(3, 3\) map for a \(20, 20\) image"):
        pseudolabel(WrongSizeTeacher(), tmp_path / "in", tmp_path / "out")
    with pytest.raises(ValueError, match="is the input"):
        pseudolabel(ChannelTeacher(), tmp_path / "in", tmp_path / "in")


# -- canonical sets with ground truth ------------------------------------------------------------


def build_canonical_set(tmp_path):
    """Three samples ingested from a folder: teacher (red rows 0-19) vs ground truth rows 10-29, equal, and one to break."""
    source = tmp_path / "gt-source"
    red, truth = np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8)
    red[0:20], truth[10:30] = 255, 255
    write_image(source / "train/images/shifted.png", rgb_image(red))
    write_image(source / "train/masks/shifted.png", truth)
    write_image(source / "train/images/same.png", rgb_image(red))
    write_image(source / "train/masks/same.png", np.where(red > 0, 255, 0).astype(np.uint8))
    write_image(source / "train/images/lost.png", rgb_image(red))
    write_image(source / "train/masks/lost.png", truth)
    result = ingest(create_source("folder", source), tmp_path / "set", name="gt")
    assert result.ingested == 3
    return tmp_path / "set"


def test_canonical_set_keeps_ground_truth_and_scores_the_teacher_against_it(tmp_path):
    canonical = build_canonical_set(tmp_path)
    inputs = {row["source_image"]: row for row in read_manifest(canonical)}
    (canonical / inputs["train/images/lost.png"]["mask"]).unlink()
    result = pseudolabel(ChannelTeacher(), canonical, tmp_path / "out")
    out = tmp_path / "out"
    rows = rows_by_source_image(out)
    assert set(rows) == {"train/images/shifted.png", "train/images/same.png"} and result.labelled == 2
    assert result.report["skipped"] == [{"file": inputs["train/images/lost.png"]["mask"], "reason": "ground-truth mask missing"}]
    assert rows["train/images/shifted.png"]["teacher_iou"] == round(400 / 1200, 4)
    assert rows["train/images/same.png"]["teacher_iou"] == 1.0
    assert rows["train/images/shifted.png"]["review_reasons"] == ["teacher_iou 0.3333 < 0.7"]
    assert result.report["mean"]["teacher_iou"] == pytest.approx((400 / 1200 + 1) / 2, abs=1e-4)
    for key, row in rows.items():
        source_row = inputs[key]
        assert {name: row[name] for name in source_row} == source_row  # every input field carried, ids kept
        assert row["official_split"] == "train" and row["mask_kind"] == "binary"
        assert (out / row["mask"]).read_bytes() == (canonical / source_row["mask"]).read_bytes()
        assert (out / row["image"]).read_bytes() == (canonical / source_row["image"]).read_bytes()
        assert row["teacher_mask"] == f"teacher_masks/{row['id']}.png"
        np.testing.assert_array_equal(read_gray(out / row["teacher_mask"])[:, 0], np.where(np.arange(40) < 20, 255, 0))

    # Images larger than max_side are kept; the teacher sees them shrunk and its mask is resized back.
    small = pseudolabel(ChannelTeacher(), canonical, tmp_path / "small", options=PseudolabelOptions(max_side=20))
    rows = rows_by_source_image(tmp_path / "small")
    assert small.labelled == 2 and read_gray(tmp_path / "small" / rows["train/images/same.png"]["teacher_mask"]).shape == (40, 40)
    assert rows["train/images/shifted.png"]["teacher_iou"] == pytest.approx(400 / 1200, abs=0.03)


# -- command line --------------------------------------------------------------------------------


@pytest.fixture
def built_teachers(monkeypatch):
    """`create_teacher` replaced by one that records its arguments and builds a `ChannelTeacher`."""
    import portraitseg.teachers

    built = []

    def create_teacher(spec, **options):
        built.append({"spec": spec, **options})
        return ChannelTeacher()

    monkeypatch.setattr(portraitseg.teachers, "create_teacher", create_teacher)
    return built


def test_cli_labels_a_folder_and_prints_a_summary(tmp_path, built_teachers):
    write_image(tmp_path / "in/a b (1).jpg", make_photo(30, 40, 1))
    write_image(tmp_path / "in/c.png", rgb_image(np.zeros((10, 10), np.uint8)))
    (tmp_path / "in/broken.jpg").write_bytes(b"junk")
    args = ["pseudolabel", "--teacher", "channel", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--batch-size", "1", "--teacher-files", str(tmp_path / "models"), "--min-person-fraction", "0.5"]  # fmt: skip
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert built_teachers == [{"spec": "channel", "models_dir": tmp_path / "models"}]
    assert "2 of 3 photos labelled by channel-r" in run.output and "needs review: 2" in run.output
    assert "skipped: 1" in run.output and "broken.jpg" in run.output
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["options"]["batch_size"] == 1 and report["options"]["review"]["min_person_fraction"] == 0.5
    strict = CliRunner().invoke(main, [*args, "--strict"])
    assert strict.exit_code != 0 and "--strict: 1 inputs were skipped" in strict.output


def test_cli_fails_clearly_without_photos_or_without_the_model(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing/readme.txt").write_text("no photos here")
    from portraitseg.teachers import create_teacher

    try:
        create_teacher("mediapipe-selfie", models_dir=tmp_path / "no-models")
    except (TeacherError, FileNotFoundError) as error:
        missing = str(error)
    else:
        pytest.fail("a teacher was built without its model file")
    assert "datatool teacher-files fetch mediapipe-selfie" in missing
    run = CliRunner().invoke(
        main, ["pseudolabel", "--teacher", "mediapipe-selfie", "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"),
               "--teacher-files", str(tmp_path / "no-models")]  # fmt: skip
    )
    assert run.exit_code != 0 and "datatool teacher-files fetch mediapipe-selfie" in run.output


def test_every_dvc_pseudolabel_stage_runs_the_cli_with_its_params(tmp_path, built_teachers):
    import shlex
    from pathlib import Path

    import yaml
    from dvc.repo import Repo

    repo_root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((repo_root / "params.yaml").read_text())["pseudolabel"]
    stages = Repo(str(repo_root)).stage.collect("dvc.yaml")
    commands = {stage.name.split("@", 1)[1]: stage.cmd for stage in stages if stage.name.startswith("pseudolabel@")}
    assert set(commands) == set(params["inputs"])
    write_image(tmp_path / "in/a.png", make_photo(12, 16))
    for name, command in commands.items():
        words = shlex.split(command)
        assert words[:2] == ["datatool", "pseudolabel"] and words[words.index("--input") + 1] == params["inputs"][name]
        words[words.index("--input") + 1], words[words.index("--output") + 1] = str(tmp_path / "in"), str(tmp_path / name)
        run = CliRunner().invoke(main, words[1:])
        assert run.exit_code == 0, run.output
        assert built_teachers.pop() == {"spec": params["teacher"], "models_dir": Path("data/teacher-files")}
        review = json.loads((tmp_path / name / "report.json").read_text())["options"]["review"]
        assert review == {key.replace("-", "_"): value for key, value in params["review"].items()}


# -- the real teacher ----------------------------------------------------------------------------


def test_mediapipe_selfie_labels_every_unlabelled_people_photo(shared_data, tmp_path):
    from portraitseg.teacher_files import ModelMissingError, model_path

    try:
        model_path("mediapipe-selfie")
    except ModelMissingError as error:
        pytest.skip(f"mediapipe-selfie is not cached: {error}")
    photos = shared_data / "unlabeled-people"
    run = CliRunner().invoke(main, ["pseudolabel", "--teacher", "mediapipe-selfie", "--input", str(photos), "--output", str(tmp_path / "pl")])
    assert run.exit_code == 0, run.output
    rows = list(read_manifest(tmp_path / "pl"))
    assert len(rows) == 27 and "27 of 27 photos labelled" in run.output
    assert {row["source_image"] for row in rows} >= {"images (1).jpeg", "julia+trotti_17.jpg"}
    for row in rows:
        mask = read_gray(tmp_path / "pl" / row["mask"])
        assert mask.shape == (row["height"], row["width"]) and row["teacher"].startswith("mediapipe-selfie")
        assert row["person_fraction"] > 0.01, f"{row['source_image']}: no person found in a photo of people"
    assert np.mean([row["confidence"] for row in rows]) > 0.8

"""`datatool qa build / sync` with the real FiftyOne and its MongoDB, and `split --exclusions` fed by the tags.

The database lives under the test's temporary folder (qa_fixtures.use_test_database); one
dataset is built once for the module, since starting MongoDB and importing FiftyOne take
most of the time.
"""

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from datatool.cli import main
from datatool.qa import (
    VIEW_LOW_CONFIDENCE, VIEW_STUDENT_FAILURES, VIEW_SUSPECT, QaError, boundary_iou, build_dataset, sync_tags,
)  # fmt: skip
from datatool.split import SPLITS
from portraitseg.scoring import iou
from qa_fixtures import TEACHER_SHIFTS, make_people_sets, shifted, unique_name, use_test_database
from conftest import write_image


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The fixture sets built into a fresh dataset through the CLI, with predictions for two samples."""
    root = tmp_path_factory.mktemp("qa")
    use_test_database(root)
    people = make_people_sets(root / "sets")
    predictions = root / "predictions"
    first, second = people["ids"][:2]
    write_image(predictions / f"{first}.png", people["masks"][first])  # perfect
    write_image(predictions / f"{second}.png", np.zeros_like(people["masks"][second]))  # found nobody
    name = unique_name("qa-test")
    arguments = ["qa", "build", "--name", name, "--sets", *map(str, people["sets"]), "--predictions", str(predictions), "--masks-dir", str(root / "qa-masks")]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert f"{name}: {len(people['ids'])} samples ({len(people['ids'])} added, 0 updated)" in result.output
    import fiftyone as fo

    dataset = fo.load_dataset(name)
    yield {**people, "root": root, "name": name, "dataset": dataset, "arguments": arguments, "predictions": predictions}
    dataset.delete()


def test_samples_hold_every_mask_and_the_doubt_scores(built):
    dataset, masks = built["dataset"], built["masks"]
    assert dataset.default_mask_targets == {255: "person"}
    assert sorted(dataset.values("canonical_id")) == sorted(built["ids"])
    for index, sample_id in enumerate(built["ids"]):
        sample = dataset.match({"canonical_id": sample_id}).first()
        truth = masks[sample_id]
        teacher_a = shifted(truth, TEACHER_SHIFTS[index])
        teacher_b = shifted(truth, 2)
        # every label is a mask file the App can show, 0 / 255
        for field in ("ground_truth", "teacher_teacher_a", "teacher_teacher_b"):
            stored = sample[field].get_mask()
            assert stored.shape == truth.shape and set(np.unique(stored)) <= {0, 255}
        assert np.array_equal(sample.teacher_teacher_b.get_mask(), teacher_b)  # the soft 200s were thresholded
        ious = [iou(teacher_a, truth), iou(teacher_b, truth)]
        assert sample.teacher_teacher_a.iou == pytest.approx(ious[0], abs=1e-4)
        assert sample.teacher_iou == pytest.approx(np.mean(ious), abs=1e-4)
        assert sample.teachers_iou == pytest.approx(iou(teacher_a, teacher_b), abs=1e-4)
        assert sample.boundary_iou == pytest.approx(boundary_iou(teacher_a, truth), abs=1e-4)
        assert sample.confidence == pytest.approx(min(1.0 - index / 10, 0.99))
        assert sample.source == "people-dev" and sample.mask_kind == "binary"
    first, second = (dataset.match({"canonical_id": sample_id}).first() for sample_id in built["ids"][:2])
    assert first.student_iou == 1.0 and first.student_boundary_iou == 1.0
    assert second.student_iou == 0.0
    assert dataset.exists("student_iou").count() == 2


def test_boundary_iou_hand_computed():
    square = np.zeros((50, 50), np.uint8)
    square[10:40, 10:40] = 255  # band width round(0.02 * 70.7) = 1 px: the 116 outline pixels
    moved = np.roll(square, 1, axis=1)
    # Only the top and bottom rows' 29 shared pixels stay on both outlines: 58 / (116 + 116 - 58).
    assert boundary_iou(square, moved) == pytest.approx(58 / 174)
    assert iou(square, moved) == pytest.approx(870 / 930)  # the plain IoU barely moves
    assert boundary_iou(square, square) == 1.0
    assert boundary_iou(square, np.zeros_like(square)) == 0.0
    assert boundary_iou(np.zeros_like(square), np.zeros_like(square)) == 1.0


def test_saved_views_sort_by_doubt(built):
    dataset = built["dataset"]
    assert set(dataset.list_saved_views()) == {VIEW_SUSPECT, VIEW_LOW_CONFIDENCE, VIEW_STUDENT_FAILURES}
    suspect = dataset.load_saved_view(VIEW_SUSPECT).values("teacher_iou")
    assert len(suspect) == len(built["ids"]) and suspect == sorted(suspect) and suspect[0] < suspect[-1]
    assert dataset.load_saved_view(VIEW_SUSPECT).first().canonical_id == built["ids"][-1]  # the biggest shift
    low = dataset.load_saved_view(VIEW_LOW_CONFIDENCE).values("confidence")
    assert low == sorted(low) and low and all(value < 0.85 for value in low)
    assert dataset.load_saved_view(VIEW_STUDENT_FAILURES).values("canonical_id") == [built["ids"][1]]


def test_tags_become_exclusions_that_split_honours_and_a_rebuild_keeps_them(built, tmp_path):
    dataset, ids = built["dataset"], built["ids"]
    # Tag as the App does: sample tags through the FiftyOne API.
    rejected = dataset.load_saved_view(VIEW_SUSPECT).limit(2)
    rejected.tag_samples("reject")
    rejected_ids = sorted(rejected.values("canonical_id"))
    dataset.match({"canonical_id": ids[0]}).tag_samples("fix")

    output = tmp_path / "qa" / "exclusions.json"
    result = CliRunner().invoke(main, ["qa", "sync", "--name", built["name"], "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "2 tagged reject, 1 tagged fix" in result.output
    exclusions = json.loads(output.read_text())
    assert exclusions["ids"] == sorted([*rejected_ids, ids[0]])
    assert {(entry["id"], entry["tag"]) for entry in exclusions["samples"]} == {*((i, "reject") for i in rejected_ids), (ids[0], "fix")}
    assert all(entry["source"] == "people-dev" and Path(entry["file"]).is_file() for entry in exclusions["samples"])
    # The fix sample is exported for relabelling in CVAT for images 1.1, its truth as polygons.
    relabel = tmp_path / "qa" / "exclusions-relabel"
    images = ElementTree.parse(relabel / "labels.xml").getroot().findall("image")
    assert [image.get("name") for image in images] == [f"{ids[0]}.jpg"] and (relabel / "data" / f"{ids[0]}.jpg").is_file()
    assert images[0].findall("polygon") and images[0].find("polygon").get("label") == "person"

    # split leaves every tagged sample out of every split and says why.
    split_dir = tmp_path / "split"
    result = CliRunner().invoke(
        main, ["split", "--input", str(built["sets"][0]), "--output", str(split_dir), "--val", "0.3", "--test", "0.3", "--seed", "0", "--exclusions", str(output)]
    )
    assert result.exit_code == 0, result.output
    landed = [json.loads(line)["id"] for split in SPLITS for line in (split_dir / f"{split}.jsonl").read_text().splitlines()]
    assert sorted(landed) == sorted(set(ids) - set(exclusions["ids"]))
    report = json.loads((split_dir / "report.json").read_text())
    reasons = {entry["id"]: entry["reason"] for entry in report["excluded_samples"]}
    assert reasons == {**{i: "excluded in QA: reject" for i in rejected_ids}, ids[0]: "excluded in QA: fix"}

    # A rebuild updates in place: no duplicates, tags kept, changed inputs take effect.
    (built["predictions"] / f"{ids[1]}.png").unlink()
    write_image(built["predictions"] / f"{ids[2]}.png", built["masks"][ids[2]])
    result = CliRunner().invoke(main, built["arguments"])
    assert result.exit_code == 0, result.output
    assert f"{len(ids)} samples (0 added, {len(ids)} updated)" in result.output
    dataset.reload()
    assert len(dataset) == len(ids) and sorted(dataset.values("canonical_id")) == sorted(ids)
    assert sorted(dataset.match_tags("reject").values("canonical_id")) == rejected_ids
    assert dataset.match({"canonical_id": ids[2]}).first().student_iou == 1.0


def test_missing_inputs_and_unknown_datasets_are_clear_errors(built, tmp_path):
    with pytest.raises(QaError, match="not a canonical set"):
        build_dataset(unique_name("qa-none"), [tmp_path], masks_dir=tmp_path / "m")
    broken = tmp_path / "broken"
    make_people_sets(broken, count=1)
    (broken / "pseudolabel-a" / "teacher_masks").rename(broken / "elsewhere")
    name = unique_name("qa-broken")
    result = build_dataset(name, [broken / "ingest", broken / "pseudolabel-a"], masks_dir=tmp_path / "m")
    assert result.samples == 0 and result.missing_files[0]["reason"] == "teacher mask listed in the manifest is missing"
    import fiftyone as fo

    fo.delete_dataset(name)
    with pytest.raises(QaError, match="run `datatool qa build --name nobody"):
        sync_tags("nobody", tmp_path / "x.json")
    result = CliRunner().invoke(main, ["split", "--input", str(built["sets"][0]), "--output", str(tmp_path / "s"), "--val", "0.2", "--test", "0.2", "--seed", "0", "--exclusions", str(tmp_path / "missing.json")])
    assert result.exit_code != 0 and "missing.json" in result.output and "does not exist" in result.output


def test_people_dev_rejects_leave_every_split(built, shared_data, tmp_path):
    """The issue's acceptance on real photos: ingest 12 people-dev photos, label them with the
    MediaPipe teacher, build, reject the two most suspect masks, sync, split: both are gone."""
    import shutil

    photos = tmp_path / "people-dev"
    (photos / "Training_Images").mkdir(parents=True)
    (photos / "Ground_Truth").mkdir()
    for image in sorted((shared_data / "people-dev" / "Training_Images").glob("*.jpg"))[:12]:
        shutil.copy(image, photos / "Training_Images")
        shutil.copy(shared_data / "people-dev" / "Ground_Truth" / f"{image.stem}.png", photos / "Ground_Truth")
    ingest, labelled, split_dir = tmp_path / "ingest", tmp_path / "pseudolabel", tmp_path / "split"
    runner = CliRunner()
    for arguments in (
        ["ingest", "folder", "--input", str(photos), "--output", str(ingest), "--name", "people-dev", "--workers", "1"],
        ["pseudolabel", "--teacher", "mediapipe-selfie", "--input", str(ingest), "--output", str(labelled), "--name", "people-dev"],
    ):
        result = runner.invoke(main, arguments)
        assert result.exit_code == 0, result.output
    name = unique_name("qa-people-dev")
    result = runner.invoke(main, ["qa", "build", "--name", name, "--sets", str(ingest), str(labelled), "--masks-dir", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    import fiftyone as fo

    dataset = fo.load_dataset(name)
    try:
        suspect = dataset.load_saved_view(VIEW_SUSPECT)
        ious = suspect.values("teacher_iou")
        assert len(ious) == 12 and ious == sorted(ious)
        suspect.limit(2).tag_samples("reject")
        rejected = set(suspect.limit(2).values("canonical_id"))
        exclusions = tmp_path / "exclusions.json"
        result = runner.invoke(main, ["qa", "sync", "--name", name, "--output", str(exclusions)])
        assert result.exit_code == 0 and "2 tagged reject, 0 tagged fix" in result.output, result.output
        result = runner.invoke(main, ["split", "--input", str(ingest), "--output", str(split_dir), "--val", "0.2", "--test", "0.2", "--seed", "0", "--exclusions", str(exclusions)])
        assert result.exit_code == 0 and "2 excluded" in result.output, result.output
        landed = {json.loads(line)["id"] for split in SPLITS for line in (split_dir / f"{split}.jsonl").read_text().splitlines()}
        assert len(landed) == 10 and not landed & rejected
    finally:
        dataset.delete()

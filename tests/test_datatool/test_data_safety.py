"""The user's data is never lost, mixed up or half-written: output paths, names, ids, clean-up, crashes.

Each test builds its own inputs and, where a mistake could destroy data, compares every input
file byte for byte before and after.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from conftest import make_person_mask, make_photo, write_image
from datatool.boundary import build_boundaries
from datatool.canonical import MANIFEST, read_manifest
from datatool.cli import main
from datatool.ingest import ingest
from datatool.outputs import LEDGER, OutputError
from datatool.pseudolabel import pseudolabel
from datatool.sources import create_source
from datatool.synth import SynthOptions, synthesize
from test_pseudolabel import ChannelTeacher


def build_folder_dataset(root: Path, count: int = 4, size: tuple[int, int] = (48, 64)) -> Path:
    for n in range(count):
        write_image(root / f"images/{n}.jpg", make_photo(*size, seed=n))
        write_image(root / f"masks/{n}.png", make_person_mask(*size, seed=n))
    return root


def snapshot(root: Path) -> dict[str, str]:
    """sha1 of every file under `root`: any change, removal or addition shows."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def run_cli(*args: str):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.output
    return result


# -- output paths ---------------------------------------------------------------------------------


def test_ingest_into_its_own_input_is_refused_and_changes_nothing(tmp_path):
    data = build_folder_dataset(tmp_path / "D")
    before = snapshot(data)
    result = run_cli("ingest", "folder", "--input", data, "--output", data)
    assert result.exit_code != 0
    assert "is the input" in result.output and str(data) in result.output
    assert snapshot(data) == before


def test_kaggle_output_at_the_datasets_own_folder_is_refused_and_changes_nothing(tmp_path):
    dataset = tmp_path / "download" / "people_segmentation"
    for n in range(3):
        write_image(dataset / f"images/p{n}.jpg", make_photo(40, 40, seed=n))
        write_image(dataset / f"masks/p{n}.png", make_person_mask(40, 40, seed=n))
    (dataset / "segmentation").mkdir()
    (dataset / "segmentation/train.txt").write_text("p0\np1\n")
    (dataset / "segmentation/val.txt").write_text("p2\n")
    before = snapshot(tmp_path / "download")
    result = run_cli("ingest", "kaggle-people", "--input", tmp_path / "download", "--output", dataset)
    assert result.exit_code != 0 and "inside the input" in result.output
    assert snapshot(tmp_path / "download") == before


@pytest.mark.parametrize(
    ("output", "problem"),
    [("D/out", "inside the input"), (".", "contains the input"), ("D/images/0.jpg", "is a file")],
)
def test_outputs_that_could_touch_the_input_are_refused_before_anything_is_written(tmp_path, output, problem):
    data = build_folder_dataset(tmp_path / "D")
    before = snapshot(tmp_path)
    result = run_cli("ingest", "folder", "--input", data, "--output", tmp_path / output)
    assert result.exit_code != 0 and problem in result.output
    assert snapshot(tmp_path) == before


def test_every_set_writing_stage_refuses_its_input_as_output(tmp_path):
    data = build_folder_dataset(tmp_path / "D")
    ingest(create_source("folder", data), tmp_path / "set")
    before = snapshot(tmp_path / "set")
    with pytest.raises(OutputError, match="is the input"):
        build_boundaries(tmp_path / "set", tmp_path / "set")
    with pytest.raises(OutputError, match="is the input"):
        synthesize(tmp_path / "set", data / "images", tmp_path / "set")
    with pytest.raises(OutputError, match="contains the input"):
        synthesize(tmp_path / "set", data / "images", tmp_path)
    for args in (["backgrounds", "--include", data / "images", "--output", data], ["backgrounds", "--input", tmp_path / "set", "--output", tmp_path]):
        result = run_cli(*args)
        assert result.exit_code != 0 and "the input" in result.output
    assert snapshot(tmp_path / "set") == before


def test_clean_up_removes_only_files_the_stage_wrote(tmp_path):
    data = build_folder_dataset(tmp_path / "D")
    output = tmp_path / "set"
    write_image(output / "images/holiday.jpg", make_photo(20, 20))  # the user's own files in the output folder
    (output / "masks").mkdir(parents=True)
    (output / "masks/notes.txt").write_text("mine")
    ingest(create_source("folder", data), output)
    (data / "images/3.jpg").unlink()  # sample 3 leaves the input: its files are stale now
    (data / "masks/3.png").unlink()
    result = ingest(create_source("folder", data), output)
    assert result.report["counts"]["removed_stale_files"] == 2
    assert (output / "images/holiday.jpg").is_file() and (output / "masks/notes.txt").read_text() == "mine"
    rows = list(read_manifest(output))
    assert len(rows) == 3
    kept = {Path(row[field]).name for row in rows for field in ("image", "mask")}
    assert {path.name for path in (output / "images").iterdir()} == {name for name in kept if name.endswith(".jpg")} | {"holiday.jpg"}
    assert json.loads((output / LEDGER).read_text().splitlines()[0]).startswith("images/")


def test_a_set_written_before_ledgers_existed_is_cleaned_by_its_manifest(tmp_path):
    data = build_folder_dataset(tmp_path / "D")
    output = tmp_path / "set"
    ingest(create_source("folder", data), output)
    (output / LEDGER).unlink()  # as an older version left it
    write_image(output / "images/holiday.jpg", make_photo(20, 20))
    (data / "images/0.jpg").unlink()
    assert ingest(create_source("folder", data), output).report["counts"]["removed_stale_files"] == 2
    assert (output / "images/holiday.jpg").is_file()


# -- names and ids --------------------------------------------------------------------------------


def test_folder_images_with_one_stem_are_reported_with_both_files(tmp_path):
    data = build_folder_dataset(tmp_path / "D", count=2)
    write_image(data / "images/0.png", make_photo(48, 64, seed=9))  # 0.jpg and 0.png: whose mask is 0.png?
    result = ingest(create_source("folder", data), tmp_path / "set")
    skipped = {entry["file"]: entry["reason"] for entry in result.report["skipped"]}
    assert "images/0.jpg" in skipped["images/0.png"] and skipped["images/0.png"].startswith("duplicate image stem")
    assert [row["source_image"] for row in read_manifest(tmp_path / "set")] == ["images/0.jpg", "images/1.jpg"]


def duplicate_id_set(tmp_path: Path) -> Path:
    """A canonical set whose second and third rows repeat the first row's id with other files."""
    data = build_folder_dataset(tmp_path / "D", count=3, size=(40, 40))
    ingest(create_source("folder", data), tmp_path / "set")
    rows = list(read_manifest(tmp_path / "set"))
    rows[1]["id"] = rows[2]["id"] = rows[0]["id"]
    (tmp_path / "set" / MANIFEST).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path / "set"


def test_canonical_inputs_with_a_duplicate_id_keep_the_first_and_report_the_others(tmp_path):
    source = duplicate_id_set(tmp_path)
    first = next(read_manifest(source))
    labelled = pseudolabel(ChannelTeacher(), source, tmp_path / "labelled")
    edges = build_boundaries(source, tmp_path / "edges")
    composites = synthesize(source, tmp_path / "D/images", tmp_path / "synth", options=SynthOptions(per_foreground=1, size=(32, 32)))
    for result in (labelled, edges, composites):
        duplicates = [entry for entry in result.report["skipped"] if entry["reason"].startswith("duplicate id")]
        assert [entry["file"] for entry in duplicates] == ["manifest.jsonl:2", "manifest.jsonl:3"]
        assert "line 1" in duplicates[0]["reason"]
    [row] = read_manifest(tmp_path / "labelled")
    assert (tmp_path / "labelled" / row["image"]).read_bytes() == (source / first["image"]).read_bytes()
    assert len(list(read_manifest(tmp_path / "edges"))) == 1


def test_rows_whose_id_or_paths_would_leave_the_set_are_reported(tmp_path):
    data = build_folder_dataset(tmp_path / "D", count=3, size=(40, 40))
    ingest(create_source("folder", data), tmp_path / "set")
    rows = list(read_manifest(tmp_path / "set"))
    rows[0]["id"] = "../../escaped"
    rows[1]["image"] = "../D/images/1.jpg"
    lines = [json.dumps(row) for row in rows] + ["{not json", "[1, 2]"]
    (tmp_path / "set" / MANIFEST).write_text("\n".join(lines) + "\n")
    result = pseudolabel(ChannelTeacher(), tmp_path / "set", tmp_path / "labelled")
    reasons = {entry["file"]: entry["reason"] for entry in result.report["skipped"]}
    assert set(reasons) == {f"manifest.jsonl:{n}" for n in (1, 2, 4, 5)}
    assert "not a file-name-safe id" in reasons["manifest.jsonl:1"] and "not a path inside the set" in reasons["manifest.jsonl:2"]
    assert result.labelled == 1 and not (tmp_path / "escaped.png").exists()


# -- crash safety ---------------------------------------------------------------------------------


def assert_consistent(set_dir: Path) -> bool:
    """Either no manifest (the next run completes the set) or every row agrees with its files."""
    if not (set_dir / MANIFEST).is_file():
        return False
    for row in read_manifest(set_dir):
        image = cv2.imread(str(set_dir / row["image"]))
        mask = cv2.imread(str(set_dir / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert image is not None and mask is not None, row["id"]
        assert image.shape[:2] == mask.shape == (row["height"], row["width"]), row["id"]
    return True


def test_a_run_failing_at_any_file_write_never_leaves_a_stale_manifest(tmp_path, monkeypatch):
    """Each possible point of failure, one after another, while a set is re-done with other options."""
    import datatool.canonical

    data = build_folder_dataset(tmp_path / "D", count=3, size=(60, 80))
    output = tmp_path / "set"
    real_write = datatool.canonical.write_file
    for failing_write in range(6):  # 3 samples x (image, mask) re-written
        ingest(create_source("folder", data), output, max_side=0)
        assert_consistent(output)
        writes = []

        def fail_at(path, data, failing_write=failing_write, writes=writes):
            if len(writes) == failing_write:
                raise KeyboardInterrupt
            writes.append(path)
            real_write(path, data)

        monkeypatch.setattr(datatool.canonical, "write_file", fail_at)
        with pytest.raises(KeyboardInterrupt):
            ingest(create_source("folder", data), output, max_side=40)  # every sample changes size
        monkeypatch.setattr(datatool.canonical, "write_file", real_write)
        assert not assert_consistent(output), f"a manifest survived failure at write {failing_write}"
        ingest(create_source("folder", data), output, max_side=40)
        assert assert_consistent(output)
        assert {row["width"] for row in read_manifest(output)} == {40}


def test_killing_ingest_at_random_moments_leaves_a_set_the_next_run_completes(tmp_path):
    """SIGKILL (no clean-up code runs) at random points of re-runs that alternate the options."""
    data = build_folder_dataset(tmp_path / "D", count=60, size=(240, 320))
    datatool = Path(sys.executable).parent / "datatool"

    def command(output: Path, max_side: int) -> list[str]:
        return [str(datatool), "ingest", "folder", "--input", str(data), "--output", str(output), "--workers", "1", "--max-side", str(max_side)]

    subprocess.run(command(tmp_path / "reference", 100), check=True)
    processing = json.loads((tmp_path / "reference/report.json").read_text())["seconds"]
    output = tmp_path / "set"
    subprocess.run(command(output, 0), check=True, capture_output=True)
    rng = random.Random(0)
    complete_after_kill = []
    for attempt in range(8):
        process = subprocess.Popen(command(output, 100 if attempt % 2 == 0 else 0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt > 0:  # the first kill lands in start-up; the others once the run has begun writing
            deadline = time.monotonic() + 60
            while (output / MANIFEST).exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.0) * processing)
        process.send_signal(signal.SIGKILL)
        process.wait()
        complete_after_kill.append(assert_consistent(output))
    assert not all(complete_after_kill), "no kill landed while files were being written: make the input larger"
    subprocess.run(command(output, 100), check=True, capture_output=True)
    assert assert_consistent(output)
    assert list(read_manifest(output)) == list(read_manifest(tmp_path / "reference"))
    samples = lambda folder: {name: digest for name, digest in snapshot(folder).items() if name.startswith(("images/", "masks/"))}  # noqa: E731
    assert samples(output) == samples(tmp_path / "reference")


def test_a_zero_byte_or_corrupt_manifest_is_reported_not_a_traceback(tmp_path):
    data = build_folder_dataset(tmp_path / "D", count=2, size=(40, 40))
    ingest(create_source("folder", data), tmp_path / "set")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / MANIFEST).write_bytes(b"")
    result = run_cli("boundary", "--input", tmp_path / "empty", "--output", tmp_path / "edges")
    assert result.exit_code != 0 and "no edge map" in result.output
    with (tmp_path / "set" / MANIFEST).open("ab") as manifest:
        manifest.write(b"\xff\xfe garbage\n")
    result = run_cli("split", "--input", tmp_path / "set", "--output", tmp_path / "split", "--val", "0.5", "--test", "0", "--seed", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "split/report.json").read_text())
    assert [entry["reason"] for entry in report["skipped"]] == ["invalid manifest line: not UTF-8 text"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes any file: permissions cannot be tested as root")
def test_an_unwritable_output_is_a_message(tmp_path):
    data = build_folder_dataset(tmp_path / "D", count=1)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("ingest", "folder", "--input", data, "--output", locked / "set")
    assert result.exit_code != 0 and "Permission denied" in result.output


def test_split_files_are_replaced_all_or_none(tmp_path, monkeypatch):
    data = build_folder_dataset(tmp_path / "D", count=6, size=(40, 40))
    ingest(create_source("folder", data), tmp_path / "set")
    from datatool.split import SplitOptions, split_sets

    split_sets([tmp_path / "set"], tmp_path / "split", SplitOptions(val_fraction=0.3, test_fraction=0.3, seed=0))
    replaced = []
    real_replace = os.replace

    def replace_then_die(source, target):
        real_replace(source, target)
        replaced.append(target)
        if len(replaced) == 1:
            raise KeyboardInterrupt  # killed after the first new split file arrived

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        split_sets([tmp_path / "set"], tmp_path / "split", SplitOptions(val_fraction=0.5, test_fraction=0.2, seed=1))
    present = [name for name in ("train.jsonl", "val.jsonl", "test.jsonl") if (tmp_path / "split" / name).exists()]
    assert present == [Path(replaced[0]).name]  # never a new train beside an old val and test

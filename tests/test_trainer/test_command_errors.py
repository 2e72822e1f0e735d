"""Bad inputs to `trainer` and `datatool` commands end in one message naming the file, never a traceback.

Every broken input is built in the test's temporary folder; the trainer cases use the tiny
colour-rule model and blob split of export_fixtures.py, so no case trains for more than an epoch.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from datatool.cli import main as datatool_main
from export_fixtures import SIZE, TINY, register_tiny, write_checkpoint, write_split
from qa_fixtures import make_people_sets, unique_name, use_test_database
from trainer.cli import main as trainer_main


def invoke(main, *args) -> object:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_message(result, *names, exit_code: int | None = None) -> None:
    """A click error (SystemExit, non-zero) whose output names each of `names` and holds no traceback."""
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code != 0 and (exit_code is None or result.exit_code == exit_code), result.output
    assert "Traceback" not in result.output, result.output
    for name in names:
        assert str(name) in result.output, f"{name} not in {result.output}"


@pytest.fixture
def tiny(monkeypatch):
    register_tiny(monkeypatch)
    return TINY


@pytest.fixture
def split_dir(tmp_path) -> Path:
    return write_split(tmp_path / "split")


def train_params(tmp_path: Path, **changes) -> Path:
    section = {"model": TINY, "size": SIZE, "epochs": 1, "batch_size": 4, "augment": False}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {**section, **changes}}))
    return path


def train(params: Path, split_dir: Path, output: Path, *extra):
    return invoke(trainer_main, "train", "--params", params, "--split-dir", split_dir, "--output", output, *extra)


# --- trainer train: the split ------------------------------------------------------------------


def test_train_on_a_split_whose_files_are_missing_stops_naming_them(tmp_path, tiny, split_dir):
    for image in (split_dir / "blobs" / "images").glob("train*.jpg"):
        image.unlink()
    result = train(train_params(tmp_path), split_dir, tmp_path / "run")
    assert_message(result, split_dir / "train.jsonl", split_dir / "blobs" / "images" / "train0.jpg")


def test_train_leaves_out_a_row_whose_file_is_missing_and_lists_it(tmp_path, tiny, split_dir):
    (split_dir / "blobs" / "images" / "train3.jpg").unlink()
    result = train(train_params(tmp_path), split_dir, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert f"{split_dir / 'train.jsonl'}: left out 1 of 8 rows" in result.output
    assert str(split_dir / "blobs" / "images" / "train3.jpg") in result.output


@pytest.mark.parametrize(
    "manifest, content, where",
    [
        ("val.jsonl", b"", "val.jsonl has no rows"),
        ("train.jsonl", b"\n\n", "train.jsonl has no rows"),
        ("train.jsonl", b'{"id": "a", "set": "blobs", "image": "images/train0.jpg"\n', "train.jsonl:1: not a JSON row"),
        ("val.jsonl", b'{"id": "x"}\n', "val.jsonl:1: row lacks set, image, mask"),
        ("val.jsonl", b"[1, 2]\n", "val.jsonl:1: a row must be a JSON object"),
        ("train.jsonl", os.urandom(64) + b"\xff\n", "train.jsonl is not UTF-8 text"),
    ],
    ids=["empty-val", "blank-train", "not-json", "no-fields", "not-an-object", "binary"],
)
def test_train_on_an_empty_or_corrupt_split_is_a_message(tmp_path, tiny, split_dir, manifest, content, where):
    (split_dir / manifest).write_bytes(content)
    result = train(train_params(tmp_path), split_dir, tmp_path / "run")
    assert_message(result, split_dir / manifest, where)


def test_train_with_an_option_the_model_does_not_take_is_a_usage_error(tmp_path, tiny, split_dir):
    params = train_params(tmp_path)
    result = train(params, split_dir, tmp_path / "run", "model_options.bogus=1")
    assert_message(result, "bogus", TINY, params, exit_code=2)


# --- checkpoints ---------------------------------------------------------------------------------


def random_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(4096))
    return path


@pytest.mark.parametrize("command", ["train --resume", "train init_weights", "export", "evaluate"])
def test_a_random_bytes_checkpoint_is_named_without_pytorch_advice(tmp_path, tiny, split_dir, command):
    params = train_params(tmp_path)
    if command == "train --resume":
        checkpoint = random_checkpoint(tmp_path / "run" / "last.pt")
        result = train(params, split_dir, tmp_path / "run", "--resume")
    elif command == "train init_weights":
        checkpoint = random_checkpoint(tmp_path / "weights" / "best.pt")
        result = train(params, split_dir, tmp_path / "run", f"init_weights={checkpoint}")
    elif command == "export":
        checkpoint = random_checkpoint(tmp_path / "run" / "best.pt")
        result = invoke(trainer_main, "export", "--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "out",
                        "--split-dir", split_dir, "--params", tmp_path / "absent.yaml")  # fmt: skip
    else:
        checkpoint = random_checkpoint(tmp_path / "run" / "best.pt")
        (split_dir / "test.jsonl").write_text((split_dir / "val.jsonl").read_text())
        evaluate_params = tmp_path / "evaluate.yaml"
        evaluate_params.write_text(yaml.safe_dump({"evaluate": {"reference": "", "repeats": 1, "warmup": 0}}))
        result = invoke(trainer_main, "evaluate", "--artefact", checkpoint, "--split-dir", split_dir,
                        "--params", evaluate_params, "--output", tmp_path / "reports")  # fmt: skip
    assert_message(result, checkpoint, "is not a readable")
    assert "weights_only" not in result.output and "file an issue" not in result.output.lower()


@pytest.mark.parametrize(
    "change, message",
    [({"model_name": "no_such_model"}, "unknown model 'no_such_model'"), ({"model_options": {"bogus": 1}}, "bogus")],
    ids=["unknown-model", "bad-options"],
)
def test_export_of_a_checkpoint_naming_a_model_that_cannot_be_built(tmp_path, tiny, split_dir, change, message):
    checkpoint = write_checkpoint(tmp_path / "run")
    torch.save({**torch.load(checkpoint, weights_only=True), **change}, checkpoint)
    result = invoke(trainer_main, "export", "--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "out",
                    "--params", tmp_path / "absent.yaml")  # fmt: skip
    assert_message(result, checkpoint, message)


def test_export_with_a_corrupt_validation_split_names_it(tmp_path, tiny, split_dir):
    checkpoint = write_checkpoint(tmp_path / "run")
    (split_dir / "val.jsonl").write_text("not json\n")
    result = invoke(trainer_main, "export", "--checkpoint", checkpoint, "--format", "onnx", "--split-dir", split_dir,
                    "--output", tmp_path / "out", "--params", tmp_path / "absent.yaml")  # fmt: skip
    assert_message(result, f"{split_dir / 'val.jsonl'}:1: not a JSON row")


# --- params files, splits and folders of the other commands ------------------------------------


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"train: [unclosed\n  : :\n", "is not valid YAML (line 2"),
        (b"- 1\n- 2\n", "not a mapping"),
        (b"\xff\xfegarbage\x80", "cannot be read as YAML"),
    ],
    ids=["not-yaml", "a-list", "binary"],
)
@pytest.mark.parametrize("command", ["train", "export", "evaluate"])
def test_a_params_file_that_is_not_a_yaml_mapping_is_named(tmp_path, tiny, split_dir, command, content, reason):
    params = tmp_path / "broken.yaml"
    params.write_bytes(content)
    checkpoint = write_checkpoint(tmp_path / "run")
    arguments = {
        "train": ["train", "--output", tmp_path / "trained"],
        "export": ["export", "--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "out"],
        "evaluate": ["evaluate", "--artefact", checkpoint, "--split-dir", split_dir, "--output", tmp_path / "reports"],
    }[command]
    result = invoke(trainer_main, *arguments, "--params", params)
    assert_message(result, params, reason)


def test_evaluate_on_a_corrupt_split_names_the_line(tmp_path, tiny, split_dir):
    checkpoint = write_checkpoint(tmp_path / "run")
    (split_dir / "test.jsonl").write_text((split_dir / "val.jsonl").read_text() + "{broken\n")
    result = invoke(trainer_main, "evaluate", "--artefact", checkpoint, "--split-dir", split_dir,
                    "--params", tmp_path / "absent.yaml", "--output", tmp_path / "reports")  # fmt: skip
    assert_message(result, f"{split_dir / 'test.jsonl'}:7: not a JSON row")


def test_runs_of_a_damaged_metrics_file_or_a_missing_folder(tmp_path):
    metrics = tmp_path / "models" / "student" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_bytes(b"\xff{garbage")
    assert_message(invoke(trainer_main, "runs", tmp_path / "models"), metrics)
    metrics.write_text(json.dumps({"model": "student"}))
    assert_message(invoke(trainer_main, "runs", tmp_path / "models"), metrics, "val_iou")
    assert_message(invoke(trainer_main, "runs", tmp_path / "nowhere"), tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


# --- datatool ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"\x80\x81\xfe binary", b'["people-0",', b'{"samples": []}'], ids=["binary", "not-json", "wrong-shape"]
)
def test_split_exclusions_that_are_not_a_list_of_ids_are_named(tmp_path, content):
    sets = make_people_sets(tmp_path / "sets", count=1)
    exclusions = tmp_path / "exclusions.json"
    exclusions.write_bytes(content)
    result = invoke(datatool_main, "split", "--input", sets["sets"][0], "--output", tmp_path / "split", "--val", "0.2",
                    "--test", "0.2", "--seed", "0", "--exclusions", exclusions)  # fmt: skip
    assert_message(result, f'{exclusions}: not a JSON list of sample ids or {{"ids": [...]}}')


def test_qa_build_with_a_corrupt_split_file_names_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/processed/split of the working tree
    sets = make_people_sets(tmp_path / "sets", count=1)
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "train.jsonl").write_text('{"id": "x"}\nnot json\n')
    result = invoke(datatool_main, "qa", "build", "--name", unique_name("qa-errors"), "--sets", sets["sets"][0],
                    "--split-dir", tmp_path / "split", "--masks-dir", tmp_path / "masks")  # fmt: skip
    assert_message(result, f"{tmp_path / 'split' / 'train.jsonl'}:2")


def test_qa_build_skips_and_lists_a_corrupt_manifest_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/processed/split of the working tree
    use_test_database(tmp_path)
    sets = make_people_sets(tmp_path / "sets", count=2)
    manifest = sets["sets"][0] / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + "{not json\n" + json.dumps({"id": "no-image"}) + "\n")
    name = unique_name("qa-errors")
    result = invoke(datatool_main, "qa", "build", "--name", name, "--sets", sets["sets"][0],
                    "--masks-dir", tmp_path / "masks")  # fmt: skip
    try:
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        assert f"{name}: 2 samples (2 added, 0 updated)" in result.output
        for line in (3, 4):  # not JSON; a row without image and mask
            assert f"skipped line {line}: invalid manifest " in result.output and f"({manifest}:{line})" in result.output
    finally:
        import fiftyone as fo

        if fo.dataset_exists(name):
            fo.delete_dataset(name)

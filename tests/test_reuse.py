"""The re-use state shared by ingest and pseudolabel."""

import json

import pytest

from datatool.reuse import StateWriter, file_fingerprint, load_state, remove_stale_files, signature


def test_signature_is_stable_and_sensitive():
    assert signature(a=1, b="x") == signature(b="x", a=1)
    assert signature(a=1, b="x") != signature(a=2, b="x")


def test_fingerprint_is_relative_and_none_when_a_file_is_missing(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"12345")
    [[name, size, _mtime]] = file_fingerprint([tmp_path / "a.jpg"], tmp_path)
    assert (name, size) == ("a.jpg", 5)
    assert file_fingerprint([tmp_path / "a.jpg", tmp_path / "gone.png"], tmp_path) is None


def test_state_round_trip_and_signature_mismatch(tmp_path):
    path = tmp_path / ".state.jsonl"
    with StateWriter(path, "sig") as state:
        state.write({"sample_id": "x", "row": {"id": "x"}})
    assert load_state(path, "sig") == {"x": {"sample_id": "x", "row": {"id": "x"}}}
    assert load_state(path, "other") == {}
    path.write_text('{"signature": "sig"}\nnot json\n')
    assert load_state(path, "sig") == {}


def test_an_interrupted_run_keeps_the_old_state_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / ".state.jsonl"
    with StateWriter(path, "old") as state:
        state.write({"sample_id": "kept"})
    with pytest.raises(KeyboardInterrupt), StateWriter(path, "new") as state:
        state.write({"sample_id": "half"})
        raise KeyboardInterrupt
    assert json.loads(path.read_text().splitlines()[0]) == {"signature": "old"}
    assert [p.name for p in tmp_path.iterdir()] == [".state.jsonl"]


def test_remove_stale_files_keeps_ids_with_dots(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("IMG_2020.01.01-abc.jpg", "gone-def.jpg"):
        (tmp_path / "images" / name).write_bytes(b"")
    assert remove_stale_files([tmp_path / "images", tmp_path / "missing"], ["IMG_2020.01.01-abc"]) == 1
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["IMG_2020.01.01-abc.jpg"]

"""The re-use state shared by every stage on the engine."""


import pytest

from datatool.reuse import STATE_FORMAT, StateWriter, file_fingerprint, load_state, signature


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
        state.write({"sample_id": "x", "rows": [{"id": "x"}]})
    assert load_state(path, "sig") == {"x": {"sample_id": "x", "rows": [{"id": "x"}]}}
    assert load_state(path, "other") == {}
    path.write_text(f'{{"format": {STATE_FORMAT}, "signature": "sig"}}\nnot json\n')
    assert load_state(path, "sig") == {}


def test_a_state_of_another_format_is_not_reused(tmp_path):
    """A state written before outcomes listed their files must not be reused: its samples would
    look as if they owned no files, and the clean-up would remove them."""
    path = tmp_path / ".state.jsonl"
    path.write_text('{"signature": "sig"}\n{"sample_id": "x", "row": {"id": "x"}}\n')
    assert load_state(path, "sig") == {}


def test_an_interrupted_run_leaves_the_state_of_the_samples_it_finished(tmp_path):
    """The old state is replaced at the start (a killed run with other options may have replaced
    its files); each finished sample is on disk at once, so the next run reuses exactly those."""
    path = tmp_path / ".state.jsonl"
    with StateWriter(path, "old") as state:
        state.write({"sample_id": "kept"})
    with pytest.raises(KeyboardInterrupt), StateWriter(path, "new") as state:
        state.write({"sample_id": "finished"})
        raise KeyboardInterrupt
    assert load_state(path, "old") == {}
    assert load_state(path, "new") == {"finished": {"sample_id": "finished"}}
    assert [p.name for p in tmp_path.iterdir()] == [".state.jsonl"]

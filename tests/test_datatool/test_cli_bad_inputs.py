"""Every `datatool` command on broken inputs: a message, never a traceback; non-zero exit only where README says.

README: a set-writing command exits non-zero when nothing could be produced (or the input is
not usable at all, or the options are wrong), and 0 when at least one sample was produced,
whatever was skipped on the way (without `--strict`).
"""

import errno
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_person_mask, make_photo, write_image
from datatool.canonical import MANIFEST
from datatool.cli import main
from datatool.ingest import ingest
from datatool.sources import create_source
from test_pseudolabel import built_teachers  # noqa: F401  (fixture: a teacher that needs no model file)

SOURCES = ("aisegment", "kaggle-people", "pfcn", "supervisely", "folder", "clips")


@pytest.fixture
def broken(tmp_path) -> Path:
    """One folder of every kind of broken input, and one good canonical set (`set`) to break further."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    write_image(tmp_path / "junk/images/photo.jpg", make_photo(30, 40))
    (tmp_path / "junk/images/photo.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "junk/masks").mkdir()
    (tmp_path / "junk/masks/photo.png").write_bytes(b"")
    (tmp_path / "junk/.DS_Store").write_bytes(b"junk")
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / MANIFEST).write_bytes(b"")
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / MANIFEST).write_bytes(b'{"id": \n[1, 2]\n\xff\xfe\n{"id": "x"}\n')
    for n in range(2):
        write_image(tmp_path / f"good/images/{n}.jpg", make_photo(40, 48, seed=n))
        write_image(tmp_path / f"good/masks/{n}.png", make_person_mask(40, 48, seed=n))
    ingest(create_source("folder", tmp_path / "good"), tmp_path / "set")
    with (tmp_path / "set" / MANIFEST).open("ab") as manifest:  # one bad line beside two good rows
        manifest.write(b"{broken\n")
    return tmp_path


def invoke(root: Path, args: list[str]):
    result = CliRunner().invoke(main, [arg.replace("{root}", str(root)) for arg in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), f"traceback for {args}: {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    return result


CASES = [
    # (command line, exits non-zero, a phrase of the message)
    *[(["ingest", source, "--input", "{root}/missing", "--output", "{root}/out"], True, "does not exist") for source in SOURCES],
    *[(["ingest", source, "--input", "{root}/a-file", "--output", "{root}/out"], True, "not a directory") for source in SOURCES],
    *[(["ingest", source, "--input", "{root}/empty", "--output", "{root}/out"], True, "is empty") for source in SOURCES],
    (["ingest", "folder", "--input", "{root}/junk", "--output", "{root}/out"], True, "no sample could be ingested"),
    (["ingest", "folder", "--input", "{root}/good", "--output", "{root}/a-file"], True, "is a file"),
    (["ingest", "clips", "--input", "{root}/junk", "--output", "{root}/out"], True, "no sample could be ingested"),
    (["ingest", "clips", "--input", "{root}/good", "--output", "{root}/out", "--fps", "-1"], True, "--fps"),
    (["ingest", "folder", "--input", "{root}/good", "--output", "{root}/good"], True, "is the input"),
    (["ingest", "folder", "--input", "{root}/good", "--output", "{root}/out", "--workers", "-1"], True, "--workers"),
    (["pseudolabel", "--teacher", "t", "--input", "{root}/empty", "--output", "{root}/out"], True, "no photo could be labelled"),
    (["pseudolabel", "--teacher", "t", "--input", "{root}/junk", "--output", "{root}/out"], True, "no photo could be labelled"),
    (["pseudolabel", "--teacher", "t", "--input", "{root}/zero", "--output", "{root}/out"], True, "no photo could be labelled"),
    (["pseudolabel", "--teacher", "t", "--input", "{root}/garbled", "--output", "{root}/out"], True, "no photo could be labelled"),
    (["pseudolabel", "--teacher", "t", "--input", "{root}/set", "--output", "{root}/out"], False, "2 of 2 photos"),
    (["pseudolabel", "--teacher", "t", "--input", "{root}/set", "--output", "{root}/set"], True, "is the input"),
    (["pseudolabel", "--teacher", "t", "--input", "{root}/a-file", "--output", "{root}/out"], True, "is a file"),
    (["boundary", "--input", "{root}/empty", "--output", "{root}/out"], True, "not a canonical set"),
    (["boundary", "--input", "{root}/zero", "--output", "{root}/out"], True, "no edge map"),
    (["boundary", "--input", "{root}/garbled", "--output", "{root}/out"], True, "no edge map"),
    (["boundary", "--input", "{root}/set", "--output", "{root}/out"], False, "2 of 3 edge maps"),
    (["boundary", "--input", "{root}/set", "--output", "{root}"], True, "contains the input"),
    (["split", "--input", "{root}/zero", "--output", "{root}/out", "--val", "0.5", "--test", "0", "--seed", "0"], True, "no sample to split"),
    (["split", "--input", "{root}/garbled", "--output", "{root}/out", "--val", "0.5", "--test", "0", "--seed", "0"], True, "no sample to split"),
    (["split", "--input", "{root}/set", "--output", "{root}/out", "--val", "0.5", "--test", "0", "--seed", "0"], False, "invalid manifest line"),
    (["split", "--input", "{root}/set", "--output", "{root}/a-file", "--val", "0.5", "--test", "0", "--seed", "0"], True, "is a file"),
    (["backgrounds", "--input", "{root}/garbled", "--output", "{root}/out"], True, "no background could be cut"),
    (["backgrounds", "--input", "{root}/empty", "--output", "{root}/out"], True, "not a canonical set"),
    (["backgrounds", "--include", "{root}/junk", "--output", "{root}/out"], True, "no background could be cut"),
    (["backgrounds", "--include", "{root}/good/images", "--output", "{root}/good"], True, "contains the input"),
    (["synth", "--foregrounds", "{root}/set", "--backgrounds", "{root}/empty", "--output", "{root}/out"], True, "the folder is empty"),
    (["synth", "--foregrounds", "{root}/set", "--backgrounds", "{root}/junk", "--output", "{root}/out"], True, "no usable background"),
    (["synth", "--foregrounds", "{root}/zero", "--backgrounds", "{root}/good/images", "--output", "{root}/out"], True, "no composite"),
    (["synth", "--foregrounds", "{root}/garbled", "--backgrounds", "{root}/good/images", "--output", "{root}/out"], True, "no composite"),
    (["synth", "--foregrounds", "{root}/set", "--backgrounds", "{root}/good/images", "--output", "{root}/out", "--size", "32", "32"], False, "composites"),
    (["synth", "--foregrounds", "{root}/set", "--backgrounds", "{root}/good/images", "--output", "{root}/good"], True, "contains the input"),
    (["synth-video", "--foregrounds", "{root}/set", "--backgrounds", "{root}/empty", "--output", "{root}/out"], True, "the folder is empty"),
    (["synth-video", "--foregrounds", "{root}/zero", "--backgrounds", "{root}/good/images", "--output", "{root}/out"], True, "no clip could be made"),
    (["synth-video", "--foregrounds", "{root}/set", "--backgrounds", "{root}/good/images", "--output", "{root}/out", "--size", "32", "32", "--seconds", "0.4", "--fps", "10"], False, "2 clips (8 frames"),
    (["synth-video", "--foregrounds", "{root}/set", "--backgrounds", "{root}/good/images", "--output", "{root}/out", "--seconds", "0.1"], True, "at least 4 frames"),
    (["demo", "--output", "{root}/a-file"], True, "a-file"),
    (["teacher-files", "fetch", "no-such-model"], True, "unknown model"),
]


@pytest.mark.parametrize(("args", "fails", "phrase"), CASES, ids=[" ".join(case[0][:2]) + f"-{n}" for n, case in enumerate(CASES)])
def test_every_command_on_broken_input_says_what_is_wrong(broken, built_teachers, args, fails, phrase):  # noqa: F811
    result = invoke(broken, args)
    assert (result.exit_code != 0) == fails, result.output
    assert phrase in result.output, result.output


def test_a_full_disk_stops_the_run_with_a_message_and_the_next_run_completes_the_set(tmp_path, monkeypatch):
    import datatool.canonical

    for n in range(3):
        write_image(tmp_path / f"D/images/{n}.jpg", make_photo(40, 48, seed=n))
        write_image(tmp_path / f"D/masks/{n}.png", make_person_mask(40, 48, seed=n))
    real_write = datatool.canonical.write_file
    written = []

    def disk_fills_up(path, data):
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        real_write(path, data)

    monkeypatch.setattr(datatool.canonical, "write_file", disk_fills_up)
    args = ["ingest", "folder", "--input", str(tmp_path / "D"), "--output", str(tmp_path / "set"), "--workers", "1"]
    result = invoke(tmp_path, args)
    assert result.exit_code != 0 and "No space left on device" in result.output and "run the command again" in result.output
    assert not (tmp_path / "set" / MANIFEST).exists()
    monkeypatch.setattr(datatool.canonical, "write_file", real_write)
    result = invoke(tmp_path, args)
    assert result.exit_code == 0 and "3 samples ingested (1 reused" in result.output
    assert len((tmp_path / "set" / MANIFEST).read_text().splitlines()) == 3
    assert json.loads((tmp_path / "set/report.json").read_text())["counts"]["reused"] == 1


def test_a_reader_that_stops_reading_is_no_error(tmp_path):
    """`datatool teacher-files list | head -1`: the broken pipe ends the command quietly, without the
    disk-space advice of a real file error."""
    import subprocess
    import sys

    script = "from datatool.cli import main; main()"
    command = [sys.executable, "-c", script, "teacher-files", "list", "--cache-dir", str(tmp_path)]
    listing = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing.stdout.readline()
    listing.stdout.close()  # what `head -1` does after its line
    stderr = listing.stderr.read().decode()
    listing.wait(timeout=60)
    assert "Broken pipe" not in stderr and "free disk space" not in stderr, stderr


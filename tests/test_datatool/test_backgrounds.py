"""`datatool backgrounds`: person-free backgrounds cut from labelled photos, reported per photo."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_photo, write_image
from datatool.backgrounds import BackgroundOptions, build_backgrounds, cut_backgrounds, person_free_squares
from datatool.canonical import write_manifest
from datatool.cli import main


def person_on_the_left(height: int, width: int, share: float) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[:, : int(share * width)] = 255
    return mask


def make_set(root: Path) -> Path:
    """A small person on the left of a wide photo, a person filling a photo, and a broken image."""
    samples = {"wide": (person_on_the_left(60, 160, 0.25), make_photo(60, 160, seed=1)),
               "full": (np.full((50, 50), 255, np.uint8), make_photo(50, 50, seed=2)),
               "broken": (person_on_the_left(40, 40, 0.5), make_photo(40, 40, seed=3))}  # fmt: skip
    rows = []
    for sample_id, (mask, image) in samples.items():
        write_image(root / "images" / f"{sample_id}.png", image)
        write_image(root / "masks" / f"{sample_id}.png", mask)
        rows.append({"id": sample_id, "image": f"images/{sample_id}.png", "mask": f"masks/{sample_id}.png", "source": "s",
                     "width": image.shape[1], "height": image.shape[0], "mask_kind": "binary", "group": sample_id})  # fmt: skip
    (root / "images" / "broken.png").write_bytes(b"\x89PNG truncated")
    write_manifest(root, rows)
    return root


def test_squares_hold_no_person_pixel_and_do_not_pile_up():
    person = np.zeros((100, 300), np.uint8)
    person[:, :100] = 1
    squares = person_free_squares(person, count=3, min_share=0.4)
    assert squares[0][2] == 100  # the largest square first: the full height
    for x, y, side in squares:
        assert not person[y : y + side, x : x + side].any()
    for (x1, y1, s1), (x2, y2, s2) in zip(squares, squares[1:]):
        assert abs(x1 - x2) >= min(s1, s2) / 2 or abs(y1 - y2) >= min(s1, s2) / 2
    assert person_free_squares(np.ones((50, 50), np.uint8), count=3, min_share=0.4) == []


def test_filled_photo_paints_the_person_out():
    image = np.full((60, 160, 3), 90, np.uint8)
    image[:, :40] = (0, 0, 255)  # a red "person" on a grey wall
    pieces = dict(cut_backgrounds(image, person_on_the_left(60, 160, 0.25), BackgroundOptions(crops=0)))
    filled = pieces["filled"]
    assert filled.shape == image.shape
    assert np.abs(filled.astype(int) - 90).max() <= 10  # no red (a 165 step) left: the wall was painted in


def test_library_holds_cut_and_included_backgrounds_and_drops_stale_files(tmp_path):
    source = make_set(tmp_path / "photos")
    own = tmp_path / "own"
    write_image(own / "street.jpg", make_photo(40, 60, seed=4))
    (own / ".DS_Store").write_bytes(b"junk")
    write_image(own / "gone.jpg", make_photo(40, 60, seed=5))
    output = tmp_path / "library"
    build_backgrounds([source], output, include=[own], options=BackgroundOptions(crops=2, margin=0.0))
    (own / "gone.jpg").unlink()  # its copy in the library is stale now
    (output / "photos" / "users-own.jpg").write_bytes(b"not written by the stage: never removed")
    result = build_backgrounds([source], output, include=[own], options=BackgroundOptions(crops=2, margin=0.0))
    files = sorted(path.relative_to(output).as_posix() for path in output.rglob("*.jpg"))
    assert files == ["own/street.jpg", "photos/users-own.jpg", "photos/wide-crop0.jpg", "photos/wide-crop1.jpg", "photos/wide-filled.jpg"]
    files.remove("photos/users-own.jpg")
    for name in files:
        assert cv2.imread(str(output / name)) is not None
    assert (output / "own" / "street.jpg").samefile(own / "street.jpg")  # linked, not copied
    crop = cv2.imread(str(output / "photos" / "wide-crop0.jpg"))
    assert crop.shape[0] == crop.shape[1] == 60  # the largest person-free square: the photo's height
    report = json.loads((output / "report.json").read_text())
    counts = report["counts"]
    assert (counts["backgrounds"], counts["included"], counts["removed_stale_files"]) == (3, 1, 1)
    assert (counts["filled_backgrounds"], counts["crop_backgrounds"]) == (1, 2)
    reasons = {entry["file"]: entry["reason"] for entry in report["skipped"]}
    assert reasons == {"photos/images/full.png": "no person-free area: people cover too much of the photo",
                       "photos/images/broken.png": "unreadable image or mask"}  # fmt: skip
    assert [entry["file"] for entry in report["ignored"]][0].endswith(".DS_Store")
    assert (result.backgrounds, result.included, result.skipped) == (3, 1, 2)


def test_cli_and_its_errors(tmp_path):
    source = make_set(tmp_path / "set")
    result = CliRunner().invoke(main, ["backgrounds", "--input", str(source), "--output", str(tmp_path / "bg")])
    assert result.exit_code == 0, result.output
    assert "4 cut from 3 photos (1 filled, 3 crops)" in result.output and "no person-free area" in result.output
    not_a_set = CliRunner().invoke(main, ["backgrounds", "--input", str(tmp_path), "--output", str(tmp_path / "x")])
    assert not_a_set.exit_code != 0 and "not a canonical set" in not_a_set.output
    nothing = CliRunner().invoke(main, ["backgrounds", "--output", str(tmp_path / "x")])
    assert nothing.exit_code != 0 and "give at least one --input set or --include folder" in nothing.output
    (tmp_path / "other" / "set").mkdir(parents=True)
    clash = CliRunner().invoke(main, ["backgrounds", "--input", str(source), "--include", str(tmp_path / "other" / "set"), "--output", str(tmp_path / "x")])
    assert clash.exit_code != 0 and "share the folder name set" in clash.output
    with pytest.raises(ValueError, match="nothing to write"):
        BackgroundOptions(crops=0, fill=False).check()

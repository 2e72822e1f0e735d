"""`datatool synth`: composites whose masks are exactly the pasted alpha, in frame, deterministic."""

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from datatool.canonical import write_manifest
from datatool.cli import main
from datatool.synth import SynthOptions, synthesize
from conftest import make_person_mask, make_photo, write_image

PERSON_BGR = (40, 180, 220)  # the flat colour of the synthetic person
PLAIN = SynthOptions(size=(64, 64), per_foreground=2, harmonise_strength=0.0, augment=False, image_format="png")


def make_foregrounds(root: Path, count: int = 2, kind: str = "alpha", size: tuple[int, int] = (48, 40)) -> Path:
    """A canonical set of flat-colour people; soft (blurred) alpha unless `kind` is binary."""
    rows = []
    for index in range(count):
        sample_id = f"person{index}-0123456789"
        height, width = size
        mask = make_person_mask(height, width, seed=index)
        if kind != "binary":
            mask = cv2.GaussianBlur(mask, (0, 0), 2)
        write_image(root / "images" / f"{sample_id}.png", np.full((height, width, 3), PERSON_BGR, np.uint8))
        write_image(root / "masks" / f"{sample_id}.png", mask)
        rows.append({
            "id": sample_id, "image": f"images/{sample_id}.png", "mask": f"masks/{sample_id}.png", "source": "fg",
            "width": width, "height": height, "mask_kind": kind, "group": f"fg/group{index}", "official_split": "train",
        })  # fmt: skip
    write_manifest(root, rows)
    return root


def make_backgrounds(root: Path, sizes=((64, 64),)) -> Path:
    for index, (height, width) in enumerate(sizes):
        write_image(root / f"bg{index}.png", make_photo(height, width, seed=index + 10))
    return root


def load_rows(set_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (set_dir / "manifest.jsonl").read_text().splitlines()]


def read(set_dir: Path, relative: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imread(str(set_dir / relative), flags)


def test_mask_is_the_pasted_alpha_and_composite_is_the_alpha_blend(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg")
    # Same size as the output: the background is used as it is, so the blend can be recomputed.
    background = make_photo(64, 64, seed=10)
    write_image(tmp_path / "bg" / "scene.png", background)
    result = synthesize(foregrounds, tmp_path / "bg", tmp_path / "out", options=PLAIN)
    assert result.composites == 4 and result.skipped == 0
    for row in load_rows(tmp_path / "out"):
        alpha = read(tmp_path / "out", row["mask"])
        composite = read(tmp_path / "out", row["image"])
        assert alpha.dtype == np.uint8 and alpha.shape == (64, 64)
        assert 0 < (alpha == 255).sum() and ((alpha > 0) & (alpha < 255)).any()  # soft edges kept
        weight = alpha.astype(np.float64)[..., None] / 255
        expected = weight * np.array(PERSON_BGR, np.float64) + (1 - weight) * background
        assert np.abs(composite.astype(np.float64) - expected).max() <= 1
        assert row["mask_kind"] == "alpha" and row["background_id"] == "scene.png"


def test_k_composites_per_foreground_carry_its_group_and_split(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg", count=3)
    make_backgrounds(tmp_path / "bg", sizes=((64, 64), (80, 100)))
    synthesize(foregrounds, tmp_path / "bg", tmp_path / "out", options=SynthOptions(size=(64, 64), per_foreground=4))
    rows = load_rows(tmp_path / "out")
    assert Counter(row["foreground_id"] for row in rows) == {f"person{i}-0123456789": 4 for i in range(3)}
    assert len({row["id"] for row in rows}) == 12
    for row in rows:
        assert row["group"] == f"fg/{row['foreground_id'].replace('person', 'group').split('-')[0]}"
        assert row["official_split"] == "train" and row["foreground_source"] == "fg"
        assert (tmp_path / "out" / row["image"]).is_file() and row["image"].endswith(".jpg")


@pytest.mark.parametrize("kind", ["alpha", "binary"])
def test_person_stays_whole_and_in_frame(tmp_path, kind):
    # A wide person in a portrait-format output, asked to fill 90-95 % of the height: the
    # width limit must win, and nothing of the person may be cut off by the frame.
    foregrounds = make_foregrounds(tmp_path / "fg", count=2, kind=kind, size=(30, 80))
    make_backgrounds(tmp_path / "bg", sizes=((20, 30),))  # smaller than the output: scaled up
    options = SynthOptions(size=(96, 48), per_foreground=6, person_height=(0.9, 0.95), augment=False, image_format="png")
    synthesize(foregrounds, tmp_path / "bg", tmp_path / "out", options=options)
    for row in load_rows(tmp_path / "out"):
        alpha = read(tmp_path / "out", row["mask"])
        paste = row["paste"]
        assert alpha.shape == (96, 48)
        assert paste["x"] >= 0 and paste["y"] >= 0 and paste["x"] + paste["width"] <= 48 and paste["y"] + paste["height"] <= 96
        outside = alpha.copy()
        outside[paste["y"] : paste["y"] + paste["height"], paste["x"] : paste["x"] + paste["width"]] = 0
        assert not outside.any()
        source = read(tmp_path / "fg", f"masks/{row['foreground_id']}.png").astype(np.float64) / 255
        pasted_area = alpha.sum() / 255
        # Whole person: the pasted alpha's area is the source's area times scale^2 (resampling
        # and feathering move it by a few per cent, a cut-off limb by far more).
        assert pasted_area == pytest.approx(source.sum() * paste["scale"] ** 2, rel=0.08)
        if kind == "binary":
            assert ((alpha > 0) & (alpha < 255)).any()  # feathered edge
            assert "feathered" in row["mask_encoding"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg")
    make_backgrounds(tmp_path / "bg", sizes=((64, 64), (70, 90), (50, 50)))

    def files(output: Path, seed: int) -> dict[str, bytes]:
        synthesize(foregrounds, tmp_path / "bg", output, name="syn", options=SynthOptions(size=(64, 64), seed=seed))
        return {path.relative_to(output).as_posix(): path.read_bytes() for path in sorted(output.rglob("*")) if path.is_file() and path.name != "report.json"}

    first, again, other = files(tmp_path / "a", 1), files(tmp_path / "b", 1), files(tmp_path / "c", 2)
    assert first == again
    assert first.keys() == other.keys()  # ids do not depend on the seed ...
    assert first["manifest.jsonl"] != other["manifest.jsonl"]  # ... the pasting does
    assert sum(first[name] != other[name] for name in first if name.startswith("images/")) >= 3


def test_bad_backgrounds_are_reported_and_skipped(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg")
    backgrounds = make_backgrounds(tmp_path / "bg")
    write_image(backgrounds / "deeper" / "down" / "street.jpg", make_photo(40, 60, seed=3))
    (backgrounds / "notes.txt").write_text("not an image")
    good = (backgrounds / "deeper" / "down" / "street.jpg").read_bytes()
    (backgrounds / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (backgrounds / "garbage.png").write_bytes(b"\x89PNG but not really")
    result = synthesize(foregrounds, backgrounds, tmp_path / "out", options=SynthOptions(size=(32, 32), per_foreground=8))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result.backgrounds == 2
    assert {entry["file"] for entry in report["skipped"]} == {"backgrounds/truncated.jpg", "backgrounds/garbage.png"}
    assert {entry["file"] for entry in report["ignored"]} == {"backgrounds/notes.txt"}
    assert {row["background_id"] for row in load_rows(tmp_path / "out")} == {"bg0.png", "deeper/down/street.jpg"}


def test_empty_or_useless_background_folder_is_a_clear_error(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="the folder is empty"):
        synthesize(foregrounds, tmp_path / "empty", tmp_path / "out")
    (tmp_path / "useless").mkdir()
    (tmp_path / "useless" / "readme.md").write_text("#")
    with pytest.raises(ValueError, match="no usable background image.*readme.md"):
        synthesize(foregrounds, tmp_path / "useless", tmp_path / "out")


def test_foreground_with_empty_mask_is_reported(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg", count=2)
    write_image(foregrounds / "masks" / "person1-0123456789.png", np.zeros((48, 40), np.uint8))
    result = synthesize(foregrounds, make_backgrounds(tmp_path / "bg"), tmp_path / "out", options=PLAIN)
    assert result.composites == 2 and result.skipped == 1
    assert "empty mask" in result.report["skipped"][0]["reason"]


def test_cli_end_to_end(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg")
    make_backgrounds(tmp_path / "bg")
    output = tmp_path / "syn"
    args = ["synth", "--foregrounds", str(foregrounds), "--backgrounds", str(tmp_path / "bg"), "--output", str(output),
            "--per-foreground", "3", "--size", "40", "56", "--seed", "7"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "6 composites of 2 foregrounds on 1 backgrounds" in result.output
    rows = load_rows(output)
    assert len(rows) == 6 and all((row["height"], row["width"]) == (40, 56) for row in rows)
    assert read(output, rows[0]["image"]).shape == (40, 56, 3)

    (tmp_path / "nothing").mkdir()
    failed = CliRunner().invoke(main, args[:3] + ["--backgrounds", str(tmp_path / "nothing"), "--output", str(output)])
    assert failed.exit_code != 0 and "the folder is empty" in failed.output


def test_harmonise_moves_person_colour_towards_the_background():
    from datatool.synth import harmonise

    rng = np.random.default_rng(0)
    person = np.clip(rng.normal((40, 180, 220), 20, (30, 20, 3)), 0, 255).astype(np.uint8)
    alpha = np.ones((30, 20), np.float32)
    scene = np.clip(rng.normal((200, 90, 60), 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert np.array_equal(harmonise(person, alpha, scene, 0.0), person)
    distances = [np.abs(harmonise(person, alpha, scene, s).mean((0, 1)) - scene.mean((0, 1))).sum() for s in (0.0, 0.5, 1.0)]
    assert distances[0] > distances[1] > distances[2] and distances[2] < 15


def test_several_background_folders_are_keyed_by_folder(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg")
    make_backgrounds(tmp_path / "demo")
    make_backgrounds(tmp_path / "mined", sizes=((64, 64), (70, 90)))
    (tmp_path / "mined" / "broken.jpg").write_bytes(b"not a jpeg")
    output = tmp_path / "syn"
    args = ["synth", "--foregrounds", str(foregrounds), "--backgrounds", str(tmp_path / "demo"), str(tmp_path / "mined"),
            "--output", str(output), "--per-foreground", "8", "--size", "32", "32"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "on 3 backgrounds" in result.output  # bg0.png twice (one per folder), bg1.png
    used = {row["background_id"] for row in load_rows(output)}
    assert used <= {"demo/bg0.png", "mined/bg0.png", "mined/bg1.png"} and len(used) >= 2
    report = json.loads((output / "report.json").read_text())
    assert [entry["file"] for entry in report["skipped"]] == ["backgrounds/mined/broken.jpg"]

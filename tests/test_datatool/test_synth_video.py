"""`datatool synth-video`: clips whose every frame's mask is the blended alpha; known motion, deterministic."""

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from datatool.cli import main
from datatool.synth_video import SynthVideoOptions, synthesize_video
from test_synth import load_rows, make_backgrounds, make_foregrounds, read

# 1 s at 10 fps, 64x64, lossless: 10 frames per clip, fast, and masks compare exactly.
SMALL = SynthVideoOptions(size=(64, 64), seconds=1.0, fps=10, clips_per_foreground=2, image_format="png")


def clips_of(rows: list[dict]) -> dict[str, list[dict]]:
    clips: dict[str, list[dict]] = {}
    for row in rows:
        clips.setdefault(row["clip"], []).append(row)
    return clips


def masks_of(set_dir: Path, rows: list[dict]) -> list[np.ndarray]:
    return [read(set_dir, row["mask"]) for row in rows]


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    return make_foregrounds(tmp_path / "fg", count=2), make_backgrounds(tmp_path / "bg", sizes=((64, 64), (80, 120)))


def test_clips_have_every_frame_in_order_with_clip_frame_fps_and_the_person_group(tmp_path, inputs):
    result = synthesize_video(*inputs, tmp_path / "out", options=SMALL)
    rows = load_rows(tmp_path / "out")
    assert (result.clips, result.frames, result.skipped) == (4, 40, 0)
    assert len({row["id"] for row in rows}) == 40
    clips = clips_of(rows)
    assert len(clips) == 4
    # Written clip by clip, each from its first frame to its last.
    assert [row["clip"] for row in rows] == [clip for clip, frames in clips.items() for _ in frames]
    for clip, frames in clips.items():
        assert [row["frame"] for row in frames] == list(range(round(SMALL.seconds * SMALL.fps)))
        assert all(row["fps"] == 10.0 and row["mask_kind"] == "alpha" for row in frames)
        foreground = frames[0]["foreground_id"]
        # The person's group, not the clip's: all clips of one person stay in one split.
        assert {row["group"] for row in frames} == {f"fg/{foreground.replace('person', 'group').split('-')[0]}"}
        assert {row["official_split"] for row in frames} == {"train"}
        assert len({row["background_id"] for row in frames}) == 1
        assert "motion" in frames[0] and not any("motion" in row for row in frames[1:])
        for row in frames:
            image, mask = read(tmp_path / "out", row["image"]), read(tmp_path / "out", row["mask"])
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.dtype == np.uint8
            assert (row["height"], row["width"]) == (64, 64)


def test_the_person_moves_and_scales_but_stays_in_frame(tmp_path, inputs):
    synthesize_video(*inputs, tmp_path / "out", options=replace(SMALL, seconds=2.0))
    for frames in clips_of(load_rows(tmp_path / "out")).values():
        masks = masks_of(tmp_path / "out", frames)
        clean = [mask for mask, row in zip(masks, frames, strict=True) if row["occluded_pixels"] == 0]
        areas = np.array([mask.sum() / 255 for mask in clean])
        # +-15 % in height is +-32 % in area, plus resampling: never a person that vanishes or doubles.
        assert areas.min() > 0 and areas.max() / areas.min() < 2.0
        centres = np.array([np.argwhere(mask > 127).mean(0) for mask in clean])
        assert np.abs(centres - centres[0]).max() > 3  # px: the person really moves
        for mask in masks:
            assert mask.any()
        # The fixture's people are cut off by their photo's bottom edge: they stand on the frame's.
        assert all(mask[-1].any() for mask in clean)
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        assert steps.max() < 16  # a smooth path: no teleporting between frames


def test_the_occlusion_hides_part_of_the_person_for_a_few_frames_only(tmp_path, inputs):
    synthesize_video(*inputs, tmp_path / "with", name="v", options=SMALL)
    synthesize_video(*inputs, tmp_path / "without", name="v", options=replace(SMALL, occlusion=False))
    occluded_rows, clean_rows = load_rows(tmp_path / "with"), load_rows(tmp_path / "without")
    assert [row["id"] for row in occluded_rows] == [row["id"] for row in clean_rows]
    occluded_frames = expected_occluded_frames = 0
    for occluded, clean in zip(occluded_rows, clean_rows, strict=True):
        if occluded["frame"] == 0:
            start, end = occluded["motion"]["occlusion_frames"]
            # A brief occlusion: after a clean first frame, at least 2 frames, and not the whole clip.
            assert start >= 1, occluded["motion"]  # the first frame is clean
            assert end <= SMALL.frames, occluded["motion"]
            assert 2 <= end - start < SMALL.frames - 1, occluded["motion"]  # a few frames, not the whole clip
            expected_occluded_frames += end - start
        hidden, whole = read(tmp_path / "with", occluded["mask"]), read(tmp_path / "without", clean["mask"])
        if start <= occluded["frame"] < end:
            occluded_frames += 1
            # The occluder only removes person pixels, and removes some, never all.
            assert (hidden <= whole).all()
            lost = int(np.count_nonzero((whole > 0) & (hidden == 0)))
            assert lost == occluded["occluded_pixels"] > 0
            assert hidden.sum() > 0.2 * whole.sum()
        else:
            assert occluded["occluded_pixels"] == 0
            assert np.array_equal(hidden, whole)
            # Outside the occlusion the frames are the same frames.
            assert (tmp_path / "with" / occluded["image"]).read_bytes() == (tmp_path / "without" / clean["image"]).read_bytes()
        assert clean["occluded_pixels"] == 0
    assert occluded_frames == expected_occluded_frames > 0  # every clip's span was rendered, frame by frame


def test_the_lighting_change_moves_pixel_values_and_never_the_mask(tmp_path, inputs):
    synthesize_video(*inputs, tmp_path / "lit", name="v", options=replace(SMALL, noise=0))
    synthesize_video(*inputs, tmp_path / "flat", name="v", options=replace(SMALL, noise=0, lighting=0))
    changed = 0
    for lit, flat in zip(load_rows(tmp_path / "lit"), load_rows(tmp_path / "flat"), strict=True):
        if lit["frame"] == 0:
            start, _ = lit["motion"]["lighting_frames"]
            assert abs(lit["motion"]["lighting_gain"] - 1) >= 0.125  # at least half of the 0.25 range
        assert (tmp_path / "lit" / lit["mask"]).read_bytes() == (tmp_path / "flat" / flat["mask"]).read_bytes()
        lit_image = read(tmp_path / "lit", lit["image"]).astype(int)
        flat_image = read(tmp_path / "flat", flat["image"]).astype(int)
        if lit["frame"] <= start:
            assert np.array_equal(lit_image, flat_image)  # the ramp has not started (its first frame is at level 0)
        elif lit["frame"] == 9:
            changed += 1
            assert np.abs(lit_image - flat_image).mean() > 3
    assert changed == 4


def test_same_seed_same_bytes_other_seed_differs(tmp_path, inputs):
    def files(output: Path, seed: int) -> dict[str, bytes]:
        synthesize_video(*inputs, output, name="v", options=replace(SMALL, seed=seed, image_format="jpg"))
        return {path.relative_to(output).as_posix(): path.read_bytes() for path in sorted(output.rglob("*")) if path.is_file() and path.name != "report.json"}

    first, again, other = files(tmp_path / "a", 1), files(tmp_path / "b", 1), files(tmp_path / "c", 2)
    assert first == again
    assert first.keys() == other.keys()  # ids do not depend on the seed ...
    assert first["manifest.jsonl"] != other["manifest.jsonl"]  # ... the motion does
    assert sum(first[name] != other[name] for name in first if name.startswith("masks/")) > 30


def test_a_rerun_reuses_every_clip(tmp_path, inputs):
    synthesize_video(*inputs, tmp_path / "out", options=SMALL)
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "out").rglob("*.png")}
    result = synthesize_video(*inputs, tmp_path / "out", options=SMALL)
    counts = result.report["counts"]
    assert counts["reused"] == 2 and counts.get("processed", 0) == 0
    assert (result.clips, result.frames) == (4, 40)
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "out").rglob("*.png")} == before
    # Other options make other clips: nothing is reused.
    changed = synthesize_video(*inputs, tmp_path / "out", options=replace(SMALL, seed=5))
    assert changed.report["counts"]["processed"] == 2


def test_a_corrupt_foreground_and_an_empty_mask_are_reported_and_skipped(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg", count=3)
    (foregrounds / "images" / "person0-0123456789.png").write_bytes(b"\x89PNG but not really")
    cv2.imwrite(str(foregrounds / "masks" / "person1-0123456789.png"), np.zeros((48, 40), np.uint8))
    result = synthesize_video(foregrounds, make_backgrounds(tmp_path / "bg"), tmp_path / "out", options=SMALL)
    assert (result.clips, result.frames, result.skipped) == (2, 20, 2)
    reasons = {entry["file"]: entry["reason"] for entry in result.report["skipped"]}
    assert reasons["images/person0-0123456789.png"].startswith("foreground not usable")
    assert reasons["images/person1-0123456789.png"].startswith("empty mask")
    assert {row["foreground_id"] for row in load_rows(tmp_path / "out")} == {"person2-0123456789"}


def test_an_empty_background_folder_and_bad_options_are_clear_errors(tmp_path):
    foregrounds = make_foregrounds(tmp_path / "fg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="the folder is empty"):
        synthesize_video(foregrounds, tmp_path / "empty", tmp_path / "out")
    backgrounds = make_backgrounds(tmp_path / "bg")
    with pytest.raises(ValueError, match="at least 4 frames"):
        synthesize_video(foregrounds, backgrounds, tmp_path / "out", options=replace(SMALL, seconds=0.2))
    with pytest.raises(ValueError, match="at least 16x16"):
        synthesize_video(foregrounds, backgrounds, tmp_path / "out", options=replace(SMALL, size=(8, 64)))


def test_cli_end_to_end(tmp_path, inputs):
    output = tmp_path / "clips"
    args = ["synth-video", "--foregrounds", str(inputs[0]), "--backgrounds", str(inputs[1]), "--output", str(output),
            "--clips-per-foreground", "1", "--seconds", "0.5", "--fps", "12", "--size", "40", "56", "--seed", "3",
            "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 clips (12 frames, 6 per clip at 12 fps) of 2 foregrounds on 2 backgrounds" in result.output
    rows = load_rows(output)
    assert [row["frame"] for row in rows] == [*range(6), *range(6)]
    assert read(output, rows[0]["image"]).shape == (40, 56, 3)
    assert json.loads((output / "report.json").read_text())["frames_per_clip"] == 6

    (tmp_path / "nothing").mkdir()
    failed = CliRunner().invoke(main, args[:3] + ["--backgrounds", str(tmp_path / "nothing"), "--output", str(output)])
    assert failed.exit_code != 0 and "the folder is empty" in failed.output
    too_short = CliRunner().invoke(main, [*args[:9], "--seconds", "0.1"])
    assert too_short.exit_code != 0 and "at least 4 frames" in too_short.output

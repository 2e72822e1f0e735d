"""`trainer predict`: sources, the letterboxed model, edges, smoothing, outputs, video and bad input.

The model is the hand-set tiny checkpoint of `export_fixtures` (a colour rule that segments red-ish
blobs on blue-ish noise), run by the real runtime; MediaPipe runs for real where its file is cached.
"""

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import draw_blob, make_person_mask
from export_fixtures import register_tiny, write_checkpoint
from teacher_samples import cached_model
from portraitseg.scoring import iou
from trainer.cli import main
from trainer.harness import as_batch
from trainer.metrics import boundary_f_scores
from portraitseg.predictor import FixedInputPredictor, smooth_temporal
from trainer.predict import (
    IMAGENET_MEAN_RGB,
    OUTPUT_KINDS,
    PredictError,
    expand_sources,
    refine_edges,
    render,
    unique_names,
)
from portraitseg.resize import resize_image, resize_probability


def blob_photo(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A (height, width) BGR uint8 blob photo (the tiny model's kind) and its 0/255 mask."""
    image, mask, _, _ = draw_blob(seed)
    image = cv2.resize(np.clip(image, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return image, cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


@pytest.fixture
def tiny_checkpoint(tmp_path, monkeypatch) -> Path:
    register_tiny(monkeypatch)
    return write_checkpoint(tmp_path / "tiny")


# --- smoothing: MediaPipe's SegmentationSmoothingCalculator -------------------------------------


def test_smoothing_matches_mediapipe_by_hand():
    current = np.array([[0.6, 0.5, 1.0]], np.float32)
    previous = np.array([[0.2, 0.9, 0.0]], np.float32)
    smoothed = smooth_temporal(current, previous, 0.7)
    # p = 0.6: x = 0.01, polynomial 5.675437562 -> uncertainty 1 - 0.05675437562 = 0.94324562438;
    # 0.6 + (0.2 - 0.6) * 0.94324562438 * 0.7 = 0.335891225
    assert smoothed[0, 0] == pytest.approx(0.335891225, abs=1e-6)
    # p = 0.5: fully uncertain, moves 0.7 of the way: 0.5 + 0.4 * 0.7
    assert smoothed[0, 1] == pytest.approx(0.78, abs=1e-6)
    # p = 1: x = 0.25, polynomial 3.99982884375 -> uncertainty 4.28e-5: stays (1 - 4.28e-5 * 0.7)
    assert smoothed[0, 2] == pytest.approx(1 - 0.7 * (1 - 0.25 * 3.99982884375), abs=1e-6)
    assert smooth_temporal(current, None, 0.7) is current  # no previous frame: passes through


# --- edges and the letterboxed model -------------------------------------------------------------


def test_guided_edges_follow_the_photo_better_than_bilinear():
    # A person-shaped silhouette, seen by a model at 24 px and brought back to 480 px.
    truth = make_person_mask(480, 360, seed=3)
    rng = np.random.default_rng(0)
    photo = np.where(truth[..., None] > 0, (200, 90, 60), (60, 110, 190)).astype(np.float32)
    photo = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
    coarse = resize_image(truth, 18, 24).astype(np.float32) / 255  # what a 24 px model could say at best
    bilinear = resize_probability(coarse, 480, 360)
    guided = refine_edges(bilinear, photo, (24, 18))
    assert guided.shape == truth.shape and guided.dtype == np.float32

    def boundary_f(probability):
        return float(boundary_f_scores(as_batch(probability >= 0.5), as_batch(truth > 0), 2)[0])

    assert boundary_f(guided) > boundary_f(bilinear) + 0.05  # 1.0 vs 0.93 here
    assert iou(guided, truth) > iou(bilinear, truth)
    half = refine_edges(bilinear, photo, (24, 18), max_side=240)  # the video path: filtered at half size
    assert half.shape == truth.shape and boundary_f(half) > boundary_f(bilinear) + 0.03


def test_letterbox_keeps_the_aspect_and_puts_the_mask_back_in_place():
    seen = []

    def red_rule(batch: np.ndarray) -> np.ndarray:  # a "model": person where red is high
        seen.append(batch.copy())
        return (batch[..., 0] > 150).astype(np.float32)

    photo = np.full((60, 240, 3), 40, np.uint8)
    photo[:, 200:, 0] = 255  # the right sixth is "person"
    predictor = FixedInputPredictor(red_rule, 48, "letterbox", IMAGENET_MEAN_RGB)
    probability = predictor.predict([photo, photo[:, ::-1]])
    assert [p.shape for p in probability] == [(60, 240), (60, 240)]
    assert seen[0].shape == (2, 48, 48, 3)  # one batch for both photos
    assert (seen[0][0, 12:] == (124, 116, 104)).all()  # content 12 x 48 (4:1 kept), the rest padded with the mean
    assert iou(probability[0], photo[..., 0] == 255) > 0.9
    assert iou(probability[1], photo[:, ::-1, 0] == 255) > 0.9


def test_render_writes_every_kind_at_the_photo_size():
    photo = np.full((30, 40, 3), 100, np.uint8)
    probability = np.zeros((30, 40), np.float32)
    probability[:, :20] = 1.0
    probability[:, 20] = 0.5
    out = render(photo, probability, OUTPUT_KINDS, background=np.full((30, 40, 3), (0, 177, 64), np.uint8))
    assert set(out) == set(OUTPUT_KINDS)
    assert out["mask"][0, 19] == 255 and out["mask"][0, 20] == 255 and out["mask"][0, 21] == 0  # p >= 0.5
    assert out["matte"][0, 20] == 128 and out["cutout"].shape == (30, 40, 4) and out["cutout"][0, 30, 3] == 0
    assert tuple(out["replace"][0, 30]) == (0, 177, 64) and tuple(out["replace"][0, 5]) == (100, 100, 100)
    assert tuple(out["overlay"][0, 5]) != (100, 100, 100) and tuple(out["overlay"][0, 30]) == (100, 100, 100)


# --- sources --------------------------------------------------------------------------------------


def test_sources_follow_the_ultralytics_grammar(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("a b [1].jpg", "c (2).png", "sub/d.jpeg", "clip.mp4", "notes.md"):
        (photos / name).write_bytes(b"x")
    folder = expand_sources(str(photos))
    assert [(s.kind, s.name) for s in folder] == [
        ("image", "a b [1]"), ("image", "c (2)"), ("video", "clip"), ("image", "sub/d"),
    ]  # fmt: skip
    assert [s.name for s in expand_sources(str(photos / "a b [1].jpg"))] == ["a b [1]"]  # brackets: a path, not a glob
    assert [s.name for s in expand_sources(str(photos / "**" / "*.jp*g"))] == ["a b [1]", "d"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'c (2).png'}\n# a comment\n0\nrtsp://host/cam/front.sdp\n")
    assert [(s.kind, s.name) for s in expand_sources(str(listing))] == [
        ("image", "c (2)"), ("camera", "camera0"), ("stream", "front"),
    ]  # fmt: skip
    (photos / "c (2).jpg").write_bytes(b"x")  # the same stem as c (2).png: its outputs keep the suffix
    assert [s.name for s in unique_names(expand_sources(str(photos / "*.*g")))] == ["a b [1]", "c (2)", "c (2).png"]
    with pytest.raises(PredictError, match="neither an image"):
        expand_sources(str(photos / "notes.md"))
    with pytest.raises(PredictError, match="does not exist"):
        expand_sources(str(tmp_path / "nothing.jpg"))


# --- the command, end to end -----------------------------------------------------------------


def test_predict_writes_every_output_at_full_size_and_skips_a_broken_photo(tmp_path, tiny_checkpoint):
    photos = tmp_path / "in"
    sizes = {"a b [1].jpg": (90, 160), "c (2).png": (123, 77), "sub/d.jpg": (64, 64)}
    truths = {}
    for seed, (name, (height, width)) in enumerate(sizes.items()):
        image, truths[name] = blob_photo(seed, height, width)
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(photos / name), image)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["predict", "--model", str(tiny_checkpoint), "--source", str(photos), "--output", str(out),
         "--save", ",".join(OUTPUT_KINDS), "--background", "0,177,64", "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.jpg" in result.output
    assert "3 photos -> 18 files" in result.output
    for name, (height, width) in sizes.items():
        stem = str(Path(name).with_suffix(""))
        composite = ".jpg" if name.endswith(".jpg") else ".png"
        for kind in OUTPUT_KINDS:
            suffix = ".png" if kind in ("mask", "matte", "cutout") else composite
            written = cv2.imread(str(out / kind / f"{stem}{suffix}"), cv2.IMREAD_UNCHANGED)
            assert written is not None and written.shape[:2] == (height, width), (kind, name)
        mask = cv2.imread(str(out / "mask" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255} and iou(mask, truths[name]) > 0.8
        assert cv2.imread(str(out / "cutout" / f"{stem}.png"), cv2.IMREAD_UNCHANGED).shape[2] == 4
    assert not list(out.rglob("*.partial")) and not (out / "mask" / "broken.png").exists()


def write_video(path: Path, frames: list[np.ndarray], rate: int, audio_seconds: float) -> None:
    """An H.264 video of RGB frames at `rate` fps with an AAC sine tone, written by PyAV."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "mono"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, rate)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = np.sin(np.arange(int(44100 * audio_seconds)) * 2 * np.pi * 440 / 44100).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 44100, start, Fraction(1, 44100)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction, int]:
    """(frames as RGB, the video stream's average rate, the number of audio streams)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.average_rate, len(container.streams.audio)


def test_video_keeps_every_frame_the_rate_and_the_audio(tmp_path, tiny_checkpoint):
    photos = [cv2.cvtColor(blob_photo(seed, 96, 128)[0], cv2.COLOR_BGR2RGB) for seed in range(6)]
    frames = [photos[index // 5] for index in range(30)]  # 2 s at 15 fps, made from photos
    source = tmp_path / "clip [take 1].mp4"
    write_video(source, frames, 15, 2.0)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["predict", "--model", str(tiny_checkpoint), "--source", str(source), "--output", str(out),
         "--save", "mask,blur", "--smooth", "0.7", "--batch", "4", "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 videos (30 frames" in result.output
    for kind in ("mask", "blur"):
        written, rate, audio_streams = read_video(out / kind / "clip [take 1].mp4")
        assert len(written) == 30 and rate == 15 and audio_streams == 1, kind
        assert written[0].shape == (96, 128, 3)
    masks, _, _ = read_video(out / "mask" / "clip [take 1].mp4")
    truth = blob_photo(0, 96, 128)[1]
    assert iou(masks[2][..., 0] >= 128, truth) > 0.8
    assert not list(out.rglob("*.partial"))


def test_an_interrupted_video_leaves_no_output(tmp_path, tiny_checkpoint):
    from trainer.predict import PredictOptions, PredictSummary, open_predictor, predict_video

    source = tmp_path / "clip.mp4"
    write_video(source, [cv2.cvtColor(blob_photo(0, 64, 64)[0], cv2.COLOR_BGR2RGB)] * 12, 10, 1.0)
    real = open_predictor(tiny_checkpoint, threads=1)

    class Interrupted:  # the real model, interrupted after its first batch (a Ctrl-C mid-video)
        input_size = real.input_size
        calls = 0

        def predict(self, images):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return real.predict(images)

    with pytest.raises(KeyboardInterrupt):
        predict_video(Interrupted(), expand_sources(str(source))[0], tmp_path / "out", PredictOptions(("mask",)), PredictSummary())
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]


def test_bad_sources_and_cameras_are_clear_errors(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    (tmp_path / "notes.md").write_text("x")
    base = ["predict", "--model", str(tiny_checkpoint), "--output", str(tmp_path / "out")]
    result = runner.invoke(main, [*base, "--source", str(tmp_path / "notes.md")])
    assert result.exit_code == 2 and "neither an image" in result.output
    result = runner.invoke(main, [*base, "--source", "97"])
    assert result.exit_code == 1 and "cannot open camera 97" in result.output
    result = runner.invoke(main, [*base, "--source", str(tmp_path), "--save", "mask,halo"])
    assert result.exit_code == 2 and "choose from" in result.output
    result = runner.invoke(main, ["predict", "--model", "no-such-teacher", "--source", "0", "--output", str(tmp_path)])
    assert result.exit_code == 1 and "mediapipe-selfie" in result.output  # the typo lists the teachers


def test_mediapipe_teacher_through_the_same_path(tmp_path):
    cached_model("mediapipe-selfie")
    from teacher_samples import astronaut

    photo = astronaut()  # (512, 512, 3) RGB, public domain
    assert cv2.imwrite(str(tmp_path / "astronaut.png"), cv2.cvtColor(photo[:, :400], cv2.COLOR_RGB2BGR))
    result = CliRunner().invoke(
        main,
        ["predict", "--model", "mediapipe-selfie", "--source", str(tmp_path / "astronaut.png"),
         "--output", str(tmp_path / "out"), "--save", "mask,cutout"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mask = cv2.imread(str(tmp_path / "out" / "mask" / "astronaut.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (512, 400) and 0.2 < (mask > 0).mean() < 0.8


def test_a_broken_frame_is_reported_and_skipped(tmp_path, tiny_checkpoint):
    source = tmp_path / "broken.mp4"
    photo = cv2.cvtColor(blob_photo(1, 64, 64)[0], cv2.COLOR_BGR2RGB)
    with av.open(str(source), "w") as container:  # MPEG-4 Part 2, every frame a key frame: one broken packet = one frame
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.gop_size = 1
        for index in range(12):
            frame = av.VideoFrame.from_ndarray(np.roll(photo, index, axis=1), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(source)) as container:
        position, size = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size][5]
    data = bytearray(source.read_bytes())
    data[position : position + size] = b"\xff" * size  # the sixth frame's bytes overwritten
    source.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["predict", "--model", str(tiny_checkpoint), "--source", str(source), "--output", str(out), "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "broken.mp4: frame 6 skipped" in result.output and "1 skipped" in result.output
    frames, rate, _ = read_video(out / "mask" / "broken.mp4")
    assert len(frames) == 11 and rate == 10

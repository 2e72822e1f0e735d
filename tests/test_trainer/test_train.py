"""The training loop, its checkpoints and config, and the `trainer train` / `runs` commands.

Runs use a tiny split (a few 48x40 photos of a coloured blob on a noisy background) at 32 px
and a three-layer model registered for the test only, so a run takes a second or two.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

import trainer.train as train_module
from conftest import draw_blob
from trainer.checkpoint import CheckpointError, load_checkpoint, load_model
from trainer.cli import main
from portraitseg.params import ConfigError, build_section, load_section, parse_overrides
from trainer.config import TrainConfig
from trainer.models import MODELS, SegmentationModel
from trainer.train import build_datasets, fit

TINY = "tiny_test_segmenter"


class TinySegmenter(SegmentationModel):
    """Three convolutions, with an edge head so the aux path is exercised."""

    output_stride = 1

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)
        )
        self.mask_head = nn.Conv2d(width, 1, 1)
        self.edge_head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_head(torch.relu(self.body(x)))

    def forward_with_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.body(x))
        return {"mask": self.mask_head(features), "edge": self.edge_head(features)}


def tiny_test_segmenter(**options) -> SegmentationModel:
    return TinySegmenter(**options)


@pytest.fixture
def tiny_model(monkeypatch):
    """Register the tiny model for one test (the registry is restored afterwards)."""
    from trainer.models import list_models

    list_models()  # load the real families first, so they do not register over the patch
    monkeypatch.setitem(MODELS, TINY, tiny_test_segmenter)
    return TINY


def write_sample(set_dir: Path, sample_id: str, seed: int) -> dict:
    """A person-like ellipse in a warm colour on a cool noisy background, its mask, edge band and teacher."""
    image, mask, center, axes = draw_blob(seed)
    edge = np.zeros_like(mask)
    cv2.ellipse(edge, center, axes, 0, 0, 360, 255, 2)
    teacher = cv2.GaussianBlur(mask, (5, 5), 0)
    for folder, array in (("images", image), ("masks", mask), ("edges", edge), ("teacher", teacher)):
        (set_dir / folder).mkdir(parents=True, exist_ok=True)
        suffix = "jpg" if folder == "images" else "png"
        assert cv2.imwrite(str(set_dir / folder / f"{sample_id}.{suffix}"), np.clip(array, 0, 255).astype(np.uint8))
    return {
        "id": sample_id,
        "set": "blobs",
        "image": f"images/{sample_id}.jpg",
        "mask": f"masks/{sample_id}.png",
        "edge": f"edges/{sample_id}.png",
        "teacher_mask": f"teacher/{sample_id}.png",
        "mask_kind": "binary",
        "group": f"blobs/{sample_id}",
    }


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """train.jsonl (8 rows) and val.jsonl (4 rows) over one tiny set, as `datatool split` writes them."""
    root = tmp_path_factory.mktemp("split")
    for split, count, offset in (("train", 8, 0), ("val", 4, 100)):
        rows = [{**write_sample(root / "blobs", f"{split}{i}", offset + i), "split": split} for i in range(count)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def tiny_config(**changes) -> TrainConfig:
    options = {
        "model": TINY,
        "size": 32,
        "epochs": 4,
        "batch_size": 4,
        "lr": 0.02,
        "warmup_epochs": 1,
        "augment": False,
        "loss_weights": {"bce": 1.0, "dice": 1.0, "boundary": 0.5, "edge_head": 0.5},
    }
    return build_section(TrainConfig, "train", {**options, **changes})


# --- config ----------------------------------------------------------------------------------


def test_config_reads_params_and_applies_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"model": "blazeseg", "epochs": 3, "lr": 1}}))
    config = load_section(params, "train", TrainConfig, parse_overrides(["epochs=5", "loss_weights.dice=0.25", "model_options.width=4"]))
    assert (config.model, config.epochs, config.model_options) == ("blazeseg", 5, {"width": 4})
    assert config.lr == 1.0 and isinstance(config.lr, float)  # int accepted for a float field
    # One nested override keeps the other default weights.
    assert config.loss_weights == {**TrainConfig().loss_weights, "dice": 0.25}
    assert parse_overrides(["a.b=[1, 2]", "c=true"]) == {"a": {"b": [1, 2]}, "c": True}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"epoch": 3}, "unknown train key(s): epoch"),
        ({"epochs": "3"}, "train.epochs must be int, got str"),
        ({"epochs": True}, "train.epochs must be int, got bool"),
        ({"augment": 1}, "train.augment must be bool"),
        ({"loss_weights": {"dice": "high"}}, "train.loss_weights.dice must be float"),
        ({"loss_weights": {"focal": 1.0}}, "unknown train.loss_weights ['focal']"),
        ({"schedule": "step"}, "train.schedule must be one of cosine, plateau"),
        ({"batch_size": 0}, "train.batch_size must be at least 1"),
        ({"val_sources": {"a": 1}}, "train.val_sources must be a list"),
        ({"ema_decay": 1.0}, "train.ema_decay must lie in [0, 1)"),
        ({"copy_paste": 1.5}, "train.copy_paste is a probability in [0, 1]"),
        ({"val_sources": [1]}, "train.val_sources[0] must be str"),
    ],
)
def test_config_rejects_unknown_keys_wrong_types_and_values(section, message):
    with pytest.raises(ConfigError) as error:
        build_section(TrainConfig, "train", section)
    assert message in str(error.value)


def test_val_sources_keeps_only_those_val_rows(tmp_path, split_dir):
    # One word on the command line is a one-item list.
    assert build_section(TrainConfig, "train", {}, parse_overrides(["val_sources=people-dev"])).val_sources == ["people-dev"]
    for split in ("train", "val"):  # the fixture's rows, pointing at its files, half of them "composites"
        rows = [json.loads(line) for line in (split_dir / f"{split}.jsonl").read_text().splitlines()]
        rows = [{**row, "set": str(split_dir / "blobs"), "source": ("real", "synth")[i % 2]} for i, row in enumerate(rows)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    _, val_set = build_datasets(tiny_config(val_sources=["real"]), tmp_path)
    assert [row["id"] for row in val_set.rows] == ["val0", "val2"]
    assert val_set[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="of sources nobody"):
        build_datasets(tiny_config(val_sources=["nobody"]), tmp_path)


def test_override_must_be_key_value():
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["epochs"])


# --- the loop --------------------------------------------------------------------------------


def test_tiny_run_learns_and_writes_loadable_checkpoints(tmp_path, split_dir, tiny_model):
    config = tiny_config(epochs=6)
    summary = fit(config, split_dir, tmp_path / "run", show_progress=False)

    state = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only=True inside
    history = state["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert summary["val_iou"] == max(entry["val_iou"] for entry in history) > 0.5
    assert set(history[0]) >= {"train_bce", "train_dice", "train_boundary", "train_edge_head", "val_boundary_f"}

    model, best = load_model(tmp_path / "run" / "best.pt")
    assert best["epoch"] == summary["best_epoch"] and best["model_name"] == TINY
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    # The checkpoint holds plain data: the config as a dict, no pickled objects.
    assert best["config"] == config.to_dict()
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == config.to_dict()

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_iou"] == summary["val_iou"] and metrics["params"] == sum(p.numel() for p in model.parameters())
    plots = tmp_path / "run" / "live" / "plots" / "metrics"
    iou_rows = (plots / "val" / "iou.tsv").read_text().splitlines()
    assert len(iou_rows) == 1 + 6  # header + one row per epoch
    assert (plots / "train" / "loss.tsv").is_file()


def test_plateau_schedule_and_consistency_and_distillation_terms(tmp_path, split_dir, tiny_model):
    config = tiny_config(
        epochs=2,
        schedule="plateau",
        augment=True,
        loss_weights={"bce": 1.0, "consistency": 0.5, "distillation": 0.5},
    )
    fit(config, split_dir, tmp_path / "run", show_progress=False)
    first = load_checkpoint(tmp_path / "run" / "last.pt")["history"][0]
    assert first["train_consistency"] > 0 and first["train_distillation"] > 0


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, split_dir, tiny_model, monkeypatch, ema_decay):
    config = tiny_config(epochs=4, augment=True, max_train_samples=6, ema_decay=ema_decay)
    fit(config, split_dir, tmp_path / "straight", show_progress=False)

    save_checkpoint = train_module.save_checkpoint

    def die_before_saving_epoch_three(state, path):
        # Killed after epoch 3 was logged to dvclive but before its checkpoint was written.
        if state["epoch"] == 3:
            raise KeyboardInterrupt
        save_checkpoint(state, path)

    monkeypatch.setattr(train_module, "save_checkpoint", die_before_saving_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        fit(config, split_dir, tmp_path / "killed", show_progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 2

    fit(config, split_dir, tmp_path / "killed", resume=True, show_progress=False)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert resumed["epoch"] == 4
    weights = ("model", "training_model") if ema_decay else ("model",)  # with EMA, both go on
    for key in weights:
        for name, tensor in straight[key].items():
            torch.testing.assert_close(resumed[key][name], tensor, rtol=0, atol=0, msg=f"{key}.{name}")
    if ema_decay:  # the average is a different set of weights from the last step's
        assert resumed["ema_steps"] == straight["ema_steps"] > 0
        assert any(not torch.equal(resumed["model"][name], tensor) for name, tensor in resumed["training_model"].items())
    assert resumed["history"] == straight["history"]
    iou_rows = (tmp_path / "killed" / "live" / "plots" / "metrics" / "val" / "iou.tsv").read_text().splitlines()
    # dvclive's rows: epoch 3's row from the killed run is replaced, not repeated.
    assert [row.split("\t")[0] for row in iou_rows] == ["step", "0", "1", "2", "3"]


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path, split_dir, tiny_model):
    config = tiny_config(epochs=1)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fit(config, split_dir, tmp_path / "run", resume=True, show_progress=False)

    fit(config, split_dir, tmp_path / "run", show_progress=False)
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a truncated copy
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        fit(config, split_dir, tmp_path / "run", resume=True, show_progress=False)
    last.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(last)
    torch.save({"model": {}}, last)
    with pytest.raises(CheckpointError, match="not a portraitseg training checkpoint"):
        load_checkpoint(last)


def test_checkpoint_of_another_model_or_shape_is_refused(tmp_path, split_dir, tiny_model):
    fit(tiny_config(epochs=1), split_dir, tmp_path / "run", show_progress=False)
    wider = tiny_config(epochs=2, model_options={"width": 16})
    with pytest.raises(CheckpointError, match=r"holds tiny_test_segmenter \{\}, but this run trains"):
        fit(wider, split_dir, tmp_path / "run", resume=True, show_progress=False)

    # Same name and options on record, weights of another shape: the state_dict load is refused.
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["model_options"] = {"width": 16}
    torch.save(state, last)
    with pytest.raises(CheckpointError, match="does not fit tiny_test_segmenter"):
        fit(wider, split_dir, tmp_path / "run", resume=True, show_progress=False)


# --- the commands ----------------------------------------------------------------------------


def write_params(tmp_path: Path, **changes) -> Path:
    section = {
        "model": TINY,
        "size": 32,
        "epochs": 1,
        "batch_size": 4,
        "augment": False,
        **changes,
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": section}))
    return params


def test_train_and_runs_commands(tmp_path, split_dir, tiny_model):
    params = write_params(tmp_path)
    runner = CliRunner()
    models_dir = tmp_path / "models"
    train = ["train", "--params", str(params), "--split-dir", str(split_dir), "--output", str(models_dir / "tiny")]
    result = runner.invoke(main, [*train, "epochs=2", "lr=0.02"])
    assert result.exit_code == 0, result.output
    assert "tiny_test_segmenter: val IoU" in result.output and "epoch" in result.output
    assert json.loads((models_dir / "tiny" / "config.json").read_text())["epochs"] == 2

    result = runner.invoke(main, [*train, "--resume", "epochs=3"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(models_dir / "tiny" / "last.pt")["epoch"] == 3

    result = runner.invoke(main, ["runs", str(models_dir)])
    assert result.exit_code == 0, result.output
    table = (models_dir / "runs.md").read_text()
    iou = json.loads((models_dir / "tiny" / "metrics.json").read_text())["val_iou"]
    assert f"| tiny_test_segmenter (`tiny/`) | {iou:.4f} |" in table


def test_a_landscape_run_trains_at_height_by_width(tmp_path, split_dir, tiny_model):
    params = write_params(tmp_path)
    models_dir = tmp_path / "models"
    train = ["train", "--params", str(params), "--split-dir", str(split_dir), "--output", str(models_dir / "wide")]
    result = CliRunner().invoke(main, [*train, "epochs=1", "size=[24, 40]", "augment=true", "copy_paste=0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((models_dir / "wide" / "metrics.json").read_text())["input_size"] == [24, 40]
    assert load_checkpoint(models_dir / "wide" / "best.pt")["config"]["size"] == [24, 40]
    result = CliRunner().invoke(main, ["runs", str(models_dir)])
    assert result.exit_code == 0 and "| 24x40 |" in (models_dir / "runs.md").read_text()


def test_train_command_errors(tmp_path, split_dir, tiny_model):
    params = write_params(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--params", str(params), "--split-dir", str(split_dir), "epochz=2"])
    assert result.exit_code == 2 and "unknown train key(s): epochz" in result.output

    result = runner.invoke(main, ["train", "--params", str(params), "--model", "blazeseq"])
    assert result.exit_code == 2 and "unknown model 'blazeseq'" in result.output and "blazeseg" in result.output

    output = tmp_path / "broken"
    output.mkdir()
    (output / "last.pt").write_bytes(b"\x00" * 100)
    result = runner.invoke(main, ["train", "--params", str(params), "--split-dir", str(split_dir), "--output", str(output), "--resume"])
    assert result.exit_code == 1 and "not a readable checkpoint" in result.output


def test_clip_frames_are_thinned_to_their_share_of_the_train_rows():
    from types import SimpleNamespace

    from trainer.train import thin_clips

    photos = [{"id": f"p{i}"} for i in range(30)]
    frames = [{"id": f"c{c}-{f}", "clip": f"c{c}", "frame": f} for c in range(2) for f in range(30)]
    dataset = SimpleNamespace(rows=photos[:15] + frames + photos[15:])
    thinned = thin_clips(dataset, 0.25)
    kept = [dataset.rows[index] for index in thinned.indices]
    kept_frames = [row for row in kept if "clip" in row]
    assert len(kept) - len(kept_frames) == 30  # every photo stays
    assert len(kept_frames) == 10  # 10 / 40 = 0.25
    assert {row["clip"] for row in kept_frames} == {"c0", "c1"} and kept_frames[0]["frame"] == 0  # spread over both clips
    assert thin_clips(dataset, 1.0) is dataset
    assert [dataset.rows[i] for i in thin_clips(dataset, 0.0).indices] == photos[:15] + photos[15:]
    clips_only = SimpleNamespace(rows=frames)
    assert thin_clips(clips_only, 0.25) is clips_only  # nothing to weigh them against: all kept

"""Every params preset in presets/ is a whole params.yaml: the same sections, each loading into its dataclass."""

from pathlib import Path

import pytest
import yaml

from portraitseg.params import load_section
from trainer.config import TrainConfig
from trainer.evaluate import EvaluateConfig
from trainer.export.pipeline import ExportConfig

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def test_there_is_a_preset():
    assert PRESETS, "presets/ holds no preset"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_preset_has_every_section_of_params_yaml_and_each_loads(preset):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    values = yaml.safe_load(preset.read_text())
    assert set(values) == set(params), f"{preset.name}: sections differ from params.yaml"
    for section in set(params) - {"sets"}:  # sets: a name -> set mapping of the preset's own
        assert set(values[section]) == set(params[section]), f"{preset.name}: keys of {section} differ from params.yaml"
    for name, config_type in (("train", TrainConfig), ("evaluate", EvaluateConfig), ("export", ExportConfig)):
        load_section(preset, name, config_type)
    # Every set that reaches the split comes from a stage of the preset's own pipeline.
    produced = {f"data/interim/ingest/{name}" for name in values["ingest"]["sources"]}
    produced |= {f"data/interim/pseudolabel/{name}" for name in values["pseudolabel"]["inputs"]}
    produced |= {f"data/interim/synth/{name}" for name in values["synth"]["foregrounds"]}
    produced |= {f"data/interim/synth-video/{name}" for name in values["synth_video"]["foregrounds"]}
    assert set(values["sets"].values()) <= produced
    assert set(values["train"]["val_sources"]) <= set(values["sets"])

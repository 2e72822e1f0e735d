"""Every param a dvc.yaml stage depends on is part of DVC's run-cache key.

DVC's run-cache drops every key named `size` or `nfiles` from the key it files a run under,
at any depth (file metadata; treeverse/dvc#10296). A stage that lists a whole section holding
such a param (`train`, with `train.size`) is then "cached" after a change of it: DVC checks out
the outputs of the run at the old value instead of running. Listing the param again by its flat
name (`train.size`) puts it back into the key: the key `train.size` is not `size`.
"""

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN_CACHE_DROPS = {"size", "nfiles"}  # dvc/stage/cache.py: Meta.PARAM_SIZE, Meta.PARAM_NFILES
PARAMS_FILES = [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]


def lookup(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


def dropped_keys(value: Any, prefix: str) -> list[str]:
    """Flat names of the keys under `value` that the run-cache key leaves out."""
    if not isinstance(value, dict):
        return []
    found = []
    for key, inner in value.items():
        name = f"{prefix}.{key}"
        if key in RUN_CACHE_DROPS:
            found.append(name)
        found += dropped_keys(inner, name)
    return found


def stage_params(values: dict[str, Any]) -> dict[str, list[str]]:
    """Stage name -> the params it lists, `${key}` expanded over its foreach mapping."""
    stages = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            mapping = lookup(values, stage["foreach"].strip("${}")) or {}
            keys = mapping if isinstance(mapping, dict) else [str(item) for item in mapping]
            entries = [entry for entry in stage["do"].get("params", []) if isinstance(entry, str)]
            for key in keys:
                stages[f"{name}@{key}"] = [entry.replace("${key}", key) for entry in entries]
        else:
            stages[name] = [entry for entry in stage.get("params", []) if isinstance(entry, str)]
    return stages


@pytest.mark.parametrize("params_file", PARAMS_FILES, ids=lambda path: path.stem)
def test_params_the_run_cache_drops_are_listed_by_their_flat_name(params_file):
    values = yaml.safe_load(params_file.read_text())
    missing = {
        stage: hidden
        for stage, listed in stage_params(values).items()
        if (hidden := [key for entry in listed for key in dropped_keys(lookup(values, entry), entry) if key not in listed])
    }
    assert not missing, f"{params_file.name}: list these params in dvc.yaml by their flat name: {missing}"


def test_the_check_sees_train_size():
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert dropped_keys(lookup(values, "train"), "train") == ["train.size"]
    assert "train.size" in stage_params(values)["train"]

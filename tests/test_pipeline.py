"""`dvc repro` on a fresh copy of the repository runs the whole pipeline on the demo data."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


# Where the pipeline writes. Untracked files there are outputs of an earlier `dvc repro` or
# `dvc exp run` in this checkout (DVC git-ignores only some of them), not part of a clone.
PIPELINE_OUTPUT_ROOTS = ("data/", "models/", "reports/")


def tracked_files() -> list[str]:
    """The committed files plus new, not ignored source files (work in progress), minus pipeline outputs."""
    def git_files(*options: str) -> list[str]:
        listed = subprocess.run(["git", "ls-files", *options], cwd=REPO, capture_output=True, text=True)
        if listed.returncode != 0:
            pytest.skip("needs a git checkout of the repository")
        return listed.stdout.splitlines()

    new = [name for name in git_files("--others", "--exclude-standard") if not name.startswith(PIPELINE_OUTPUT_ROOTS)]
    return [name for name in [*git_files("--cached"), *new] if (REPO / name).is_file()]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """What a user has after `git clone`: the committed and new files, no data/, no DVC cache."""
    clone = tmp_path_factory.mktemp("clone")
    for name in tracked_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, clone / name)
    # A clone has commits; dvclive (in `trainer train`) reads the current revision.
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    subprocess.run(["git", "add", "-A"], cwd=clone, check=True)
    identity = ["-c", "user.name=portraitseg tests", "-c", "user.email=tests@portraitseg.invalid"]
    subprocess.run(["git", *identity, "commit", "-qm", "fresh clone"], cwd=clone, check=True)
    return clone


def dvc(clone: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([Path(sys.executable).parent / "dvc", *args], cwd=clone, env=env, capture_output=True, text=True)


def provide_teacher_models(clone: Path) -> bool:
    """Put the user's cached teacher models where the `models` stage keeps them, so that it finds
    verified files and downloads nothing in a test (its output persists, so DVC leaves them there).
    Without them, the `models` and `pseudolabel` stages are switched off in the clone's params,
    as a user without the teacher does; returns whether the teacher runs."""
    from portraitseg.teacher_files import ModelMissingError, model_path

    params = yaml.safe_load((clone / "params.yaml").read_text())
    try:
        cached = {name: model_path(name) for name in params["teacher_files"]["fetch"]}
    except ModelMissingError:
        params["teacher_files"]["fetch"], params["pseudolabel"]["inputs"] = [], {}
        # The stages that read the labelled photos read an ingested set instead (README.md).
        params["backgrounds"]["photos"] = "data/interim/ingest/demo-pfcn"
        params["sets"].pop("demo-photos")
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return False
    for name, path in cached.items():
        (clone / "data/teacher-files" / name).mkdir(parents=True)
        shutil.copy2(path, clone / "data/teacher-files" / name / path.name)
    return True


def test_dvc_repro_runs_the_whole_pipeline_on_the_demo(fresh_clone):
    teacher_runs = provide_teacher_models(fresh_clone)
    run = dvc(fresh_clone, "repro")
    assert run.returncode == 0, run.stdout + run.stderr
    sources = yaml.safe_load((fresh_clone / "params.yaml").read_text())["ingest"]["sources"]
    assert set(sources) == {"demo-aisegment", "demo-kaggle-people", "demo-pfcn", "demo-supervisely"}
    for name in sources:
        canonical = fresh_clone / "data/interim/ingest" / name
        rows = [json.loads(line) for line in (canonical / "manifest.jsonl").read_text().splitlines()]
        report = json.loads((canonical / "report.json").read_text())
        assert len(rows) == 6 and report["counts"]["ingested"] == 6, name
        assert report["skipped"] or report["ignored"], f"{name}: the demo's deliberate quirk was not reported"
        for row in rows:
            assert (canonical / row["image"]).is_file() and (canonical / row["mask"]).is_file()

    if teacher_runs:
        labelled = fresh_clone / "data/interim/pseudolabel/demo-photos"
        rows = [json.loads(line) for line in (labelled / "manifest.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(row["teacher"] == "mediapipe-selfie" and row["person_fraction"] > 0.1 for row in rows)

    split = fresh_clone / "data/processed/split"
    rows = [json.loads(line) for name in ("train", "val", "test") for line in (split / f"{name}.jsonl").read_text().splitlines()]
    splits_of_group: dict[str, set[str]] = {}
    for row in rows:
        splits_of_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_group.values()), "a group crosses splits"
    assert any(row.get("foreground_id") for row in rows), "no composite reached the split"
    assert all(row.get("edge") for row in rows), "a row without its edge map"

    metrics = json.loads((fresh_clone / "models/blazeseg/metrics.json").read_text())
    assert metrics["model"] == "blazeseg" and 0.0 <= metrics["val_iou"] <= 1.0
    assert (fresh_clone / "models/blazeseg/best.pt").is_file()
    # The export stage's parity reports sit in its output folder and are read as top-level metrics.
    shown = dvc(fresh_clone, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for name in ("onnx-fp32", "tflite-fp32", "tflite-fp16", "onnx-int8", "tflite-int8"):
        assert f"models/blazeseg/export/{name}.json" in shown.stdout, name
        report = json.loads((fresh_clone / f"models/blazeseg/export/{name}.json").read_text())
        assert report["status"] in ("passed", "failed") and (fresh_clone / "models/blazeseg/export" / report["file"]).is_file()

    again = dvc(fresh_clone, "repro")
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout

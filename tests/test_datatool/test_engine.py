"""The dataset-writing engine: the same output on either engine, bad inputs included; a worker
process killed mid-run is retried without losing or repeating a sample; work spreads over two
Ray nodes. The Ray tests run a real local Ray runtime (and a real two-node cluster)."""

import hashlib
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import make_person_mask, make_photo, write_image

from datatool.engine import EngineOptions
from datatool.ingest import ingest
from datatool.pseudolabel import PseudolabelOptions, pseudolabel
from datatool.sources import create_source
from portraitseg.teachers.base import Teacher, TeacherError

# Before Ray is imported: no usage statistics, and no second virtual environment for the workers under `uv run`.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
ray = pytest.importorskip("ray", reason='the Ray engine needs portraitseg[ray] (uv sync installs it with the dev group)')
RAY = EngineOptions(kind="ray", workers=2)
TIMING = ("seconds", "teacher_seconds", "teacher_images_per_second", "composites_per_second", "output", "engine")  # what may differ between two runs


class BlueTeacher(Teacher):
    """p = blue / 255, known exactly. Test hooks: a worker that finds `kill_marker` removes it and
    kills its own process (once); every batch appends its Ray node id to `node_log`."""

    name = "blue"

    def __init__(self, kill_marker: str | None = None, node_log: str | None = None, seconds: float = 0.0):
        self.kill_marker = kill_marker
        self.node_log = node_log
        self.seconds = seconds  # per batch, as a real model takes: the second actor gets work before the first is done

    def predict(self, images):
        if self.kill_marker and os.path.exists(self.kill_marker):
            os.unlink(self.kill_marker)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.node_log:
            import time

            import ray

            time.sleep(self.seconds)

            with open(self.node_log, "a") as log:
                log.write(ray.get_runtime_context().get_node_id() + "\n")
        return [image[..., 2].astype(np.float32) / 255 for image in images]


class PoisonedTeacher(BlueTeacher):
    """Kills its process on every batch holding the photo "01 shot.jpg" (41 rows high): a decoder crash."""

    def predict(self, images):
        if any(image.shape[0] == 41 for image in images):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().predict(images)


class HalfSizeTeacher(BlueTeacher):
    """Breaks the teacher contract: its maps are half the image's size."""

    def predict(self, images):
        return [np.zeros((image.shape[0] // 2, image.shape[1] // 2), np.float32) for image in images]


# The Ray actors unpickle BlueTeacher; this test module is not importable there, so it travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def photo_folder(root: Path, count: int = 11) -> Path:
    """Photos of several sizes and formats, with an unreadable one, a truncated one and junk."""
    for n in range(count):
        write_image(root / f"photos/{n:02d} shot.{'png' if n % 3 == 0 else 'jpg'}", make_photo(40 + n, 56, seed=n))
    (root / "photos/corrupt.jpg").write_bytes(b"not an image")
    good = (root / "photos/01 shot.jpg").read_bytes()
    (root / "photos/sub/truncated.jpg").parent.mkdir(parents=True)
    (root / "photos/sub/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "photos/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root / "photos"


def folder_dataset(root: Path, count: int = 9) -> Path:
    """Image/mask pairs with a corrupt image, an orphan mask, a mask at half scale and one of another shape."""
    for n in range(count):
        write_image(root / f"D/images/{n}.jpg", make_photo(48, 64, seed=n))
        write_image(root / f"D/masks/{n}.png", make_person_mask(48, 64, seed=n))
    (root / "D/images/3.jpg").write_bytes(b"broken")
    write_image(root / "D/masks/orphan.png", make_person_mask(48, 64))
    write_image(root / "D/masks/4.png", make_person_mask(24, 32, seed=4))  # resized, reported as repaired
    write_image(root / "D/masks/5.png", make_person_mask(64, 48, seed=5))  # other aspect: skipped
    return root / "D"


def files_of(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "report.json"
    }


def report_of(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    for key in TIMING:
        report.pop(key, None)
    report["options"].pop("workers", None)
    return report


def assert_same_set(local: Path, other: Path) -> None:
    assert files_of(local) == files_of(other)  # manifest, state, ledger, every image and mask
    assert report_of(local) == report_of(other)


def test_ray_and_local_pseudolabel_write_the_same_set_and_reuse_it(tmp_path, local_ray):
    photos = photo_folder(tmp_path)
    local = pseudolabel(BlueTeacher(), photos, tmp_path / "local", options=PseudolabelOptions(batch_size=3))
    on_ray = pseudolabel(BlueTeacher(), photos, tmp_path / "ray", options=PseudolabelOptions(batch_size=3), engine=RAY)
    assert local.labelled == on_ray.labelled == 11 and on_ray.skipped == 2
    assert_same_set(tmp_path / "local", tmp_path / "ray")
    again = pseudolabel(BlueTeacher(), photos, tmp_path / "ray", options=PseudolabelOptions(batch_size=3), engine=RAY)
    assert again.reused == 13 and again.report["counts"].get("labelled_now", 0) == 0  # skips are reused too
    assert files_of(tmp_path / "local") == files_of(tmp_path / "ray")
    assert again.report["skipped"] == local.report["skipped"] and again.report["repaired"] == local.report["repaired"]


def test_ray_and_local_ingest_write_the_same_set_whoever_writes_the_files(tmp_path, local_ray, monkeypatch):
    data = folder_dataset(tmp_path)
    local = ingest(create_source("folder", data), tmp_path / "local", workers=2)
    on_ray = ingest(create_source("folder", data), tmp_path / "ray", workers=2, engine=RAY)
    assert local.ingested == on_ray.ingested == 7
    assert {entry["file"] for entry in on_ray.report["skipped"]} == {"images/3.jpg", "masks/5.png", "masks/orphan.png"}
    assert_same_set(tmp_path / "local", tmp_path / "ray")
    # The workers write the files straight into the output (shared storage), the driver only the state and manifest.
    import datatool.canonical

    def driver_writes(path, data):
        raise AssertionError(f"the driver wrote {path}")

    monkeypatch.setattr(datatool.canonical, "write_file", driver_writes)  # in this process only, not in the workers
    for name, engine in (("ray-workers", RAY), ("local-workers", EngineOptions(workers=2))):
        by_workers = ingest(create_source("folder", data), tmp_path / name, workers=2, engine=replace(engine, writer="workers"))
        assert by_workers.ingested == 7
        assert_same_set(tmp_path / "local", tmp_path / name)


def test_ray_and_local_boundary_write_the_same_set_with_its_files_linked(tmp_path, local_ray):
    from datatool.boundary import build_boundaries

    ingest(create_source("folder", folder_dataset(tmp_path)), tmp_path / "set")
    (tmp_path / "set/masks").joinpath(sorted((tmp_path / "set/masks").iterdir())[0].name).write_bytes(b"not a png")
    local = build_boundaries(tmp_path / "set", tmp_path / "local")
    on_ray = build_boundaries(tmp_path / "set", tmp_path / "ray", engine=RAY)
    assert local.written == on_ray.written == 6 and on_ray.skipped == 1
    assert_same_set(tmp_path / "local", tmp_path / "ray")
    row = json.loads((tmp_path / "ray/manifest.jsonl").read_text().splitlines()[0])
    assert os.path.samefile(tmp_path / "set" / row["image"], tmp_path / "ray" / row["image"])  # linked by the driver


def test_ray_and_local_backgrounds_and_synth_write_the_same_sets_and_reuse_them(tmp_path, local_ray):
    """A work item of backgrounds is a photo (several files, no row) or an image to link; one of
    synth is a person (several composites): bad inputs included, both engines write the same."""
    from datatool.backgrounds import BackgroundOptions, build_backgrounds
    from datatool.synth import SynthOptions, synthesize

    people = tmp_path / "people"
    ingest(create_source("folder", folder_dataset(tmp_path)), people)
    rows = [json.loads(line) for line in (people / "manifest.jsonl").read_text().splitlines()]
    (people / rows[0]["image"]).write_bytes(b"broken")  # skipped by both stages
    write_image(people / rows[1]["mask"], np.zeros((48, 64), np.uint8))  # nobody: all background, nothing to paste
    own = tmp_path / "own"
    for n in range(3):
        write_image(own / f"sub/{n}.jpg", make_photo(60, 80, seed=20 + n))
    (own / "bad.jpg").write_bytes(b"not an image")
    library, synth_options = BackgroundOptions(crops=2, min_crop=0.3), SynthOptions(size=(48, 48))
    for name, engine in (("local", EngineOptions()), ("ray", RAY)):
        backgrounds = build_backgrounds([people], tmp_path / f"{name}-bg", include=[own], options=library, engine=engine)
        assert (backgrounds.photos, backgrounds.included, backgrounds.skipped) == (7, 3, 2)
        composites = synthesize(people, tmp_path / "local-bg", tmp_path / f"{name}-synth", name="s", options=synth_options, engine=engine)
        assert (composites.composites, composites.skipped) == (15, 2)
    assert_same_set(tmp_path / "local-bg", tmp_path / "ray-bg")
    assert_same_set(tmp_path / "local-synth", tmp_path / "ray-synth")

    write_image(own / "sub/1.jpg", make_photo(60, 80, seed=99))  # one background changes
    again = build_backgrounds([people], tmp_path / "local-bg", include=[own], options=library)
    assert again.report["counts"]["reused"] == 10 and again.report["counts"]["processed"] == 1  # skips are reused too
    redone = synthesize(people, tmp_path / "local-bg", tmp_path / "ray-synth", name="s", options=synth_options, engine=RAY)
    assert redone.report["counts"]["processed"] == 7 and "reused" not in redone.report["counts"]  # any composite may use it
    unchanged = synthesize(people, tmp_path / "local-bg", tmp_path / "ray-synth", name="s", options=synth_options, engine=RAY)
    assert unchanged.report["counts"]["reused"] == 7 and unchanged.composites == 15


@pytest.mark.parametrize("engine", [RAY, EngineOptions(kind="local", workers=2)], ids=["ray", "local-processes"])
def test_a_worker_killed_mid_run_is_retried_and_no_sample_is_lost_or_written_twice(tmp_path, local_ray, engine):
    photos = photo_folder(tmp_path)
    options = PseudolabelOptions(batch_size=2)
    pseudolabel(BlueTeacher(), photos, tmp_path / "reference", options=options)
    marker = tmp_path / "kill-once"
    marker.touch()
    result = pseudolabel(BlueTeacher(kill_marker=str(marker)), photos, tmp_path / "killed", options=options, engine=engine)
    assert not marker.exists(), "the test step never ran in a worker it could kill"
    assert result.labelled == 11 and result.report["counts"]["labelled_now"] == 13
    assert_same_set(tmp_path / "reference", tmp_path / "killed")


def test_a_batch_that_always_kills_its_worker_is_reported_and_the_rest_is_kept(tmp_path):
    photos = photo_folder(tmp_path, count=4)
    result = pseudolabel(PoisonedTeacher(), photos, tmp_path / "out", options=PseudolabelOptions(batch_size=1), engine=EngineOptions(workers=2))
    assert result.labelled == 3
    died = [entry for entry in result.report["skipped"] if "worker process died" in entry["reason"]]
    assert [entry["file"] for entry in died] == ["01 shot.jpg"]
    state = (tmp_path / "out/.pseudolabel-state.jsonl").read_text()
    assert "worker process died" not in state  # not remembered: the next run tries it again


def test_a_teacher_breaking_its_contract_on_ray_stops_the_run_with_the_teachers_error(tmp_path, local_ray):
    with pytest.raises(TeacherError, match=r"returned a \(20, 28\) map for a \(40, 56\) image"):
        pseudolabel(HalfSizeTeacher(), photo_folder(tmp_path, count=2), tmp_path / "out", engine=RAY)
    assert not (tmp_path / "out/manifest.jsonl").exists()


def test_pseudolabel_runs_on_both_nodes_of_a_two_node_cluster_and_matches_local(tmp_path):
    from ray.cluster_utils import Cluster

    photos = photo_folder(tmp_path, count=16)
    options = PseudolabelOptions(batch_size=2)
    pseudolabel(BlueTeacher(), photos, tmp_path / "local", options=options)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(nodes) == 2
        log = tmp_path / "nodes.log"
        result = pseudolabel(BlueTeacher(node_log=str(log), seconds=1.0), photos, tmp_path / "cluster", options=options, engine=EngineOptions(kind="ray", workers=2))
        assert result.labelled == 16
        assert set(log.read_text().split()) == nodes  # both nodes ran teacher batches
        assert_same_set(tmp_path / "local", tmp_path / "cluster")
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_engine_ray_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    from click.testing import CliRunner

    from datatool.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "ray" else real_find_spec(name, *args))
    result = CliRunner().invoke(main, ["ingest", "folder", "--input", str(folder_dataset(tmp_path)), "--output", str(tmp_path / "out"), "--engine", "ray"])
    assert result.exit_code == 2 and 'pip install "portraitseg[ray]"' in result.output, result.output
    assert not (tmp_path / "out").exists()

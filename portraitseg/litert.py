"""Opening a `.tflite` file with LiteRT: the one place an interpreter is built (teachers, runtimes, tools)."""

import os
from pathlib import Path


class TfliteFileError(ValueError):
    """A file LiteRT cannot load; the message names it."""


def open_tflite(path: Path, threads: int | None = None, *, inspectable: bool = False):
    """An allocated `ai_edge_litert` interpreter for `path`.

    `threads` defaults to every core this process may use: LiteRT's own default is one thread,
    and even the small models here run about twice as fast on two cores. `inspectable` runs
    without XNNPACK and keeps every intermediate tensor readable (slow; for checks, not timing).
    Raises `TfliteFileError` when the file cannot be loaded.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    options = {}
    if inspectable:
        options = {
            "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "experimental_preserve_all_tensors": True,
        }
    else:
        options["num_threads"] = threads or len(os.sched_getaffinity(0))
    try:
        interpreter = Interpreter(model_path=str(path), **options)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise TfliteFileError(f"{path} is not a readable TFLite model ({error})") from error
    return interpreter

"""The interface every teacher implements: a batch of RGB images in, person probabilities out.

A teacher is a real segmentation model used to label photos that have no mask. Each one
owns its pre-processing (resize, layout, value range) and post-processing (sigmoid, softmax,
argmax -> person class) so that callers see one contract:

    probabilities = teacher.predict([rgb_image, ...])   # each (H, W, 3) uint8 RGB
    # -> [(H, W) float32 in [0, 1], ...] at each input image's own size, 1 = person

That contract, with `input_size`, is `portraitseg.predictor.Predictor`: a teacher is scored and
timed as a student is (`trainer evaluate` runs one as its reference).

Teachers are built by name with `create_teacher` (see `portraitseg.teachers`); model files come
from `portraitseg.teacher_files`, never from a download inside a teacher.
"""

from abc import ABC, abstractmethod
from functools import partial
from typing import Any, ClassVar

import numpy as np


class TeacherError(RuntimeError):
    """A teacher that cannot be built or run (missing model file, bad spec); says what to do."""


class Teacher(ABC):
    """A person-segmentation model behind the common contract."""

    name: ClassVar[str]  # registry name, e.g. "mediapipe-selfie"
    # The runtime label a leaderboard row gets: a teacher that is one model file run as a student's
    # export runs (MediaPipe's LiteRT file) says so, so it lines up with the students' backends.
    backend: ClassVar[str] = "teacher"
    # (spec, options) of `create_teacher`, which sets it: a teacher pickles as how to build it, so a
    # worker that unpickles one (a Ray actor of `datatool pseudolabel --engine ray`) loads its own model.
    recipe: tuple[str, dict[str, Any]] | None = None

    def __reduce_ex__(self, protocol):
        if self.recipe is None:
            return super().__reduce_ex__(protocol)
        from portraitseg.teachers import create_teacher

        spec, options = self.recipe
        return partial(create_teacher, spec, **options), ()

    @property
    def label(self) -> str:
        """What goes into the manifest's `teacher` field (name plus variant, e.g. the model file)."""
        return self.name

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of the input the photo is resized to; None when the model takes any shape."""
        return None

    @abstractmethod
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Person probability maps, (H, W) float32 in [0, 1], one per (H, W, 3) uint8 RGB image."""

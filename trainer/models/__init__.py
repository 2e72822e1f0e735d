"""The student zoo: compact person-segmentation models registered by name.

A model family is one file; each registered entrypoint is a three-line function that says
what to build (timm's pattern), and `create_model(name, **options)` builds it:

    model = create_model("blazeseg")                 # random init, never a download
    model = create_model("mobile_unet_v3", variant="large", decoder="transpose")

Every model maps a normalised (N, 3, H, W) float32 batch to mask logits (N, 1, H, W); see
`trainer.models.base.SegmentationModel`. The option `prior=True`, which every family takes, adds
the previous frame's mask as a fourth input channel (`trainer.models.base.add_prior_channel`). Input sides must be multiples of the model's
`output_stride` (32 for the torchvision encoders, 16 for BlazeSeg).
"""

import importlib
from collections.abc import Callable

from trainer.models.base import SegmentationModel, add_prior_channel

__all__ = ["ModelError", "SegmentationModel", "create_model", "is_model", "list_models", "register_model"]

# One module per family; imported on first use so `import trainer.models` stays cheap.
FAMILY_MODULES = (
    "blazeseg", "mobile_unet", "lraspp", "ffnet_mobile", "portraitnet", "efficientnet_lite", "selfie_segmenter"
)

MODELS: dict[str, Callable[..., SegmentationModel]] = {}


def register_model(entrypoint: Callable[..., SegmentationModel]) -> Callable[..., SegmentationModel]:
    """Decorator: make `entrypoint(**options) -> SegmentationModel` available under its function name."""
    name = entrypoint.__name__
    if name in MODELS and MODELS[name] is not entrypoint:
        raise ValueError(f"model {name!r} is registered twice ({MODELS[name].__module__} and {entrypoint.__module__})")
    MODELS[name] = entrypoint
    return entrypoint


def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def list_models() -> list[str]:
    """The registered model names, sorted."""
    _load_families()
    return sorted(MODELS)


def is_model(name: str) -> bool:
    """Whether `name` is a registered model."""
    _load_families()
    return name in MODELS


class ModelError(ValueError):
    """A model name that is not registered, or options its family does not take."""


def create_model(name: str, prior: bool = False, **options) -> SegmentationModel:
    """Build the registered model `name` with the family's `options`; a typo lists the valid names.

    `prior=True` builds the family as usual, then widens its stem to take the previous frame's mask
    as a fourth input channel (`add_prior_channel`: zero weights at first).
    """
    _load_families()
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    try:
        model = MODELS[name](**options)
        return add_prior_channel(model) if prior else model
    except (TypeError, ValueError) as error:  # an option the family does not take, or a value it refuses
        shown = {**options, "prior": prior} if prior else options
        raise ModelError(f"cannot build {name} with model_options {shown}: {error}") from error

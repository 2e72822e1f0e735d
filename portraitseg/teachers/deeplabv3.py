"""torchvision DeepLabV3 (ResNet-50, ResNet-101 or MobileNetV3-Large) with its 21 VOC classes.

Pre-processing is torchvision's for these weights (`DeepLabV3_*_Weights.DEFAULT.transforms()`:
resize the shorter side to 520 bilinearly, ImageNet mean/std), with one addition: the longer
side is capped at `MAX_SIDE`, so a panorama cannot make a huge tensor. The model upsamples its
logits to its input size; the person probability is the softmax over the 21 classes at class
15 (`person` in the weights' categories), which is then resized to the photo.

The model is built with `weights=None, weights_backbone=None` (torchvision would download
otherwise) and the weights are loaded from the file `portraitseg.teacher_files.deeplabv3_weights` finds.
"""

import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np

from portraitseg.teachers import TeacherOptions, register
from portraitseg.teachers.base import Teacher, TeacherError
from portraitseg.resize import resize_image, resize_probability

VARIANTS = ("resnet50", "resnet101", "mobilenet_v3_large")
DEFAULT_VARIANT = "resnet50"
PERSON_CLASS = 15  # VOC index of "person"
NUM_CLASSES = 21
SHORT_SIDE = 520  # torchvision's resize_size for these weights
MAX_SIDE = 1040  # caps panoramas; a 2:1 photo still gets the full 520 on its shorter side
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@register
class DeepLabV3Teacher(Teacher):
    name = "deeplabv3"

    def __init__(self, model, variant: str, device: str = "cpu", short_side: int = SHORT_SIDE, max_side: int = MAX_SIDE):
        """`model`: a torch module returning `{"out": (N, 21, H, W) logits}` for (N, 3, H, W) input."""
        import torch

        self.variant = variant
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.short_side = short_side
        self.max_side = max_side
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def build(cls, argument: str | None, options: TeacherOptions) -> "DeepLabV3Teacher":
        from portraitseg.teacher_files import deeplabv3_weights

        variant = argument or DEFAULT_VARIANT
        if variant not in VARIANTS:
            raise TeacherError(f"unknown DeepLabV3 variant {variant!r}; choose one of: {', '.join(VARIANTS)} (e.g. deeplabv3:resnet101)")
        model = build_model(variant)
        load_weights(model, deeplabv3_weights(variant, options.weights))
        return cls(model, variant, device=options.device)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.variant}"

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the photo is resized to: shorter side `short_side`, longer side at most `max_side`."""
        scale = min(self.short_side / min(height, width), self.max_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # Photos that resize to the same size run as one batch (a folder of one camera's photos).
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_size[self.model_size(*image.shape[:2])].append(index)
        results: list[np.ndarray | None] = [None] * len(images)
        for (height, width), indices in by_size.items():
            batch = np.stack([resize_image(images[index], width, height) for index in indices])  # (N, h, w, 3) uint8
            for index, probability in zip(indices, self.person_probability(batch), strict=True):
                results[index] = resize_probability(probability, *images[index].shape[:2])
        return results

    def person_probability(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w) float32 person probability for a (N, h, w, 3) uint8 RGB batch of one size."""
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            logits = self.model((tensor - self.mean) / self.std)["out"]  # (N, 21, h, w)
            return torch.softmax(logits, dim=1)[:, PERSON_CLASS].cpu().numpy()


def build_model(variant: str):
    """An untrained torchvision DeepLabV3 for 21 classes without the auxiliary head; never downloads."""
    from torchvision.models import segmentation

    builder = getattr(segmentation, f"deeplabv3_{variant}")
    return builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)


def load_weights(model, path: Path) -> None:
    """Load a state dict (torchvision's file, or a checkpoint with a "model" entry) into `model`.

    torchvision's published weights include the auxiliary classifier used in training; the
    teacher does not run it, so its keys are dropped before the load, which must then match
    the model key for key.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise TeacherError(f"cannot read DeepLabV3 weights {path}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise TeacherError(f"DeepLabV3 weights {path} hold a {type(state).__name__}, not a state dict")
    state = {key: value for key, value in state.items() if not key.startswith("aux_classifier.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape: another variant or class count
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:4])  # line 0 is a generic header
        raise TeacherError(f"DeepLabV3 weights {path} do not fit this model: {details}") from error
    if result.missing_keys or result.unexpected_keys:
        raise TeacherError(
            f"DeepLabV3 weights {path} do not fit this model: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:3]}, {len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}"
        )

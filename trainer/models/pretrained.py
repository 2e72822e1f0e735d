"""ImageNet weights for the torchvision-based encoders, loaded only when a caller asks.

Kept apart from the model classes: they never touch a URL (timm's rule); an entrypoint with
`pretrained=True` calls `torchvision_weights`, which downloads through torchvision's own cache
(`TORCH_HOME`). Tests and the pipeline train from scratch and never call it.
"""

from torchvision.models import WeightsEnum


def refuse_pretrained(name: str, pretrained: bool, reason: str = "it has no ImageNet-pretrained backbone") -> None:
    """Raise a clear error when `pretrained=True` is asked of a model that has no such weights."""
    if pretrained:
        raise ValueError(f"{name} cannot be built with pretrained=True: {reason}; train it from scratch")


def torchvision_weights(weights: type[WeightsEnum], pretrained: bool) -> WeightsEnum | None:
    """The default ImageNet weights of `weights` when `pretrained`, else None (random init)."""
    return weights.DEFAULT if pretrained else None

"""Segmentation losses on logits (N, 1, H, W), and `SegmentationLoss`, their weighted sum.

Every function takes logits, never probabilities, so each can use the numerically stable
log-sigmoid forms. Targets are float tensors of the logits' shape with values in [0, 1].
Sums run in float32 even under autocast: a float16 sum over a batch of 256x256 masks passes
float16's 65504 and turns the loss into inf.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TERMS = ("bce", "dice", "boundary", "edge_head", "consistency", "distillation")


def bce_loss(logits: Tensor, target: Tensor, pos_weight: float = 1.0) -> Tensor:
    """Binary cross-entropy, the person class weighted by `pos_weight` (#background / #foreground)."""
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight)


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice over the whole batch: 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth).

    Summed over the batch rather than averaged per image, so an image with a tiny or absent
    person does not dominate the batch; `smooth` keeps an empty batch finite (loss 0 for p = t = 0).
    """
    probs = torch.sigmoid(logits.float())
    intersection = (probs * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probs.sum() + target.sum() + smooth)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, weight: Tensor | None = None) -> Tensor:
    """Focal BCE (Lin et al., 2017): -(1 - p_t)^gamma log p_t per pixel, averaged under `weight`.

    With soft targets p_t is read as the probability given to the target, p t + (1 - p)(1 - t).
    Without `weight` it is the mean over all pixels; with it sum(weight * loss) / sum(weight)
    (0 when the weight is all zero).
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # -log p_t for hard targets
    probs = torch.sigmoid(logits)
    p_t = probs * target + (1.0 - probs) * (1.0 - target)
    loss = (1.0 - p_t) ** gamma * bce
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def boundary_focal_loss(logits: Tensor, target: Tensor, edge: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal BCE of the mask logits on the boundary band only (`edge` in {0, 1}, from `datatool boundary`).

    PortraitNet (Zhang et al., 2019) puts a focal loss on the person outline because the
    outline is where the few hard pixels are; averaging over band pixels keeps the term's scale
    independent of how much of the image the band covers.
    """
    return focal_loss(logits, target, gamma, weight=edge)


def consistency_loss(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Symmetric KL between two views' per-pixel Bernoulli predictions, mean over pixels.

    KL(p||q) + KL(q||p) for Bernoulli p = sigmoid(a), q = sigmoid(b) simplifies to
    (p - q)(a - b): the log-ratio terms are differences of logits. Exact, and with no log of a
    probability that could underflow.
    """
    logits_a, logits_b = logits_a.float(), logits_b.float()
    return ((torch.sigmoid(logits_a) - torch.sigmoid(logits_b)) * (logits_a - logits_b)).mean()


def distillation_loss(logits: Tensor, teacher_prob: Tensor, keep: Tensor | None = None) -> Tensor:
    """BCE of the student against the teacher's soft probabilities (Hinton-style soft targets).

    `keep` (N, 1, 1, 1) in {0, 1} leaves out samples without a teacher: the mean runs over the
    kept samples' pixels (0 when none is kept).
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), teacher_prob, reduction="none")
    if keep is None:
        return per_pixel.mean()
    return (per_pixel * keep).sum() / (keep.sum() * logits[0].numel()).clamp(min=1.0)


class SegmentationLoss:
    """The weighted sum of the terms in `weights` (keys from `LOSS_TERMS`; weight 0 skips a term).

    `outputs`: `mask` logits (N, 1, H, W); `edge` logits of an auxiliary boundary head (for
    `edge_head`); `mask_b`, the logits of the batch's second view `image_b` (for `consistency`).
    `batch`: `mask`; `edge` and `has_edge` (for `boundary` and `edge_head`); `teacher` and
    `has_teacher` (for `distillation`). The per-sample `has_*` flags leave out samples without
    that target. Returns the total (a tensor to backpropagate) and each term's unweighted value.
    """

    def __init__(self, weights: dict[str, float], pos_weight: float = 1.0):
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; valid: {', '.join(LOSS_TERMS)}")
        negative = sorted(name for name, weight in weights.items() if weight < 0)
        if negative:
            raise ValueError(f"loss weights must be >= 0, got negative {negative}")
        self.weights = {name: float(weight) for name, weight in weights.items() if weight != 0}
        if not self.weights:
            raise ValueError("every loss weight is zero: nothing to train on")
        self.pos_weight = pos_weight

    def __call__(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        logits = outputs["mask"]  # (N, 1, H, W)
        total = logits.new_zeros(())
        parts: dict[str, float] = {}
        for name, weight in self.weights.items():
            value = self.term(name, outputs, batch)
            total = total + weight * value
            parts[name] = float(value.detach())
        return total, parts

    def term(self, name: str, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """One unweighted term; a missing input for it is a `KeyError` saying what to provide."""
        logits, target = outputs["mask"], batch["mask"]
        if name == "bce":
            return bce_loss(logits, target, self.pos_weight)
        if name == "dice":
            return dice_loss(logits, target)
        if name == "boundary":
            require(batch, "edge", name, "the batch (dataset with_edges=True)")
            keep = flags(batch, "has_edge", logits)
            return boundary_focal_loss(logits, target, batch["edge"] * keep)
        if name == "edge_head":
            require(outputs, "edge", name, "the model outputs (a model with a boundary head)")
            require(batch, "edge", name, "the batch (dataset with_edges=True)")
            keep = flags(batch, "has_edge", logits)
            return focal_loss(outputs["edge"], batch["edge"], weight=keep.expand_as(batch["edge"]))
        if name == "consistency":
            require(outputs, "mask_b", name, "the model outputs (logits of the batch's image_b)")
            return consistency_loss(logits, outputs["mask_b"])
        if name == "distillation":
            require(batch, "teacher", name, "the batch (dataset with_teacher=True)")
            return distillation_loss(logits, batch["teacher"], flags(batch, "has_teacher", logits))
        raise AssertionError(f"unhandled loss term {name}")  # __init__ rejects unknown names


def require(source: dict[str, Tensor], key: str, term: str, where: str) -> None:
    if key not in source:
        raise KeyError(f"loss term {term!r} has a non-zero weight but {where} has no {key!r}")


def flags(batch: dict[str, Tensor], key: str, like: Tensor) -> Tensor:
    """Per-sample flags `batch[key]` (N,) as (N, 1, 1, 1) floats; all ones when absent."""
    if key not in batch:
        return like.new_ones((like.shape[0], 1, 1, 1))
    return torch.as_tensor(batch[key], device=like.device).to(like.dtype).view(-1, 1, 1, 1)

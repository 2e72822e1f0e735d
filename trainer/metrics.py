"""`SegmentationMetrics`: IoU, Dice and boundary F-score accumulated over a dataset.

Shaped like the `ConfusionMatrix` of torchvision's segmentation references: `update` adds a
batch's counts into one float64 tensor of sums, `compute` reads the metrics off it, and
`reduce_from_all_processes` all-reduces the sums, so the result over several processes is the
result over their union.

- IoU and Dice are means over images of each image's figure (the rule of
  `portraitseg.scoring`: person where p >= 0.5, an empty prediction of an empty truth scores 1),
  so a small person counts as much as a large one, as portrait-segmentation papers report them.
  `pooled_iou` is the dataset-level figure: the sum of intersections over the sum of unions of
  every pixel of every image.
- The boundary F-score follows Perazzi et al. (2016, DAVIS): an image's boundary precision is
  the share of predicted outline pixels within `tolerance` px of the true outline, its recall
  the share of true outline pixels within `tolerance` of the predicted one, F their harmonic
  mean; the score is the mean F over images. Outlines are the mask's pixels with a background
  pixel in their 3x3 neighbourhood; the tolerance is a square (chessboard) dilation, a
  max-pool. The frame is no outline, as in `datatool boundary`.

`TemporalMetrics` measures flicker on video clips, frame pair by frame pair (issue 17).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from portraitseg.scoring import PERSON_THRESHOLD

SUMS = ("intersection", "union", "image_iou", "image_dice", "boundary_f", "images")


class SegmentationMetrics:
    def __init__(self, threshold: float = PERSON_THRESHOLD, boundary_tolerance: int = 2):
        self.threshold = threshold
        self.boundary_tolerance = boundary_tolerance
        self.sums = torch.zeros(len(SUMS), dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: logits (N, 1, H, W); target (N, 1, H, W) in [0, 1], person where >= 0.5."""
        predicted = torch.sigmoid(logits.float()) >= self.threshold  # (N, 1, H, W) bool: the rule of portraitseg.scoring
        truth = target >= PERSON_THRESHOLD
        intersection = (predicted & truth).sum(dim=(1, 2, 3)).double()  # (N,)
        union = (predicted | truth).sum(dim=(1, 2, 3)).double()
        sizes = predicted.sum(dim=(1, 2, 3)).double() + truth.sum(dim=(1, 2, 3)).double()
        image_iou = torch.where(union > 0, intersection / union.clamp(min=1), 1.0)
        image_dice = torch.where(sizes > 0, 2 * intersection / sizes.clamp(min=1), 1.0)
        f_scores = boundary_f_scores(predicted, truth, self.boundary_tolerance)  # (N,)
        batch_sums = torch.stack(
            [
                intersection.sum(),
                union.sum(),
                image_iou.sum(),
                image_dice.sum(),
                f_scores.sum().double(),
                torch.tensor(float(predicted.shape[0]), dtype=torch.float64, device=predicted.device),
            ]
        )
        self.sums += batch_sums.cpu()

    def compute(self) -> dict[str, float]:
        """{"iou", "dice", "boundary_f"} means over images and the dataset-level "pooled_iou"."""
        intersection, union, image_iou, image_dice, boundary_f, images = self.sums.tolist()
        return {
            "iou": image_iou / images if images else 1.0,
            "dice": image_dice / images if images else 1.0,
            "boundary_f": boundary_f / images if images else 0.0,
            "pooled_iou": intersection / union if union else 1.0,
        }

    def reduce_from_all_processes(self) -> None:
        """Sum the counts over all processes (no-op without an initialised process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        # NCCL reduces CUDA tensors only; gloo takes the CPU tensor as is.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        sums = self.sums.to(device)
        dist.all_reduce(sums)
        self.sums = sums.cpu()

    def __str__(self) -> str:
        return "  ".join(f"{name} {value:.4f}" for name, value in self.compute().items())


def outline(mask: Tensor) -> Tensor:
    """Pixels of `mask` (N, 1, H, W) bool with a background pixel among their 8 neighbours."""
    inside = mask.float()
    # Erosion as -max_pool(-x); the pool's padding is -inf, so the frame counts as inside.
    eroded = -F.max_pool2d(-inside, kernel_size=3, stride=1, padding=1)
    return mask & (eroded < 0.5)


def dilate(mask: Tensor, radius: int) -> Tensor:
    """`mask` (N, 1, H, W) bool grown by `radius` px (a (2r+1)-square max-pool)."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask.float(), kernel_size=2 * radius + 1, stride=1, padding=radius) > 0.5


def boundary_f_scores(predicted: Tensor, truth: Tensor, tolerance: int) -> Tensor:
    """Per-image boundary F-score (N,) of bool masks (N, 1, H, W), DAVIS conventions for empty outlines."""
    predicted_outline, true_outline = outline(predicted), outline(truth)
    predicted_count = predicted_outline.sum(dim=(1, 2, 3)).double()
    true_count = true_outline.sum(dim=(1, 2, 3)).double()
    matched_predicted = (predicted_outline & dilate(true_outline, tolerance)).sum(dim=(1, 2, 3)).double()
    matched_true = (true_outline & dilate(predicted_outline, tolerance)).sum(dim=(1, 2, 3)).double()
    # An empty outline has precision (or recall) 1, so DAVIS's conventions follow: one empty
    # outline scores F 0 (nothing of the other is matched), both empty score F 1.
    precision = torch.where(predicted_count > 0, matched_predicted / predicted_count.clamp(min=1), 1.0)
    recall = torch.where(true_count > 0, matched_true / true_count.clamp(min=1), 1.0)
    return torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)


class TemporalMetrics:
    """Temporal instability over video clips, fed frame by frame in order (`start_clip` between clips).

    - dtSSD, as RobustVideoMatting's evaluation computes it: per pair of consecutive frames,
      sqrt(mean(((P_t - P_t-1) - (G_t - G_t-1))^2)) over the pixels of the probabilities P and
      the truth G in [0, 1], then the mean over pairs (RVM prints it x100). A still mask on a still
      truth scores 0; a prediction that follows the truth's motion exactly scores 0 too.
    - flip rate: of the pixels whose truth stays on the same side of 0.5 from one frame to the
      next, the share whose prediction crosses 0.5 (the flicker a viewer sees).
    """

    def __init__(self, threshold: float = PERSON_THRESHOLD):
        self.threshold = threshold
        self.dtssd_sum = 0.0
        self.pairs = 0
        self.flipped = 0
        self.steady_pixels = 0
        self.previous: tuple[Tensor, Tensor] | None = None

    def start_clip(self) -> None:
        """The next frame is a clip's first: it pairs with nothing before it."""
        self.previous = None

    @torch.no_grad()
    def update(self, probability: Tensor, truth: Tensor) -> None:
        """Add the next frame of the clip: probability and truth (H, W) in [0, 1]."""
        probability, truth = probability.double(), truth.double()
        if self.previous is not None:
            previous_probability, previous_truth = self.previous
            change = (probability - previous_probability) - (truth - previous_truth)
            self.dtssd_sum += float(change.square().mean().sqrt())
            self.pairs += 1
            steady = (truth >= PERSON_THRESHOLD) == (previous_truth >= PERSON_THRESHOLD)
            flips = (probability >= self.threshold) != (previous_probability >= self.threshold)
            self.flipped += int((flips & steady).sum())
            self.steady_pixels += int(steady.sum())
        self.previous = (probability, truth)

    def compute(self) -> dict[str, float | None]:
        """{"dtssd", "flip_rate"}: means over the frame pairs seen (None before the first pair)."""
        return {
            "dtssd": self.dtssd_sum / self.pairs if self.pairs else None,
            "flip_rate": self.flipped / self.steady_pixels if self.steady_pixels else None,
        }

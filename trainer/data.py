"""Training data: a dataset over `datatool split` manifests, with paired albumentations transforms.

An item is a dict of tensors at the input size, (height, width) = (S, S) for a square `size` or
(H, W) for `size` [H, W] (written S x S below):

- `image` (3, S, S) float32, RGB, normalised with `IMAGENET_MEAN` / `IMAGENET_STD`;
- `mask` (1, S, S) float32 in [0, 1] (binary masks stay {0, 1}; mattes and soft masks stay soft);
- `edge` (1, S, S) float32 in {0, 1} and `has_edge` (bool): the boundary band of `datatool
  boundary`, zeros and False for rows without one (or `with_edges=False`);
- `teacher` (1, S, S) float32 in [0, 1] and `has_teacher` (bool), with `with_teacher=True`: the
  teacher's soft probabilities (`teacher_mask`), zeros and False for rows without one, so that
  items with and without a teacher collate into one batch;
- `image_b` (3, S, S), with `with_second_view=True`: the same geometry as `image` under an
  independent photometric draw, for the consistency loss (PortraitNet compares the predictions
  of a photo and its texture-augmented copy, which only works pixel by pixel when both share
  their geometry);
- `prior` (1, S, S) float32 in [0, 1], given a `prior` (`PriorSimulation`): a simulated previous
  frame's mask for a student that takes one (`model_options.prior`);
- `id` (str).

Copy-paste (`copy_paste` > 0, training only): with that probability the person of another
sample of the same split is pasted onto the item at a random scale and place (Ghiasi et al.,
"Simple Copy-Paste is a Strong Data Augmentation Method for Instance Segmentation", 2021). The
mask becomes the union, so the scenes of real photos, people and clutter included, become
backgrounds for other people. Synthetic composites put people on new backgrounds too, but
only on the few a user has; this draws new pairs every epoch and never crosses splits.

Resizing is a plain `Resize` to S x S, not letterbox (`LongestMaxSize` + `PadIfNeeded`): phone
pipelines such as MediaPipe's selfie segmenter stretch the camera frame to the model's input
(256 x 256, or 144 x 256 for its landscape model) and stretch the mask back, so training sees what deployment feeds; and letterbox padding
is free, trivially correct background that would inflate validation IoU.

Each target is interpolated as what it is. albumentations applies one `mask_interpolation` to
every mask of a call, so the geometric transforms run as two pipelines that replay the same
random draws (`PairedTransforms`): nearest for binary masks (torchvision's references do the
same: no new label values), bilinear (area when shrinking) for mattes, soft masks and teacher
probabilities. Edge bands go through the bilinear / area pipeline and are binarised at > 0: a
4-pixel band shrunk six times with nearest sampling would break into dots, while "any band
pixel under this output pixel" keeps it connected and at least one pixel wide.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from portraitseg.imagefiles import read_mask, read_rgb
from portraitseg.records import SplitError, read_split, resolve
from portraitseg.resize import InputSize, as_input_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SOFT_MASK_KINDS = ("alpha", "soft")  # mask_kind values resized bilinearly; "binary" uses nearest


def input_normalisation(channels: int = 3) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (1, channels, 1, 1): `pixels * scale + shift` is the normalisation the
    trainer gives 0..255 RGB, (x / 255 - mean) / std. A fourth channel (a prior student's previous
    mask, given 0..255 like the image) has mean 0 and std 1: it is scaled by 1 / 255 only.
    `shift` is then also what a black pixel becomes."""
    extra = channels - 3
    mean = torch.tensor([*IMAGENET_MEAN, *[0.0] * extra]).view(1, channels, 1, 1)
    std = torch.tensor([*IMAGENET_STD, *[1.0] * extra]).view(1, channels, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def build_geometric(size: InputSize, augment: bool, mask_interpolation: int) -> A.Compose:
    """Resize to (height, width) `size`, then (training) flip and a random affine; masks with `mask_interpolation`."""
    area_for_downscale = "image" if mask_interpolation == cv2.INTER_NEAREST else "image_mask"
    transforms: list[A.BasicTransform] = [
        A.Resize(*size, mask_interpolation=mask_interpolation, area_for_downscale=area_for_downscale)
    ]
    if augment:
        # Ranges in the spirit of PortraitNet's deformation augmentation (scale, shift, rotation),
        # a little milder because our crops are already tight portraits. Resize runs first, so
        # the warp costs S x S pixels whatever the photo's size.
        transforms += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.75, 1.25),
                translate_percent=(-0.1, 0.1),
                rotate=(-25, 25),
                mask_interpolation=mask_interpolation,
                border_mode=cv2.BORDER_CONSTANT,
                p=0.7,
            ),
        ]
    return A.Compose(transforms)


def build_photometric(augment: bool) -> A.Compose:
    """Image-only changes (texture augmentation), then ImageNet normalisation."""
    transforms: list[A.BasicTransform] = []
    if augment:
        transforms += [
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5),
            A.OneOf([A.Blur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.3),
            A.ImageCompression(compression_type="jpeg", quality_range=(40, 95), p=0.3),  # phone-camera artefacts
        ]
    transforms.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0))
    return A.Compose(transforms)


@dataclass
class PairedTransforms:
    """Geometric transforms replayed over image, hard and soft targets, then photometric on the image.

    `__call__` seeds every pipeline from one `seed`, so an item is a pure function of its files
    and the seed (the dataset draws the seed from torch's generator, which DataLoader seeds per
    worker).
    """

    geometric_nearest: A.Compose
    geometric_linear: A.Compose
    photometric: A.Compose

    def __call__(
        self,
        image: np.ndarray,
        hard: dict[str, np.ndarray],
        soft: dict[str, np.ndarray],
        seed: int,
        second_view: bool = False,
    ) -> dict[str, np.ndarray]:
        """image (H, W, 3) uint8 RGB; hard / soft targets (H, W) float32 in [0, 1] -> the same keys at S x S.

        The image comes back as (S, S, 3) float32 normalised, `image_b` too with `second_view`.
        """
        hard_names, soft_names = list(hard), list(soft)
        replay(self.geometric_nearest, seed)
        warped = self.geometric_nearest(image=image, masks=[hard[name] for name in hard_names])
        out = dict(zip(hard_names, warped["masks"], strict=True))
        if soft_names:
            replay(self.geometric_linear, seed)  # the same draws as above, bilinear masks
            # The image is passed only so that every transform sees the same shapes as above.
            soft_warped = self.geometric_linear(image=image, masks=[soft[name] for name in soft_names])
            out.update(zip(soft_names, soft_warped["masks"], strict=True))
        replay(self.photometric, seed + 1)
        out["image"] = self.photometric(image=warped["image"])["image"]
        if second_view:
            replay(self.photometric, seed + 2)
            out["image_b"] = self.photometric(image=warped["image"])["image"]
        return out


def replay(pipeline: A.Compose, seed: int) -> None:
    """Reset `pipeline` to the stream of draws of `seed` (one generator shared by all its transforms).

    `Compose.set_random_seed` would give every transform its own generator with the same seed,
    so a flip and an affine would always fire together; one shared stream keeps them independent.
    """
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


def build_transforms(size: InputSize, augment: bool) -> PairedTransforms:
    """The transforms of a training (`augment=True`) or validation (resize only) item at (height, width) `size`."""
    return PairedTransforms(
        geometric_nearest=build_geometric(size, augment, cv2.INTER_NEAREST),
        geometric_linear=build_geometric(size, augment, cv2.INTER_LINEAR),
        photometric=build_photometric(augment),
    )


@dataclass(frozen=True)
class PriorSimulation:
    """How the previous frame's mask is simulated from an item's own (augmented) truth mask.

    A prior student is trained on photos, not clips, so its fourth input is made up: the truth
    moved a little, as the person and camera move between frames (an affine warp), with its
    outline a little off, as the model's own previous output would be (erosion or dilation, then
    a blur that makes it soft like a probability), and for an `empty_share` of items no prior at
    all, as on the first frame of a clip, so that the student still segments on its own.
    """

    empty_share: float  # share of all-zero priors (train.prior_empty)
    shift: float = 0.04  # largest shift, as a share of each side
    scale: float = 0.08  # largest relative change of size
    rotation: float = 4.0  # largest rotation, degrees
    morphology_px: int = 3  # largest erosion or dilation radius, px at S = 128 (scaled with the shorter side)
    blur_sigma: float = 1.5  # largest Gaussian blur sigma, px at S = 128 (scaled with the shorter side)

    def __call__(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W) float32 truth in [0, 1] -> a simulated previous-frame probability (H, W) float32 in [0, 1]."""
        height, width = mask.shape
        size = min(height, width)
        if rng.random() < self.empty_share:
            return np.zeros_like(mask, dtype=np.float32)
        shift_x, shift_y = rng.uniform(-self.shift, self.shift, 2) * (width, height)
        matrix = cv2.getRotationMatrix2D(
            (width / 2, height / 2), rng.uniform(-self.rotation, self.rotation), 1.0 + rng.uniform(-self.scale, self.scale)
        )
        matrix[:, 2] += (shift_x, shift_y)
        prior = cv2.warpAffine(mask.astype(np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
        radius = round(rng.uniform(0, self.morphology_px) * size / 128)
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            prior = (cv2.erode if rng.random() < 0.5 else cv2.dilate)(prior, kernel)
        sigma = rng.uniform(0, self.blur_sigma) * size / 128
        if sigma > 0.3:  # below that the 3-tap kernel is an identity
            prior = cv2.GaussianBlur(prior, (0, 0), sigma)
        return np.clip(prior, 0.0, 1.0).astype(np.float32)


def read_gray(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1] from a uint8 PNG (255 = person / band); must match the image's `shape`."""
    values = read_mask(path)
    if values.shape != shape:
        raise ValueError(f"{path} is {values.shape[1]}x{values.shape[0]}, its image {shape[1]}x{shape[0]}")
    return values.astype(np.float32) / 255.0


class SegmentationDataset(Dataset):
    """The `split` rows of a `datatool split` folder as tensors at `size`: S (a square) or (H, W) (see the module doc)."""

    def __init__(
        self,
        split_dir: Path,
        split: str,
        size: int | Sequence[int],
        augment: bool,
        with_edges: bool = True,
        with_teacher: bool = False,
        with_second_view: bool = False,
        sources: Sequence[str] = (),
        copy_paste: float = 0.0,
        prior: PriorSimulation | None = None,
    ):
        self.split_dir = Path(split_dir)
        self.manifest = self.split_dir / f"{split}.jsonl"
        self.rows = read_split(self.split_dir, split)
        if sources:  # e.g. validate on real photos only, leaving out the composites of val people
            self.rows = [row for row in self.rows if row.get("source") in set(sources)]
        self.size = as_input_size(size)  # (height, width)
        self.with_edges = with_edges
        self.with_teacher = with_teacher
        # Checked here rather than in `load`: a missing file would stop training mid-epoch, in a
        # DataLoader worker. Rows naming one are left out and listed ({"id", "file"}).
        self.missing: list[dict[str, str]] = []
        present = []
        for row in self.rows:
            absent = next((path for path in self.files_of(row) if not path.is_file()), None)
            if absent is None:
                present.append(row)
            else:
                self.missing.append({"id": row["id"], "file": str(absent)})
        self.rows = present
        self.with_second_view = with_second_view
        self.transforms = build_transforms(self.size, augment)
        self.augment = augment
        self.copy_paste = copy_paste
        self.prior = prior  # how to simulate the `prior` of each item; None = items without one

    def files_of(self, row: dict[str, Any]) -> list[Path]:
        """The files `load` reads for `row`."""
        fields = ["image", "mask"]
        fields += ["edge"] if self.with_edges and row.get("edge") else []
        fields += ["teacher_mask"] if self.with_teacher and row.get("teacher_mask") else []
        return [resolve(self.split_dir, row, field) for field in fields]

    def missing_summary(self, shown: int = 5) -> str:
        """The rows left out for a missing file, the first `shown` named, for the training log."""
        total = len(self.rows) + len(self.missing)
        lines = [f"{self.manifest}: left out {len(self.missing)} of {total} rows whose files are missing "
                 "(restore them or re-run `datatool split`):"]  # fmt: skip
        lines += [f"  {entry['id']}: {entry['file']}" for entry in self.missing[:shown]]
        if len(self.missing) > shown:
            lines.append(f"  ... and {len(self.missing) - shown} more")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.load(index)
        if self.copy_paste > 0 and len(self.rows) > 1 and torch.rand(()).item() < self.copy_paste:
            donor_index = int(torch.randint(0, len(self.rows) - 1, ()).item())
            donor = self.load(donor_index + (donor_index >= index))  # any sample but this one
            paste_person(item, donor, torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item())))
        return item

    def load(self, index: int) -> dict[str, Any]:
        """The item of row `index`, transformed (see the module doc), without copy-paste."""
        row = self.rows[index]
        image = read_rgb(resolve(self.split_dir, row, "image"))
        shape = image.shape[:2]
        mask = read_gray(resolve(self.split_dir, row, "mask"), shape)
        hard: dict[str, np.ndarray] = {}
        soft: dict[str, np.ndarray] = {}
        if row.get("mask_kind", "binary") in SOFT_MASK_KINDS:  # resized bilinearly, values kept
            soft["mask"] = mask
        else:
            hard["mask"] = (mask >= 0.5).astype(np.float32)  # 128 and up is person, as in datatool
        has_edge = self.with_edges and bool(row.get("edge"))
        if has_edge:
            soft["edge"] = read_gray(resolve(self.split_dir, row, "edge"), shape)
        has_teacher = self.with_teacher and bool(row.get("teacher_mask"))
        if has_teacher:
            soft["teacher"] = read_gray(resolve(self.split_dir, row, "teacher_mask"), shape)

        # A seed from torch's generator: fixed by torch.manual_seed, distinct per DataLoader worker.
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        out = self.transforms(image, hard, soft, seed, second_view=self.with_second_view)

        zeros = np.zeros(self.size, np.float32)
        item: dict[str, Any] = {
            "image": torch.from_numpy(out["image"].transpose(2, 0, 1).copy()),  # (3, S, S)
            "mask": torch.from_numpy(np.clip(out["mask"], 0.0, 1.0)[None].copy()),  # (1, S, S)
            "edge": torch.from_numpy((out["edge"] > 0).astype(np.float32)[None] if has_edge else zeros[None]),
            "has_edge": has_edge,
            "id": row["id"],
        }
        if self.with_teacher:
            teacher = np.clip(out["teacher"], 0.0, 1.0) if has_teacher else zeros
            item["teacher"] = torch.from_numpy(teacher[None].copy())
            item["has_teacher"] = has_teacher
        if self.with_second_view:
            item["image_b"] = torch.from_numpy(out["image_b"].transpose(2, 0, 1).copy())
        if self.prior is not None:
            # Training items draw their prior from the item's seed; validation items from their
            # index, so every epoch validates on the same priors and val IoU stays comparable.
            prior_seed = seed + 3 if self.augment else index
            prior = self.prior(item["mask"][0].numpy(), np.random.default_rng(prior_seed))
            item["prior"] = torch.from_numpy(prior[None])  # (1, S, S)
        return item


def paste_person(item: dict[str, Any], donor: dict[str, Any], generator: torch.Generator) -> None:
    """Paste the person of `donor` onto `item` in place, at 50-100 % of its size and a random place.

    The donor's mask is its alpha; the targets become what the composite shows: mask and teacher
    the union, the edge band the item's band outside the pasted person plus the band around it.
    A simulated `prior` is left as it is: the composite is then a frame where a person has just
    stepped into view, which teaches a prior student that the image, not the prior, says where
    people are (pasting the exact alpha into the prior would instead teach it to copy the prior).
    """
    height, width = item["mask"].shape[-2:]
    scale = 0.5 + 0.5 * torch.rand((), generator=generator).item()
    rows, cols = max(8, round(height * scale)), max(8, round(width * scale))  # the donor's aspect is kept
    top = int(torch.randint(0, height - rows + 1, (), generator=generator).item())
    left = int(torch.randint(0, width - cols + 1, (), generator=generator).item())

    def shrink(tensor: Tensor) -> Tensor:
        return nn.functional.interpolate(tensor[None], size=(rows, cols), mode="bilinear", align_corners=False)[0]

    alpha = shrink(donor["mask"]).clamp(0, 1)
    if not alpha.any():
        return  # nobody in the donor: nothing to paste
    region = (slice(None), slice(top, top + rows), slice(left, left + cols))

    def blend(key: str, pasted: Tensor) -> None:
        item[key][region] = alpha * pasted + (1 - alpha) * item[key][region]

    blend("image", shrink(donor["image"]))
    if "image_b" in item:
        blend("image_b", shrink(donor.get("image_b", donor["image"])))
    blend("mask", torch.ones_like(alpha))
    if "teacher" in item:
        blend("teacher", torch.ones_like(alpha))
    if item["has_edge"]:
        person = (alpha >= 0.5).float()
        grown = nn.functional.max_pool2d(person[None], 5, stride=1, padding=2)[0]
        shrunk = -nn.functional.max_pool2d(-person[None], 5, stride=1, padding=2)[0]
        edge = item["edge"][region] * (1 - shrunk)  # the item's band stays where it is not covered
        item["edge"][region] = torch.maximum(edge, grown - shrunk)  # and the pasted outline gets one


def estimate_pos_weight(data: Dataset | DataLoader, max_items: int | None = None) -> float:
    """#background / #foreground pixels of the masks, the `pos_weight` of a balanced BCE.

    Streams sums (soft masks count fractionally), never holding the masks. `max_items` takes an
    evenly spaced sample of a dataset, or the first items of a loader. Use an un-augmented
    dataset: padding and warps change the balance.
    """
    foreground = total = 0.0
    if isinstance(data, DataLoader):
        batches = data
    else:
        indices = range(len(data))
        if max_items is not None and max_items < len(data):
            indices = np.linspace(0, len(data) - 1, max_items).round().astype(int).tolist()
        batches = ({"mask": data[index]["mask"][None]} for index in indices)
    seen = 0
    # disable=None: quiet when stderr is not a terminal (logs, DVC, non-zero ranks' redirects).
    for batch in tqdm(batches, desc="pos_weight", leave=False, disable=None):
        masks = batch["mask"]  # (N, 1, S, S)
        if max_items is not None:
            masks = masks[: max_items - seen]
        foreground += float(masks.double().sum())
        total += masks.numel()
        seen += masks.shape[0]
        if max_items is not None and seen >= max_items:
            break
    if foreground == 0:
        raise SplitError(
            "the training masks hold no person pixel (255 = person): cannot weight the positive class; "
            "check the split's masks (e.g. with `datatool qa build`) or set train.pos_weight"
        )
    return (total - foreground) / foreground

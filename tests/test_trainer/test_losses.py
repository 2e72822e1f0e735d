"""Every loss against values computed by hand on 2x2 tensors."""

import math

import pytest
import torch

from trainer.losses import (
    SegmentationLoss,
    bce_loss,
    boundary_focal_loss,
    consistency_loss,
    dice_loss,
    distillation_loss,
    focal_loss,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75


def grid(*values: float) -> torch.Tensor:
    """A (1, 1, 2, 2) tensor, row-major."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 2)


def test_bce_weights_the_person_class():
    # p = 0.5 everywhere: each pixel costs ln 2, the one person pixel three times that.
    loss = bce_loss(grid(0, 0, 0, 0), grid(1, 0, 0, 0), pos_weight=3.0)
    assert loss.item() == pytest.approx((3 + 1 + 1 + 1) * math.log(2) / 4)
    assert bce_loss(grid(0, 0, 0, 0), grid(1, 0, 0, 0)).item() == pytest.approx(math.log(2))


def test_dice_is_soft_and_summed_over_the_batch():
    # p = 0.5: sum(p t) = 1, sum(p) = 2, sum(t) = 2 -> 1 - (2 + 1) / (4 + 1) = 0.4 (smooth 1).
    assert dice_loss(grid(0, 0, 0, 0), grid(1, 1, 0, 0)).item() == pytest.approx(0.4)
    # A confident, correct prediction; and an empty batch predicted empty: both ~0.
    assert dice_loss(grid(20, 20, -20, -20), grid(1, 1, 0, 0)).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(torch.full((2, 1, 2, 2), -30.0), torch.zeros(2, 1, 2, 2)).item() == pytest.approx(0.0, abs=1e-6)
    # Batch-level, not a mean of per-image losses: image 1 (p = t = 1 on 2 px), image 2 (p = 1, t = 0, 2 px).
    logits = torch.cat([grid(30, 30, -30, -30), grid(30, 30, -30, -30)])
    target = torch.cat([grid(1, 1, 0, 0), grid(0, 0, 0, 0)])
    assert dice_loss(logits, target).item() == pytest.approx(1 - (2 * 2 + 1) / (4 + 2 + 1), abs=1e-6)


def test_focal_loss_down_weights_easy_pixels():
    # p_t = 0.5: (1 - 0.5)^2 * ln 2.
    assert focal_loss(grid(0, 0, 0, 0), grid(1, 1, 1, 1)).item() == pytest.approx(0.25 * math.log(2))
    # gamma 0 is plain BCE.
    assert focal_loss(grid(0, LN3, 0, 0), grid(1, 0, 1, 0), gamma=0.0).item() == pytest.approx(
        (math.log(2) + math.log(4) + math.log(2) + math.log(2)) / 4
    )


def test_boundary_focal_loss_counts_band_pixels_only():
    logits = grid(0, LN3, 5, -5)
    target = grid(1, 0, 0, 0)
    edge = grid(1, 1, 0, 0)
    # pixel 1: p_t 0.5 -> 0.25 ln 2; pixel 2: p = 0.75, t = 0, p_t 0.25 -> 0.75^2 ln 4; pixel 3 (a bad
    # mistake) is off the band and must not count.
    expected = (0.25 * math.log(2) + 0.5625 * math.log(4)) / 2
    assert boundary_focal_loss(logits, target, edge).item() == pytest.approx(expected)
    assert boundary_focal_loss(logits, target, torch.zeros_like(edge)).item() == 0.0


def test_consistency_is_the_symmetric_bernoulli_kl():
    a, b = grid(0, 0, 0, 0), grid(LN3, LN3, 0, 0)
    p, q = 0.5, 0.75
    kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    kl_back = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    expected = 2 * (kl + kl_back) / 4  # two pixels differ, two agree, mean over four
    assert consistency_loss(a, b).item() == pytest.approx(expected)
    assert consistency_loss(b, a).item() == pytest.approx(expected)
    assert expected == pytest.approx(2 * 0.25 * LN3 / 4)  # (p - q)(logit p - logit q) per pixel
    assert consistency_loss(b, b).item() == 0.0


def test_distillation_is_bce_against_soft_teacher_probabilities():
    # p = 0.5 against any teacher: ln 2; p = 0.75 against 0.5: -(0.5 ln 0.75 + 0.5 ln 0.25).
    assert distillation_loss(grid(0, 0, 0, 0), grid(0.3, 0.3, 0.9, 0.1)).item() == pytest.approx(math.log(2))
    assert distillation_loss(grid(LN3, LN3, LN3, LN3), grid(0.5, 0.5, 0.5, 0.5)).item() == pytest.approx(
        -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    )


def test_segmentation_loss_sums_weighted_terms_and_skips_zero_weights():
    logits = grid(0, 0, 0, 0).requires_grad_()
    batch = {"mask": grid(1, 1, 0, 0)}
    loss = SegmentationLoss({"bce": 1.0, "dice": 0.5, "consistency": 0.0}, pos_weight=3.0)
    total, parts = loss({"mask": logits}, batch)  # no mask_b: consistency has weight 0, so it is not needed
    assert set(parts) == {"bce", "dice"}
    assert parts["bce"] == pytest.approx((3 + 3 + 1 + 1) * math.log(2) / 4)
    assert parts["dice"] == pytest.approx(0.4)
    assert total.item() == pytest.approx(parts["bce"] + 0.5 * parts["dice"])
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_segmentation_loss_leaves_out_samples_without_a_target():
    logits = torch.cat([grid(0, 0, 0, 0), grid(LN3, LN3, LN3, LN3)])
    teacher = torch.cat([grid(0.3, 0.3, 0.3, 0.3), torch.zeros(1, 1, 2, 2)])
    batch = {
        "mask": torch.zeros(2, 1, 2, 2),
        "teacher": teacher,
        "has_teacher": torch.tensor([True, False]),
        "edge": torch.cat([grid(1, 0, 0, 0), grid(1, 1, 1, 1)]),
        "has_edge": torch.tensor([True, False]),
    }
    weights = {"distillation": 1.0, "boundary": 1.0, "edge_head": 1.0}
    _, parts = SegmentationLoss(weights)({"mask": logits, "edge": torch.zeros(2, 1, 2, 2)}, batch)
    assert parts["distillation"] == pytest.approx(math.log(2))  # sample 1 only
    assert parts["boundary"] == pytest.approx(0.25 * math.log(2))  # sample 1's one band pixel, p_t 0.5
    # Edge head, sample 1 only: p = 0.5 everywhere -> 0.25 ln 2 per pixel.
    assert parts["edge_head"] == pytest.approx(0.25 * math.log(2))


def test_segmentation_loss_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="unknown loss terms \\['bcee'\\].*bce, dice"):
        SegmentationLoss({"bcee": 1.0})
    with pytest.raises(ValueError, match="every loss weight is zero"):
        SegmentationLoss({"bce": 0.0})
    with pytest.raises(ValueError, match="negative"):
        SegmentationLoss({"bce": -1.0})
    outputs, batch = {"mask": grid(0, 0, 0, 0)}, {"mask": grid(1, 0, 0, 0)}
    for term, missing in [("boundary", "'edge'"), ("edge_head", "'edge'"), ("consistency", "'mask_b'"),
                          ("distillation", "'teacher'")]:
        with pytest.raises(KeyError, match=f"{term}.*{missing}"):
            SegmentationLoss({term: 1.0})(outputs, batch)


def test_half_precision_logits_do_not_overflow_the_sums():
    # 2 x 1 x 256 x 256 confident person pixels: a float16 sum would pass 65504 and give inf.
    logits = torch.full((2, 1, 256, 256), 10.0, dtype=torch.float16)
    target = torch.ones(2, 1, 256, 256)
    for value in (dice_loss(logits, target), focal_loss(logits, target), consistency_loss(logits, logits),
                  bce_loss(logits, target, 2.0), distillation_loss(logits, target)):
        assert torch.isfinite(value) and value.dtype == torch.float32

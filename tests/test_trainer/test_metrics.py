"""SegmentationMetrics and TemporalMetrics against values computed by hand on small masks and clips."""

import pytest
import torch
import torch.distributed as dist

from trainer.metrics import SegmentationMetrics, TemporalMetrics, boundary_f_scores, outline


def as_logits(*rows: list[int]) -> torch.Tensor:
    """A (1, 1, H, W) logit map from 0/1 rows: 1 -> +10 (person), 0 -> -10."""
    return (torch.tensor(rows, dtype=torch.float32) * 20 - 10).view(1, 1, len(rows), -1)


def as_mask(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, len(rows), -1)


def square(top: int, left: int, size: int = 2, side: int = 4) -> torch.Tensor:
    mask = torch.zeros(1, 1, side, side, dtype=torch.bool)
    mask[..., top : top + size, left : left + size] = True
    return mask


def test_iou_and_dice_are_means_over_images_and_pooled_iou_sums_pixels():
    metrics = SegmentationMetrics()
    # Image 1: I = 1, U = 2 (IoU 0.5, Dice 2/3). Image 2: I = 3, U = 4 (IoU 0.75, Dice 6/7).
    metrics.update(as_logits([1, 1], [0, 0]), as_mask([1, 0], [0, 0]))
    metrics.update(as_logits([1, 1], [1, 1]), as_mask([1, 1], [1, 0]))
    result = metrics.compute()
    assert result["iou"] == pytest.approx((0.5 + 0.75) / 2)  # the mean over images, the headline
    assert result["dice"] == pytest.approx((2 / 3 + 6 / 7) / 2)
    assert result["pooled_iou"] == pytest.approx(4 / 6)  # summed intersections / summed unions
    # An empty prediction of an empty truth is a perfect image, as in portraitseg.scoring.
    empty = SegmentationMetrics()
    empty.update(as_logits([0, 0], [0, 0]), as_mask([0, 0], [0, 0]))
    empty.update(as_logits([1, 1], [1, 1]), as_mask([1, 1], [1, 0]))
    assert empty.compute()["iou"] == pytest.approx((1.0 + 0.75) / 2)
    # One batch of both images gives the same sums.
    together = SegmentationMetrics()
    together.update(
        torch.cat([as_logits([1, 1], [0, 0]), as_logits([1, 1], [1, 1])]),
        torch.cat([as_mask([1, 0], [0, 0]), as_mask([1, 1], [1, 0])]),
    )
    assert together.compute() == pytest.approx(result)
    metrics.reset()
    assert metrics.sums.sum().item() == 0


def test_threshold_is_probability_half_and_soft_targets_binarised():
    metrics = SegmentationMetrics()
    # Logit 0 is p = 0.5: person, by the one rule of portraitseg.scoring (p >= 0.5), as a stored
    # mask value of 128 is. Target 0.6 is person, 0.4 is not.
    metrics.update(torch.tensor([0.0, 0.1, 0.1, -1.0]).view(1, 1, 2, 2), as_mask([0.6, 0.6], [0.4, 0.4]))
    assert metrics.compute()["iou"] == pytest.approx(2 / 3)  # I = {pixels 1, 2}, U = {pixels 1, 2, 3}


def test_outline_ignores_the_frame():
    # A 2x2 square inside a 4x4 frame: all four pixels are outline.
    assert torch.equal(outline(square(1, 1)), square(1, 1))
    # The left half of the frame: only column 1 touches background; the frame is no outline.
    left_half = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    left_half[..., :, :2] = True
    expected = torch.zeros_like(left_half)
    expected[..., :, 1] = True
    assert torch.equal(outline(left_half), expected)


def test_boundary_f_score_with_tolerance():
    truth, shifted = square(1, 1), square(1, 2)  # the prediction one pixel to the right
    # Tolerance 0: 2 of 4 outline pixels coincide each way -> P = R = 0.5 -> F = 0.5.
    assert boundary_f_scores(shifted, truth, tolerance=0).tolist() == pytest.approx([0.5])
    # Tolerance 1: every outline pixel lies within one pixel of the other outline.
    assert boundary_f_scores(shifted, truth, tolerance=1).tolist() == pytest.approx([1.0])
    # Empty prediction of a person: F 0; both empty: F 1 (DAVIS conventions).
    empty = torch.zeros_like(truth)
    assert boundary_f_scores(empty, truth, 2).tolist() == [0.0]
    assert boundary_f_scores(truth, empty, 2).tolist() == [0.0]
    assert boundary_f_scores(empty, empty, 2).tolist() == [1.0]


def test_boundary_f_is_the_mean_over_images():
    metrics = SegmentationMetrics(boundary_tolerance=0)
    to_logits = lambda mask: mask.float() * 20 - 10  # noqa: E731
    metrics.update(to_logits(square(1, 1)), square(1, 1).float())  # F 1
    metrics.update(to_logits(square(1, 2)), square(1, 1).float())  # F 0.5
    assert metrics.compute()["boundary_f"] == pytest.approx(0.75)


def test_reduce_is_a_no_op_without_a_process_group():
    metrics = SegmentationMetrics()
    metrics.update(as_logits([1, 0], [0, 0]), as_mask([1, 1], [0, 0]))
    before = metrics.sums.clone()
    assert not dist.is_initialized()
    metrics.reduce_from_all_processes()
    assert torch.equal(metrics.sums, before)


def test_reduce_sums_over_a_gloo_group(tmp_path):
    metrics = SegmentationMetrics()
    metrics.update(as_logits([1, 0], [0, 0]), as_mask([1, 1], [0, 0]))
    before = metrics.compute()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        metrics.reduce_from_all_processes()
    finally:
        dist.destroy_process_group()
    assert metrics.compute() == pytest.approx(before)
    assert before["iou"] == pytest.approx(0.5)


# -- TemporalMetrics: flicker on hand-made clips whose answers are known in closed form ----------


def frame(*blocks: tuple[int, int], side: int = 4, value: float = 1.0) -> torch.Tensor:
    """A (side, side) map with `value` in the 2x2 blocks at the given (top, left) corners."""
    mask = torch.zeros(side, side)
    for top, left in blocks:
        mask[top : top + 2, left : left + 2] = value
    return mask


def test_a_still_mask_on_a_still_truth_has_no_flicker():
    metrics = TemporalMetrics()
    for _ in range(4):
        metrics.update(frame((1, 1)), frame((1, 1)))
    assert metrics.compute() == {"dtssd": 0.0, "flip_rate": 0.0}


def test_a_mask_that_alternates_scores_the_closed_form_value():
    """Truth still; the prediction gains and loses a 2x2 block (4 of 16 pixels) every frame:
    every pair changes by 1 on 4 pixels, so dtSSD = sqrt(4/16) = 0.5, and 4 of the 16 steady pixels flip."""
    metrics = TemporalMetrics()
    for t in range(5):
        metrics.update(frame((0, 0), (2, 2)) if t % 2 else frame((0, 0)), frame((0, 0)))
    assert metrics.compute() == pytest.approx({"dtssd": 0.5, "flip_rate": 0.25})


def test_soft_values_that_swing_across_one_half_count_in_dtssd_and_as_flips():
    """0.4 <-> 0.6 everywhere on an empty truth: every pair changes by 0.2, every pixel flips."""
    metrics = TemporalMetrics()
    for t in range(3):
        metrics.update(torch.full((4, 4), 0.6 if t % 2 else 0.4), torch.zeros(4, 4))
    assert metrics.compute() == pytest.approx({"dtssd": 0.2, "flip_rate": 1.0})


def test_following_the_truths_motion_is_no_flicker_and_clips_are_not_paired_across():
    metrics = TemporalMetrics()
    for left in (0, 1, 2):  # the person moves right; the prediction follows exactly
        metrics.update(frame((1, left)), frame((1, left)))
    metrics.start_clip()  # another clip: its first frame is not compared with the last one above
    metrics.update(torch.ones(4, 4), torch.zeros(4, 4))
    metrics.update(torch.ones(4, 4), torch.zeros(4, 4))  # wrong, but steadily so
    assert metrics.compute() == {"dtssd": 0.0, "flip_rate": 0.0}
    assert TemporalMetrics().compute() == {"dtssd": None, "flip_rate": None}

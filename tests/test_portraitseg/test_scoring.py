"""The one person rule and IoU of `portraitseg.scoring`, which every figure portraitseg prints uses."""

import numpy as np
import pytest

from portraitseg.scoring import PERSON_LEVEL, iou, mean_iou, person


def test_person_is_p_at_least_one_half_or_a_stored_value_at_least_128():
    assert person(np.array([0.4999, 0.5, 0.9], np.float32)).tolist() == [False, True, True]
    assert person(np.array([127, PERSON_LEVEL, 255], np.uint8)).tolist() == [False, True, True]
    assert person(np.array([True, False])).tolist() == [True, False]


def test_iou_per_photo_pooled_over_a_stack_and_the_mean_over_photos():
    small_truth, small_prediction = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    small_truth[0, :2] = True  # 2 pixels, 1 found
    small_prediction[0, 0] = True
    large_truth = np.ones((4, 4), bool)  # 16 pixels, all found
    assert iou(small_prediction, small_truth) == pytest.approx(0.5)
    assert iou(large_truth, large_truth) == 1.0
    pooled = iou(np.stack([small_prediction, large_truth]), np.stack([small_truth, large_truth]))
    assert pooled == pytest.approx(17 / 18)  # large people weigh by their pixels
    assert mean_iou([0.5, 1.0]) == pytest.approx(0.75)  # each photo counts once


def test_two_empty_masks_agree_and_no_photo_scores_one():
    empty = np.zeros((3, 3), np.uint8)
    assert iou(empty, empty) == 1.0
    assert iou(np.full((3, 3), 0.2, np.float32), empty) == 1.0
    assert mean_iou([]) == 1.0

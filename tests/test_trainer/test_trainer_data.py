"""SegmentationDataset and estimate_pos_weight on a tiny split folder written here."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_person_mask, make_photo, write_image
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, SegmentationDataset, build_transforms, estimate_pos_weight, paste_person

HEIGHT, WIDTH, SIZE = 30, 40, 16


def write_split(split_dir: Path, rows: list[dict], splits=("train", "val")) -> Path:
    """`<split_dir>/<split>.jsonl` with `rows` (files under `<split_dir>/set`, as `datatool split` writes)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        lines = [json.dumps({**row, "set": "set", "split": split}) + "\n" for row in rows]
        (split_dir / f"{split}.jsonl").write_text("".join(lines))
    return split_dir


def add_sample(set_dir: Path, sample_id: str, image, mask, mask_kind="binary", edge=None, teacher=None) -> dict:
    row = {"id": sample_id, "image": f"images/{sample_id}.png", "mask": f"masks/{sample_id}.png",
           "mask_kind": mask_kind, "group": sample_id, "width": image.shape[1], "height": image.shape[0]}
    write_image(set_dir / row["image"], image)
    write_image(set_dir / row["mask"], mask)
    if edge is not None:
        row["edge"] = f"edges/{sample_id}.png"
        write_image(set_dir / row["edge"], edge)
    if teacher is not None:
        row["teacher_mask"] = f"teacher/{sample_id}.png"
        write_image(set_dir / row["teacher_mask"], teacher)
    return row


def band(mask: np.ndarray, width: int = 2) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width + 1, width + 1))
    return cv2.dilate(mask, kernel) ^ cv2.erode(mask, kernel)


@pytest.fixture
def split_dir(tmp_path) -> Path:
    set_dir = tmp_path / "split" / "set"
    person = make_person_mask(HEIGHT, WIDTH, seed=1)
    soft = cv2.GaussianBlur(person, (0, 0), 3)  # a matte: soft values along the outline
    uniform = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    uniform[:] = (128, 0, 255)  # BGR on disk: RGB (255, 0, 128)
    rows = [
        add_sample(set_dir, "binary", make_photo(HEIGHT, WIDTH, 1), person, edge=band(person)),
        add_sample(set_dir, "soft", make_photo(HEIGHT, WIDTH, 2), soft, "alpha", edge=band(person), teacher=soft),
        add_sample(set_dir, "no-edge", make_photo(HEIGHT, WIDTH, 3), person),
        add_sample(set_dir, "uniform", uniform, person, edge=band(person)),
    ]
    return write_split(tmp_path / "split", rows)


def items_by_id(dataset: SegmentationDataset) -> dict[str, dict]:
    return {item["id"]: item for item in (dataset[index] for index in range(len(dataset)))}


def test_items_have_the_contract_shapes_and_ranges(split_dir):
    items = items_by_id(SegmentationDataset(split_dir, "val", SIZE, augment=False))
    assert set(items) == {"binary", "soft", "no-edge", "uniform"}
    for item in items.values():
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        for key in ("mask", "edge"):
            assert item[key].shape == (1, SIZE, SIZE) and item[key].dtype == torch.float32
        assert 0 <= item["mask"].min() and item["mask"].max() <= 1
        assert set(item["edge"].unique().tolist()) <= {0.0, 1.0}
        assert "teacher" not in item and "image_b" not in item
    assert items["binary"]["has_edge"] and items["binary"]["edge"].sum() > 0
    assert not items["no-edge"]["has_edge"] and items["no-edge"]["edge"].sum() == 0


def test_images_are_rgb_and_imagenet_normalised(split_dir):
    image = items_by_id(SegmentationDataset(split_dir, "val", SIZE, augment=False))["uniform"]["image"]
    for channel, value in enumerate((255, 0, 128)):
        expected = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(image[channel], torch.full((SIZE, SIZE), expected), atol=1e-5)


def test_validation_masks_are_resized_nearest_and_soft_masks_stay_soft(split_dir):
    items = items_by_id(SegmentationDataset(split_dir, "val", SIZE, augment=False))
    person = (make_person_mask(HEIGHT, WIDTH, seed=1) >= 128).astype(np.float32)
    nearest = cv2.resize(person, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(items["binary"]["mask"][0].numpy(), nearest)
    soft = items["soft"]["mask"]
    assert ((soft > 0.01) & (soft < 0.99)).sum() > 10  # the matte's soft outline survives
    assert len(soft.unique()) > 10


def differs_off_the_outline(hard: np.ndarray, soft: np.ndarray) -> bool:
    """Whether thresholded `soft` and `hard` (S, S) disagree anywhere but next to hard's outline.

    Outside the frame counts as background: warps blend the fill value into a person cut by the frame.
    """
    outline = cv2.morphologyEx(
        hard.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return bool(((hard != (soft >= 0.5)) & (outline == 0)).any())


def test_hard_and_soft_targets_share_one_geometric_draw():
    transforms = build_transforms((48, 48), augment=True)
    photo = make_photo(64, 64, seed=4)
    person = (make_person_mask(64, 64, seed=4) >= 128).astype(np.float32)
    other_draw = False
    for seed in range(8):
        out = transforms(photo, {"hard": person}, {"soft": person}, seed)
        assert set(np.unique(out["hard"]).tolist()) <= {0.0, 1.0}  # nearest: still binary
        assert len(np.unique(out["soft"])) > 2  # bilinear: soft along the outline
        # The nearest and the bilinear pipeline replayed one draw: they differ on the outline only.
        assert not differs_off_the_outline(out["hard"], out["soft"]), seed
        # A different draw moves, flips or turns the person: this check would notice.
        elsewhere = transforms(photo, {}, {"soft": person}, seed + 100)
        other_draw |= differs_off_the_outline(out["hard"], elsewhere["soft"])
    assert other_draw


def test_binary_masks_stay_binary_under_augmentation(split_dir):
    dataset = SegmentationDataset(split_dir, "train", SIZE, augment=True)
    for seed in range(4):
        torch.manual_seed(seed)
        item = dataset[0]
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
        assert set(item["edge"].unique().tolist()) <= {0.0, 1.0}


def test_augmentation_is_deterministic_under_a_seed_and_varies_without(split_dir):
    dataset = SegmentationDataset(split_dir, "train", SIZE, augment=True, with_second_view=True)
    torch.manual_seed(7)
    first = dataset[1]
    torch.manual_seed(7)
    again = dataset[1]
    for key in ("image", "mask", "edge", "image_b"):
        assert torch.equal(first[key], again[key]), key
    draws = []
    for seed in range(6):
        torch.manual_seed(seed)
        draws.append(dataset[1])
    assert any(not torch.equal(draws[0]["mask"], draw["mask"]) for draw in draws[1:])
    assert any(not torch.equal(draw["image"], draw["image_b"]) for draw in draws)  # independent photometric draws
    assert first["image_b"].shape == (3, SIZE, SIZE)


def test_teacher_targets_and_batches_mix_samples_with_and_without(split_dir):
    dataset = SegmentationDataset(split_dir, "val", SIZE, augment=False, with_teacher=True)
    items = items_by_id(dataset)
    assert items["soft"]["has_teacher"] and torch.allclose(items["soft"]["teacher"], items["soft"]["mask"])
    assert not items["binary"]["has_teacher"] and items["binary"]["teacher"].sum() == 0
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    assert batch["teacher"].shape == (len(dataset), 1, SIZE, SIZE)
    assert batch["has_teacher"].tolist() == [False, True, False, False]
    assert batch["has_edge"].tolist() == [True, True, False, True]


def test_missing_empty_and_unreadable_inputs_are_named(split_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        SegmentationDataset(split_dir, "test", SIZE, augment=False)
    (split_dir / "test.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="test.jsonl has no rows"):
        SegmentationDataset(split_dir, "test", SIZE, augment=False)
    (split_dir / "set" / "images" / "soft.png").write_bytes(b"not a png")
    dataset = SegmentationDataset(split_dir, "val", SIZE, augment=False)
    with pytest.raises(OSError, match="images/soft.png"):
        dataset[1]
    (split_dir / "set" / "masks" / "binary.png").unlink()
    with pytest.raises(OSError, match="masks/binary.png"):
        dataset[0]


def test_pos_weight_is_background_over_foreground(tmp_path):
    set_dir = tmp_path / "split" / "set"
    quarter, half = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
    quarter[:, :4] = 255  # 64 person pixels of 256
    half[:, :8] = 255  # 128 of 256
    rows = [add_sample(set_dir, "quarter", make_photo(SIZE, SIZE), quarter),
            add_sample(set_dir, "half", make_photo(SIZE, SIZE), half)]
    split_dir = write_split(tmp_path / "split", rows)
    dataset = SegmentationDataset(split_dir, "train", SIZE, augment=False)
    assert estimate_pos_weight(dataset) == pytest.approx(320 / 192)
    assert estimate_pos_weight(DataLoader(dataset, batch_size=2)) == pytest.approx(320 / 192)
    assert estimate_pos_weight(dataset, max_items=1) == pytest.approx(192 / 64)
    assert estimate_pos_weight(DataLoader(dataset, batch_size=2), max_items=1) == pytest.approx(192 / 64)

    write_split(tmp_path / "empty", [add_sample(tmp_path / "empty" / "set", "none", make_photo(SIZE, SIZE),
                                                np.zeros((SIZE, SIZE), np.uint8))])
    with pytest.raises(ValueError, match="no person pixel"):
        estimate_pos_weight(SegmentationDataset(tmp_path / "empty", "train", SIZE, augment=False))


def test_paste_person_blends_the_donor_and_makes_the_targets_a_union():
    size = 32
    item = {"image": torch.zeros(3, size, size), "mask": torch.zeros(1, size, size), "edge": torch.zeros(1, size, size),
            "has_edge": True, "teacher": torch.zeros(1, size, size)}
    item["mask"][:, 20:, 20:] = 1.0  # the item's own person, bottom right
    item["edge"][:, 20, 20:] = 1.0
    donor = {"image": torch.ones(3, size, size), "mask": torch.zeros(1, size, size)}
    donor["mask"][:, 8:24, 8:24] = 1.0  # the donor's person, a square in the middle
    paste_person(item, donor, torch.Generator().manual_seed(0))
    donor_pixels = item["image"][0] > 0.99  # where the donor's person (image 1, alpha 1) landed
    assert donor_pixels.sum() > 16  # something of the donor landed
    assert torch.equal(item["mask"][0][donor_pixels], torch.ones(int(donor_pixels.sum())))
    assert torch.equal(item["teacher"][0][donor_pixels], torch.ones(int(donor_pixels.sum())))
    assert (item["mask"][0, 20:, 20:] == 1.0).all()  # the item's own person stays a person
    # Outside the pasted square (where alpha is 0) nothing changed.
    untouched = item["mask"][0] == 0
    assert torch.equal(item["image"][:, untouched], torch.zeros(3, int(untouched.sum())))
    # The pasted person has a band on its outline and none deep inside it.
    ys, xs = torch.nonzero(donor_pixels, as_tuple=True)
    assert item["edge"][0, ys.min(), xs.min() + (xs.max() - xs.min()) // 2] == 1.0
    inner = donor_pixels.clone()
    inner[ys.min() : ys.min() + 3] = False
    inner[ys.max() - 2 :] = False
    inner[:, xs.min() : xs.min() + 3] = False
    inner[:, xs.max() - 2 :] = False
    assert not item["edge"][0][inner].any()


def test_copy_paste_adds_a_person_to_the_same_draw(split_dir):
    plain = SegmentationDataset(split_dir, "train", SIZE, augment=True)
    pasting = SegmentationDataset(split_dir, "train", SIZE, augment=True, copy_paste=1.0)
    torch.manual_seed(3)
    before = plain[0]
    torch.manual_seed(3)
    after = pasting[0]  # the same item's draw, then a paste on top
    assert (after["mask"] >= before["mask"] - 1e-6).all()
    assert after["mask"].sum() > before["mask"].sum()
    assert not torch.equal(after["image"], before["image"])
    # Probability 0 (and validation sets) never paste.
    torch.manual_seed(3)
    assert torch.equal(SegmentationDataset(split_dir, "train", SIZE, augment=True, copy_paste=0.0)[0]["mask"], before["mask"])

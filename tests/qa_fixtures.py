"""Label-QA fixtures shared by test_qa.py and test_qa_app.py: a FiftyOne database under the test's
temporary folder, and a tiny people-dev-like canonical set with two teachers' masks.

FiftyOne reads its database folder from the environment when its database service starts,
once per process: the first QA test of a session picks the folder, every later one (and the
App server a test starts as a subprocess) uses the same one, and each test uses its own
dataset names so that nothing collides.
"""

import os
import uuid
from pathlib import Path

import numpy as np

from conftest import make_person_mask, make_photo, write_image
from datatool.canonical import write_manifest

SIZE = (48, 64)  # height, width of the fixture photos
TEACHER_SHIFTS = [0, 1, 3, 6, 10, 15]  # px the first teacher's mask is shifted: teacher_iou falls with the shift


def use_test_database(root: Path) -> str:
    """Point FiftyOne at a database folder under `root` unless this process already has one; return it."""
    if "FIFTYONE_QA_TEST_DATABASE" not in os.environ:
        os.environ["FIFTYONE_QA_TEST_DATABASE"] = str(root / "fiftyone-db")
        os.environ["FIFTYONE_DATABASE_DIR"] = os.environ["FIFTYONE_QA_TEST_DATABASE"]
        os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"  # no analytics calls, no cookie banner in the App
    return os.environ["FIFTYONE_QA_TEST_DATABASE"]


def unique_name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def shifted(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask moved right by `pixels` (zeros fill in from the left)."""
    out = np.zeros_like(mask)
    out[:, pixels:] = mask[:, : mask.shape[1] - pixels] if pixels else mask
    return out


def make_people_sets(root: Path, count: int = len(TEACHER_SHIFTS)) -> dict[str, object]:
    """An ingested set with 0/255 masks plus two pseudolabel runs over it (same ids, `teacher_mask`).

    Teacher A's mask is the truth shifted by TEACHER_SHIFTS[i] px, so its teacher_iou order is
    known; teacher B's is the truth shifted by 2 px, soft (values 200), so it needs thresholding.
    """
    height, width = SIZE
    truth_dir, teacher_a, teacher_b = root / "ingest", root / "pseudolabel-a", root / "pseudolabel-b"
    truth_rows, rows_a, rows_b, masks = [], [], [], {}
    for index in range(count):
        sample_id = f"person{index}-{index:04x}"
        image, mask = make_photo(height, width, seed=index), make_person_mask(height, width, seed=index)
        masks[sample_id] = mask
        row = {
            "id": sample_id, "image": f"images/{sample_id}.jpg", "mask": f"masks/{sample_id}.png", "source": "people-dev",
            "width": width, "height": height, "mask_kind": "binary", "group": f"people-dev/{index}", "official_split": None,
        }  # fmt: skip
        for set_dir in (truth_dir, teacher_a, teacher_b):
            write_image(set_dir / row["image"], image)
            write_image(set_dir / row["mask"], mask)
        truth_rows.append(row)
        write_image(teacher_a / "teacher_masks" / f"{sample_id}.png", shifted(mask, TEACHER_SHIFTS[index]))
        soft = (shifted(mask, 2) > 0).astype(np.uint8) * 200
        write_image(teacher_b / "teacher_masks" / f"{sample_id}.png", soft)
        confidence = round(1.0 - index / 10, 4)  # falls with the index: the last ones are "low confidence"
        teacher_fields = {"teacher_mask": f"teacher_masks/{sample_id}.png", "confidence": confidence, "needs_review": confidence < 0.85}
        rows_a.append({**row, "teacher": "teacher-a", **teacher_fields})
        rows_b.append({**row, "teacher": "teacher-b", **teacher_fields, "confidence": 0.99})
    for set_dir, rows in ((truth_dir, truth_rows), (teacher_a, rows_a), (teacher_b, rows_b)):
        write_manifest(set_dir, rows)
    return {"sets": [truth_dir, teacher_a, teacher_b], "ids": [row["id"] for row in truth_rows], "masks": masks}

"""Several teachers as one: the mean of their person probabilities, and each member's map.

Teachers make different mistakes (a salient-object model takes a dog for a person, a
VOC model at 513 pixels misses thin limbs), so the mean is better than each member, and
where the members disagree a label needs a person's review. `predict_members` gives the
members' maps so that callers can measure that disagreement per pixel.
"""

import numpy as np

from portraitseg.teachers.base import Teacher, TeacherError


class EnsembleTeacher(Teacher):
    name = "ensemble"

    def __init__(self, members: list[Teacher]):
        if len(members) < 2:
            raise TeacherError(f"an ensemble needs at least two teachers, got {len(members)}")
        self.members = list(members)
        self.member_labels = unique_labels([member.label for member in self.members])

    @property
    def label(self) -> str:
        return "+".join(self.member_labels)

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # A running sum: one member's maps at a time besides the total, not all of them.
        totals = [np.zeros(image.shape[:2], np.float32) for image in images]
        for member in self.members:
            for total, probability in zip(totals, member.predict(images), strict=True):
                total += probability
        return [np.divide(total, len(self.members), out=total) for total in totals]

    def predict_members(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """For each image, `{member label: (H, W) float32 probability}`, in member order."""
        per_member = [member.predict(images) for member in self.members]
        return [
            {label: maps[index] for label, maps in zip(self.member_labels, per_member, strict=True)}
            for index in range(len(images))
        ]


def unique_labels(labels: list[str]) -> list[str]:
    """Member labels as dictionary keys: a teacher listed twice gets `#2`, `#3` ... after its label."""
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return unique

"""The parity guard: an artefact and fp32 PyTorch scored on the same validation photos.

Both are predictors (`Runner.as_predictor()`) scored by `trainer.harness.score`, the scoring of
`trainer evaluate`: at ground-truth resolution, person IoU, the mean over photos. So the IoU an
artefact gets here is the one `trainer evaluate --set val --max-images N` gives it. Besides
both IoUs and the drop `reference IoU - artefact IoU` (above `max_iou_drop` the artefact
fails), the two probability maps are compared at every pixel of every photo: the largest and
the mean absolute difference, and the fraction of pixels whose person label agrees. Latency is
`trainer.harness.time_predictors`, as `trainer evaluate` times.

A student with a prior channel (`model_options.prior`) is compared on second frames
(`SecondFrame`): each photo runs with the prior the fp32 reference gives it on its own with an
empty prior, the same prior for the artefact and the reference. An empty prior would multiply
the prior's weights by zero and leave them untested; a second frame tests them too, with the
prior channel's scaling and quantization. The report says so ("prior": "second frame"). Latency
is one frame of the artefact alone (empty prior), as for any student.
"""

from pathlib import Path

import numpy as np

from portraitseg.predictor import Predictor
from portraitseg.records import read_split
from portraitseg.scoring import person
from trainer.harness import read_samples, score, time_predictors


def compare(
    artefact: Predictor,
    reference: Predictor,
    split_dir: Path,
    images: int,
    max_iou_drop: float,
    latency_runs: int = 20,
) -> dict:
    """The parity numbers of `artefact` against `reference` on the first `images` rows of `<split_dir>/val.jsonl`."""
    rows = read_split(split_dir, "val")[: max(images, 1)]
    timed = artefact
    second_frames = bool(getattr(reference, "takes_prior", False))
    if second_frames:
        artefact, reference = SecondFrame(artefact, reference), SecondFrame(reference, reference)
    differences = {"max": 0.0, "sum": 0.0, "agree": 0, "pixels": 0}
    first: list[np.ndarray] = []

    def observe(index: int, image: np.ndarray, mask: np.ndarray, probabilities: list[np.ndarray]) -> None:
        predicted, expected = probabilities
        difference = np.abs(predicted - expected)
        differences["max"] = max(differences["max"], float(difference.max()))
        differences["sum"] += float(difference.sum(dtype=np.float64))
        differences["agree"] += int(np.count_nonzero(person(predicted) == person(expected)))
        differences["pixels"] += difference.size
        if index == 0:
            first.append(image)

    # No boundary F-score: at full resolution it costs more than the rest of the check together.
    quality, reference_quality = score([artefact, reference], read_samples(split_dir, rows), boundary_width=None, observe=observe)
    drop = reference_quality["iou"] - quality["iou"]
    latency = time_predictors([timed], first[0], repeats=latency_runs)[0] if latency_runs > 0 else {}
    return {
        "images": len(rows),
        "validation": str(split_dir),
        "max_abs_diff": differences["max"],
        "mean_abs_diff": differences["sum"] / differences["pixels"],
        "mask_agreement": differences["agree"] / differences["pixels"],
        "reference_iou": reference_quality["iou"],
        "iou": quality["iou"],
        "iou_drop": drop,
        "max_iou_drop": max_iou_drop,
        "passed": bool(drop <= max_iou_drop),
        "latency_ms": latency.get("latency_ms"),
        "latency_p90_ms": latency.get("latency_p90_ms"),
        **({"prior": "second frame"} if second_frames else {}),
    }


class SecondFrame:
    """A prior student's Predictor on photos taken as the second frame of a still scene.

    `predict(photos)` gives `predictor.predict(photos, priors)` where each prior is `first_frame`'s
    output on the photo with an empty prior: what `FrameStream` feeds the student after the first
    frame of a clip that does not move.
    """

    def __init__(self, predictor: Predictor, first_frame: Predictor):
        self.predictor = predictor
        self.first_frame = first_frame
        self.input_size = predictor.input_size

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        priors = self.first_frame.predict(images)
        return self.predictor.predict(images, priors=priors)  # type: ignore[call-arg]

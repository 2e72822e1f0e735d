"""Synthetic 600x800 portrait-like photos and person masks shared by the benchmarks (no data needed)."""

import cv2
import numpy as np

HEIGHT, WIDTH = 800, 600  # the AISegment and PFCN frame size


class PortraitGenerator:
    """Photo-like images (smooth colour waves + sensor noise, ~100 KB as JPEG) and 0/255 person
    masks (a body ellipse and a round head at a random horizontal position), deterministic per seed."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.ys, self.xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)

    def photo(self) -> np.ndarray:
        phase = self.rng.uniform(0, 6.28, 3)
        waves = [127 + 90 * np.sin(self.xs / (40 + 7 * c) + phase[c]) * np.cos(self.ys / (55 + 5 * c)) for c in range(3)]
        base = np.stack(waves, -1)
        return np.clip(base + self.rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)

    def mask(self) -> np.ndarray:
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        cx = int(self.rng.uniform(200, 400))
        cv2.ellipse(mask, (cx, 600), (180, 260), 0, 0, 360, 255, -1)
        cv2.circle(mask, (cx, 250), 110, 255, -1)
        return mask

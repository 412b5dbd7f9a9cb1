"""``dis_flow``: forward optical flow between consecutive frames with OpenCV's DIS
(Kroeger et al., ECCV 2016), for videos without ground-truth flow. No weights."""

from __future__ import annotations

import numpy as np

from lavin_data.labelers import Labeler, LabelInput

PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}  # cv2.DISOPTICAL_FLOW_PRESET_*


def dis_flow(frames: np.ndarray, preset: str = "medium") -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T-1, H, W, 2) float32 flow from frame t to t+1 (pixels,
    u right, v down), on the luma."""
    import cv2

    dis = cv2.DISOpticalFlow_create(PRESETS[preset])
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack([dis.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])]).astype(np.float32) \
        if len(grey) > 1 else np.zeros((0,) + frames.shape[1:3] + (2,), np.float32)


class DisFlow(Labeler):
    output = "flow"
    per_clip = True
    LICENCE = "no weights: OpenCV's DIS optical flow, OpenCV is Apache-2.0 (4.5 and later)"

    def info(self) -> dict:
        return dict(super().info(), model=f"OpenCV DIS optical flow, preset {self.spec.preset}", weight_hash=None)

    def label(self, inputs: list[LabelInput]) -> list[np.ndarray]:
        out = []
        for x in inputs:
            if x.frames is None:
                raise ValueError("dis_flow labels clips: the sample is a single image")
            out.append(dis_flow(x.frames, self.spec.preset))
        return out

"""Scores of a fit: part IoU against a label map, landmark error."""

from __future__ import annotations

import numpy as np

from .models.facemodel import PART_CELEBA_IDS, PART_NAMES

#: The seven parts the Part IoU benchmark averages (skin is left out, as in the paper).
IOU_PARTS = ("left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "nose", "up_lip", "down_lip")


def part_iou(pred: np.ndarray, truth: np.ndarray, parts=PART_NAMES) -> dict[str, float]:
    """IoU per part between two (H, W) CelebAMask-HQ label maps; NaN where neither has the part."""
    out = {}
    for name in parts:
        label = PART_CELEBA_IDS[PART_NAMES.index(name)]
        p, t = pred == label, truth == label
        union = np.logical_or(p, t).sum()
        out[name] = float(np.logical_and(p, t).sum() / union) if union else float("nan")
    return out


def landmark_nme(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean 68-point error over the outer-eye-corner distance (points 36 and 45)."""
    return float(np.linalg.norm(pred - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]))

"""Scores of a fit: part IoU against a label map, landmark error."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .datasets import fix_left_right, read_mask
from .errors import Fit3dmmError
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


def landmark_jitter(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean length of the 68 points' second difference over consecutive frames (T, 68, 2), each over the
    outer-eye-corner distance of ``reference`` (T, 68, 2) at the middle frame; triplets with a NaN left out."""
    acc = np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1).mean(-1)
    eye = np.linalg.norm(reference[1:-1, 36] - reference[1:-1, 45], axis=-1)
    values = acc / eye
    return float(np.nanmean(values))


def landmark_deviation(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean 68-point distance between two tracks (T, 68, 2) over ``reference``'s outer-eye-corner distance,
    averaged over the frames where both have points."""
    eye = np.linalg.norm(reference[:, 36] - reference[:, 45], axis=-1)
    return float(np.nanmean(np.linalg.norm(points - reference, axis=-1).mean(-1) / eye))


def mean_part_iou(pipeline, pairs: list, progress: Callable[[int, int, str], None] | None = None) -> dict[str, float]:
    """Fit each (image, mask) pair with ``pipeline`` and average the part IoU of the visible fitted parts
    against the human mask (left/right by image position): per part of IOU_PARTS, and 'mean' over them.
    Photos that fail (no face) are skipped."""
    from .files import read_image
    from .outputs import fitted_labels

    rows = []
    for i, (image_path, mask_path) in enumerate(pairs):
        try:
            out = pipeline.fit(read_image(image_path))
            truth = fix_left_right(read_mask(mask_path))
        except Fit3dmmError:
            continue
        rows.append(part_iou(fitted_labels(out), truth, IOU_PARTS))
        if progress is not None:
            progress(i + 1, len(pairs), str(image_path))
    return average_iou(rows)


def average_iou(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-image part IoU rows -> the mean per part of IOU_PARTS over images where the part occurs, and
    'mean', the mean of those."""
    scores = {name: float(np.nanmean([r[name] for r in rows])) for name in IOU_PARTS}
    scores["mean"] = float(np.mean(list(scores.values())))
    return scores

"""Jaw-contour candidates for landmark marching.

The 17 iBUG jaw landmarks mark the face's outline in the photo, which on a turned head is the silhouette,
not a fixed vertex. For each side jaw landmark we store a line of candidate vertices through it (a
horizontal slab of the face region on the landmark's side, from the front of the face back towards the
ear); the landmark loss picks the candidate lying farthest outward in the image (see losses/landmark.py).
Landmarks around the chin, whose outward direction points down rather than sideways, keep their own
vertex: a horizontal slab there runs under the chin, not along the outline.
"""

from __future__ import annotations

import numpy as np


def contour_line(
    mean: np.ndarray, landmarks68: np.ndarray, region: np.ndarray, vertex: int, band: float = 0.06,
    depth: float = 0.3, width: int = 64, sideways: float = 0.85,
) -> np.ndarray:
    """(width,) candidate vertex ids of a jaw landmark placed at ``vertex``, padded with -1: the slab through
    it, or the vertex alone where its outward direction is less than ``sideways`` horizontal.

    ``band`` (half slab height) and ``depth`` (how far behind the landmark candidates reach) are fractions
    of the outer-eye-corner distance (``landmarks68`` gives it and the nose centre), so they suit any model's
    units."""
    eye_dist = np.linalg.norm(mean[landmarks68[36]] - mean[landmarks68[45]])
    centre = mean[landmarks68[27:36]].mean(0)
    out = -np.ones(width, dtype=np.int64)
    p = mean[vertex]
    outward = (p - centre)[:2]
    if abs(outward[0]) < sideways * np.linalg.norm(outward):
        out[0] = vertex
        return out
    ids = np.nonzero(region)[0]
    pts = mean[ids]
    side = np.sign(p[0])
    sel = (
        (np.abs(pts[:, 1] - p[1]) < band * eye_dist)
        & (pts[:, 0] * side >= 0.5 * abs(p[0]))
        & (pts[:, 2] >= p[2] - depth * eye_dist)
    )
    cand = ids[sel]
    if len(cand) > width - 1:  # keep an even spread along x, always including the landmark itself
        order = cand[np.argsort(np.abs(mean[cand, 0]))]
        cand = order[np.linspace(0, len(order) - 1, width - 1).round().astype(int)]
    cand = np.unique(np.concatenate([[vertex], cand]))
    out[: len(cand)] = cand
    return out


def contour_candidates(mean: np.ndarray, landmarks68: np.ndarray, region: np.ndarray, **kwargs) -> np.ndarray:
    """(17, width) candidate vertex ids per jaw landmark, padded with -1 (:func:`contour_line` of each)."""
    return np.stack([contour_line(mean, landmarks68, region, int(landmarks68[i]), **kwargs) for i in range(17)])

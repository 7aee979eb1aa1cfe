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


def contour_candidates(
    mean: np.ndarray, landmarks68: np.ndarray, region: np.ndarray, band: float = 0.06, depth: float = 0.3,
    width: int = 64, sideways: float = 0.85,
) -> np.ndarray:
    """(17, width) candidate vertex ids per jaw landmark, padded with -1.

    ``band`` (half slab height) and ``depth`` (how far behind the landmark candidates reach) are fractions
    of the outer-eye-corner distance, so they suit any model's units. Landmarks whose outward direction
    (from the nose centre, in the front plane) is less than ``sideways`` horizontal keep their own vertex.
    """
    eye_dist = np.linalg.norm(mean[landmarks68[36]] - mean[landmarks68[45]])
    centre = mean[landmarks68[27:36]].mean(0)
    ids = np.nonzero(region)[0]
    pts = mean[ids]
    out = -np.ones((17, width), dtype=np.int64)
    for i in range(17):
        lm = landmarks68[i]
        p = mean[lm]
        outward = (p - centre)[:2]
        if abs(outward[0]) < sideways * np.linalg.norm(outward):
            out[i, 0] = lm
            continue
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
        cand = np.unique(np.concatenate([[lm], cand]))
        out[i, : len(cand)] = cand
    return out

"""Face parts drawn as polygons through the 468 face-mesh points: the ``landmarks`` segmenter, and the
optional prior channels of the learned parser."""

from __future__ import annotations

import cv2
import numpy as np

from .landmarks import MESH_PARTS

# Drawing order: later parts overwrite earlier ones (the face oval is skin under everything).
_POLYGON_LABELS = (
    ("face_oval", 1),
    ("nose", 2),
    ("left_eyebrow", 6),
    ("right_eyebrow", 7),
    ("left_eye", 4),
    ("right_eye", 5),
    ("up_lip", 11),
    ("down_lip", 12),
    ("mouth_inner", 10),
)


def draw_polygons(mesh: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 CelebAMask-HQ ids: the parts' mesh polygons, for a (468, 2|3) mesh in pixels."""
    labels = np.zeros(shape, dtype=np.uint8)
    # cv2 polygons take integer vertices; 4 fractional bits keep sub-pixel placement.
    shift = 4
    for part, label in _POLYGON_LABELS:
        poly = np.round(mesh[MESH_PARTS[part], :2] * (1 << shift)).astype(np.int32)
        cv2.fillPoly(labels, [poly], int(label), lineType=cv2.LINE_8, shift=shift)
    return labels

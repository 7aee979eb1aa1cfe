"""Face part segmentation behind one interface; the fit's PRDL target comes from here.

A segmenter maps a photo and its 468 face-mesh points to a label map in CelebAMask-HQ ids (1 skin,
2 nose, 4/5 left/right eye, 6/7 left/right brow, 10 inner mouth, 11/12 upper/lower lip, 13 hair; left =
the subject's). ``--segmenter NAME`` looks one up in :data:`SEGMENTERS`.
"""

from __future__ import annotations

from typing import Protocol

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


class Segmenter(Protocol):
    name: str

    def segment(self, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
        """image (H, W, 3) uint8 RGB, mesh (468, 2|3) photo pixels -> (H, W) uint8 CelebAMask-HQ ids."""
        ...


class LandmarkPolygonSegmenter:
    """Parts drawn as polygons through the face-mesh points: no learned appearance, so about 65% part IoU
    against human masks, and no hair (nothing is marked occluded)."""

    name = "landmarks"

    def segment(self, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
        labels = np.zeros(image.shape[:2], dtype=np.uint8)
        # cv2 polygons take integer vertices; 4 fractional bits keep sub-pixel placement.
        shift = 4
        for part, label in _POLYGON_LABELS:
            poly = np.round(mesh[MESH_PARTS[part], :2] * (1 << shift)).astype(np.int32)
            cv2.fillPoly(labels, [poly], int(label), lineType=cv2.LINE_8, shift=shift)
        return labels


SEGMENTERS = {"landmarks": LandmarkPolygonSegmenter}


def make_segmenter(name: str) -> Segmenter:
    try:
        return SEGMENTERS[name]()
    except KeyError:
        raise ValueError(f"unknown segmenter '{name}'; known: {', '.join(sorted(SEGMENTERS))}") from None

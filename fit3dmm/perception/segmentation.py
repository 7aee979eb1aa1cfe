"""Face part segmentation behind one interface; the fit's PRDL target comes from here.

A segmenter maps a photo and its 468 face-mesh points to a label map in CelebAMask-HQ ids (1 skin,
2 nose, 3 glasses, 4/5 left/right eye, 6/7 left/right brow, 8/9 ears, 10 inner mouth, 11/12 upper/lower
lip, 13 hair, 17 neck; left = the subject's). ``--segmenter NAME`` looks one up in :data:`SEGMENTERS`.
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
        return draw_polygons(mesh, image.shape[:2])


def draw_polygons(mesh: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 CelebAMask-HQ ids: the parts' mesh polygons, for a (468, 2|3) mesh in pixels."""
    labels = np.zeros(shape, dtype=np.uint8)
    # cv2 polygons take integer vertices; 4 fractional bits keep sub-pixel placement.
    shift = 4
    for part, label in _POLYGON_LABELS:
        poly = np.round(mesh[MESH_PARTS[part], :2] * (1 << shift)).astype(np.int32)
        cv2.fillPoly(labels, [poly], int(label), lineType=cv2.LINE_8, shift=shift)
    return labels


def _learned(device):
    from ..parser.inference import FaceParser  # the parser imports draw_polygons from here

    return FaceParser.load(device=device)


#: name -> factory(device). 'parser' (the default of ``fit``) is the learned face parser of
#: :mod:`fit3dmm.parser`; 'landmarks' the polygon fallback.
SEGMENTERS = {"parser": _learned, "landmarks": lambda device: LandmarkPolygonSegmenter()}


def make_segmenter(name: str, device="cpu") -> Segmenter:
    try:
        factory = SEGMENTERS[name]
    except KeyError:
        raise ValueError(f"unknown segmenter '{name}'; known: {', '.join(sorted(SEGMENTERS))}") from None
    return factory(device)

"""Face part segmentation behind one interface; the fit's PRDL target comes from here.

A segmenter maps a photo and its 468 face-mesh points to a label map in CelebAMask-HQ ids (1 skin,
2 nose, 3 glasses, 4/5 left/right eye, 6/7 left/right brow, 8/9 ears, 10 inner mouth, 11/12 upper/lower
lip, 13 hair, 17 neck; left = the subject's). ``--segmenter NAME`` looks one up in :data:`SEGMENTERS`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .polygons import draw_polygons


class Segmenter(Protocol):
    name: str

    def segment(self, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
        """image (H, W, 3) uint8 RGB, mesh (468, 2|3) photo pixels -> (H, W) uint8 CelebAMask-HQ ids."""
        ...

    def seen(self, shape: tuple[int, int], mesh: np.ndarray) -> np.ndarray | None:
        """(H, W) bool: the photo pixels whose labels :meth:`segment` decides (elsewhere it answers 0 without
        having looked), or None for all of them."""
        ...


class LandmarkPolygonSegmenter:
    """Parts drawn as polygons through the face-mesh points: no learned appearance, so about 65% part IoU
    against human masks, and no hair (nothing is marked occluded)."""

    name = "landmarks"

    def segment(self, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
        return draw_polygons(mesh, image.shape[:2])

    def seen(self, shape: tuple[int, int], mesh: np.ndarray) -> None:
        return None


def _learned(device):
    from ..parser.inference import FaceParser  # imported when chosen: the CLI lists SEGMENTERS at start-up

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

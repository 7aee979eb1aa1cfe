"""What a fit aims at: one photo's crop, landmarks and part segmentation, prepared once per image.

The fit runs in a square crop around the face (``size``² pixels, default 224) so that its cost does not
depend on the photo's resolution; :class:`CropTransform` maps between crop and photo pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from .models.facemodel import PART_CELEBA_IDS, PART_NAMES

#: CelebAMask-HQ ids that hide the face surface: PRDL drops model points projecting onto them.
OCCLUDER_IDS = (3, 13, 14)  # eyeglasses, hair, hat
BROW_IDS = (6, 7)


@dataclass(frozen=True)
class CropTransform:
    """crop = scale * photo + offset (same scale on both axes, no rotation)."""

    scale: float
    offset: tuple[float, float]
    size: int

    @classmethod
    def around(cls, points: np.ndarray, size: int, margin: float) -> "CropTransform":
        """A square crop centred on the points' bounding box, ``margin`` times its larger side."""
        lo, hi = points.min(0), points.max(0)
        centre = (lo + hi) / 2
        side = float(max(hi - lo)) * margin
        scale = size / side
        offset = (size - 1) / 2 - scale * centre
        return cls(scale=scale, offset=(float(offset[0]), float(offset[1])), size=size)

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.scale, 0, self.offset[0]], [0, self.scale, self.offset[1]]], dtype=np.float64)

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        return xy * self.scale + np.asarray(self.offset)

    def to_photo(self, xy: np.ndarray) -> np.ndarray:
        return (xy - np.asarray(self.offset)) / self.scale

    def warp(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        flags = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        return cv2.warpAffine(image, self.matrix, (self.size, self.size), flags=flags, borderMode=cv2.BORDER_CONSTANT)


@dataclass
class FitTarget:
    """Per-image tensors the losses compare against, all in crop pixels.

    image (S, S, 3) float in [0, 1]; landmarks68 (68, 2); part_masks: part name -> (S, S) bool after the
    paper's preprocessing (skin without the forehead above the brow line); occluded (S, S) bool where hair,
    glasses or a hat hide the face; face_mask (S, S) bool, the face pixels the photometric loss compares;
    brow_line: (a, b, c) with a·x + b·y + c > 0 above the brows (forehead side), or None.
    """

    image: Tensor
    landmarks68: Tensor
    part_masks: dict[str, Tensor]
    occluded: Tensor
    face_mask: Tensor
    brow_line: tuple[float, float, float] | None
    crop: CropTransform

    @property
    def size(self) -> int:
        return self.crop.size

    def pixel_lookup(self, mask: Tensor, xy: Tensor) -> Tensor:
        """(N,) bool: mask value at the nearest pixel of each point (N, 2); False outside the crop."""
        ij = xy.detach().round().long()
        inside = (ij >= 0).all(1) & (ij < self.size).all(1)
        ij = ij.clamp(0, self.size - 1)
        return mask[ij[:, 1], ij[:, 0]] & inside

    def above_brows(self, xy: Tensor) -> Tensor:
        """(N,) bool: points on the forehead side of the brow line (all False without one)."""
        if self.brow_line is None:
            return torch.zeros(xy.shape[0], dtype=torch.bool, device=xy.device)
        a, b, c = self.brow_line
        return (xy[:, 0] * a + xy[:, 1] * b + c) > 0


def brow_tangent_line(labels: np.ndarray, toward: np.ndarray) -> tuple[float, float, float] | None:
    """The line touching both eyebrows from the forehead side, as (a, b, c) with a·x + b·y + c > 0 on the
    forehead side; ``toward`` is a point below the brows (e.g. the nose) fixing which side is which.

    It is the edge of the convex hull of both brows' pixels that bridges the two brows on the side away
    from ``toward``, so it follows the head's roll and touches each brow's top.
    """
    pts, owner = [], []
    for k, label in enumerate(BROW_IDS):
        ys, xs = np.nonzero(labels == label)
        if len(xs) == 0:
            return None
        pts.append(np.stack([xs, ys], 1))
        owner.append(np.full(len(xs), k))
    pts, owner = np.concatenate(pts).astype(np.float32), np.concatenate(owner)
    hull = cv2.convexHull(pts, returnPoints=False).ravel()
    best = None
    for i, j in zip(hull, np.roll(hull, -1)):
        if owner[i] == owner[j]:
            continue
        (x0, y0), (x1, y1) = pts[i], pts[j]
        a, b = y1 - y0, x0 - x1  # normal of the edge
        c = -(a * x0 + b * y0)
        side = a * toward[0] + b * toward[1] + c
        if side > 0:
            a, b, c, side = -a, -b, -c, -side
        # The bridging edge farther from the reference point is the one above the brows.
        if best is None or -side / np.hypot(a, b) > best[0]:
            best = (-side / np.hypot(a, b), (float(a), float(b), float(c)))
    return None if best is None else best[1]


def make_target(
    image: np.ndarray, labels: np.ndarray, landmarks68: np.ndarray, crop: CropTransform, device: torch.device
) -> FitTarget:
    """Build the fit target from a photo (H, W, 3) uint8 RGB, its label map (H, W) uint8 in CelebAMask-HQ
    ids, and its 68 landmarks (68, 2) in photo pixels."""
    crop_labels = crop.warp(labels, nearest=True)
    crop_image = crop.warp(image)
    lmk = crop.to_crop(landmarks68)
    nose = lmk[30]
    brow_line = brow_tangent_line(crop_labels, nose)
    masks = {}
    for name, label in zip(PART_NAMES, PART_CELEBA_IDS):
        m = crop_labels == label
        if name == "skin" and brow_line is not None:
            a, b, c = brow_line
            ys, xs = np.mgrid[: crop.size, : crop.size]
            m &= (a * xs + b * ys + c) <= 0
        masks[name] = torch.from_numpy(m).to(device)
    occluded = np.isin(crop_labels, OCCLUDER_IDS)
    face = np.isin(crop_labels, PART_CELEBA_IDS)
    to = lambda a, dt=None: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return FitTarget(
        image=to(crop_image, torch.float32) / 255.0,
        landmarks68=to(lmk, torch.float32),
        part_masks=masks,
        occluded=to(occluded),
        face_mask=to(face),
        brow_line=brow_line,
        crop=crop,
    )

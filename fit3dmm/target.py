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
#: What the head mesh may show in a photo: skin, nose, eyes, brows, ears, mouth, lips, neck (not background,
#: glasses, hair, hat, earrings, necklace or cloth).
FACE_SURFACE_IDS = (1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 17)
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

    image (S, S, 3) float in [0, 1]; landmarks68 (68, 2); labels (S, S) uint8 numpy, the CelebAMask-HQ
    label map after the paper's preprocessing (:func:`preprocess_labels`, forehead skin cut; shown in
    parts.png); part_masks: part name -> (S, S) bool, one per part of that map; occluded (S, S) bool where hair,
    glasses or a hat hide the face, or where the segmenter did not look (beyond its crop or the photo);
    face_mask (S, S) bool, the face pixels the photometric loss compares;
    brow_line: (a, b, c) with a·x + b·y + c > 0 above the brows (forehead side), or None; view: the crop's
    own pinhole (focal, cx, cy) in crop pixels when the photo's camera is known (a video's frames, see
    :class:`fit3dmm.camera.VideoCamera`), None for the fit's default crop camera; outline_weight in [0, 1]:
    how far the jaw of ``landmarks68`` follows the face's outline, 1 where it is on the silhouette as in
    300-W's convention (dlib's points), 0 where it stays on the face whatever the pose (the face mesh's,
    as AFLW2000-3D's), so the fit's jaw landmarks march to the outline by as much (losses/landmark.py).
    """

    image: Tensor
    landmarks68: Tensor
    labels: np.ndarray
    part_masks: dict[str, Tensor]
    occluded: Tensor
    face_mask: Tensor
    brow_line: tuple[float, float, float] | None
    crop: CropTransform
    view: tuple[float, float, float] | None = None
    outline_weight: float = 1.0

    @property
    def size(self) -> int:
        return self.crop.size


@dataclass
class TargetBatch:
    """B fit targets of the same crop size stacked for one batched fit (what the losses read).

    image (B, S, S, 3); landmarks68 (B, 68, 2); part_masks: part name -> (B, S, S) bool; occluded and
    face_mask (B, S, S) bool; brow_line (B, 3) float, (a, b, c) per photo, (0, 0, -1) without a line (no
    point is above it); outline_weight (B,) float; targets: the B :class:`FitTarget`.
    """

    image: Tensor
    landmarks68: Tensor
    part_masks: dict[str, Tensor]
    occluded: Tensor
    face_mask: Tensor
    brow_line: Tensor
    outline_weight: Tensor
    targets: list[FitTarget]

    @classmethod
    def stack(cls, targets: list[FitTarget]) -> "TargetBatch":
        if len({t.size for t in targets}) != 1:
            raise ValueError("a batch needs targets of one crop size")
        device = targets[0].image.device
        stack = lambda get: torch.stack([get(t) for t in targets])  # noqa: E731
        lines = [t.brow_line or (0.0, 0.0, -1.0) for t in targets]
        return cls(
            image=stack(lambda t: t.image),
            landmarks68=stack(lambda t: t.landmarks68),
            part_masks={name: stack(lambda t: t.part_masks[name]) for name in PART_NAMES},
            occluded=stack(lambda t: t.occluded),
            face_mask=stack(lambda t: t.face_mask),
            brow_line=torch.tensor(lines, dtype=torch.float32, device=device),
            outline_weight=torch.tensor([t.outline_weight for t in targets], dtype=torch.float32, device=device),
            targets=list(targets),
        )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def size(self) -> int:
        return self.targets[0].size

    def pixel_lookup(self, mask: Tensor, xy: Tensor) -> Tensor:
        """(B, N) bool: each photo's mask (B, S, S) at the nearest pixel of its points (B, N, 2); False
        outside the crop."""
        ij = xy.detach().round().long()
        inside = (ij >= 0).all(-1) & (ij < self.size).all(-1)
        ij = ij.clamp(0, self.size - 1)
        flat = (torch.arange(len(self), device=xy.device)[:, None] * self.size + ij[..., 1]) * self.size + ij[..., 0]
        return mask.reshape(-1).index_select(0, flat.reshape(-1)).view(flat.shape) & inside

    def above_brows(self, xy: Tensor) -> Tensor:
        """(B, N) bool: points (B, N, 2) on the forehead side of their photo's brow line."""
        line = self.brow_line[:, None, :]
        return (xy[..., 0] * line[..., 0] + xy[..., 1] * line[..., 1] + line[..., 2]) > 0


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


#: Ears are cut from the target (the paper's preprocessing): face models have none or poorly fitting ones.
EAR_IDS = (8, 9)
#: A part's connected pieces smaller than this fraction of its largest piece are dropped.
MIN_BLOB_FRACTION = 0.1


def drop_small_blobs(labels: np.ndarray, ids=PART_CELEBA_IDS, min_fraction: float = MIN_BLOB_FRACTION) -> np.ndarray:
    """Set to background each isolated piece of a part (8-connected) below ``min_fraction`` of the
    part's largest piece: stray pixels far from the part would pull PRDL's farthest/mean statistics."""
    out = labels.copy()
    for label in ids:
        n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == label).astype(np.uint8), connectivity=8)
        if n <= 2:
            continue
        areas = stats[1:, cv2.CC_STAT_AREA]
        small = np.nonzero(areas < min_fraction * areas.max())[0] + 1
        out[np.isin(comp, small)] = 0
    return out


#: The lips' CelebAMask-HQ ids (upper, lower).
LIP_IDS = tuple(PART_CELEBA_IDS[PART_NAMES.index(name)] for name in ("up_lip", "down_lip"))
#: Lips marked on less than this fraction of the landmarks' lip ring are dropped from the target. In the
#: fit's crop the parser's lips cover 0.27 to 1.0 of the ring on the 194 validation photos; under a
#: moustache in a strong turn it lost them (breakingbad, 0.10), and fitting the sliver left shrank the
#: mouth and jaw (README, "PRDL's target preprocessing").
MIN_LIP_COVERAGE = 0.25


def lip_ring(landmarks68: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels between the 68 landmarks' outer (48-59) and inner (60-67) lip contours."""
    ring = np.zeros(shape, np.uint8)
    cv2.fillPoly(ring, [np.round(landmarks68[48:60]).astype(np.int32)], 1)
    cv2.fillPoly(ring, [np.round(landmarks68[60:68]).astype(np.int32)], 0)
    return ring.astype(bool)


def lip_coverage(labels: np.ndarray, landmarks68: np.ndarray) -> float:
    """The fraction of the landmarks' lip ring that a label map marks as lips (1 for an empty ring)."""
    ring = lip_ring(landmarks68, labels.shape)
    if not ring.any():
        return 1.0
    return float((np.isin(labels, LIP_IDS) & ring).sum() / ring.sum())


def preprocess_labels(labels: np.ndarray, landmarks68: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """The paper's PRDL target preprocessing on a label map: ears removed, small isolated blobs dropped
    per part, and the line tangent to both brows found (the forehead above it is cut from the skin).
    Occluders (hair, glasses, hat) stay labelled: the model points under them are dropped. Lips that
    the landmarks do not confirm (:data:`MIN_LIP_COVERAGE`) are removed, leaving those parts out of the fit.
    ``landmarks68`` (68, 2) in the map's pixels. Returns (labels, brow line or None)."""
    labels = np.where(np.isin(labels, EAR_IDS), 0, labels).astype(np.uint8)
    labels = drop_small_blobs(labels)
    if lip_coverage(labels, landmarks68) < MIN_LIP_COVERAGE:
        labels[np.isin(labels, LIP_IDS)] = 0
    return labels, brow_tangent_line(labels, toward=landmarks68[30])


def above_line(line: tuple[float, float, float] | None, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels on the forehead side of a brow line (none without a line)."""
    if line is None:
        return np.zeros(shape, bool)
    a, b, c = line
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return (a * xs + b * ys + c) > 0


def make_target(
    image: np.ndarray, labels: np.ndarray, landmarks68: np.ndarray, crop: CropTransform, device: torch.device,
    view: tuple[float, float, float] | None = None, outline_weight: float = 1.0, seen: np.ndarray | None = None,
) -> FitTarget:
    """Build the fit target from a photo (H, W, 3) uint8 RGB, its label map (H, W) uint8 in CelebAMask-HQ
    ids, and its 68 landmarks (68, 2) in photo pixels; ``view`` and ``outline_weight`` as
    :class:`FitTarget`'s; ``seen`` (H, W) bool the pixels the label map decides (None: the whole photo)."""
    lmk = crop.to_crop(landmarks68)
    crop_labels, brow_line = preprocess_labels(crop.warp(labels, nearest=True), lmk)
    face = np.isin(crop_labels, PART_CELEBA_IDS)  # the photometric loss keeps the forehead
    forehead = above_line(brow_line, crop_labels.shape) & (crop_labels == 1)
    crop_labels[forehead] = 0
    # Model points where the segmenter did not look are dropped like those under hair: there the map's 0 is
    # not background, and a profile's cheek beyond the parser's crop was pulled onto the crop's edge
    # (README, "PRDL's target preprocessing").
    looked = crop.warp(np.ones(labels.shape, np.uint8) if seen is None else seen.astype(np.uint8), nearest=True) > 0
    masks = {name: torch.from_numpy(crop_labels == label).to(device) for name, label in zip(PART_NAMES, PART_CELEBA_IDS)}
    to = lambda a, dt=None: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return FitTarget(
        image=to(crop.warp(image), torch.float32) / 255.0,
        landmarks68=to(lmk, torch.float32),
        labels=crop_labels,
        part_masks=masks,
        occluded=to(np.isin(crop_labels, OCCLUDER_IDS) | ~looked),
        face_mask=to(face),
        brow_line=brow_line,
        crop=crop,
        view=view,
        outline_weight=float(outline_weight),
    )

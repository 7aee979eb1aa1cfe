"""The parser's face crop: a square aligned from the landmarks (scale and roll normalized), and the maps
between it and the photo.

The square follows FFHQ's alignment recipe (eye line and eye-to-mouth vector), tighter: it spans 3.2
eye distances, from the hairline to below the chin and across both ears, so the small parts keep as
many crop pixels as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..perception.landmarks import to_ibug68

#: Half the crop side in units of max(eye distance, 0.9 eye-to-mouth distance).
HALF_SIDE = 1.6
#: The crop centre lies this far along the eye-to-mouth vector from the eyes' midpoint.
CENTRE_SHIFT = 0.35


@dataclass(frozen=True)
class AlignedCrop:
    """crop = matrix @ [x, y, 1] for photo pixel centres (x, y); ``size``² crop pixels."""

    matrix: np.ndarray  # (2, 3) float64
    size: int

    @classmethod
    def from_mesh(cls, mesh: np.ndarray, size: int) -> "AlignedCrop":
        """The aligned crop of a face given its (468, 2|3) face mesh in photo pixels."""
        lmk = to_ibug68(mesh).astype(np.float64)
        right_eye, left_eye = lmk[36:42].mean(0), lmk[42:48].mean(0)
        eye_to_eye = left_eye - right_eye  # image left -> image right
        eye_mid = (left_eye + right_eye) / 2
        eye_to_mouth = (lmk[48] + lmk[54]) / 2 - eye_mid
        # x axis: the eye line, corrected by the perpendicular of the eye-to-mouth vector (robust to yaw).
        x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
        x /= np.linalg.norm(x)
        y = np.array([-x[1], x[0]])
        half = HALF_SIDE * max(np.linalg.norm(eye_to_eye), 0.9 * np.linalg.norm(eye_to_mouth))
        centre = eye_mid + CENTRE_SHIFT * eye_to_mouth
        scale = size / (2 * half)
        rot = np.stack([x, y]) * scale  # photo offsets -> crop offsets
        offset = (size - 1) / 2 - rot @ centre
        return cls(matrix=np.hstack([rot, offset[:, None]]), size=size)

    def then(self, affine: np.ndarray, size: int | None = None) -> "AlignedCrop":
        """This crop followed by a further (2, 3) affine map of crop pixels (augmentation, resizing)."""
        m = np.vstack([affine, [0, 0, 1]]) @ np.vstack([self.matrix, [0, 0, 1]])
        return AlignedCrop(matrix=m[:2], size=self.size if size is None else size)

    def upsampled(self, k: int) -> "AlignedCrop":
        """The same crop sampled k times finer ((size k)² pixels; pixel centres stay consistent)."""
        return self.then(np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2]]), size=self.size * k)

    @property
    def photo_pixels_per_crop_pixel(self) -> float:
        return float(1.0 / np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        return xy @ self.matrix[:, :2].T + self.matrix[:, 2]

    def warp(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Photo (H, W[, C]) -> crop (size, size[, C]); zeros outside the photo."""
        flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.warpAffine(image, self.matrix, (self.size, self.size), flags=flags, borderMode=cv2.BORDER_CONSTANT)

    def unwarp(self, labels: np.ndarray, photo_shape: tuple[int, int]) -> np.ndarray:
        """Crop labels (size, size) -> photo labels (H, W), nearest; 0 outside the crop."""
        h, w = photo_shape
        return cv2.warpAffine(
            labels, self.matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )


def similarity(angle_deg: float, scale: float, shift: tuple[float, float], size: int, flip: bool = False) -> np.ndarray:
    """(2, 3) map of a size² crop onto itself: rotation and scaling about the centre, a shift in pixels,
    and an optional horizontal flip."""
    centre = ((size - 1) / 2, (size - 1) / 2)
    m = cv2.getRotationMatrix2D(centre, angle_deg, scale)
    m[:, 2] += shift
    if flip:
        m = np.array([[-1, 0, size - 1], [0, 1, 0]], np.float64) @ np.vstack([m, [0, 0, 1]])
    return m

"""Pose and perspective projection.

Frames: the model frame has x = subject's left, y up, z out of the face; the camera frame is OpenCV's
(x right, y down, z forward), so a face at zero rotation looks into the camera. Screen coordinates are
pixels of the fitting crop with pixel centres at integers (x = column, y = row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

#: Model frame -> camera frame at zero rotation (flip y and z).
MODEL_TO_CAMERA = (1.0, -1.0, -1.0)


def rotation_matrix(angles: Tensor) -> Tensor:
    """(..., 3) pitch, yaw, roll in radians (about camera x, y, z) -> (..., 3, 3) R = Rz @ Ry @ Rx."""
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    shape = (*angles.shape[:-1], 3, 3)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(shape)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(shape)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(shape)
    return rz @ ry @ rx


def angles_of(rotation: np.ndarray) -> tuple[float, float, float]:
    """The (pitch, yaw, roll) of :func:`rotation_matrix` that give a rotation (3, 3) (yaw within ±90°)."""
    yaw = math.asin(float(np.clip(-rotation[2, 0], -1.0, 1.0)))
    return math.atan2(rotation[2, 1], rotation[2, 2]), yaw, math.atan2(rotation[1, 0], rotation[0, 0])


def solve_pose(
    model_points: np.ndarray, image_points: np.ndarray, focal: float, cx: float, cy: float, translation: np.ndarray,
) -> tuple[tuple[float, float, float], np.ndarray]:
    """The pose (pitch, yaw, roll) and translation (3,) that place ``model_points`` (N, 3, model frame) on
    ``image_points`` (N, 2) through the pinhole: OpenCV's iterative PnP started from zero rotation at
    ``translation``, or that start itself where PnP does not bring the points closer or turns the face
    away (upside down or behind the camera)."""
    obj = model_points.astype(np.float64) * np.asarray(MODEL_TO_CAMERA)
    img = image_points.astype(np.float64)
    k = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    start = np.asarray(translation, np.float64).reshape(3, 1)
    rvec, tvec = np.zeros((3, 1)), start.copy()

    def error(r: np.ndarray, t: np.ndarray) -> float:
        return float(((cv2.projectPoints(obj, r, t, k, None)[0][:, 0] - img) ** 2).sum(1).mean())

    ok = cv2.solvePnP(obj, img, k, None, rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)[0]
    pose = angles_of(cv2.Rodrigues(rvec)[0])
    upright = abs(pose[0]) < math.pi / 2 and abs(pose[2]) < math.pi / 2
    if not ok or tvec[2, 0] <= 0 or not upright or error(rvec, tvec) >= error(np.zeros((3, 1)), start):
        return (0.0, 0.0, 0.0), start[:, 0]
    return pose, tvec[:, 0]


def pinhole(cam_points: Tensor, focal, center) -> Tensor:
    """(..., V, 3) camera frame -> (..., V, 2) pixels: focal * (x, y) / z + center (numbers or tensors that
    broadcast)."""
    return focal * cam_points[..., :2] / cam_points[..., 2:3] + center


@dataclass(frozen=True)
class View:
    """Per-photo pinholes of a batch of crops, in crop pixels: focal (B, 1, 1), center (B, 1, 2). A video's
    frames are crops of one camera (:class:`VideoCamera`), each with its own scale and offset, so each crop
    sees that camera with its own focal length and principal point; poses are then in one camera frame for
    the whole video and can be compared (smoothed) from frame to frame."""

    focal: Tensor
    center: Tensor


@dataclass(frozen=True)
class VideoCamera:
    """A video's pinhole in frame pixels (pixel centres at integers): focal length and principal point."""

    focal: float
    center: tuple[float, float]

    @classmethod
    def for_frames(cls, width: int, height: int, crop_scale: float, crop_size: int, focal_ratio: float) -> "VideoCamera":
        """The camera whose crops at ``crop_scale`` (crop pixels per frame pixel) have the fit's usual focal
        length (``focal_ratio`` crop sides), centred on the frame."""
        return cls(focal=focal_ratio * crop_size / crop_scale, center=((width - 1) / 2.0, (height - 1) / 2.0))

    def in_crop(self, scale: float, offset: tuple[float, float]) -> tuple[float, float, float]:
        """(focal, cx, cy) in the pixels of a crop = scale * frame + offset."""
        return (self.focal * scale, self.center[0] * scale + offset[0], self.center[1] * scale + offset[1])

    def project(self, cam_points: Tensor) -> Tensor:
        """(..., V, 3) camera frame -> (..., V, 2) frame pixels."""
        return pinhole(cam_points, self.focal, cam_points.new_tensor(self.center))


@dataclass(frozen=True)
class Camera:
    """Pinhole camera of a square fitting crop: focal length and principal point in crop pixels."""

    focal: float
    size: int

    @classmethod
    def for_crop(cls, size: int, focal_ratio: float) -> "Camera":
        return cls(focal=focal_ratio * size, size=size)

    @property
    def center(self) -> float:
        return (self.size - 1) / 2.0

    def to_camera(self, vertices: Tensor, angles: Tensor, translation: Tensor) -> Tensor:
        """(..., V, 3) model-frame vertices, (..., 3) angles and translation -> (..., V, 3) camera frame."""
        flip = vertices.new_tensor(MODEL_TO_CAMERA)
        return (vertices * flip) @ rotation_matrix(angles).transpose(-1, -2) + translation.unsqueeze(-2)

    def project(self, cam_points: Tensor, view: "View | None" = None) -> Tensor:
        """(..., V, 3) camera frame -> (..., V, 3) screen: x, y in crop pixels, z the camera depth; with the
        crops' own pinholes if ``view`` is given (video frames), else this crop camera's."""
        xy = pinhole(cam_points, self.focal, self.center) if view is None else pinhole(cam_points, view.focal, view.center)
        return torch.cat([xy, cam_points[..., 2:3]], dim=-1)

    def depth_for_width(self, width_model: float, width_pixels: float) -> float:
        """Distance at which a model length spans the given number of pixels (rigid initialization)."""
        return self.focal * width_model / max(width_pixels, 1e-6)

"""68-point landmark loss with dynamic jaw-contour marching."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Frame, Loss, gather_vertices, register


@register
class LandmarkLoss(Loss):
    """Mean squared pixel distance between fitted and detected landmarks.

    Jaw landmarks follow the silhouette: among each one's contour candidates the fit takes the one lying
    farthest along the landmark's outward direction (from the face centre, in the model's front plane,
    rotated into the image), which on a turned head is the outline rather than a hidden vertex. When the
    frame has visibility, only visible candidates count.
    """

    name = "landmark"

    def __init__(self, model, target):
        super().__init__(model, target)
        cand = model.contour
        self.valid = cand >= 0
        self.candidates = cand.clamp(min=0)
        mean = model.mean
        centre = mean[model.landmarks68[27:36]].mean(0)
        outward = mean[model.landmarks68[:17]] - centre
        outward[:, 2] = 0
        self.outward = torch.nn.functional.normalize(outward, dim=1)  # model frame

    def fitted_points(self, frame: Frame) -> Tensor:
        """(B, 68, 2) fitted landmark positions in crop pixels, jaw marched."""
        xy = frame.screen[..., :2]
        lm = gather_vertices(xy, self.model.landmarks68)
        with torch.no_grad():
            direction = (self.outward @ frame.rotation.transpose(-1, -2).detach())[..., :2]  # (B, 17, 2) in the image
            score = (xy[:, self.candidates] * direction[:, :, None, :]).sum(-1)  # (B, 17, C)
            valid = self.valid.expand_as(score)
            if frame.visible is not None:
                # On the side facing the camera the outermost candidate can hide behind the ear.
                seen = valid & frame.visible[:, self.candidates]
                valid = torch.where(seen.any(-1, keepdim=True), seen, valid)
            score = score.masked_fill(~valid, float("-inf"))
            pick = self.candidates[None].expand_as(score).gather(2, score.argmax(2, keepdim=True)).squeeze(2)
        jaw = xy.gather(1, pick[..., None].expand(-1, -1, 2))
        return torch.cat([jaw, lm[:, 17:]], dim=1)

    def __call__(self, frame: Frame) -> Tensor:
        return ((self.fitted_points(frame) - self.target.landmarks68) ** 2).sum(-1).mean(-1)

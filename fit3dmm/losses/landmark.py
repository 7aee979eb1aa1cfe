"""68-point landmark loss with dynamic jaw-contour marching."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Frame, Loss, register


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
        """(68, 2) fitted landmark positions in crop pixels, jaw marched."""
        xy = frame.screen[:, :2]
        lm = xy[self.model.landmarks68]
        with torch.no_grad():
            direction = (self.outward @ frame.rotation.T.detach())[:, :2]  # (17, 2) image directions
            score = (xy[self.candidates] * direction[:, None, :]).sum(-1)
            valid = self.valid
            if frame.visible is not None:
                # On the side facing the camera the outermost candidate can hide behind the ear.
                seen = valid & frame.visible[self.candidates]
                valid = torch.where(seen.any(1, keepdim=True), seen, valid)
            score = score.masked_fill(~valid, float("-inf"))
            pick = self.candidates.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
        return torch.cat([xy[pick], lm[17:]], dim=0)

    def __call__(self, frame: Frame) -> Tensor:
        return ((self.fitted_points(frame) - self.target.landmarks68) ** 2).sum(1).mean()

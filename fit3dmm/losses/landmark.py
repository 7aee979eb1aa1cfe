"""68-point landmark loss with dynamic jaw-contour marching."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Frame, Loss, gather_vertices, register


def outward_directions(mean: Tensor, landmarks68: Tensor, vertices: Tensor) -> Tensor:
    """(K, 3) unit directions from the nose centre to ``vertices`` in the model's front plane (z = 0)."""
    outward = mean[vertices] - mean[landmarks68[27:36]].mean(0)
    outward[:, 2] = 0
    return torch.nn.functional.normalize(outward, dim=1)


def march_contour(
    xy: Tensor, candidates: Tensor, valid: Tensor, outward: Tensor, rotation: Tensor, visible: Tensor | None,
) -> Tensor:
    """(B, K) the vertex each of K contour lines marches to: among its candidates (K, C; ``valid`` marks the
    real ones) the one lying farthest along its outward direction (K, 3, model frame) rotated into the
    image; with ``visible`` (B, V) only visible candidates count where a line has any. xy (B, V, 2)."""
    direction = (outward @ rotation.transpose(-1, -2).detach())[..., :2]  # (B, K, 2) in the image
    score = (xy.detach()[:, candidates] * direction[:, :, None, :]).sum(-1)  # (B, K, C)
    valid = valid.expand_as(score)
    if visible is not None:
        # On the side facing the camera the outermost candidate can hide behind the ear.
        seen = valid & visible[:, candidates]
        valid = torch.where(seen.any(-1, keepdim=True), seen, valid)
    score = score.masked_fill(~valid, float("-inf"))
    return candidates[None].expand_as(score).gather(2, score.argmax(2, keepdim=True)).squeeze(2)


@register
class LandmarkLoss(Loss):
    """Mean squared pixel distance between fitted and detected landmarks.

    Jaw landmarks follow the silhouette: among each one's contour candidates the fit takes the one lying
    farthest along the landmark's outward direction (from the face centre, in the model's front plane,
    rotated into the image), which on a turned head is the outline rather than a hidden vertex. When the
    frame has visibility, only visible candidates count. They march as far as the target's jaw follows the
    outline (:attr:`fit3dmm.target.FitTarget.outline_weight`): a jaw point aimed at the face mesh's point,
    which stays on the face, stays at its own vertex: on a turned head the silhouette lies outside such a
    point, and pulling the one onto the other pulled the fitted jaw inwards (README, "Comparing losses").
    """

    name = "landmark"

    def __init__(self, model, target):
        super().__init__(model, target)
        cand = model.contour
        self.valid = cand >= 0
        self.candidates = cand.clamp(min=0)
        self.outward = outward_directions(model.mean, model.landmarks68, model.landmarks68[:17])  # model frame

    def fitted_points(self, frame: Frame, outline: Tensor | None = None) -> Tensor:
        """(B, 68, 2) fitted landmark positions in crop pixels, the jaw marched by ``outline`` (B,) in [0, 1]
        (default: the target's outline weight): 1 onto the outline, 0 not at all, between in proportion."""
        xy = frame.screen[..., :2]
        lm = gather_vertices(xy, self.model.landmarks68)
        with torch.no_grad():
            pick = march_contour(xy, self.candidates, self.valid, self.outward, frame.rotation, frame.visible)
        marched = xy.gather(1, pick[..., None].expand(-1, -1, 2))
        w = (self.target.outline_weight if outline is None else outline)[:, None, None]
        return torch.cat([w * marched + (1 - w) * lm[:, :17], lm[:, 17:]], dim=1)

    def __call__(self, frame: Frame) -> Tensor:
        return ((self.fitted_points(frame) - self.target.landmarks68) ** 2).sum(-1).mean(-1)

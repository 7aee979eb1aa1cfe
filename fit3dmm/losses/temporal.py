"""Temporal smoothness across the frames of a video, fitted as one batch in time order."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Frame, Loss, gather_vertices, register


@register
class TemporalLoss(Loss):
    """Squared second differences (accelerations) over consecutive frames: batch item b follows b-1.

    Two terms: the 68 landmark vertices in the camera frame (mean squared, model units², so pose and
    expression together, in what the viewer sees move) and, weighted by ``exp_weight``, the expression
    coefficients (their curves are an output: blendshape weights). Frame b's value is its own second
    difference (b-2, b-1, b). ``context`` holds the two frames before the batch, fixed (the previous
    window's last fits: "points" (2, 68, 3), "exp" (2, Ke)), so windows join smoothly; without it the
    batch's first two frames have no term. Unlike every other loss this one couples the photos of a batch:
    it is for tracking only (the camera frame must be one for all frames, :class:`fit3dmm.camera.View`).
    """

    name = "temporal"

    def __init__(self, model, target, context: dict[str, Tensor] | None = None, exp_weight: float = 1.0):
        super().__init__(model, target)
        self.context = context
        self.exp_weight = exp_weight

    def points(self, frame: Frame) -> Tensor:
        """(B, 68, 3) the landmark vertices in the camera frame."""
        lm = gather_vertices(frame.vertices, self.model.landmarks68)
        return lm @ frame.rotation.transpose(-1, -2) + frame.params["translation"][:, None]

    def __call__(self, frame: Frame) -> Tensor:
        points, exp = self.points(frame), frame.params["exp"]
        if self.context is not None:
            points = torch.cat([self.context["points"], points])
            exp = torch.cat([self.context["exp"], exp])
        acc = lambda x: x[2:] - 2 * x[1:-1] + x[:-2]  # noqa: E731
        values = (acc(points) ** 2).sum(-1).mean(-1) + self.exp_weight * (acc(exp) ** 2).mean(-1)
        return values if self.context is not None else torch.cat([values.new_zeros(min(2, len(frame.vertices))), values])

"""Priors on the coefficients, so the fit stays a plausible face."""

from __future__ import annotations

from .base import Frame, Loss, gather_vertices, register

# Relative weights of the coefficient groups, as in Deep3DFaceRecon/3DDFA-V3 (identity 1, expression 0.8,
# albedo 1.7e-2); the stage weight (the paper's λreg) scales them together.
ID_WEIGHT, EXP_WEIGHT, ALBEDO_WEIGHT = 1.0, 0.8, 1.7e-2


@register
class CoefficientPrior(Loss):
    name = "reg"

    def __call__(self, frame: Frame):
        p = frame.params
        total = ID_WEIGHT * (p["id"] ** 2).sum(-1) + EXP_WEIGHT * (p["exp"] ** 2).sum(-1)
        if self.model.has_albedo_basis:
            total = total + ALBEDO_WEIGHT * (p["albedo"] ** 2).sum(-1)
        return total


@register
class AlbedoSmoothness(Loss):
    """For a free per-vertex albedo: mean squared colour difference across mesh edges, so shading, not
    albedo, explains smooth brightness changes. Zero for a model with an albedo basis."""

    name = "albedo_smooth"

    def __call__(self, frame: Frame):
        if self.model.has_albedo_basis:
            return frame.screen.new_zeros(frame.screen.shape[0])
        a, edges = frame.params["albedo"], self.model.edges
        return ((gather_vertices(a, edges[:, 0]) - gather_vertices(a, edges[:, 1])) ** 2).sum(-1).mean(-1)


@register
class AlbedoPrior(Loss):
    """For a free per-vertex albedo and a model with a mean texture: the mean squared difference between
    the albedo and that texture scaled per channel (least squares, per photo, no gradient through the
    scale), so the albedo keeps the texture's dark brows, red lips and white eyes unless the photo says
    otherwise, and the photometric term has parts to align. Zero otherwise."""

    name = "albedo_prior"

    def __init__(self, model, target):
        super().__init__(model, target)
        t = model.texture
        self.active = t is not None and not model.has_albedo_basis
        self.texture_norm = (t * t).sum(0) if self.active else None  # (3,): the scale's denominator, once

    def __call__(self, frame: Frame):
        if not self.active:
            return frame.screen.new_zeros(frame.screen.shape[0])
        a, t = frame.params["albedo"], self.model.texture  # (B, V, 3), (V, 3)
        scale = ((a * t).sum(-2, keepdim=True) / self.texture_norm).detach()  # (B, 1, 3)
        return ((a - scale * t) ** 2).sum(-1).mean(-1)

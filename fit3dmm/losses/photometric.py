"""Photometric loss: shaded model colour against the photo over the visible face."""

from __future__ import annotations

from ..appearance import vertex_colors
from ..render import interpolate
from .base import Frame, Loss, register


@register
class PhotometricLoss(Loss):
    """Mean per-pixel L2 colour distance over pixels covered by the model that the segmentation calls
    face (skin or a face part) and nothing occludes."""

    name = "photometric"
    needs_raster = True

    def __init__(self, model, target):
        super().__init__(model, target)
        self.valid = (target.face_mask & ~target.occluded).reshape(-1)  # (B*S*S,)
        self.pixels = target.image.reshape(-1, 3)

    def __call__(self, frame: Frame):
        colors = vertex_colors(self.model, frame.params, frame.normals)
        values, pixel = interpolate(frame.screen, self.model.fit_triangles, frame.frags, colors)
        # Per photo: the mean over its kept pixels (masked, not selected: no host sync).
        keep = self.valid.index_select(0, pixel).to(values.dtype)
        photo = pixel.div(self.target.size**2, rounding_mode="floor")
        error = (values - self.pixels.index_select(0, pixel)).norm(dim=1) * keep
        total = values.new_zeros(len(self.target)).index_add_(0, photo, error)
        count = values.new_zeros(len(self.target)).index_add_(0, photo, keep)
        return total / count.clamp(min=1)

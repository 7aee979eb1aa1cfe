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
        self.valid = (target.face_mask & ~target.occluded).reshape(-1)
        self.pixels = target.image.reshape(-1, 3)

    def __call__(self, frame: Frame):
        colors = vertex_colors(self.model, frame.params, frame.normals)
        values, pixel = interpolate(frame.screen, self.model.fit_triangles, frame.frags, colors)
        keep = self.valid[pixel]
        if not keep.any():
            return frame.screen.new_zeros(())
        return (values[keep] - self.pixels[pixel[keep]]).norm(dim=1).mean()

"""Rasterization, interpolation, visibility and SH shading (CPU or GPU, whatever the inputs are on)."""

from .rasterizer import (EDGE_EPS, Fragments, interpolate, point_visibility, rasterize, rasterize_region,
                         vertex_normals, vertex_visibility)
from .shading import SH_COEFFS, render_image, sh_basis, shade

__all__ = [
    "EDGE_EPS",
    "Fragments",
    "SH_COEFFS",
    "interpolate",
    "point_visibility",
    "rasterize",
    "rasterize_region",
    "render_image",
    "sh_basis",
    "shade",
    "vertex_normals",
    "vertex_visibility",
]

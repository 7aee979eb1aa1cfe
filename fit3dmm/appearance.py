"""Vertex colours of a fit: albedo (from the model's basis or free per vertex) lit by SH lighting."""

from __future__ import annotations

from torch import Tensor

from .models.facemodel import FaceModel
from .render.shading import shade


def vertex_albedo(model: FaceModel, params: dict[str, Tensor]) -> Tensor:
    """(B, V, 3) linear albedo: the basis when the model has one, else the fit's free per-vertex albedo."""
    if model.has_albedo_basis:
        return model.albedo(params["albedo"])
    return params["albedo"]


def vertex_colors(model: FaceModel, params: dict[str, Tensor], normals: Tensor) -> Tensor:
    """(B, V, 3) shaded colours; normals (B, V, 3) in the camera frame; params with a leading batch dimension."""
    return shade(vertex_albedo(model, params), normals, params["gamma"])

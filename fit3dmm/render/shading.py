"""Spherical-harmonics Lambertian shading and image composition.

Lighting is the usual 3DMM-fitting model (Deep3DFaceRecon, 3DDFA-V3): irradiance is a linear
combination of the 9 real SH basis functions of bands 0-2 evaluated at the normal, with the
Lambertian convolution constants a_l and the SH normalisation c_l folded into the basis. So
``gamma (3, 9)`` with ``gamma[:, 0] = 0.8`` and the rest 0 is uniform ambient light of
0.8 * a0 * c0 = 0.8 * sqrt(pi) / 2 ~ 0.71. Signs follow the Condon-Shortley phase used there.
Normals are camera-space with +z pointing away from the camera, so light from the camera
side raises the irradiance through a negative coefficient on basis 2 (~ n_z).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .rasterizer import Fragments, interpolate

SH_COEFFS = 9

_A0, _A1, _A2 = math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)
_C0 = 1 / math.sqrt(4 * math.pi)
_C1 = math.sqrt(3.0) / math.sqrt(4 * math.pi)
_C2 = 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi)


def sh_basis(normals: Tensor) -> Tensor:
    """Real SH basis, bands 0-2, with the Lambertian constants folded in.

    normals (..., 3) unit → (..., 9) ordered (l, m) = (0,0), (1,-1), (1,0), (1,1), (2,-2),
    (2,-1), (2,0), (2,1), (2,2).
    """
    x, y, z = normals.unbind(-1)
    k1, k2 = _A1 * _C1, _A2 * _C2
    return torch.stack(
        (
            torch.full_like(x, _A0 * _C0),
            -k1 * y,
            k1 * z,
            -k1 * x,
            k2 * x * y,
            -k2 * y * z,
            k2 / (2 * math.sqrt(3.0)) * (3 * z * z - 1),
            -k2 * x * z,
            k2 / 2 * (x * x - y * y),
        ),
        dim=-1,
    )


def shade(albedo: Tensor, normals: Tensor, gamma: Tensor) -> Tensor:
    """Lambertian SH shading per vertex.

    albedo (B, V, 3) in [0, 1]; normals (B, V, 3) unit, camera space; gamma (B, 3, 9) SH coefficients
    per colour channel. Returns colour (B, V, 3) = albedo * (sh_basis(normals) @ gamma.T).
    """
    return albedo * (sh_basis(normals) @ gamma.transpose(-1, -2))


def render_image(
    screen: Tensor, faces: Tensor, frags: Fragments, colors: Tensor, background: Tensor | None = None
) -> Tensor:
    """Compose (B, H, W, C) images: interpolated vertex colours where covered, background elsewhere.

    screen (B, V, 3); faces (F, 3) long; frags from :func:`rasterize`; colors (B, V, C); background
    (B, H, W, C) or anything broadcasting to it (e.g. (C,)), zeros if None. Differentiable in
    ``screen``, ``colors`` and ``background``.
    """
    shape = (screen.shape[0], frags.height, frags.width, colors.shape[-1])
    values, pix = interpolate(screen, faces, frags, colors)
    if background is None:
        base = values.new_zeros(shape)
    else:
        base = background.to(values.dtype).expand(shape)
    return base.reshape(-1, shape[-1]).index_copy(0, pix, values).view(shape)

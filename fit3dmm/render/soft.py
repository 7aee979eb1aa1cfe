"""Differentiable soft silhouettes (SoftRas-style, Liu et al. 2019), grouped: one image per group of
triangles (the fit's parts).

Each triangle j covers pixel i with probability D_ij = sigmoid(±d²(i, j) / sigma): d the distance from
the pixel centre to the triangle, + inside, - outside. A group's silhouette aggregates its triangles as
S_i = 1 - prod_j (1 - D_ij). Since -log(1 - sigmoid(z)) = softplus(z), the product is a sum of softplus
terms per pixel, exact and stable. Only pairs where D_ij can exceed ``CUTOFF`` are evaluated: each
triangle's bounding box widened by the distance at which the sigmoid falls below it, so the cost is
that of the pixels near each triangle, not pixels × triangles. As sigma -> 0, S becomes the hard
silhouette (pixel centres inside any triangle of the group).

A caller may pass the hard coverage of triangles whose soft terms it leaves out (``base``): inside a
region tiled by triangles, S is 1 up to the sigmoid's tail and carries no gradient, so evaluating only
the triangles on the region's border, and the interior by its sigma -> 0 limit, gives the same
silhouette and gradients at a fraction of the cost.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: D_ij below this is treated as 0 (the sigmoid's tail beyond sqrt(sigma·ln(1/CUTOFF)) pixels).
CUTOFF = 1e-4


def _point_triangle_sq_distance(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distance from points p (N, 2) to triangles (a, b, c) (N, 2 each) and whether p is inside."""
    d2 = None
    crosses = []
    for u, v in ((a, b), (b, c), (c, a)):
        e, w = v - u, p - u
        t = ((w * e).sum(1) / (e * e).sum(1).clamp(min=1e-12)).clamp(0, 1)
        q = w - t[:, None] * e
        dist = (q * q).sum(1)
        d2 = dist if d2 is None else torch.minimum(d2, dist)
        crosses.append(e[:, 0] * w[:, 1] - e[:, 1] * w[:, 0])
    c0, c1, c2 = (x.detach() for x in crosses)
    inside = ((c0 >= 0) & (c1 >= 0) & (c2 >= 0)) | ((c0 <= 0) & (c1 <= 0) & (c2 <= 0))
    return d2, inside


def soft_silhouettes(
    xy: Tensor, triangles: Tensor, groups: Tensor, n_groups: int, size: int, sigma: float, base: Tensor | None = None
) -> Tensor:
    """xy (V, 2) screen points, triangles (T, 3) vertex ids, groups (T,) in [0, n_groups) -> soft
    silhouettes (n_groups, size, size) in [0, 1], differentiable in xy. sigma in pixels². ``base``
    (n_groups, size, size) in [0, 1], optional: coverage aggregated with the triangles' (see above)."""
    out = xy.new_zeros(n_groups * size * size)
    keep = 1 - base.reshape(-1) if base is not None else 1
    if len(triangles) == 0:
        return (1 - keep * torch.exp(-out)).view(n_groups, size, size)
    corners = xy[triangles]  # (T, 3, 2)
    reach = math.sqrt(sigma * math.log(1 / CUTOFF))
    with torch.no_grad():
        lo = (corners.min(1).values - reach).ceil().clamp(0, size - 1).long()
        hi = (corners.max(1).values + reach).floor().clamp(0, size - 1).long()
        width, height = (hi - lo + 1).unbind(1)
        onscreen = (corners.max(1).values + reach >= 0).all(1) & (corners.min(1).values - reach <= size - 1).all(1)
        count = torch.where(onscreen, width * height, torch.zeros_like(width))
        tri = torch.repeat_interleave(torch.arange(len(triangles), device=xy.device), count)
        start = torch.cumsum(count, 0) - count
        local = torch.arange(len(tri), device=xy.device) - start[tri]
        px = lo[tri, 0] + local % width[tri]
        py = lo[tri, 1] + local // width[tri]
        key = (groups[tri] * size + py) * size + px
    p = torch.stack([px, py], 1).to(xy.dtype)
    c = corners[tri]
    d2, inside = _point_triangle_sq_distance(p, c[:, 0], c[:, 1], c[:, 2])
    z = torch.where(inside, d2, -d2) / sigma
    out = out.index_add(0, key, torch.nn.functional.softplus(z))
    return (1 - keep * torch.exp(-out)).view(n_groups, size, size)

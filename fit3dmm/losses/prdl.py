"""Part Re-projection Distance Loss (3DDFA-V3, CVPR 2024).

Each part's point set is described, from a grid of anchors, by the nearest, farthest and mean distance
from each anchor; the loss is the squared difference of the predicted and target descriptors, averaged
over anchors and summed over parts. min and max route each anchor's gradient to one point, which moves
along the line to that anchor until its distance matches the target's (the paper's Eq. 11).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.facemodel import PART_NAMES
from ..sampling import farthest_point_sampling
from .base import Frame, Loss, register

#: Anchors per side of the square crop grid. Measured on CelebAMask-HQ fits (README, "PRDL settings").
ANCHOR_GRID = 16
SKIN_POINTS = 3000


def descriptors(points: Tensor, anchors: Tensor) -> Tensor:
    """(N, 2) points, (A, 2) anchors -> (A, 3): nearest, farthest and mean Euclidean distance."""
    # The matrix-product form of cdist loses precision at small distances; the direct form is also faster here.
    d = torch.cdist(anchors, points, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.stack([d.min(1).values, d.max(1).values, d.mean(1)], dim=1)


def anchor_grid(size: int, per_side: int, device: torch.device | None = None) -> Tensor:
    """(per_side², 2) anchors evenly covering a size×size crop, at the centres of a per_side² tiling."""
    step = size / per_side
    c = (torch.arange(per_side, dtype=torch.float32, device=device) + 0.5) * step - 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.ravel(), yy.ravel()], 1)


def mask_points(mask: Tensor, max_points: int | None = None) -> Tensor:
    """(N, 2) float pixel coordinates (x, y) of a mask; reduced by FPS to max_points if given.

    Mask pixels are uniformly dense, so a strided sub-grid of about 4x max_points is taken before FPS to
    bound its cost; FPS then evens out what the stride leaves.
    """
    ys, xs = torch.nonzero(mask, as_tuple=True)
    pts = torch.stack([xs, ys], 1).float()
    if max_points is None or len(pts) <= max_points:
        return pts
    stride = int((len(pts) / (4 * max_points)) ** 0.5)
    if stride > 1:
        keep = (xs % stride == 0) & (ys % stride == 0)
        pts = pts[keep]
    return pts[farthest_point_sampling(pts, max_points)]


@register
class PRDL(Loss):
    name = "prdl"
    needs_raster = True

    def __init__(self, model, target, grid: int = ANCHOR_GRID, part_weights: dict[str, float] | None = None):
        super().__init__(model, target)
        self.anchors = anchor_grid(target.size, grid, device=target.image.device)
        self.parts = []  # (name, weight, vertex ids, target descriptor); empty target parts get weight 0
        for name in PART_NAMES:
            pts = mask_points(target.part_masks[name], SKIN_POINTS if name == "skin" else None)
            ids = model.part_vertices(name)
            if len(pts) == 0 or len(ids) == 0:
                continue
            weight = 1.0 if part_weights is None else part_weights.get(name, 1.0)
            self.parts.append((name, weight, ids, descriptors(pts, self.anchors)))

    def predicted_points(self, frame: Frame, name: str, ids: Tensor) -> Tensor:
        """Visible projected points of a part, without those on hair/occluders or (skin) above the brows."""
        xy = frame.screen[ids, :2]
        keep = frame.visible[ids] & ~self.target.pixel_lookup(self.target.occluded, xy)
        if name == "skin":
            keep &= ~self.target.above_brows(xy.detach())
        return xy[keep]

    def __call__(self, frame: Frame) -> Tensor:
        total = frame.screen.new_zeros(())
        for name, weight, ids, target_desc in self.parts:
            pts = self.predicted_points(frame, name, ids)
            if len(pts) == 0:  # part hidden in the fit (e.g. lids closed): no gradient to give
                continue
            diff = descriptors(pts, self.anchors) - target_desc
            total = total + weight * (diff**2).sum(1).mean()
        return total

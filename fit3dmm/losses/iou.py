"""Renderer IoU baseline (the paper's ablation): per part, the soft IoU between the part's soft
silhouette (:mod:`fit3dmm.render.soft`) and the target mask, loss = sum over parts of 1 - IoU.

Same preprocessing as the point-set losses: the parts' triangles are drawn only where all three corners
are visible (the hard pass's visibility), and pixels on hair/occluders, and for skin above the brow
line, count on neither side. Only the triangles on or next to a part's border get soft terms; the rest
of the part is its hard coverage from the fit's z-buffer pass (see :mod:`fit3dmm.render.soft`). On a
fitted face this gives the same loss as all-soft SoftRas within 2% at a third to a fifth of its cost
(60-100 ms against 350 ms forward and backward).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..models.facemodel import PART_NAMES
from ..render.soft import soft_silhouettes
from ..target import above_line
from .base import Frame, Loss, register

#: Softness in crop pixels² (SoftRas's sigma = 1e-4 in [-1, 1] screen units is 1.25 px² at 224²).
SIGMA = 1.25
#: Rings of interior triangles around a part's border that keep soft terms. With none, pixels inside the
#: border triangles miss their neighbours' terms and fall to ~0.75 (SoftRas gives ~0.97 there: our
#: triangles are ~2 px, the sigmoid reaches 3.4 px). One ring brings the largest difference to all-soft
#: SoftRas from 0.36 to 0.08 (tests/test_baselines.py's grid) at 1.6x the cost of none.
SOFT_RINGS = 1


def triangle_parts(parts: Tensor, triangles: Tensor) -> Tensor:
    """(T,) part index of each triangle: the part of at least two corners, else the first corner's;
    -1 where that is unlabelled."""
    p = parts[triangles]  # (T, 3)
    return torch.where(p[:, 1] == p[:, 2], p[:, 1], p[:, 0])


def triangle_neighbours(triangles: np.ndarray) -> np.ndarray:
    """(T, 3) the triangle across each edge (corners k, k+1) of each triangle, -1 on the mesh border."""
    edges = np.sort(np.stack([triangles, np.roll(triangles, -1, axis=1)], -1).reshape(-1, 2), axis=1)
    _, key = np.unique(edges, axis=0, return_inverse=True)
    order = np.argsort(key.ravel(), kind="stable")
    k = key.ravel()[order]
    shared = np.nonzero(k[1:] == k[:-1])[0]  # consecutive half-edges with the same edge: neighbours
    out = np.full(len(edges), -1, dtype=np.int64)
    a, b = order[shared], order[shared + 1]
    out[a], out[b] = b // 3, a // 3
    return out.reshape(-1, 3)


@register
class SoftIoU(Loss):
    """Sum over parts of 1 - soft IoU. Each fit triangle belongs to the part of its majority corners
    (:func:`triangle_parts`); parts without a target mask are left out, as in PRDL."""

    name = "iou"
    needs_raster = True
    needs_parts = True

    def __init__(self, model, target, sigma: float = SIGMA, part_weights: dict[str, float] | None = None):
        super().__init__(model, target)
        self.sigma = sigma
        tris = model.fit_triangles
        device = tris.device
        part_of = triangle_parts(model.parts, tris)
        present = [k for k in range(len(PART_NAMES)) if (part_of == k).any()]
        self.part_names = [PART_NAMES[k] for k in present]
        group = torch.full((len(PART_NAMES),), -1, dtype=torch.long, device=device)
        group[present] = torch.arange(len(present), device=device)
        groups = group[part_of.clamp(min=0)].masked_fill(part_of < 0, -1)
        self.triangles, self.groups = tris[groups >= 0], groups[groups >= 0]
        # Index into the fit's triangles, where the hard pass's triangle ids point.
        self.fit_index = torch.nonzero(groups >= 0).squeeze(1)
        nb = triangle_neighbours(self.triangles.cpu().numpy())
        self.neighbours = torch.from_numpy(nb).to(device)
        # (B, P, S, S) target masks, and where each counts: not on occluders, and (skin) not above the brows.
        self.masks = torch.stack([target.part_masks[n] for n in self.part_names], 1).float()
        size = target.size
        forehead = torch.stack([torch.from_numpy(above_line(t.brow_line, (size, size))) for t in target.targets]).to(device)
        valid = ~target.occluded
        self.valid = torch.stack([valid & ~forehead if n == "skin" else valid for n in self.part_names], 1).float()
        weights = torch.tensor([1.0 if part_weights is None else part_weights.get(n, 1.0) for n in self.part_names],
                               device=device)
        self.weights = weights * (self.masks.flatten(2).amax(2) > 0)  # (B, P): a photo's empty target part is left out

    def silhouettes(self, frame: Frame) -> Tensor:
        """(B, P, S, S) soft silhouettes of the parts' triangles whose corners are all visible."""
        seen = frame.visible[:, self.triangles].all(-1)  # (B, T)
        nb = self.neighbours.clamp(min=0)
        inner = (self.neighbours >= 0) & seen[:, nb] & (self.groups[nb] == self.groups[:, None])
        interior = seen & inner.all(-1)
        soft = seen & ~interior
        for _ in range(SOFT_RINGS):  # the interior triangles near the border keep their soft terms too
            soft = soft | (seen & (soft[:, nb] & inner).any(-1))
        # Hard coverage of the interior triangles: the z-buffer's front triangle at each pixel.
        B, V = frame.screen.shape[:2]
        size, n = self.target.size, len(self.part_names)
        n_fit = self.model.fit_triangles.shape[0]
        group_of = torch.full((B, n_fit + 1), -1, dtype=torch.long, device=seen.device)
        group_of[:, self.fit_index] = torch.where(interior, self.groups, -1)
        front = group_of.gather(1, frame.frags.tri_id.reshape(B, -1).remainder(n_fit + 1))  # -1 (uncovered): the last entry
        base = (front[:, None] == torch.arange(n, device=seen.device)[:, None]).float()  # (B, P, S*S)
        # The soft triangles of all photos as one set: photo b's parts are groups b*P .. b*P + P-1.
        photo, tri = torch.nonzero(soft, as_tuple=True)
        triangles = self.triangles[tri] + (photo * V)[:, None]
        groups = self.groups[tri] + photo * n
        xy = frame.screen[..., :2].reshape(B * V, 2)
        out = soft_silhouettes(xy, triangles, groups, B * n, size, self.sigma, base.view(B * n, size, size))
        return out.view(B, n, size, size)

    def __call__(self, frame: Frame) -> Tensor:
        if not self.part_names:
            return frame.screen.new_zeros(frame.screen.shape[0])
        s = self.silhouettes(frame) * self.valid
        m = self.masks * self.valid
        inter = (s * m).sum((-2, -1))
        union = (s + m - s * m).sum((-2, -1)).clamp(min=1e-6)
        return (self.weights * (1 - inter / union)).sum(1)

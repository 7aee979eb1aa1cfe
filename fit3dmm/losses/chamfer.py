"""Chamfer-family baselines between the predicted and target part point sets (the paper's ablation,
Figs. 8 and 9): the symmetric chamfer distance and the density-aware chamfer distance (DCD, Wu et al.,
NeurIPS 2021). Distances are in crop pixels; each part's term is averaged over its points."""

from __future__ import annotations

import torch
from scipy.spatial import cKDTree
from torch import Tensor

from .base import register
from .parts import PairwiseSetLoss, nearest

#: DCD's length scale in crop pixels (alpha = 1 / scale²). Wu et al. use alpha = 1000 on shapes of
#: about unit size, a length scale of ~3% of the shape; 3% of a 150 px face is 4.5 px.
DCD_SCALE = 4.5


@register
class Chamfer(PairwiseSetLoss):
    """Mean squared distance from each predicted point to its nearest target point, plus the same from
    the target to the prediction."""

    name = "chamfer"

    def part_term(self, pred: Tensor, target: Tensor, target_tree: cKDTree | None = None) -> Tensor:
        return nearest(pred, target, target_tree)[0].mean() + nearest(target, pred)[0].mean()


def dcd_direction(a: Tensor, b: Tensor, alpha: float, b_tree: cKDTree | None = None) -> Tensor:
    """DCD from a (N, 2) to b (M, 2): mean over a of 1 - exp(-alpha d²) / n, with d the distance to the
    nearest b and n how many points of a share that nearest b, relative to the |a|/|b| expected when the
    two sets have the same density. So a b point that collects many a points (a cluster) gives each
    little credit, and a point far from b gives none: the loss asks for matching local density, not
    only overlap. Zero when the sets coincide with equal density (minimal, not zero, for different
    sizes)."""
    d2, idx = nearest(a, b, b_tree)
    shared = torch.bincount(idx, minlength=len(b))[idx].float() * (len(b) / len(a))
    return (1 - torch.exp(-alpha * d2) / shared).mean()


@register
class DensityAwareChamfer(PairwiseSetLoss):
    """Density-aware chamfer distance, averaged over both directions."""

    name = "dcd"

    def part_term(self, pred: Tensor, target: Tensor, target_tree: cKDTree | None = None) -> Tensor:
        alpha = 1.0 / DCD_SCALE**2
        return 0.5 * (dcd_direction(pred, target, alpha, target_tree) + dcd_direction(target, pred, alpha))

"""ICP-style baselines (the paper's ablation): one-directional nearest-neighbour distances between the
predicted and target part point sets, as an ICP step would minimize them. Mean squared crop pixels."""

from __future__ import annotations

from scipy.spatial import cKDTree
from torch import Tensor

from .base import register
from .parts import PairwiseSetLoss, nearest


@register
class ICP(PairwiseSetLoss):
    """From each target pixel to its nearest predicted point: pulls the prediction over the whole mask,
    but predicted points outside the mask cost nothing."""

    name = "icp"

    def part_term(self, pred: Tensor, target: Tensor, target_tree: cKDTree | None = None) -> Tensor:
        return nearest(target, pred)[0].mean()  # the tree to search is the prediction's


@register
class ICPReverse(PairwiseSetLoss):
    """From each predicted point to its nearest target pixel: pulls every point into the mask, but
    nothing asks the prediction to cover all of it."""

    name = "icp-rev"

    def part_term(self, pred: Tensor, target: Tensor, target_tree: cKDTree | None = None) -> Tensor:
        return nearest(pred, target, target_tree)[0].mean()

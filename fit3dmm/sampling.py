"""Farthest point sampling, used for PRDL's skin sets (per model and per target image)."""

from __future__ import annotations

import torch
from torch import Tensor


def farthest_point_sampling(points: Tensor, k: int, start: int = 0) -> Tensor:
    """Indices (min(k, N),) of points (N, D) greedily chosen to be farthest from those already chosen.

    Deterministic: starts at ``start``. O(N·k) with one vector update per chosen point.
    """
    n = points.shape[0]
    if k >= n:
        return torch.arange(n, device=points.device)
    chosen = torch.empty(k, dtype=torch.long, device=points.device)
    dist = torch.full((n,), float("inf"), device=points.device, dtype=points.dtype)
    idx = torch.tensor(start, device=points.device)
    for i in range(k):
        chosen[i] = idx
        dist = torch.minimum(dist, ((points - points[idx]) ** 2).sum(-1))
        idx = torch.argmax(dist)
    return chosen

"""Farthest point sampling, used for PRDL's skin sets (per model and per target image)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def farthest_point_sampling(points: Tensor, k: int) -> Tensor:
    """Indices (min(k, N),) of points (N, D) greedily chosen to be farthest from those already chosen.

    Deterministic: starts at point 0. O(N·k) with one vector update per chosen point.
    """
    n = points.shape[0]
    if k >= n:
        return torch.arange(n, device=points.device)
    return farthest_point_sampling_batch(points[None], torch.tensor([n], device=points.device), k)[0]


def farthest_point_sampling_batch(points: Tensor, lengths: Tensor, k: int) -> Tensor:
    """(B, k) indices: :func:`farthest_point_sampling` (from point 0) of each of B sets at once, the sets
    padded into points (B, N, D) with their sizes in lengths (B,), each larger than k. One pass of k steps
    for the whole batch: the per-step overhead, most of the cost for a few thousand points, is paid once.

    In numpy on the CPU whatever the device: 3000 of 12,000 pixels took 0.12 s a set here, against 0.24 s
    for the same loop in single-threaded torch and 1.6 s in torch's (B, N, 2) form with two threads.
    """
    p = points.detach().cpu().numpy()
    b, n, dims = p.shape
    rows = np.arange(b)
    cols = [np.ascontiguousarray(p[..., j]) for j in range(dims)]
    # Padding starts at -inf, so it is never the farthest.
    dist = np.where(np.arange(n)[None] < lengths.cpu().numpy()[:, None], np.inf, -np.inf).astype(p.dtype)
    chosen = np.empty((b, k), np.int64)
    idx = np.zeros(b, np.int64)
    for i in range(k):
        chosen[:, i] = idx
        step = np.zeros((b, n), p.dtype)
        for c in cols:
            d = c - c[rows, idx][:, None]
            step += d * d
        np.minimum(dist, step, out=dist)
        idx = dist.argmax(1)
    return torch.from_numpy(chosen).to(points.device)

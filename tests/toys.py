"""Small synthetic fit targets for the losses' tests."""

import numpy as np
import torch

from fit3dmm.losses import Frame
from fit3dmm.models.facemodel import PART_NAMES
from fit3dmm.target import CropTransform, FitTarget, TargetBatch


class _Parts:
    """Stands in for a FaceModel: the point-set losses only ask it for each part's points (its vertices)."""

    def __init__(self, ids):
        self.ids = ids

    def part_points(self, name):
        return vertex_points(self.ids[name])


def vertex_points(ids):
    """A FaceModel.part_points answer for a part that is its vertices: ids (N, 4), weights (N, 4), None."""
    weights = torch.zeros(len(ids), 4)
    weights[:, 0] = 1
    return ids[:, None].expand(-1, 4), weights, None


def toy_part_sets(loss_cls, size=32, empty=("left_eyebrow",), **loss_kwargs):
    """A batch of one target with one small square blob per part (none for the `empty` parts) and a model
    whose vertices sit exactly on the target pixels. Returns (loss, frame, vertex ids per part); the
    frame's screen is (1, N, 3)."""
    masks, ids, verts = {}, {}, []
    for k, name in enumerate(PART_NAMES):
        m = torch.zeros(size, size, dtype=torch.bool)
        if name not in empty:
            r, c = 3 + 3 * (k % 4), 3 + 12 * (k // 4)
            m[r : r + 2, c : c + 3] = True
        masks[name] = m
        ys, xs = torch.nonzero(m, as_tuple=True)
        pts = torch.stack([xs, ys], 1).float() if len(xs) else torch.tensor([[5.0, 5.0]])
        ids[name] = torch.arange(len(verts), len(verts) + len(pts))
        verts.extend(pts.tolist())
    zeros = torch.zeros(size, size, dtype=torch.bool)
    target = FitTarget(image=torch.zeros(size, size, 3), landmarks68=torch.zeros(68, 2),
                       labels=np.zeros((size, size), np.uint8), part_masks=masks,
                       occluded=zeros, face_mask=zeros, brow_line=None, crop=CropTransform(1.0, (0.0, 0.0), size))
    screen = torch.cat([torch.tensor(verts), torch.ones(len(verts), 1)], 1)[None].requires_grad_(True)
    frame = Frame(vertices=screen, screen=screen, rotation=torch.eye(3)[None], params={},
                  visible=torch.ones(1, len(verts), dtype=torch.bool))
    return loss_cls(_Parts(ids), TargetBatch.stack([target]), **loss_kwargs), frame, ids

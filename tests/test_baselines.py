"""The baseline segmentation losses (iou, chamfer, dcd, icp, icp-rev) and the soft silhouette renderer."""

import numpy as np
import pytest
import torch
from toys import toy_part_sets

from fit3dmm.losses import Frame
from fit3dmm.losses.chamfer import Chamfer, DensityAwareChamfer, dcd_direction
from fit3dmm.losses.icp import ICP, ICPReverse
from fit3dmm.losses.iou import SoftIoU, triangle_neighbours
from fit3dmm.losses.prdl import PRDL
from fit3dmm.metrics import part_iou
from fit3dmm.models.facemodel import PART_NAMES
from fit3dmm.render import rasterize
from fit3dmm.render.soft import soft_silhouettes
from fit3dmm.target import CropTransform, FitTarget, TargetBatch

POINT_SET_LOSSES = (Chamfer, DensityAwareChamfer, ICP, ICPReverse, PRDL)


def _descend(loss, frame, steps=40, lr=0.3):
    """Plain gradient steps on a shared 2D offset of every screen point; returns the loss values."""
    base = frame.screen.detach()
    offset = torch.tensor([2.5, -1.5, 0.0], requires_grad=True)
    opt = torch.optim.Adam([offset], lr=lr)
    values = []
    for _ in range(steps):
        frame.screen = base + offset
        value = loss(frame)
        values.append(value.item())
        opt.zero_grad()
        value.backward()
        opt.step()
    return values


@pytest.mark.parametrize("loss_cls", POINT_SET_LOSSES, ids=lambda c: c.name)
def test_point_set_loss_is_zero_at_the_target_and_falls_under_gradient_steps(loss_cls):
    # The toy's vertices are the mask's pixels: no mesh to weigh PRDL's mean by area, nor need to.
    loss, frame, _ = toy_part_sets(loss_cls, **({"area_weighted": False} if loss_cls is PRDL else {}))
    assert loss(frame).item() == pytest.approx(0.0, abs=1e-5)
    values = _descend(loss, frame)
    assert values[0] > 0.05
    assert values[-1] < 0.2 * values[0]


def test_chamfer_and_icp_values_on_a_hand_computed_case():
    a = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    # a -> b: 1 and 17 (mean 9); b -> a: 1.
    assert Chamfer.part_term(None, a, b).item() == pytest.approx(10.0)
    assert ICP.part_term(None, a, b).item() == pytest.approx(1.0)  # target b to prediction a
    assert ICPReverse.part_term(None, a, b).item() == pytest.approx(9.0)


def test_dcd_prefers_matching_density():
    """Same region, one set clustered on a few points: DCD sees the difference, chamfer's b->a does not."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(400, 2, generator=g) * 20
    even = torch.rand(400, 2, generator=g) * 20
    clustered = torch.cat([target[:20]] * 20)
    assert dcd_direction(target, even, 1 / 4.5**2) < dcd_direction(target, clustered, 1 / 4.5**2)
    assert dcd_direction(target, target, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def _random_triangles(n=12, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 1, 2, generator=g) * (size - 10) + 5
    xy = (centres + torch.randn(n, 3, 2, generator=g) * 4).reshape(-1, 2)
    return xy, torch.arange(3 * n).reshape(n, 3)


def test_soft_silhouette_converges_to_the_hard_one():
    xy, tris = _random_triangles()
    screen = torch.cat([xy, torch.ones(len(xy), 1)], 1)
    hard = (rasterize(screen[None], tris, 40, 40).tri_id[0] >= 0).float()
    errors = []
    for sigma in (3.0, 1.0, 0.3, 0.03, 1e-3, 1e-4):
        soft = soft_silhouettes(xy, tris, torch.zeros(len(tris), dtype=torch.long), 1, 40, sigma)[0]
        errors.append((soft - hard).abs().mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.003


def test_soft_silhouette_groups_are_separate_images():
    xy, tris = _random_triangles(n=6)
    groups = torch.tensor([0, 1, 0, 1, 0, 1])
    both = soft_silhouettes(xy, tris, groups, 2, 40, 1.0)
    for g in (0, 1):
        alone = soft_silhouettes(xy, tris[groups == g], torch.zeros(3, dtype=torch.long), 1, 40, 1.0)[0]
        assert torch.allclose(both[g], alone, atol=1e-6)


class _GridModel:
    """Stands in for a FaceModel: a flat n x n vertex grid, all of one part (nose), as the iou loss sees it."""

    def __init__(self, n):
        ij = torch.arange(n)
        a = (ij[:-1, None] * n + ij[None, :-1]).ravel()
        quads = torch.stack([a, a + 1, a + n, a + 1, a + n + 1, a + n], 1).reshape(-1, 3)
        self.fit_triangles = quads
        self.parts = torch.full((n * n,), PART_NAMES.index("nose"), dtype=torch.long)


def _iou_toy(size=48, n=11, spacing=1.9, origin=12.3, shift=(3.0, -2.0)):
    """A square grid mesh of the nose at origin, and a target nose mask of the same square moved by shift."""
    model = _GridModel(n)
    ys, xs = torch.meshgrid(torch.arange(n) * spacing + origin, torch.arange(n) * spacing + origin, indexing="ij")
    screen = torch.stack([xs.ravel(), ys.ravel(), torch.ones(n * n)], 1)[None]
    mask = torch.zeros(size, size, dtype=torch.bool)
    lo, hi = origin + torch.tensor(shift), origin + torch.tensor(shift) + (n - 1) * spacing
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask[(xx >= lo[0]) & (xx <= hi[0]) & (yy >= lo[1]) & (yy <= hi[1])] = True
    masks = {name: mask if name == "nose" else torch.zeros_like(mask) for name in PART_NAMES}
    zeros = torch.zeros(size, size, dtype=torch.bool)
    target = FitTarget(image=torch.zeros(size, size, 3), landmarks68=torch.zeros(68, 2),
                       labels=np.zeros((size, size), np.uint8), part_masks=masks, occluded=zeros, face_mask=zeros,
                       brow_line=None, crop=CropTransform(1.0, (0.0, 0.0), size))
    frame = Frame(vertices=screen, screen=screen, rotation=torch.eye(3)[None], params={},
                  visible=torch.ones(1, n * n, dtype=torch.bool), frags=rasterize(screen, model.fit_triangles, size, size))
    return SoftIoU(model, TargetBatch.stack([target])), frame


def test_iou_loss_border_shortcut_matches_full_soft_silhouette():
    """Soft terms near the border plus the hard interior give SoftRas's silhouette of all triangles."""
    loss, frame = _iou_toy()
    nose = loss.part_names.index("nose")
    fast = loss.silhouettes(frame)[0, nose]
    full = soft_silhouettes(frame.screen[0, :, :2], loss.triangles, loss.groups, len(loss.part_names), 48, loss.sigma)[nose]
    inside = frame.frags.tri_id[0] >= 0
    assert (fast - full).abs().max().item() < 0.1
    assert (fast[~inside] - full[~inside]).abs().max().item() < 0.05
    assert fast[~inside].max() > 0.1  # a soft edge, not the hard silhouette


def test_iou_loss_is_minimal_at_the_target_and_falls_under_gradient_steps():
    loss, frame = _iou_toy(shift=(0.0, 0.0))
    at_target = loss(frame).item()
    loss, frame = _iou_toy()
    base = frame.screen.detach()
    offset = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([offset], lr=0.3)
    values = []
    for _ in range(40):
        frame.screen = base + offset
        frame.frags = rasterize(frame.screen.detach(), loss.model.fit_triangles, 48, 48)
        value = loss(frame)
        values.append(value.item())
        opt.zero_grad()
        value.backward()
        opt.step()
    assert values[0] > at_target + 0.1
    assert values[-1] < at_target + 0.05
    assert offset[0].item() == pytest.approx(3.0, abs=0.7) and offset[1].item() == pytest.approx(-2.0, abs=0.7)


def test_triangle_neighbours_of_two_triangles():
    nb = triangle_neighbours(np.array([[0, 1, 2], [2, 1, 3]]))
    assert nb.tolist() == [[1 if {a, b} == {1, 2} else -1 for a, b in ((0, 1), (1, 2), (2, 0))],
                           [0 if {a, b} == {1, 2} else -1 for a, b in ((2, 1), (1, 3), (3, 2))]]


def test_part_iou_on_synthetic_masks_with_known_overlap():
    pred = np.zeros((50, 50), np.uint8)
    truth = np.zeros((50, 50), np.uint8)
    pred[10:20, 10:20] = 4  # left eye 10x10
    truth[10:20, 15:25] = 4  # overlaps 10x5: IoU 50 / 150
    pred[30:40, 30:40] = 2  # nose identical
    truth[30:40, 30:40] = 2
    truth[0:5, 0:5] = 11  # upper lip missed: IoU 0
    scores = part_iou(pred, truth, ("left_eye", "nose", "up_lip", "right_eye"))
    assert scores["left_eye"] == pytest.approx(1 / 3)
    assert scores["nose"] == 1.0
    assert scores["up_lip"] == 0.0
    assert np.isnan(scores["right_eye"])  # in neither map

"""PRDL maths on small synthetic cases."""

import numpy as np
import pytest
import torch
from toys import toy_part_sets, vertex_points

from fit3dmm.losses import Frame
from fit3dmm.losses.parts import mask_points
from fit3dmm.losses.prdl import PRDL, anchor_grid, descriptors
from fit3dmm.models.facemodel import PART_NAMES
from fit3dmm.target import CropTransform, FitTarget, TargetBatch, brow_tangent_line, lip_coverage, lip_ring, make_target


def test_descriptors_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    points, anchors = torch.rand(37, 2, generator=g) * 50, torch.rand(11, 2, generator=g) * 50
    got = descriptors(points, anchors)
    for a in range(len(anchors)):
        d = [float(np.hypot(*(points[i] - anchors[a]).tolist())) for i in range(len(points))]
        assert got[a].tolist() == pytest.approx([min(d), max(d), sum(d) / len(d)], rel=1e-5)


def _toy(**kwargs):
    return toy_part_sets(PRDL, grid=4, area_weighted=False, **kwargs)


def test_prdl_is_zero_when_sets_agree_and_positive_otherwise():
    loss, frame, ids = _toy()
    assert loss(frame).item() == pytest.approx(0.0, abs=1e-6)
    moved = frame.screen.detach().clone()
    moved[0, ids["nose"], 0] += 2.0
    frame.screen = moved
    assert loss(frame).item() > 0.1


def test_empty_target_part_is_ignored():
    loss, frame, ids = _toy(empty=("left_eyebrow",))
    assert loss.weights[0, loss.part_names.index("left_eyebrow")] == 0
    loss(frame).backward()
    assert frame.screen.grad[0, ids["left_eyebrow"]].abs().sum() == 0


def test_gradient_moves_point_along_line_to_anchor():
    """Paper's Eq. 11: with one anchor, a predicted point farther than the target's nearest distance is
    pulled straight towards the anchor, and one that is nearer is pushed straight away."""
    anchor = torch.tensor([[0.0, 0.0]])
    target = descriptors(torch.tensor([[3.0, 4.0]]), anchor)  # distance 5 for all three statistics
    for start, sign in (([6.0, 8.0], 1.0), ([1.5, 2.0], -1.0)):
        p = torch.tensor([start], requires_grad=True)
        ((descriptors(p, anchor) - target) ** 2).sum().backward()
        step = -p.grad[0]
        to_anchor = (anchor[0] - p.detach()[0]) / p.detach()[0].norm()
        cos = torch.dot(step, to_anchor) / step.norm()
        assert cos.item() == pytest.approx(sign, abs=1e-6)


def test_anchor_grid_covers_crop_evenly():
    a = anchor_grid(224, 16)
    assert a.shape == (256, 2)
    assert a.min().item() == pytest.approx(6.5) and a.max().item() == pytest.approx(216.5)


def test_mask_points_fps_reduces_large_masks():
    m = torch.zeros(200, 200, dtype=torch.bool)
    m[20:180, 30:170] = True
    small = torch.zeros(200, 200, dtype=torch.bool)
    small[50:60, 50:60] = True
    other = torch.zeros(200, 200, dtype=torch.bool)
    other[0:150, 100:200] = True
    pts, few, more = mask_points([m, small, other], 3000)
    assert pts.shape == (3000, 2) and few.shape == (100, 2) and more.shape == (3000, 2)  # a small mask is kept whole
    assert m[pts[:, 1].long(), pts[:, 0].long()].all() and other[more[:, 1].long(), more[:, 0].long()].all()
    # FPS spreads the points over the whole mask.
    assert pts[:, 0].min() <= 32 and pts[:, 0].max() >= 167
    # Sampled together, each mask gets the points it would get alone.
    for mask, together in ((m, pts), (other, more)):
        (alone,) = mask_points([mask], 3000)
        assert torch.equal(alone, together)


def test_brow_line_cuts_forehead_above_tilted_brows():
    labels = np.zeros((100, 100), np.uint8)
    labels[40:46, 20:40] = 7  # subject's right brow (image left), higher
    labels[30:36, 60:80] = 6  # left brow, lower y = higher in the image
    line = brow_tangent_line(labels, toward=np.array([50.0, 70.0]))
    a, b, c = line
    above = lambda x, y: a * x + b * y + c > 0  # noqa: E731
    assert above(50, 10) and not above(50, 70)
    # The line touches both brows from above: each brow has pixels on it and none above it.
    for label in (6, 7):
        ys, xs = np.nonzero(labels == label)
        signed = (a * xs + b * ys + c) / np.hypot(a, b)
        assert signed.max() == pytest.approx(0.0, abs=1e-6)


def test_lip_coverage_counts_lip_pixels_inside_the_landmarks_ring():
    lmk = np.zeros((68, 2))
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    lmk[48:60] = np.stack([50 + 30 * np.cos(angles), 50 + 15 * np.sin(angles)], 1)  # outer lip contour
    inner = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    lmk[60:68] = np.stack([50 + 20 * np.cos(inner), 50 + 3 * np.sin(inner)], 1)
    ring = lip_ring(lmk, (100, 100))
    assert ring[40, 50] and ring[60, 50] and not ring[50, 50] and not ring[10, 10]
    labels = np.zeros((100, 100), np.uint8)
    labels[:50][ring[:50]] = 11
    labels[50:][ring[50:]] = 12
    assert lip_coverage(labels, lmk) == pytest.approx(1.0)
    labels[50:][ring[50:]] = 1  # the lower lip lost
    assert lip_coverage(labels, lmk) == pytest.approx(ring[:50].sum() / ring.sum())
    labels[ring] = 1
    assert lip_coverage(labels, lmk) == 0.0
    assert lip_coverage(labels, np.zeros((68, 2))) == 1.0  # no ring: nothing to confirm


def test_batched_loss_equals_per_part_descriptors():
    """The loss's all-parts-at-once evaluation equals the definition applied part by part, with hidden
    points left out, in value and gradient."""
    loss, frame, ids = _toy()
    g = torch.Generator().manual_seed(1)
    moved = (frame.screen.detach() + torch.randn(frame.screen.shape, generator=g)).requires_grad_(True)
    frame.screen = moved
    frame.visible = torch.rand(moved.shape[:2], generator=g) > 0.3
    value = loss(frame)
    value.backward()
    grad = moved.grad.clone()
    moved.grad = None
    expected = 0.0
    for k, name in enumerate(loss.part_names):
        part = ids[name][frame.visible[0, ids[name]]]
        if len(part) and len(loss.target_points[0][k]):
            desc = descriptors(moved[0, part, :2], loss.anchors)
            expected = expected + loss.weights[0, k] * ((desc - loss.target_desc[0, k]) ** 2).sum(1).mean()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(grad, moved.grad, atol=1e-5)


def test_target_preprocessing_cuts_forehead_ears_and_stray_blobs():
    """A synthetic face: skin with level brows whose tops are at row 40, ears, and a stray nose blob."""
    labels = np.zeros((100, 100), np.uint8)
    labels[10:95, 15:85] = 1  # skin, forehead included
    labels[40:45, 25:45] = 7  # brows: tops at row 40
    labels[40:45, 55:75] = 6
    labels[50:70, 45:55] = 2  # nose
    labels[20:22, 80:82] = 2  # a stray 4-pixel nose blob
    labels[45:65, 5:15] = 8  # an ear
    crop = CropTransform(1.0, (0.0, 0.0), 100)
    target = make_target(np.zeros((100, 100, 3), np.uint8), labels, np.full((68, 2), 60.0), crop, torch.device("cpu"))
    skin = target.part_masks["skin"].numpy()
    assert not skin[:40].any()  # the forehead above the brow line is cut...
    assert skin[46:95, 15:85].sum() == (target.labels[46:95, 15:85] == 1).sum() > 0  # ...the face below kept
    assert not (target.labels == 8).any()  # ears removed
    nose = target.part_masks["nose"].numpy()
    assert not nose[20:22, 80:82].any() and nose[50:70, 45:55].all()  # the stray blob dropped, the nose kept
    assert target.face_mask[20, 50]  # the photometric loss still sees the forehead


def test_pixels_the_segmenter_did_not_look_at_are_unknown():
    """All skin in a photo whose segmenter looked at its 60 left columns only, in a crop shifted 10 pixels
    right: the crop's pixels beyond the photo and beyond the segmenter's view are unknown (marked occluded,
    so PRDL drops the model points there), while the labels themselves are untouched."""
    labels = np.ones((100, 100), np.uint8)
    seen = np.zeros((100, 100), bool)
    seen[:, :60] = True
    crop = CropTransform(1.0, (10.0, 0.0), 100)
    args = (np.zeros((100, 100, 3), np.uint8), labels, np.full((68, 2), 50.0), crop, torch.device("cpu"))
    partial, whole = make_target(*args, seen=seen), make_target(*args)
    occluded = partial.occluded.numpy()
    assert occluded[:, :10].all() and not occluded[:, 10:70].any() and occluded[:, 70:].all()
    assert whole.occluded[:, :10].all() and not whole.occluded[:, 10:].any()  # None: the whole photo was seen
    assert torch.equal(partial.part_masks["skin"], whole.part_masks["skin"])


class _UnevenGrid:
    """Stands in for a FaceModel: one part (the nose) meshed as a grid squeezed towards its left side."""

    def __init__(self, n=12, x0=10.0, x1=50.0, y0=12.0, y1=40.0):
        t = torch.linspace(0, 1, n)
        ys, xs = torch.meshgrid(y0 + (y1 - y0) * t, x0 + (x1 - x0) * t**2, indexing="ij")
        self.mean = torch.stack([xs.ravel(), ys.ravel(), torch.zeros(n * n)], 1)
        ij = torch.arange(n)
        a = (ij[:-1, None] * n + ij[None, :-1]).ravel()
        self.fit_triangles = torch.stack([a, a + 1, a + n, a + 1, a + n + 1, a + n], 1).reshape(-1, 3)

    def part_points(self, name):
        return vertex_points(torch.arange(len(self.mean)) if name == "nose" else torch.zeros(0, dtype=torch.long))


def test_area_weighted_mean_matches_an_evenly_covered_target():
    """Vertices crowded on one side of a part that fills its mask exactly: the plain vertex mean sees the
    crowd, the area-weighted mean sees the part, so only the latter is near zero at perfect alignment."""
    model, target = _UnevenGrid(), _nose_target()
    screen = model.mean.clone()[None]
    visible = torch.ones(screen.shape[:2], dtype=torch.bool)
    frame = Frame(vertices=screen, screen=screen, rotation=torch.eye(3)[None], params={}, visible=visible)
    plain = PRDL(model, target, grid=4, area_weighted=False)(frame).item()
    weighted = PRDL(model, target, grid=4)(frame).item()
    assert weighted < 0.1 * plain


def test_anchor_grid_comes_from_the_fit_configuration():
    from fit3dmm.config import FitConfig
    from fit3dmm.losses import make_loss

    model, target = _UnevenGrid(), _nose_target()
    for n in (3, 28):
        assert make_loss("prdl", model, target, FitConfig.create(anchor_grid=n)).anchors.shape == (n * n, 2)
    assert make_loss("prdl", model, target).anchors.shape == (64, 2)
    assert make_loss("chamfer", model, target, FitConfig.create(anchor_grid=3)).name == "chamfer"


def _nose_target() -> TargetBatch:
    """A batch of one 64² target whose only part is a 29 x 41 px nose."""
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[12:41, 10:51] = True
    masks = {name: mask if name == "nose" else torch.zeros_like(mask) for name in PART_NAMES}
    zeros = torch.zeros(64, 64, dtype=torch.bool)
    return TargetBatch.stack([FitTarget(image=torch.zeros(64, 64, 3), landmarks68=torch.zeros(68, 2),
                                        labels=np.zeros((64, 64), np.uint8), part_masks=masks, occluded=zeros,
                                        face_mask=zeros, brow_line=None, crop=CropTransform(1.0, (0.0, 0.0), 64))])

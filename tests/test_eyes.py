"""The eye as the opening between the lids (models/eyes.py) on the real ICT model: the margins found from
the mesh, the opening grid following blinks, and PRDL closing the lids with a gradient."""

import cv2
import numpy as np
import pytest
import torch

from fit3dmm.config import FitConfig
from fit3dmm.fitting import Fitter
from fit3dmm.losses.prdl import PRDL
from fit3dmm.models.facemodel import PART_NAMES
from fit3dmm.target import CropTransform, FitTarget, TargetBatch

SIZE = 224


@pytest.fixture(scope="module")
def fitter(ict_model):
    return Fitter(ict_model, FitConfig(device="cpu"))


def frame_at(fitter, blink_left=0.0, grad=False):
    """A frontal frame (a batch of one) of the mean face filling the crop, with eyeBlink_L set."""
    model = fitter.model
    exp = torch.zeros(model.n_exp)
    exp[model.data.meta["expression_names"].index("eyeBlink_L")] = blink_left
    params = {"angles": torch.zeros(1, 3), "translation": torch.tensor([[0.0, 2.0, 70.0]]), "id": torch.zeros(1, model.n_id),
              "exp": exp[None].requires_grad_(grad)}
    return fitter.frame(params, raster=True), params


def visible_eyeball(fitter, frame, side):
    """(S, S) bool: pixels where the z-buffer shows the eyeball of one side (x > 0: the subject's left)."""
    model = fitter.model
    lo, hi = model.data.meta["regions"]["eyeballs"]
    tris = model.fit_triangles
    eyeball = (tris >= lo).all(1) & ((model.mean[tris[:, 0], 0] > 0) == (side == "left_eye"))
    tri = frame.frags.tri_id[0]
    return (tri >= 0) & eyeball[tri.clamp(min=0)]


def target_with(masks: dict) -> TargetBatch:
    zeros = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    part_masks = {name: masks.get(name, zeros) for name in PART_NAMES}
    return TargetBatch.stack([FitTarget(
        image=torch.zeros(SIZE, SIZE, 3), landmarks68=torch.zeros(68, 2), labels=np.zeros((SIZE, SIZE), np.uint8),
        part_masks=part_masks, occluded=zeros, face_mask=zeros, brow_line=None, crop=CropTransform(1.0, (0.0, 0.0), SIZE))])


def test_margins_run_corner_to_corner_with_the_upper_lid_above(ict_model):
    margins = ict_model.data.lid_margins
    mean = ict_model.data.mean
    assert margins.shape[0] == 4
    for eye, (upper, lower) in (("left", margins[0:2]), ("right", margins[2:4])):
        upper, lower = upper[upper >= 0], lower[lower >= 0]
        assert upper[0] == lower[0] and upper[-1] == lower[-1]  # the corners
        assert (np.diff(mean[upper, 0]) > -0.05).all()  # from smaller to larger x
        assert mean[upper[1:-1], 1].mean() > mean[lower[1:-1], 1].mean()
        assert (mean[upper, 0] > 0).all() == (eye == "left")


def test_opening_covers_the_visible_eyeball_and_follows_blinks(fitter):
    loss = PRDL(fitter.model, target_with({"left_eye": torch.ones(SIZE, SIZE, dtype=torch.bool)}))
    areas = []
    for blink in (0.0, 0.5):
        frame, _ = frame_at(fitter, blink)
        k = loss.part_names.index("left_eye")
        points = loss.points(frame)[0, loss.bounds[k] : loss.bounds[k + 1], :2].detach().numpy()
        seen = visible_eyeball(fitter, frame, "left_eye").numpy()
        hull = cv2.convexHull(points.astype(np.float32))
        poly = np.zeros((SIZE, SIZE), np.uint8)
        cv2.fillPoly(poly, [np.round(hull * 16).astype(np.int32)], 1, shift=4)
        iou = (poly.astype(bool) & seen).sum() / (poly.astype(bool) | seen).sum()
        assert iou > 0.8
        areas.append(poly.sum())
    assert areas[1] < 0.7 * areas[0]


def test_prdl_closes_the_lid_to_match_a_narrower_eye(fitter):
    """The target is the eyeball seen at eyeBlink_L 0.6; from open eyes, PRDL on the eye alone drives
    eyeBlink_L there through the opening's gradient."""
    frame, _ = frame_at(fitter, 0.6)
    target = target_with({"left_eye": visible_eyeball(fitter, frame, "left_eye")})
    loss = PRDL(fitter.model, target)
    k = fitter.model.data.meta["expression_names"].index("eyeBlink_L")
    blink = torch.zeros(1, requires_grad=True)
    _, params = frame_at(fitter, 0.0)
    optim = torch.optim.Adam([blink], lr=0.05)
    slopes = []
    for _ in range(40):
        optim.zero_grad()
        params["exp"] = torch.zeros(1, fitter.model.n_exp).index_put((torch.tensor([0]), torch.tensor([k])), blink)
        loss(fitter.frame(params, raster=True)).backward()
        slopes.append(blink.grad.item())
        optim.step()
        with torch.no_grad():
            blink.clamp_(0, 1)
    assert slopes[0] < 0  # the loss falls as the lid closes
    assert blink.item() == pytest.approx(0.6, abs=0.1)

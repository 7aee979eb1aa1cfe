"""Visibility and contour marching on the real model, rendered synthetically."""

import pytest
import torch

from fit3dmm.config import FitConfig
from fit3dmm.fitting import Fitter
from fit3dmm.losses import make_loss
from fit3dmm.models.ict import FACE


def _params(model, yaw=0.0, blink=0.0):
    exp = torch.zeros(model.n_exp)
    names = model.data.meta["expression_names"]
    exp[names.index("eyeBlink_L")] = exp[names.index("eyeBlink_R")] = blink
    return {"angles": torch.tensor([[0.0, yaw, 0.0]]), "translation": torch.tensor([[0.0, 0.0, 110.0]]),
            "id": torch.zeros(1, model.n_id), "exp": exp[None]}


@pytest.fixture(scope="module")
def fitter(ict_model):
    return Fitter(ict_model, FitConfig())


def test_closed_lids_hide_the_eyeballs(fitter, ict_model):
    eyeballs = torch.arange(FACE[1] - FACE[0], ict_model.n_vertices)
    open_eyes = fitter.frame(_params(ict_model, blink=0.0), raster=True).visible[0, eyeballs]
    closed = fitter.frame(_params(ict_model, blink=1.0), raster=True).visible[0, eyeballs]
    assert open_eyes.sum() > 200
    assert closed.sum() < 0.15 * open_eyes.sum()  # measured 9%: the rest peek through the eye corners


@pytest.mark.parametrize("yaw", [0.6, -0.6])
def test_jaw_landmarks_march_to_the_silhouette(fitter, ict_model, yaw):
    """On a head turned by ~35 degrees, the marched jaw landmarks of the side turning away lie on the
    silhouette (surface normal perpendicular to the viewing ray), where the frontal vertices mostly do not."""
    frame = fitter.frame(_params(ict_model, yaw=yaw), raster=True)
    target = type("T", (), {"landmarks68": torch.zeros(1, 68, 2), "outline_weight": torch.ones(1)})()
    loss = make_loss("landmark", ict_model, target)
    marched = loss.fitted_points(frame)[0, :17]
    marching = [i for i in range(17) if (ict_model.contour[i] >= 0).sum() > 1]
    assert 6 <= len(marching) <= 12 and 8 not in marching
    away = [i for i in marching if (i < 8) == (yaw > 0)]  # the subject's right (0-7) turns away for yaw > 0
    near = [i for i in marching if i not in away]
    screen = frame.screen[0, :, :2]
    cam = frame.vertices[0] @ frame.rotation[0].T + torch.tensor([0.0, 0.0, 110.0])
    facing = ((frame.normals[0] * torch.nn.functional.normalize(cam, dim=1)).sum(1)).abs()  # |cos|, 0 on the silhouette
    for i in away:
        vertex = int((screen - marched[i]).norm(dim=1).argmin())
        assert facing[vertex] < 0.1, f"jaw landmark {i} is not on the silhouette"  # measured 0.00-0.03
    # Measured 0.46-0.57, but the voted vertex of jaw point 0 lies where a 35-degree turn puts the outline.
    frontal = [float(facing[int(ict_model.landmarks68[i])]) for i in away]
    assert sum(f > 0.4 for f in frontal) >= len(away) - 1, frontal
    for i in near:  # on the side facing the camera the marched point stays visible (not behind the ear)
        assert frame.visible[0, int((screen - marched[i]).norm(dim=1).argmin())]


def test_jaw_landmarks_march_as_far_as_the_target_jaw_follows_the_outline(fitter, ict_model):
    """A target whose jaw is the face mesh's (outline weight 0) keeps the fit's jaw on its own vertices; dlib's
    (1) marches it onto the outline; a blend of the two lands in proportion. The other points never move."""
    frame = fitter.frame({k: v.expand(3, *v.shape[1:]) for k, v in _params(ict_model, yaw=0.6).items()}, raster=True)
    target = type("T", (), {"landmarks68": torch.zeros(3, 68, 2), "outline_weight": torch.tensor([0.0, 0.5, 1.0])})()
    points = make_loss("landmark", ict_model, target).fitted_points(frame)
    own = frame.screen[0, ict_model.landmarks68, :2]
    torch.testing.assert_close(points[0], own)
    marched = points[2, :17]
    assert (marched - own[:17]).norm(dim=1).max() > 3  # pixels: on a 35-degree turn the outline is elsewhere
    torch.testing.assert_close(points[1, :17], (own[:17] + marched) / 2)
    torch.testing.assert_close(points[:, 17:], own[None, 17:].expand(3, -1, -1))

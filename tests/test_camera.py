import numpy as np
import pytest
import torch

from fit3dmm.camera import Camera, angles_of, rotation_matrix, solve_pose
from fit3dmm.target import CropTransform


def test_rotation_is_orthonormal_and_composes_in_documented_order():
    ang = torch.tensor([0.3, -0.5, 0.2])
    r = rotation_matrix(ang)
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)
    assert torch.det(r).item() == pytest.approx(1.0, abs=1e-6)
    yaw = rotation_matrix(torch.tensor([0.0, np.pi / 2, 0.0]))
    assert torch.allclose(yaw @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)


def test_projection_of_known_points():
    cam = Camera.for_crop(224, 4.0)
    # Model frame: y up, z toward the viewer; at zero rotation, +y maps to smaller image rows.
    verts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    screen = cam.project(cam.to_camera(verts, torch.zeros(3), torch.tensor([0.0, 0.0, 100.0])))
    assert screen[0].tolist() == pytest.approx([111.5, 111.5, 100.0])
    assert screen[1].tolist() == pytest.approx([111.5 + 896 / 100, 111.5 - 2 * 896 / 100, 100.0])
    assert cam.depth_for_width(10.0, 89.6) == pytest.approx(100.0)


def test_batched_pose_and_projection_equal_one_by_one():
    g = torch.Generator().manual_seed(3)
    cam = Camera.for_crop(224, 4.53)
    verts, angles = torch.randn(4, 50, 3, generator=g), 0.4 * torch.randn(4, 3, generator=g)
    translation = torch.randn(4, 3, generator=g) + torch.tensor([0.0, 0.0, 60.0])
    batched = cam.project(cam.to_camera(verts, angles, translation))
    assert rotation_matrix(angles).shape == (4, 3, 3) and batched.shape == (4, 50, 3)
    for b in range(4):
        one = cam.project(cam.to_camera(verts[b], angles[b], translation[b]))
        assert torch.allclose(batched[b], one, atol=1e-5)


def test_angles_of_inverts_rotation_matrix():
    for angles in ([0.3, -0.5, 0.2], [-0.2, 1.3, -0.4], [0.0, -1.5, 0.0]):
        r = rotation_matrix(torch.tensor(angles, dtype=torch.float64)).numpy()
        assert angles_of(r) == pytest.approx(angles, abs=1e-9)


def test_solve_pose_recovers_a_profile_from_a_frontal_start():
    """Points of a face-sized blob seen at 63° yaw: PnP finds the pose from a frontal start (the rigid stage
    took 200 steps to reach a real profile's), and leaves a frontal face frontal."""
    g = torch.Generator().manual_seed(5)
    cam = Camera.for_crop(224, 4.53)
    points = torch.randn(51, 3, generator=g, dtype=torch.float64) * torch.tensor([4.0, 5.0, 2.0], dtype=torch.float64)
    angles, translation = torch.tensor([0.15, 1.1, -0.2], dtype=torch.float64), torch.tensor([1.0, -2.0, 120.0], dtype=torch.float64)
    pixels = cam.project(cam.to_camera(points, angles, translation))[:, :2].numpy()
    start = np.array([0.0, 0.0, 80.0])
    pose, t = solve_pose(points.numpy(), pixels, cam.focal, cam.center, cam.center, start)
    assert pose == pytest.approx(angles.tolist(), abs=1e-4) and t == pytest.approx(translation.tolist(), abs=1e-3)
    frontal = cam.project(cam.to_camera(points, torch.zeros(3, dtype=torch.float64), torch.from_numpy(start)))[:, :2]
    pose, t = solve_pose(points.numpy(), frontal.numpy(), cam.focal, cam.center, cam.center, start)
    assert pose == pytest.approx((0.0, 0.0, 0.0), abs=1e-6) and t == pytest.approx(start, abs=1e-4)


def test_crop_transform_round_trip_and_warp():
    pts = np.array([[100.0, 150.0], [300.0, 380.0]])
    crop = CropTransform.around(pts, 224, 1.5)
    back = crop.to_photo(crop.to_crop(pts))
    assert np.allclose(back, pts)
    centre = crop.to_crop(pts.mean(0, keepdims=True))[0]
    assert centre == pytest.approx([111.5, 111.5])
    image = np.zeros((500, 500), np.uint8)
    image[148:153, 98:103] = 255
    warped = crop.warp(image, nearest=True)
    x, y = crop.to_crop(np.array([[100.0, 150.0]]))[0].round().astype(int)
    assert warped[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].max() == 255

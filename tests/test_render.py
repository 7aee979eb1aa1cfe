"""Tests for fit3dmm.render: rasterizer against a brute-force reference, interpolation gradients,
visibility, normals and SH shading."""

import math

import numpy as np
import pytest
import torch

from fit3dmm.render import (
    SH_COEFFS,
    Fragments,
    interpolate,
    point_visibility,
    rasterize,
    render_image,
    sh_basis,
    shade,
    vertex_normals,
    vertex_visibility,
)


def _random_soup(seed: int, n_tri: int = 30, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent triangles, partly outside the image, mixed windings and depths."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n_tri, 1, 2, generator=g) * (size + 8) - 4
    xy = centre + (torch.rand(n_tri, 3, 2, generator=g) - 0.5) * size * 0.8
    z = 1 + 4 * torch.rand(n_tri, 3, 1, generator=g)
    screen = torch.cat((xy, z), dim=2).reshape(-1, 3)
    faces = torch.arange(3 * n_tri).reshape(n_tri, 3)
    return screen, faces


def _one(frags: Fragments) -> Fragments:
    """The only image of a batch of one, unbatched (for the per-pixel reference checks)."""
    assert frags.tri_id.shape[0] == 1
    return Fragments(frags.tri_id[0], frags.zbuf[0], frags.bary[0])


def _visible(screen, faces, normals=None):
    """(V,) visibility of one mesh (V, 3) in a 16x16 image."""
    frags = rasterize(screen[None], faces, 16, 16)
    return vertex_visibility(screen[None], faces, frags, None if normals is None else normals[None])[0]


def _brute_force(screen: np.ndarray, faces: np.ndarray, h: int, w: int):
    """Per pixel, per triangle loop in float64. Returns tri_id, zbuf and a mask of pixels whose
    answer is ambiguous (a centre within 1e-4 of an edge, or two depths within 1e-6)."""
    tri_id = np.full((h, w), -1)
    zbuf = np.full((h, w), np.inf)
    ambiguous = np.zeros((h, w), bool)
    for py in range(h):
        for px in range(w):
            hits = []
            for t, (a, b, c) in enumerate(faces):
                (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = screen[a], screen[b], screen[c]
                area2 = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
                if abs(area2) < 1e-10 or min(z0, z1, z2) <= 0:
                    continue
                b1 = ((px - x0) * (y2 - y0) - (py - y0) * (x2 - x0)) / area2
                b2 = ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) / area2
                bs = (1 - b1 - b2, b1, b2)
                if min(bs) < -1e-4:
                    continue
                if min(bs) < 1e-4:
                    ambiguous[py, px] = True
                if min(bs) >= 0:
                    hits.append((1 / (bs[0] / z0 + bs[1] / z1 + bs[2] / z2), t))
            if hits:
                hits.sort()
                zbuf[py, px], tri_id[py, px] = hits[0]
                if len(hits) > 1 and hits[1][0] - hits[0][0] < 1e-6:
                    ambiguous[py, px] = True
    return tri_id, zbuf, ambiguous


@pytest.mark.parametrize("seed", [0, 1])
def test_rasterize_matches_brute_force(seed):
    screen, faces = _random_soup(seed)
    h, w = 32, 28
    frags = _one(rasterize(screen[None], faces, h, w))
    ref_id, ref_z, ambiguous = _brute_force(screen.double().numpy(), faces.numpy(), h, w)
    tri_id = frags.tri_id.numpy()
    assert (tri_id >= 0).sum() > 0.5 * h * w  # the soup overlaps a lot: a meaningful test
    mismatch = tri_id != ref_id
    assert not (mismatch & ~ambiguous).any()
    assert mismatch.sum() <= 3
    both = (tri_id >= 0) & (ref_id >= 0) & ~mismatch
    np.testing.assert_allclose(frags.zbuf.numpy()[both], ref_z[both], rtol=1e-5)
    assert torch.isinf(frags.zbuf[frags.tri_id < 0]).all()


def test_barycentrics_reproduce_pixel_and_depth():
    screen, faces = _random_soup(2)
    frags = _one(rasterize(screen[None], faces, 32, 32))
    mask = frags.tri_id >= 0
    bary = frags.bary[mask]  # (N, 3), perspective-correct
    corners = screen[faces[frags.tri_id[mask]]]  # (N, 3, 3)
    torch.testing.assert_close(bary.sum(1), torch.ones(len(bary)))
    z = frags.zbuf[mask]
    torch.testing.assert_close((bary * corners[..., 2]).sum(1), z)  # depth is linear in these
    screen_bary = bary * corners[..., 2] / z[:, None]
    rows, cols = mask.nonzero().unbind(1)
    xy = (screen_bary[..., None] * corners[..., :2]).sum(1)
    torch.testing.assert_close(xy, torch.stack((cols, rows), 1).float(), atol=1e-3, rtol=0)
    assert (bary > -1e-3).all()


def test_skips_degenerate_and_behind_camera_and_clips():
    screen = torch.tensor(
        [
            [2.0, 2.0, -1.0], [30.0, 2.0, 2.0], [2.0, 30.0, 2.0],  # a vertex behind the camera
            [1.0, 1.0, 1.0], [5.0, 5.0, 1.0], [9.0, 9.0, 1.0],  # collinear
            [-1e4, -1e4, 3.0], [1e4, -1e4, 3.0], [0.0, 1e4, 3.0],  # far outside, covers all
        ]
    )
    faces = torch.arange(9).reshape(3, 3)
    frags = rasterize(screen[None], faces, 16, 16)
    assert (frags.tri_id == 2).all()
    torch.testing.assert_close(frags.zbuf, torch.full((1, 16, 16), 3.0))


def test_big_triangles_full_screen_quad():
    h, w = 1024, 1024
    x0, y0, x1, y1 = -0.5, -0.5, w - 0.5, h - 0.5  # the image's outer corners
    screen = torch.tensor([[x0, y0, 1.0], [x1, y0, 1.0], [x1, y1, 1.0], [x0, y1, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 3, 2]])  # the two windings
    frags = _one(rasterize(screen[None], faces, h, w))
    assert (frags.tri_id >= 0).all()
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # Centres on the diagonal are on the shared edge: both triangles claim them at equal depth,
    # and the smaller face id wins.
    torch.testing.assert_close(frags.tri_id, (rows > cols).long())
    torch.testing.assert_close(frags.bary.sum(-1), torch.ones(h, w))


def test_chunking_gives_the_same_result(monkeypatch):
    import fit3dmm.render.rasterizer as rasterizer

    screen, faces = _random_soup(6, n_tri=60, size=48)
    whole = rasterize(screen[None], faces, 48, 40)
    monkeypatch.setattr(rasterizer, "_CHUNK", 8)  # budget = image width: many row and pixel chunks
    chunked = rasterize(screen[None], faces, 48, 40)
    assert torch.equal(whole.tri_id, chunked.tri_id)
    assert torch.equal(whole.zbuf, chunked.zbuf)


def test_interpolate_perspective_correct():
    screen, faces = _random_soup(3)
    screen = screen[None]
    frags = rasterize(screen, faces, 32, 32)
    depth, pix = interpolate(screen, faces, frags, screen[..., 2:])
    # Camera-space quantities interpolate to exact values only with 1/z weighting.
    torch.testing.assert_close(depth[:, 0], frags.zbuf.reshape(-1)[pix])
    torch.testing.assert_close(pix, (frags.tri_id.reshape(-1) >= 0).nonzero().squeeze(1))
    values, _ = interpolate(screen, faces, frags, torch.ones(1, screen.shape[1], 2))
    torch.testing.assert_close(values, torch.ones(len(pix), 2))


def test_interpolate_gradcheck():
    screen = torch.tensor(
        [[0.3, 0.2, 2.0], [7.6, 1.1, 3.0], [2.2, 6.9, 2.5], [7.1, 7.4, 4.0]], dtype=torch.float64
    )
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    screen = screen[None]
    frags = rasterize(screen, faces, 8, 8)
    assert (frags.tri_id >= 0).sum() > 20
    attrs = torch.randn(1, 4, 2, dtype=torch.float64)

    def f(s, a):
        return interpolate(s, faces, frags, a)[0]

    assert torch.autograd.gradcheck(f, (screen.requires_grad_(), attrs.requires_grad_()))


def test_visibility_occlusion_and_culling():
    # A back triangle at depth 5 whose vertex 0 sits at (6, 6), and a front triangle at depth 2
    # covering that spot with a margin of more than a pixel.
    screen = torch.tensor(
        [
            [6.0, 6.0, 5.0], [14.0, 6.0, 5.0], [6.0, 14.0, 5.0],
            [1.0, 1.0, 2.0], [15.0, 2.0, 2.0], [2.0, 15.0, 2.0],
        ]
    )
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    vis = _visible(screen, faces)
    assert not vis[0] and vis[3:].all()
    assert vis[1] and vis[2]  # outside the occluder
    alone = faces[:1]
    vis = _visible(screen, alone)
    assert vis[0]
    # Normals pointing away from the camera (+z in camera space) cull the vertex.
    normals = torch.tensor([[0.0, 0.0, -1.0]]).repeat(6, 1)
    normals[0, 2] = 1.0
    vis = _visible(screen, alone, normals)
    assert not vis[0] and vis[1]
    # Out of the image.
    far = screen.clone()
    far[0, 0] = 40.0
    assert not _visible(far, alone)[0]


def test_visibility_steep_valley():
    # A V-shaped groove seen from above with steep walls: around the bottom vertices every nearby
    # pixel shows a wall much nearer than the vertex, yet the bottom is visible (own-triangle rule).
    ys, xs = torch.meshgrid(torch.arange(0.0, 12.1, 3.0), torch.arange(0.0, 12.1, 3.0), indexing="ij")
    x, y = xs.flatten() + 1.3, ys.flatten() + 1.7
    screen = torch.stack((x, y, 100 - 10 * (x - 7.3).abs()), 1)
    corner = torch.tensor([r * 5 + c for r in range(4) for c in range(4)])
    quads = torch.stack((corner, corner + 1, corner + 6, corner + 5), 1)
    faces = torch.cat((quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]))
    frags = rasterize(screen[None], faces, 16, 16)
    bottom = ((x == 7.3) & (y > 2) & (y < 13)).nonzero().squeeze(1)  # not on the mesh border
    for v in bottom.tolist():
        near = frags.zbuf[0, int(y[v]) : int(y[v]) + 2, 7:9]
        assert (near * 1.01 < screen[v, 2]).all()  # the depth test alone would hide it
    assert vertex_visibility(screen[None], faces, frags).all()


def test_vertex_normals():
    # Unit sphere: normals equal positions; counter-clockwise faces seen from outside.
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    verts = torch.tensor(sphere.vertices, dtype=torch.float64, requires_grad=True)
    faces = torch.tensor(sphere.faces)
    n = vertex_normals(verts[None], faces)[0]
    torch.testing.assert_close(n.norm(dim=1), torch.ones(len(n), dtype=torch.float64))
    assert ((n * verts).sum(1) > 0.999).all()
    n[:, 0].sum().backward()
    assert torch.isfinite(verts.grad).all() and verts.grad.abs().sum() > 0


def test_sh_basis_uniform_ambient():
    normals = torch.nn.functional.normalize(torch.randn(100, 3), dim=1)
    assert sh_basis(normals).shape == (100, SH_COEFFS)
    gamma = torch.zeros(3, SH_COEFFS)
    gamma[:, 0] = 0.8
    albedo = torch.rand(100, 3)
    ambient = 0.8 * math.pi / math.sqrt(4 * math.pi)
    torch.testing.assert_close(shade(albedo, normals, gamma), albedo * ambient)
    assert abs(ambient - 0.709) < 1e-3


def test_sh_basis_orthogonal():
    # Divided by the folded-in Lambertian constants, the basis is orthonormal on the sphere.
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = (1 - z * z).sqrt()
    normals = torch.stack((r * phi.cos(), r * phi.sin(), z), 1)  # Fibonacci sphere
    a0, a1, a2 = math.pi, 2 * math.pi / math.sqrt(3), 2 * math.pi / math.sqrt(8)
    a = torch.tensor([a0] + [a1] * 3 + [a2] * 5, dtype=torch.float64)
    y = sh_basis(normals) / a
    gram = 4 * math.pi * y.T @ y / n
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=2e-3, rtol=0)


def test_render_image():
    screen, faces = _random_soup(4)
    screen = screen[None]
    frags = rasterize(screen, faces, 32, 32)
    colors = torch.rand(1, screen.shape[1], 3, requires_grad=True)
    bg = torch.tensor([0.1, 0.2, 0.3])
    img = render_image(screen, faces, frags, colors, bg)
    assert img.shape == (1, 32, 32, 3)
    torch.testing.assert_close(img[frags.tri_id < 0], bg.expand(int((frags.tri_id < 0).sum()), 3))
    img.sum().backward()
    assert colors.grad.abs().sum() > 0
    assert render_image(screen, faces, frags, colors)[frags.tri_id < 0].abs().sum() == 0


def test_fragments_type():
    screen, faces = _random_soup(5)
    frags = rasterize(screen[None], faces.int(), 20, 24)
    assert isinstance(frags, Fragments)
    assert frags.tri_id.shape == (1, 20, 24) and frags.tri_id.dtype == torch.long
    assert frags.zbuf.shape == (1, 20, 24) and frags.bary.shape == (1, 20, 24, 3)
    assert not frags.bary.requires_grad


def test_batch_equals_one_by_one():
    # Meshes of one batch spill over their image's edges; none may reach its neighbours' rows.
    soups = [_random_soup(seed, size=24) for seed in (7, 8, 9)]
    faces = soups[0][1]
    screen = torch.stack([s for s, _ in soups])
    screen[1, :, 1] += 6.0  # pushes mesh 1 past its bottom edge, into where image 2's rows would be
    screen.requires_grad_(True)
    frags = rasterize(screen, faces, 24, 20)
    assert frags.tri_id.shape == (3, 24, 20)
    attrs = torch.rand(3, screen.shape[1], 2, requires_grad=True)
    values, pix = interpolate(screen, faces, frags, attrs)
    (values**2).sum().backward()
    normals = vertex_normals(screen, faces)
    tol = torch.tensor([0.005, 0.02, 0.1])
    visible = vertex_visibility(screen.detach(), faces, frags, normals, tol)
    seen = point_visibility(screen.detach()[:, :5], frags, tol)
    for b in range(3):
        s = screen[b : b + 1].detach().clone().requires_grad_(True)
        a = attrs[b : b + 1].detach().clone().requires_grad_(True)
        one = rasterize(s, faces, 24, 20)
        assert torch.equal(frags.tri_id[b], one.tri_id[0])
        # The same up to float32 rounding: a batch shifts each mesh's y by b * H.
        torch.testing.assert_close(frags.zbuf[b], one.zbuf[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(frags.bary[b], one.bary[0], rtol=1e-4, atol=1e-4)
        v, p = interpolate(s, faces, one, a)
        mine = (pix >= b * 480) & (pix < (b + 1) * 480)
        assert torch.equal(pix[mine] - b * 480, p)
        torch.testing.assert_close(values[mine], v, rtol=1e-4, atol=1e-4)
        (v**2).sum().backward()
        torch.testing.assert_close(screen.grad[b], s.grad[0], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(attrs.grad[b], a.grad[0], rtol=1e-4, atol=1e-4)
        n = vertex_normals(s, faces)
        torch.testing.assert_close(normals[b], n[0])
        assert torch.equal(visible[b], vertex_visibility(s.detach(), faces, one, n, float(tol[b]))[0])
        assert torch.equal(seen[b], point_visibility(s.detach()[:, :5], one, float(tol[b]))[0])

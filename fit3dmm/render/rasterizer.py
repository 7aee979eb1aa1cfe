"""Vectorized z-buffer rasterization, differentiable attribute interpolation and vertex visibility.

Screen space follows OpenCV: x = column, y = row, pixel centres at integer coordinates, so an
``H x W`` image covers x in [-0.5, W-0.5] and y in [-0.5, H-0.5]. Vertices come as ``screen (V, 3)
= (x, y, z)`` with z the positive camera-space depth (larger = farther); x and y are already
divided by depth, so perspective-correct interpolation weights screen barycentrics by 1/z.

The hard pass (:func:`rasterize`) has no autograd. :func:`interpolate` recomputes barycentrics
for the triangle found at each covered pixel from ``screen`` with autograd on (the
rasterize-then-interpolate scheme of nvdiffrast), so gradients reach vertex positions through
the barycentrics and attributes; they do not see silhouette changes.

How the hard pass works: every triangle enumerates the pixel centres of its clipped integer
bounding box as one flat list of candidates (``repeat_interleave`` over per-triangle counts, so
no padding and no per-size buckets); candidates pass an inclusive edge test; each pixel keeps
the candidate with the smallest int64 key ``(float32 depth bits << 32) | face id``, found with
one ``scatter_reduce('amin')``. Positive float32 bit patterns sort like the floats, so the key
picks the nearest surface and breaks exact depth ties by the smallest face id, deterministically.
Bounding boxes taller than the chunk budget are cut into row bands and the list is processed in
chunks of at most ``_CHUNK`` candidates, which bounds memory for big triangles and big images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Slack on barycentrics in the inside test. Pixel centres exactly on an edge are inside
#: (inclusive rule); the slack keeps shared edges crack-free under float32 rounding, and the
#: depth test then resolves the double cover (nearest first, then smallest face id).
EDGE_EPS = 1e-5
#: Triangles with |2 * screen area| below this (pixels^2) are degenerate and skipped.
_MIN_AREA2 = 1e-10
#: Candidate pixels processed at once; peak memory is roughly 150 bytes per candidate.
_CHUNK = 1 << 19
#: Keys at or above this have 1/z = 0: no surface. The buffer starts above it.
_FAR_KEY = 0x7F800000 << 32
_EMPTY_KEY = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """Per-pixel result of :func:`rasterize` for an ``H x W`` image."""

    tri_id: Tensor  # (H, W) long, face index, -1 where no triangle
    zbuf: Tensor  # (H, W) float, camera depth of the visible surface, +inf where empty
    bary: Tensor  # (H, W, 3) float, perspective-correct barycentrics (zeros where empty), no grad

    @property
    def height(self) -> int:
        return self.tri_id.shape[0]

    @property
    def width(self) -> int:
        return self.tri_id.shape[1]


def _bary_at(coords: Tensor, corners: list[Tensor], pix: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Perspective-correct barycentrics of pixel centres inside given triangles.

    coords (3, V) contiguous rows x, y, z of the screen vertices; corners: 3 (N,) long vertex
    ids of the triangle at each pixel; pix (N,) long flat pixel index (row * width + col).
    Returns (bary (N, 3), depth (N,)), differentiable in ``coords``. Offsets are taken from the
    first corner so that large pixel coordinates keep float32 precision.
    """
    x0, x1, x2 = (coords[0].index_select(0, c) for c in corners)
    y0, y1, y2 = (coords[1].index_select(0, c) for c in corners)
    z0, z1, z2 = (coords[2].index_select(0, c) for c in corners)
    # Float64 floor division is exact here and much faster than int64 division on CPU.
    p = pix.double()
    row = ((p + 0.5) / width).floor()
    dx = (p - row * width).to(coords.dtype) - x0
    dy = row.to(coords.dtype) - y0
    e1x, e1y, e2x, e2y = x1 - x0, y1 - y0, x2 - x0, y2 - y0
    inv_area2 = 1.0 / (e1x * e2y - e1y * e2x)
    b1 = (dx * e2y - dy * e2x) * inv_area2
    b2 = (e1x * dy - e1y * dx) * inv_area2
    w0, w1, w2 = (1.0 - b1 - b2) / z0, b1 / z1, b2 / z2  # screen barycentrics / z
    depth = 1.0 / (w0 + w1 + w2)
    return torch.stack((w0 * depth, w1 * depth, w2 * depth), dim=1), depth


def _columns(screen: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """screen (V, 3), faces (F, 3) → contiguous (3, V) coordinate rows and (3, F) corner rows.

    On CPU, 1-D gathers and elementwise ops on contiguous rows are several times faster than
    on the strided columns of (N, 3) tensors.
    """
    return screen.t().contiguous(), faces.long().t().contiguous()


def _segment_ids(ends: Tensor, total: int) -> Tensor:
    """Segment index of each position 0..total-1, for segments of positive lengths ending at ends (n,)."""
    marks = torch.zeros(total, dtype=torch.long, device=ends.device)
    # Cheaper than repeat_interleave: mark each segment start, then count the marks.
    return marks.index_fill_(0, ends[:-1], 1).cumsum_(0)


def _chunks(counts: Tensor, budget: int) -> list[tuple[int, int]]:
    """Split consecutive units with sizes counts (n,) into ranges of total size < 2 * budget.

    A unit belongs to the budget-sized stretch its end falls in (units must be <= budget).
    """
    ends = torch.cumsum(counts, 0)
    first = torch.searchsorted(ends, torch.arange(0, int(ends[-1]), budget, device=counts.device), right=True)
    bounds = torch.cat((first, first.new_tensor([counts.numel()]))).unique_consecutive().tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def rasterize(screen: Tensor, faces: Tensor, height: int, width: int) -> Fragments:
    """Hard z-buffer rasterization of triangles, without autograd.

    screen (V, 3) as (x, y, depth); faces (F, 3) long. Both windings are drawn (culling is the
    job of :func:`vertex_visibility`). Skipped: triangles with a vertex at depth <= 0 (no near
    clipping), non-finite vertices, and degenerate (zero-area) triangles. Pixel centres on an
    edge count as inside (see ``EDGE_EPS``); exact depth ties go to the smallest face id.
    Returns :class:`Fragments` with tensors on ``screen.device``; ``bary``/``zbuf`` have
    ``screen.dtype`` (the depth test itself compares float32 1/z).
    """
    with torch.no_grad():
        return _rasterize(*_columns(screen.detach(), faces), height, width)


def _rasterize(coords: Tensor, corners: Tensor, height: int, width: int) -> Fragments:
    dev, dtype = coords.device, coords.dtype
    H, W = height, width
    inf = float("inf")
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = ([c.index_select(0, k) for k in corners] for c in coords)
    e1x, e1y, e2x, e2y = x1 - x0, y1 - y0, x2 - x0, y2 - y0
    area2 = e1x * e2y - e1y * e2x
    # NaN coordinates make area2 NaN, which fails both comparisons.
    valid = (area2.abs() > _MIN_AREA2) & (area2.abs() < inf)
    valid &= (torch.minimum(torch.minimum(z0, z1), z2) > 0) & (torch.maximum(torch.maximum(z0, z1), z2) < inf)
    # Integer bounding box of covered pixel centres, kept as floats until clamped to the image.
    xmin = torch.minimum(torch.minimum(x0, x1), x2).ceil_().clamp_(0, W)
    xmax = torch.maximum(torch.maximum(x0, x1), x2).floor_().clamp_(-1, W - 1)
    ymin = torch.minimum(torch.minimum(y0, y1), y2).ceil_().clamp_(0, H)
    ymax = torch.maximum(torch.maximum(y0, y1), y2).floor_().clamp_(-1, H - 1)
    valid &= (xmax >= xmin) & (ymax >= ymin)
    tri = valid.nonzero().squeeze(1)  # (T,) faces that can cover a pixel centre

    buf = torch.full((H * W,), _EMPTY_KEY, dtype=torch.long, device=dev)
    if tri.numel():
        # Screen barycentrics b1, b2 are affine in the pixel position: b = g . (p - v0). They
        # are evaluated at the box origin relative to vertex 0, which keeps float32 precise at
        # large pixel coordinates, then stepped per column and row; 1/z is affine in b1, b2.
        inv = 1.0 / area2
        g1x, g1y, g2x, g2y = e2y * inv, -e2x * inv, -e1y * inv, e1x * inv
        dx, dy = xmin - x0, ymin - y0
        b1, b2 = g1x * dx + g1y * dy, g2x * dx + g2y * dy
        iz0 = 1.0 / z0
        d1, d2 = 1.0 / z1 - iz0, 1.0 / z2 - iz0
        table = (
            b1, b2, iz0 + b1 * d1 + b2 * d2,  # (b1, b2, 1/z) at the box origin,
            g1x, g2x, g1x * d1 + g2x * d2,  # their steps per column
            g1y, g2y, g1y * d1 + g2y * d2,  # and per row
        )
        table = [c.index_select(0, tri) for c in table]
        xmin, ymin, xmax, ymax = (c.index_select(0, tri).long() for c in (xmin, ymin, xmax, ymax))
        n_rows, n_cols = ymax - ymin + 1, xmax - xmin + 1
        # Work goes row by row: the boxes' rows, then the pixels of each row; both levels are
        # chunked so that huge boxes or images never materialize at once.
        budget = max(_CHUNK, W)
        origin = ymin * W + xmin
        for t0, t1 in _chunks(n_rows, budget):
            _scatter_rows(
                buf, [c[t0:t1] for c in table], origin[t0:t1], tri[t0:t1], n_rows[t0:t1], n_cols[t0:t1], W, budget
            )

    pix = (buf < _FAR_KEY).nonzero().squeeze(1)
    tri_pix = buf.index_select(0, pix) & 0xFFFFFFFF
    tri_id = torch.full((H * W,), -1, dtype=torch.long, device=dev).index_copy_(0, pix, tri_pix)
    bary, depth = _bary_at(coords, [c.index_select(0, tri_pix) for c in corners], pix, W)
    zbuf = torch.full((H * W,), inf, dtype=dtype, device=dev).index_copy_(0, pix, depth)
    bary_img = torch.zeros((H * W, 3), dtype=dtype, device=dev).index_copy_(0, pix, bary)
    return Fragments(tri_id.view(H, W), zbuf.view(H, W), bary_img.view(H, W, 3))


def _scatter_rows(
    buf: Tensor,
    table: list[Tensor],
    origin: Tensor,
    tri: Tensor,
    n_rows: Tensor,
    n_cols: Tensor,
    width: int,
    budget: int,
) -> None:
    """Expand triangle boxes into rows and rasterize them into the key buffer ``buf`` (H*W,) long.

    table: 9 (T,) float rows from ``_rasterize``; origin (T,) flat pixel index of the box origin;
    tri (T,) face ids; n_rows, n_cols (T,) box size.
    """
    ends = torch.cumsum(n_rows, 0)
    r_tri = _segment_ids(ends, int(ends[-1]))  # (R,) box of each row
    r = torch.arange(r_tri.numel(), device=buf.device) - (ends - n_rows).index_select(0, r_tri)
    rf = r.to(table[0].dtype)
    per_row = [c.index_select(0, r_tri) for c in table]
    # (b1, b2, 1/z) at the row's first pixel, then their steps per column.
    rows = [torch.addcmul(per_row[k], rf, per_row[k + 6]) for k in range(3)] + per_row[3:6]
    row_origin = origin.index_select(0, r_tri) + r * width
    row_tri = tri.index_select(0, r_tri)
    row_len = n_cols.index_select(0, r_tri)
    for r0, r1 in _chunks(row_len, budget):
        _scatter_pixels(buf, [c[r0:r1] for c in rows], row_origin[r0:r1], row_tri[r0:r1], row_len[r0:r1])


def _scatter_pixels(buf: Tensor, rows: list[Tensor], origin: Tensor, tri: Tensor, row_len: Tensor) -> None:
    """Inside-test the pixels of box rows and min-reduce their keys into ``buf`` (H*W,) long.

    rows: 6 (R,) float: (b1, b2, 1/z) at the row start, then their steps per column;
    origin (R,) flat pixel index of the row start; tri (R,) face ids; row_len (R,) pixels per row.
    """
    ends = torch.cumsum(row_len, 0)
    n = int(ends[-1])
    rid = _segment_ids(ends, n)
    col = torch.arange(n, device=buf.device, dtype=rows[0].dtype) - (ends - row_len).to(rows[0].dtype).index_select(0, rid)
    b1, b2, inv_depth = (
        torch.addcmul(rows[k].index_select(0, rid), col, rows[k + 3].index_select(0, rid)) for k in range(3)
    )
    inside = (torch.minimum(b1, b2) >= -EDGE_EPS) & (b1 + b2 <= 1.0 + EDGE_EPS)
    # Nearer = larger 1/z = larger float bits (non-negative floats sort like their bits), so
    # flipping the bits makes the nearest surface, then the smallest face id, the minimum key.
    # Outside candidates get 1/z = 0, i.e. a key >= _FAR_KEY, which reads as empty.
    inv_depth = inv_depth.float().clamp_(min=0).mul_(inside)
    key = ((0x7F800000 - inv_depth.view(torch.int32)).long() << 32) | tri.index_select(0, rid)
    buf.scatter_reduce_(0, origin.index_select(0, rid) + col.long(), key, reduce="amin")


def interpolate(screen: Tensor, faces: Tensor, frags: Fragments, attrs: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiably interpolate vertex attributes at the covered pixel centres.

    screen (V, 3), possibly requiring grad; faces (F, 3) long, the ones given to
    :func:`rasterize`; attrs (V, C). Barycentrics are recomputed from ``screen`` for the
    triangle ids in ``frags``, so gradients reach both ``screen`` and ``attrs``.
    Returns (values (N, C), pixel_index (N,) long into H*W, row-major) for the N covered pixels.
    """
    coords, corners = _columns(screen, faces)
    tri_id = frags.tri_id.reshape(-1)
    pix = (tri_id >= 0).nonzero().squeeze(1)
    tri = tri_id.index_select(0, pix)
    corners = [c.index_select(0, tri) for c in corners]  # 3 x (N,)
    bary, _ = _bary_at(coords, corners, pix, frags.width)
    bary = bary.to(attrs.dtype)
    values = bary[:, :1] * attrs.index_select(0, corners[0])
    for k in (1, 2):
        values = values + bary[:, k : k + 1] * attrs.index_select(0, corners[k])
    return values, pix


def vertex_visibility(
    screen: Tensor,
    faces: Tensor,
    frags: Fragments,
    normals: Tensor | None = None,
    depth_tol: float = 0.01,
) -> Tensor:
    """Which vertices are seen by the camera.

    screen (V, 3); faces (F, 3) long and ``frags`` from :func:`rasterize` of the same mesh;
    normals (V, 3) optional camera-space normals with +z pointing away from the camera (the
    frame in which ``screen`` z is depth). Returns (V,) bool.

    A vertex is visible iff
      1. its projection lies in the image, x in [-0.5, W-0.5) and y in [-0.5, H-0.5), with z > 0;
      2. at least one of the 2x2 pixel centres around it (clamped to the image) is
         a. empty (the vertex is on a silhouette), or
         b. drawn by a triangle that has this vertex as a corner (the surface seen there is the
            vertex's own, however steep it is), or
         c. drawn at depth >= z / (1 + depth_tol) -- nothing sits in front by more than the
            relative tolerance ``depth_tol`` (default 1%: 6 mm at 60 cm), which absorbs the
            depth change across up to a pixel of a moderately sloped neighbouring surface;
      3. if normals are given, n_z < 0 (it faces the camera; orthographic approximation of
         n . view_ray < 0, good enough once 2. has removed what is truly hidden).
    Vertices within about a pixel of an occluder's silhouette count as visible (2a).
    """
    H, W = frags.height, frags.width
    x, y, z = screen.detach().unbind(-1)
    inside = (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5) & (z > 0)
    # 2x2 neighbourhood: pixel centres floor(x)..floor(x)+1, same for y.
    cx = x.nan_to_num(-1.0).clamp(-1, W).floor().long()
    cy = y.nan_to_num(-1.0).clamp(-1, H).floor().long()
    cx = torch.stack((cx, cx + 1, cx, cx + 1), 1).clamp(0, W - 1)  # (V, 4)
    cy = torch.stack((cy, cy, cy + 1, cy + 1), 1).clamp(0, H - 1)
    t = frags.tri_id[cy, cx]  # (V, 4)
    zb = frags.zbuf[cy, cx]
    vid = torch.arange(screen.shape[0], device=screen.device)
    own = (faces.long()[t.clamp(min=0)] == vid[:, None, None]).any(-1) & (t >= 0)
    unoccluded = (t < 0) | own | (zb * (1.0 + depth_tol) >= z[:, None])
    visible = inside & unoccluded.any(1)
    if normals is not None:
        visible &= normals[:, 2].detach() < 0
    return visible


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Unit area-weighted vertex normals, differentiable.

    verts (V, 3); faces (F, 3) long. Counter-clockwise faces (seen from outside, in a
    right-handed frame) give outward normals. Returns (V, 3); isolated vertices get zeros.
    """
    faces = faces.long()
    v = verts[faces]  # (F, 3, 3)
    # The cross product's length is twice the area, which is the weighting we want.
    fn = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
    acc = torch.zeros_like(verts).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(acc, dim=-1, eps=1e-12)

"""Texture maps for a fitted head: UV seams, and a texture taken from the photo.

Texture images follow the OBJ/glTF image layout: row 0 is the top (v = 1 in the model's OBJ-convention
UVs), texel (row r, column c) centred at u = (c + 0.5) / S, v = 1 - (r + 0.5) / S.

How a texture is made (:func:`extract_texture`): every texel covered by the UV layout is a point on the
fitted surface (its triangle and barycentrics, from rasterizing the layout once per size). That point is
projected into the photo and sampled there, weighted by how well the photo sees it: zero where the
photo's z-buffer holds another surface or an occluder (hair, hat, glasses) covers it, fading out at
grazing angles. Where the weight is below one, the mirrored texel (the model's UVs are left-right
symmetric over ``meta["uv_mirror"]``) fills in if the photo saw that side, else the fitted albedo,
brought to the photo's brightness. The weight is blurred inward so that the borders blend softly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import sparse

from .render import rasterize, rasterize_region

DEFAULT_SIZE = 1024
#: Facing falloff: the photo's weight goes from 0 to 1 as the cosine between the surface normal and the
#: view direction goes from the first value to the second (about 78 to 60 degrees from head-on).
GRAZING = (0.2, 0.5)
#: Depth slack of the visibility test, as a fraction of the mesh's depth extent.
DEPTH_SLACK = 0.02
#: Blur of the weight at visibility borders, and how far colours bleed past the layout's edges
#: (mip-mapping and bilinear filtering read a few texels outside each UV island), both in texels per 1024.
BORDER_BLUR = 6.0
BLEED = 8


@dataclass(frozen=True)
class UVMesh:
    """A mesh split at UV seams, as glTF and trimesh need (one UV per vertex): N split vertices."""

    vertex: np.ndarray  # (N,) the model vertex each split vertex copies
    uv: np.ndarray  # (N, 2) its texture coordinate, OBJ convention
    triangles: np.ndarray  # (F, 3) into the split vertices, in the model's triangle order


def split_seams(triangles: np.ndarray, face_uv: np.ndarray, uv: np.ndarray) -> UVMesh:
    """One vertex per distinct (model vertex, texture coordinate) pair of the triangle corners."""
    key = triangles.reshape(-1).astype(np.int64) * len(uv) + face_uv.reshape(-1)  # 1-D: faster than unique rows
    unique, inverse = np.unique(key, return_inverse=True)
    return UVMesh(unique // len(uv), uv[unique % len(uv)].astype(np.float32), inverse.reshape(triangles.shape))


@dataclass(frozen=True)
class TexelMap:
    """Where each texel of an S x S texture lies on the surface: ``weights`` (N, V) sparse, the
    barycentrics of the N covered texels (flat indices ``texels``) over the model's vertices, so that
    ``weights @ per_vertex`` interpolates any vertex attribute over the texture in one product."""

    texels: np.ndarray  # (N,) flat index row * S + column
    weights: sparse.csr_matrix  # (N, V)
    size: int

    def image(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(S, S, C) image of per-texel ``values`` (N, C), ``fill`` where uncovered."""
        out = np.full((self.size * self.size, values.shape[1]), fill, np.float32)
        out[self.texels] = values
        return out.reshape(self.size, self.size, -1)


_TEXEL_MAPS: dict[tuple, TexelMap] = {}


def texel_map(triangles: np.ndarray, face_uv: np.ndarray, uv: np.ndarray, size: int) -> TexelMap:
    """Rasterize the UV layout (cached per layout and size: a model's is fixed, and a batch reuses it)."""
    key = tuple(hash(a.tobytes()) for a in (triangles, face_uv, uv)) + (size,)
    if key not in _TEXEL_MAPS:
        xy = np.stack([uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5, np.ones(len(uv))], 1)
        frags = rasterize(torch.as_tensor(xy, dtype=torch.float32)[None], torch.as_tensor(face_uv, dtype=torch.long),
                          size, size)
        tri = frags.tri_id[0].numpy().reshape(-1)
        texels = np.nonzero(tri >= 0)[0]
        bary = frags.bary[0].numpy().reshape(-1, 3)[texels]
        rows = np.repeat(np.arange(len(texels)), 3)
        weights = sparse.csr_matrix((bary.reshape(-1), (rows, triangles[tri[texels]].reshape(-1))),
                                    shape=(len(texels), int(triangles.max()) + 1))
        _TEXEL_MAPS.clear()  # one layout at a time is all a run uses
        _TEXEL_MAPS[key] = TexelMap(texels, weights, size)
    return _TEXEL_MAPS[key]


def extract_texture(photo: np.ndarray, screen: np.ndarray, normals: np.ndarray, triangles: np.ndarray,
                    face_uv: np.ndarray, uv: np.ndarray, albedo: np.ndarray, occluded: np.ndarray | None = None,
                    mirror: tuple | None = None, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The fitted head's texture (S, S, 3) RGB uint8 (see the module docstring).

    photo (H, W, 3) RGB uint8; screen (V, 3) the fitted vertices in photo pixels (x, y) with camera depth;
    normals (V, 3) unit vertex normals in the camera frame (OpenCV's: z forward); triangles (F, 3),
    face_uv (F, 3), uv (T, 2) the model's; albedo (V, 3) the fitted albedo in [0, 1]; occluded (H, W)
    bool, photo pixels where the face is hidden or absent; mirror (u0, v0, u1, v1), the UV rectangle
    that is symmetric under u -> u0 + u1 - u, or None.
    """
    h, w = photo.shape[:2]
    texels = texel_map(triangles, face_uv, uv, size)
    per_vertex = np.concatenate([screen, normals, albedo], 1).astype(np.float32)
    maps = texels.image(texels.weights @ per_vertex, fill=np.nan)  # (S, S, 9): x, y, depth, normal, albedo
    covered = ~np.isnan(maps[..., 0])
    maps[~covered] = 0
    mapx, mapy, depth = maps[..., 0], maps[..., 1], maps[..., 2]
    normal, base = maps[..., 3:6], maps[..., 6:9]

    # What the photo sees at each texel's pixel: the nearest surface's depth, and whether it is occluded.
    zbuf = rasterize_region(torch.as_tensor(screen, dtype=torch.float32), torch.as_tensor(triangles), h, w).zbuf[0].numpy()
    seen_depth = cv2.remap(np.minimum(zbuf, 1e9), mapx, mapy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=-1.0)  # outside the photo: nothing passes the test below
    visible = covered & (depth <= seen_depth * (1 + 1e-5) + DEPTH_SLACK * float(np.ptp(screen[:, 2])))
    if occluded is not None:
        visible &= cv2.remap(occluded.astype(np.uint8), mapx, mapy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=1) == 0
    facing = -normal[..., 2] / (np.sqrt(np.einsum("...c,...c->...", normal, normal)) + 1e-12)
    weight = np.where(visible, np.clip((facing - GRAZING[0]) / (GRAZING[1] - GRAZING[0]), 0, 1), 0).astype(np.float32)
    weight *= cv2.GaussianBlur(weight, (0, 0), BORDER_BLUR * size / 1024)  # fades to 0 towards every border
    sample = cv2.remap(photo, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32) / 255

    # The albedo has the lighting taken out: scaled per channel to the photo's brightness where both exist.
    seen = (weight > 0.5).astype(np.uint8)
    if cv2.countNonZero(seen) > 100:
        base = base * (np.array(cv2.mean(sample, seen)[:3]) / np.maximum(cv2.mean(base, seen)[:3], 1e-3)).astype(np.float32)
    if mirror is not None:
        c0, c1 = (int(round(u * size)) for u in (mirror[0], mirror[2]))
        r0, r1 = (int(round((1 - v) * size)) for v in (mirror[3], mirror[1]))
        wm, pm = np.zeros_like(weight), np.zeros_like(sample)
        wm[r0:r1, c0:c1] = weight[r0:r1, c0:c1][:, ::-1]
        pm[r0:r1, c0:c1] = sample[r0:r1, c0:c1][:, ::-1]
        wm *= covered  # the mirror image of a texel outside the layout is no colour
        base = wm[..., None] * pm + (1 - wm[..., None]) * base
    colour = weight[..., None] * sample + (1 - weight[..., None]) * base
    return _bleed((colour * 255).clip(0, 255).round().astype(np.uint8), covered, max(1, round(BLEED * size / 1024)))


def _bleed(colour: np.ndarray, covered: np.ndarray, distance: int) -> np.ndarray:
    """Uncovered texels within ``distance`` of the layout take the colour of the nearest covered one."""
    dist, label = cv2.distanceTransformWithLabels((~covered).astype(np.uint8), cv2.DIST_L2, 3,
                                                  labelType=cv2.DIST_LABEL_PIXEL)
    rows, cols = np.nonzero(covered)  # label k is the k-th covered texel in row-major order
    near = ~covered & (dist <= distance)
    index = label[near] - 1
    colour[near] = colour[rows[index], cols[index]]
    return colour

"""Part bands: per-fit extents of the brows, the upper lip and the eyes on the mesh.

A voted annotation gives each part one fixed region of the mesh. Human brows are thin or thick, short or
long, and a lip's border with the skin sits higher or lower on the same lip shape: the shape space cannot
express either, so a fixed region caps those parts' alignment whatever the pose (relabelling each fit's
brow vertices by the segmentation raised the brows' IoU against it from 65/67% to 81/83% on 12 photos).
A part band is a per-fit extent of such a part on the surface, chosen after the fit against the
segmentation the fit was guided by (never against anything a user does not have).

Each adjustable part has a field over the vertices near it, from the mean shape and the annotation (NaN
elsewhere), and a band over that field:

- brows, ``(u, v)``: u along the brow (0 at the annotated brow's inner end, 1 at its outer end), v across
  it (0 on its midline, +-1 at its annotated edges, + towards the forehead); the band is
  ``(u_lo, u_hi, v_lo, v_hi, tilt)``: u_lo <= u <= u_hi and v_lo <= v - tilt (u - 0.5) <= v_hi, the
  annotated one ``(0, 1, -1, 1, 0)``;
- the upper lip, ``(s,)``: the signed distance on the mean shape to the lip's border with the skin, in
  eye distances (negative inside); the band is ``(offset,)``, the part being ``s <= offset``, annotated 0;
- the eyes (models with lid margins), ``(s,)``: on the lids' skin, the distance on the mean shape to the
  visible lid rim, in eye distances; the eyeball stays eye; the band ``(offset,)`` takes the lid skin
  within ``offset`` of the rim into the eye (the dark lash line a segmenter sees as eye), annotated 0.

A rendered pixel whose triangle has all three corners in a part's field, and whose annotated label is that
part or skin, becomes the part where its interpolated field lies in the band and skin elsewhere: band
edges cut through triangles, smoother than the mesh's rows.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from .facemodel import PART_CELEBA_IDS, PART_NAMES

EYES = ("left_eye", "right_eye")
BROWS = ("left_eyebrow", "right_eyebrow")
#: The lower lip is left fixed: on the tuning photos its band matched the segmentation better (IoU 83.3 ->
#: 85.8%) but the human masks worse (79.0 -> 78.1%).
LIPS = ("up_lip",)
#: The annotated band of each kind of part.
DEFAULT_BAND = {"brow": (0.0, 1.0, -1.0, 1.0, 0.0), "lip": (0.0,), "eye": (0.0,)}
#: Candidate values of each band entry for the search (per kind, per entry), and the narrowest brow band
#: (u, v extents), so that a brow never vanishes.
CANDIDATES = {
    "brow": (np.linspace(-0.4, 0.5, 19), np.linspace(0.5, 1.4, 19), np.linspace(-3.5, -0.25, 27), np.linspace(0.25, 3.5, 27),
             np.linspace(-1.5, 1.5, 25)),
    "lip": (np.linspace(-0.05, 0.05, 41),),
    "eye": (np.linspace(0.0, 0.04, 17),),
}
MIN_BROW_EXTENT = (0.3, 0.5)
#: How far a field reaches beyond its part: brows |v| < 4 and u in (-0.5, 1.5); the lip 0.15 eye
#: distances, the eyes 0.06 from the lid rim.
LIP_REACH, EYE_REACH = 0.15, 0.06
#: Coordinate-descent sweeps over a band's entries.
SWEEPS = 3
#: Rendered with each pixel taking its nearest vertex's part, the annotated brow reaches beyond its
#: outermost vertices: on the ICT mean face (frontal, 256-1024 px) the band that best matches it reaches
#: 1.13-1.25 times the vertices' half thickness. Its IoU with the annotation is then 0.80: the band's
#: edges are smooth, the annotation's follow the mesh's rows.
RENDERED_MARGIN = 1.2
_EDGE_BINS = 6  # bins along a brow in which its annotated vertices' highest and lowest give its edges


def kind(part: str) -> str:
    return "brow" if part in BROWS else "eye" if part in EYES else "lip"


def band_fields(mean: np.ndarray, parts: np.ndarray, landmarks68: np.ndarray,
                rims: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per adjustable part the model has: its field (V, D) float32, NaN outside its region (see the
    module docstring). mean (V, 3) in the model frame (x = subject's left, y up, z out of the face); parts
    (V,) indices into PART_NAMES; landmarks68 (68,) vertex ids (outer eye corners 36, 45 give the scale);
    rims: the vertex ids of each eye's visible lid rim (left, right), for models with separate eyeballs."""
    skin = parts == PART_NAMES.index("skin")
    eye_distance = float(np.linalg.norm(mean[landmarks68[36]] - mean[landmarks68[45]]))
    fields = {}
    for name, rim in zip(EYES, rims or ()):
        to_rim = cKDTree(mean[rim]).query(mean)[0] / eye_distance
        field = np.full(len(mean), np.nan, np.float32)
        near = skin & (to_rim < EYE_REACH)
        field[near] = to_rim[near]
        field[parts == PART_NAMES.index(name)] = -1.0  # the eyeball seen between the lids stays eye
        fields[name] = field[:, None]
    for name in BROWS:
        brow = np.flatnonzero(parts == PART_NAMES.index(name))
        if len(brow) >= 6:
            fields[name] = _brow_field(mean, brow, skin | (parts == PART_NAMES.index(name)))
    for name in LIPS:
        inside = parts == PART_NAMES.index(name)
        if inside.any() and skin.any():
            to_skin = cKDTree(mean[skin]).query(mean[inside])[0]
            to_lip = cKDTree(mean[inside]).query(mean[skin])[0]
            field = np.full(len(mean), np.nan, np.float32)
            field[inside] = -to_skin / eye_distance
            near = np.flatnonzero(skin)[to_lip < LIP_REACH * eye_distance]
            field[near] = to_lip[to_lip < LIP_REACH * eye_distance] / eye_distance
            fields[name] = field[:, None]
    return fields


@lru_cache(maxsize=4)
def model_fields(model) -> dict[str, np.ndarray]:
    """:func:`band_fields` of a FaceModel, computed once per model."""
    rims = tuple(np.unique(ids.cpu().numpy()) for ids in model.opening_ids) if model.has_lid_margins else None
    return band_fields(model.mean.cpu().numpy(), model.parts.cpu().numpy(), model.landmarks68.cpu().numpy(), rims)


def _brow_field(mean: np.ndarray, brow: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(V, 2) brow coordinates (u, v) over the allowed vertices near the brow, NaN elsewhere."""
    xy = mean[brow, :2]
    inner, outer = (xy[:, 0].min(), xy[:, 0].max()) if xy[:, 0].mean() > 0 else (xy[:, 0].max(), xy[:, 0].min())
    along = (xy[:, 0] - inner) / (outer - inner)
    bins = np.minimum((along * _EDGE_BINS).astype(int), _EDGE_BINS - 1)
    filled = [b for b in range(_EDGE_BINS) if (bins == b).sum() >= 2]
    centres = np.array([along[bins == b].mean() for b in filled])
    # The annotated brow's upper and lower edges along it (it tapers towards its tail), as quadratics in u.
    top = np.polyfit(centres, [xy[bins == b, 1].max() for b in filled], 2)
    bottom = np.polyfit(centres, [xy[bins == b, 1].min() for b in filled], 2)
    min_half = 0.125 * np.mean([np.ptp(xy[bins == b, 1]) for b in filled])
    u = (mean[:, 0] - inner) / (outer - inner)
    t, b = np.polyval(top, np.clip(u, 0, 1)), np.polyval(bottom, np.clip(u, 0, 1))
    v = (mean[:, 1] - (t + b) / 2) / (RENDERED_MARGIN * np.maximum((t - b) / 2, min_half))
    front = mean[:, 2] >= mean[brow, 2].min() - 6 * min_half  # not the back of the head behind the brow
    region = allowed & front & (u > -0.5) & (u < 1.5) & (np.abs(v) < 4)
    return np.where(region[:, None], np.stack([u, v], 1), np.nan).astype(np.float32)


def _pixels(field: np.ndarray, celeba_id: int, labels: np.ndarray, tri: np.ndarray, bary: np.ndarray,
            triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat pixel indices (N,), interpolated field (N, D)) of the pixels a band may relabel: covered,
    all three corners in the field's region, labelled the part or skin (1)."""
    flat = np.flatnonzero((tri.ravel() >= 0) & np.isin(labels.ravel(), (celeba_id, 1)))
    corners = field[triangles[tri.ravel()[flat]]]  # (N, 3, D)
    inside = np.isfinite(corners).all((1, 2))
    flat = flat[inside]
    values = np.einsum("nk,nkd->nd", bary.reshape(-1, 3)[flat], corners[inside])
    return flat, values


def _in_band(values: np.ndarray, band) -> np.ndarray:
    if values.shape[1] == 1:
        return values[:, 0] <= band[0]
    u, v = values[:, 0], values[:, 1] - band[4] * (values[:, 0] - 0.5)  # v across the tilted midline
    return (u >= band[0]) & (u <= band[1]) & (v >= band[2]) & (v <= band[3])


def _allowed(band, part_kind: str) -> bool:
    return part_kind != "brow" or (band[1] - band[0] >= MIN_BROW_EXTENT[0] and band[3] - band[2] >= MIN_BROW_EXTENT[1])


def choose_bands(fields: dict[str, np.ndarray], labels: np.ndarray, tri: np.ndarray, bary: np.ndarray,
                 triangles: np.ndarray, target: np.ndarray, ignore: np.ndarray) -> dict[str, tuple[float, ...]]:
    """Each part's band whose relabelled pixels best overlap (IoU) the target's part, by coordinate
    descent over :data:`CANDIDATES` from the annotated band.

    labels (H, W) CelebAMask-HQ ids of the annotated parts of the rendered fit; tri (H, W) triangle ids
    (-1 uncovered) and bary (H, W, 3) of the same render; triangles (F, 3); target (H, W) the segmentation's
    ids; ignore (H, W) bool, pixels neither side may count (occluders). A part the target lacks (or
    hides entirely) gets no band, nor does one the annotated render does not show (a band refines a part,
    it never makes one: a closed eye's lid stays skin), nor one no band matches better than the annotated
    region: their annotated regions stay as they are."""
    bands = {}
    for name, field in fields.items():
        part_kind, cid = kind(name), PART_CELEBA_IDS[PART_NAMES.index(name)]
        if not (labels == cid).any():  # a band refines a part; it never makes one
            continue
        band = np.array(DEFAULT_BAND[part_kind], np.float64)
        flat, values = _pixels(field, cid, labels, tri, bary, triangles)
        keep = ~ignore.ravel()[flat]
        values, truth = values[keep], target.ravel()[flat[keep]] == cid
        if not truth.any():
            continue
        # Target pixels outside the relabelled region count in every candidate's union alike.
        outside = int(((target == cid) & ~ignore).sum() - truth.sum())
        annotated = _iou(labels.ravel()[flat[keep]] == cid, truth, outside)
        best = _iou(_in_band(values, band), truth, outside)
        for _ in range(SWEEPS):
            start = band.copy()
            for entry, options in enumerate(CANDIDATES[part_kind]):
                for value in options:
                    trial = band.copy()
                    trial[entry] = value
                    if _allowed(trial, part_kind):
                        score = _iou(_in_band(values, trial), truth, outside)
                        if score > best + 1e-9:
                            best, band = score, trial
            if (band == start).all():
                break
        if best > annotated:
            bands[name] = tuple(float(round(x, 4)) for x in band)
    return bands


def _iou(mask: np.ndarray, truth: np.ndarray, outside: int) -> float:
    return (mask & truth).sum() / max((mask | truth).sum() + outside, 1)


def apply_bands(labels: np.ndarray, fields: dict[str, np.ndarray], bands: dict[str, tuple[float, ...]],
                tri: np.ndarray, bary: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """A copy of the rendered annotated labels (H, W) with each banded part's pixels relabelled: the part
    inside its band, skin (1) outside (arguments as for :func:`choose_bands`)."""
    out = labels.copy()
    flat_out = out.reshape(-1)
    for name, band in bands.items():
        cid = PART_CELEBA_IDS[PART_NAMES.index(name)]
        flat, values = _pixels(fields[name], cid, labels, tri, bary, triangles)
        inside = _in_band(values, band)
        flat_out[flat[inside]] = cid
        # Only the part's own pixels outside its band become skin: skin stays free for another part's band.
        shed = flat[~inside & (labels.ravel()[flat] == cid)]
        flat_out[shed] = 1
    return out

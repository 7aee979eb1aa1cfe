"""The face model: its native file format and the torch module mapping parameters to vertices.

Native format (``*.npz``, written by :func:`save_model`, read by :func:`load_native`):

==================== ================ ==========================================================
key                  shape / dtype    meaning
==================== ================ ==========================================================
format               str              ``"fit3dmm-model/1"``
meta                 str (JSON)       name, units, source, licence, expression_range, notes
mean                 (V, 3) f32       mean shape, model frame (x = subject's left, y up, z out of
                                      the face), in the model's units
id_basis             (Ki, V, 3) f32   identity modes; weights have unit variance
exp_basis            (Ke, V, 3) f32   expression modes (blendshape deltas or PCA modes)
albedo_mean          (V, 3) f32       optional, linear RGB in [0, 1]
albedo_basis         (Ka, V, 3) f32   optional
triangles            (F, 3) i32       counter-clockwise seen from outside
landmarks68          (68,) i32        iBUG-68 vertex ids (jaw ids 0-16 are the frontal ones)
contour              (17, L) i32      per jaw landmark, candidate vertex ids for contour marching
                                      (padded with -1); the fit picks the silhouette one
parts                (V,) i8          part id per vertex, index into PART_NAMES, -1 for none
skin_subset          (S,) i32         skin vertices chosen once by farthest point sampling (PRDL)
lid_margins          (4, L) i32       optional, for models with separate eyeballs: the visible lid
                                      margins (left upper, left lower, right upper, right lower),
                                      corner to corner, padded with -1; the eye parts' point sets
                                      are then the openings between them (:mod:`.eyes`)
mean_texture         (V, 3) f32       optional: a fixed colour per vertex in [0, 1] (the mean photo
                                      colour under it, from ``model annotate``), for renders that
                                      must not depend on the photo (``eval --protocol paper``), and
                                      the start and prior of a free albedo (``albedo_prior``)
uv                   (T, 2) f32       optional: texture coordinates in [0, 1], OBJ convention
                                      (origin bottom left, v up); with face_uv
face_uv              (F, 3) i32       per triangle corner, its row of ``uv`` (a vertex on a UV
                                      seam has several); models without them export vertex colours
==================== ================ ==========================================================
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..files import read_npz, reason
from ..sampling import farthest_point_sampling
from .contour import contour_candidates
from .eyes import opening_grid

FORMAT = "fit3dmm-model/1"
_ARRAY_KEYS = ("mean", "id_basis", "exp_basis", "triangles", "landmarks68", "contour", "parts", "skin_subset")

#: The paper's eight parts; ``left``/``right`` are the subject's.
PART_NAMES = (
    "left_eye",
    "right_eye",
    "left_eyebrow",
    "right_eyebrow",
    "up_lip",
    "down_lip",
    "nose",
    "skin",
)
#: CelebAMask-HQ label id of each part (same order as PART_NAMES).
PART_CELEBA_IDS = (4, 5, 6, 7, 11, 12, 2, 1)
#: Size of PRDL's skin sets, on the model (``skin_subset``) and in the target (the paper's 3000).
SKIN_POINTS = 3000


@dataclass
class ModelData:
    """A face model as numpy arrays (see the module docstring for shapes)."""

    mean: np.ndarray
    id_basis: np.ndarray
    exp_basis: np.ndarray
    triangles: np.ndarray
    landmarks68: np.ndarray
    contour: np.ndarray
    parts: np.ndarray
    skin_subset: np.ndarray
    albedo_mean: np.ndarray | None = None
    albedo_basis: np.ndarray | None = None
    lid_margins: np.ndarray | None = None
    mean_texture: np.ndarray | None = None
    uv: np.ndarray | None = None
    face_uv: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def has_uv(self) -> bool:
        return self.uv is not None

    @property
    def has_parts(self) -> bool:
        return bool((self.parts >= 0).any())

    def validate(self) -> None:
        """Raise ModelError unless every array has its documented shape, a numeric dtype, finite values
        and in-range indices: model files come from anywhere, and a bad one must fail here, in words."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ModelError(f"malformed face model: {message}")

        arrays = {k: getattr(self, k) for k in ("mean", "id_basis", "exp_basis", "albedo_mean", "albedo_basis",
                                                 "triangles", "landmarks68", "contour", "parts", "skin_subset",
                                                 "lid_margins", "mean_texture", "uv", "face_uv")}
        for name, a in arrays.items():
            need(a is None or (isinstance(a, np.ndarray) and a.dtype.kind in "fiu"), f"{name} must be a numeric array")
        need((self.albedo_mean is None) == (self.albedo_basis is None), "albedo_mean and albedo_basis go together")
        need((self.uv is None) == (self.face_uv is None), "uv and face_uv go together")
        need(self.uv is None or (self.uv.ndim == 2 and self.uv.shape[1] == 2 and len(self.uv) > 0), "uv must be (T, 2)")
        need(self.mean.ndim == 2 and self.mean.shape[1] == 3 and len(self.mean) > 0, "mean must be (V, 3)")
        v = len(self.mean)
        for name in ("id_basis", "exp_basis", "albedo_basis"):
            a = arrays[name]
            need(a is None or (a.ndim == 3 and a.shape[1:] == (v, 3)), f"{name} must be (K, V, 3) with V = {v}")
        need(self.albedo_mean is None or self.albedo_mean.shape == (v, 3), "albedo_mean must be (V, 3)")
        need(self.mean_texture is None or self.mean_texture.shape == (v, 3), "mean_texture must be (V, 3)")
        for name in ("mean", "id_basis", "exp_basis", "albedo_mean", "albedo_basis", "mean_texture", "uv"):
            need(arrays[name] is None or bool(np.isfinite(arrays[name]).all()), f"{name} has NaN or infinite values")
        need(self.triangles.ndim == 2 and self.triangles.shape[1] == 3 and len(self.triangles) > 0,
             "triangles must be (F, 3)")
        need(self.face_uv is None or self.face_uv.shape == self.triangles.shape, "face_uv must be (F, 3) like triangles")
        need(self.landmarks68.shape == (68,), "landmarks68 must be (68,)")
        need(self.contour.ndim == 2 and self.contour.shape[0] == 17, "contour must be (17, L)")
        need(self.parts.shape == (v,), "parts must be (V,)")
        need(self.skin_subset.ndim == 1, "skin_subset must be (S,)")
        margins = self.lid_margins
        need(margins is None or (margins.ndim == 2 and margins.shape[0] == 4 and bool(((margins >= 0).sum(1) >= 2).all())),
             "lid_margins must be (4, L) with at least 2 vertices a row")
        rng = self.meta.get("expression_range")
        need(rng is None or (isinstance(rng, (list, tuple)) and len(rng) == 2
                             and all(isinstance(x, (int, float)) for x in rng) and rng[0] < rng[1]),
             "meta's expression_range must be [low, high]")
        for name, low, high in (("triangles", 0, v), ("landmarks68", 0, v), ("contour", -1, v),
                                ("parts", -1, len(PART_NAMES)), ("skin_subset", 0, v), ("lid_margins", -1, v),
                                ("face_uv", 0, 0 if self.uv is None else len(self.uv))):
            a = arrays[name]
            need(a is None or a.size == 0 or (low <= a.min() and a.max() < high), f"{name} has values outside {low}..{high - 1}")


def save_model(data: ModelData, path: str | os.PathLike) -> Path:
    """Write atomically (temp file, then rename) so a crash never leaves half a model."""
    data.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "format": np.array(FORMAT),
        "meta": np.array(json.dumps(data.meta)),
        "mean": data.mean.astype(np.float32),
        "id_basis": data.id_basis.astype(np.float32),
        "exp_basis": data.exp_basis.astype(np.float32),
        "triangles": data.triangles.astype(np.int32),
        "landmarks68": data.landmarks68.astype(np.int32),
        "contour": data.contour.astype(np.int32),
        "parts": data.parts.astype(np.int8),
        "skin_subset": data.skin_subset.astype(np.int32),
    }
    if data.albedo_mean is not None:
        arrays["albedo_mean"] = data.albedo_mean.astype(np.float32)
        arrays["albedo_basis"] = data.albedo_basis.astype(np.float32)
    if data.lid_margins is not None:
        arrays["lid_margins"] = data.lid_margins.astype(np.int32)
    if data.mean_texture is not None:
        arrays["mean_texture"] = data.mean_texture.astype(np.float32)
    if data.uv is not None:
        arrays["uv"] = data.uv.astype(np.float32)
        arrays["face_uv"] = data.face_uv.astype(np.int32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_native(path: str | os.PathLike) -> ModelData:
    """A native ``.npz`` (see the module docstring), every array checked (:meth:`ModelData.validate`)."""
    path = Path(path)
    z = read_npz(path)
    if "format" not in z or z["format"].shape != () or str(z["format"]) != FORMAT:
        raise ModelError(f"{path}: not a fit3dmm model (expected format {FORMAT})")
    missing = [k for k in ("meta", *_ARRAY_KEYS) if k not in z]
    if missing:
        raise ModelError(f"{path}: keys {', '.join(missing)} missing")
    try:
        meta = json.loads(str(z["meta"]))
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
        data = ModelData(
            mean=z["mean"], id_basis=z["id_basis"], exp_basis=z["exp_basis"],
            triangles=z["triangles"].astype(np.int64), landmarks68=z["landmarks68"].astype(np.int64),
            contour=z["contour"].astype(np.int64), parts=z["parts"].astype(np.int64),
            skin_subset=z["skin_subset"].astype(np.int64),
            albedo_mean=z.get("albedo_mean"), albedo_basis=z.get("albedo_basis"), meta=meta,
            lid_margins=z["lid_margins"].astype(np.int64) if "lid_margins" in z else None,
            mean_texture=z.get("mean_texture"),
            uv=z.get("uv"), face_uv=z["face_uv"].astype(np.int64) if "face_uv" in z else None,
        )
    except (ValueError, TypeError) as e:  # non-numeric arrays, malformed meta
        raise ModelError(f"{path}: malformed face model ({reason(e)})") from None
    try:
        data.validate()
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    return data


def skin_subset(mean: np.ndarray, parts: np.ndarray, k: int = SKIN_POINTS) -> np.ndarray:
    """The skin vertices PRDL uses, chosen once per model by farthest point sampling on the mean shape."""
    skin = np.nonzero(parts == PART_NAMES.index("skin"))[0]
    if len(skin) == 0:
        return skin
    pick = farthest_point_sampling(torch.from_numpy(mean[skin]).double(), k).numpy()
    return np.sort(skin[pick])


def with_parts(data: ModelData, parts: np.ndarray, skin_subset: np.ndarray) -> ModelData:
    return replace(data, parts=parts.astype(np.int64), skin_subset=skin_subset.astype(np.int64))


def face_region(data: ModelData) -> np.ndarray:
    """(V,) bool: the face surface (the model's "face" region where it names one, else every vertex)."""
    region = np.zeros(data.n_vertices, dtype=bool)
    region[slice(*data.meta.get("regions", {}).get("face", (0, data.n_vertices)))] = True
    return region


def face_triangles(data: ModelData) -> np.ndarray:
    """(F,) bool: the triangles touching an annotated vertex (every triangle for a model without parts).
    Scalp, ears and neck take no part in any loss; the fit rasterizes these alone."""
    return (data.parts[data.triangles] >= 0).any(1) if data.has_parts else np.ones(len(data.triangles), bool)


def with_landmarks(data: ModelData, landmarks68: np.ndarray) -> ModelData:
    """The model with other landmark vertices, its jaw-contour lines drawn through them."""
    landmarks68 = landmarks68.astype(np.int64)
    return replace(data, landmarks68=landmarks68, contour=contour_candidates(data.mean, landmarks68, face_region(data)))


class FaceModel(nn.Module):
    """Maps coefficients to vertices (and albedo) in the model frame.

    ``forward(id_coeffs (..., Ki), exp_coeffs (..., Ke)) -> vertices (..., V, 3)``.
    All arrays are buffers, so ``.to(device)`` moves the whole model.
    """

    def __init__(self, data: ModelData):
        super().__init__()
        data.validate()
        self.data = data
        self.name = data.meta.get("name", "model")
        v = data.n_vertices
        f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        i64 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.long)  # noqa: E731
        self.register_buffer("mean", f32(data.mean))
        # (V*3, K) so a fit step is one matrix-vector product per basis.
        self.register_buffer("id_basis", f32(data.id_basis.reshape(-1, v * 3).T))
        self.register_buffer("exp_basis", f32(data.exp_basis.reshape(-1, v * 3).T))
        self.register_buffer("triangles", i64(data.triangles))
        self.register_buffer("landmarks68", i64(data.landmarks68))
        self.register_buffer("contour", i64(data.contour))
        self.register_buffer("parts", i64(data.parts))
        self.register_buffer("skin_subset", i64(data.skin_subset))
        # Leaving scalp, ears and neck out of the fit's rasterization halves its cost.
        tris = data.triangles
        self.register_buffer("fit_triangles", i64(tris[face_triangles(data)]))
        edges = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
        self.register_buffer("edges", i64(np.unique(edges, axis=0)))  # (E, 2) unique mesh edges
        self.has_albedo_basis = data.albedo_basis is not None
        if self.has_albedo_basis:
            self.register_buffer("albedo_mean", f32(data.albedo_mean))
            self.register_buffer("albedo_basis", f32(data.albedo_basis.reshape(-1, v * 3).T))
        # The mean texture (the free albedo's start and prior), or None for a model without one.
        self.register_buffer("texture", f32(data.mean_texture) if data.mean_texture is not None else None)
        rng = data.meta.get("expression_range")
        self.expression_range = tuple(rng) if rng else None
        self.has_lid_margins = data.lid_margins is not None
        if self.has_lid_margins:
            grids = [opening_grid(data.mean, *(row[row >= 0] for row in data.lid_margins[k : k + 2])) for k in (0, 2)]
            self.register_buffer("opening_ids", i64(np.stack([g[0] for g in grids])))  # (2, N, 4): left, right eye
            self.register_buffer("opening_weights", f32(np.stack([g[1] for g in grids])))  # (2, N, 4)
            self.register_buffer("opening_triangles", i64(grids[0][2]))  # (T, 3) over a grid's N points

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def n_id(self) -> int:
        return self.id_basis.shape[1]

    @property
    def n_exp(self) -> int:
        return self.exp_basis.shape[1]

    @property
    def n_albedo(self) -> int:
        return self.albedo_basis.shape[1] if self.has_albedo_basis else 0

    def forward(self, id_coeffs: Tensor, exp_coeffs: Tensor) -> Tensor:
        offset = id_coeffs @ self.id_basis.T + exp_coeffs @ self.exp_basis.T
        return self.mean + offset.reshape(*offset.shape[:-1], -1, 3)

    def albedo(self, albedo_coeffs: Tensor) -> Tensor:
        """(..., Ka) -> (..., V, 3) linear RGB; only for models with an albedo basis."""
        offset = albedo_coeffs @ self.albedo_basis.T
        return self.albedo_mean + offset.reshape(*offset.shape[:-1], -1, 3)

    def part_vertices(self, part: str) -> Tensor:
        """Vertex ids of one part; for skin, the farthest-point-sampled subset."""
        if part == "skin":
            return self.skin_subset
        return torch.nonzero(self.parts == PART_NAMES.index(part)).squeeze(1)

    def part_points(self, part: str) -> tuple[Tensor, Tensor, Tensor | None]:
        """The point set of one part as blends of vertices: point i = sum_k weights[i, k] * vertex
        ids[i, k]; ids and weights (N, 4). For the eyes of a model with lid margins, the grid over the
        opening between the lids, with its (T, 3) triangles over the N points; otherwise the part's
        vertices (weights 1, 0, 0, 0) and None."""
        if self.has_lid_margins and part in ("left_eye", "right_eye"):
            k = ("left_eye", "right_eye").index(part)
            return self.opening_ids[k], self.opening_weights[k], self.opening_triangles
        ids = self.part_vertices(part)
        weights = torch.zeros(len(ids), 4, device=ids.device)
        weights[:, 0] = 1
        return ids[:, None].expand(-1, 4), weights, None

"""The Basel Face Model 2009 as Deep3DFaceRecon and 3DDFA-V3 use it (35,709 front-face vertices; 80
identity, 64 expression and 80 albedo components).

- :func:`convert_bfm`: Deep3DFaceRecon's conversion from the original files a user downloads
  (``01_MorphableModel.mat``, ``Exp_Pca.bin``) with its index files (``BFM_exp_idx.mat``,
  ``BFM_front_idx.mat``, ``facemodel_info.mat``, ``std_exp.txt``; MIT).
- :func:`load_deep3d_front`: its converted ``BFM_model_front.mat``.
- :func:`load_3ddfa_v3`: 3DDFA-V3's ``face_model.npy`` (which also carries a part annotation).

Deep3DFaceRecon scales shapes by 1e-5 (the BFM's micrometres to decimetres); fit3dmm's models are in
centimetres, so 10x that. Its albedo is in [0, 255]; fit3dmm's in [0, 1].
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..files import check_file, read_mat, read_pickled_arrays, reason
from .contour import contour_candidates
from .facemodel import PART_NAMES, ModelData, skin_subset

BFM_VERTICES = 53490  # the original model
TRIMMED_VERTICES = 53215  # after Deep3DFaceRecon's trimIndex (the expression basis's vertices)
FRONT_VERTICES = 35709
N_ID, N_EXP, N_ALBEDO = 80, 64, 80
EXP_COMPONENTS = 79
#: Exp_Pca.bin: int32 component count, float32 mean (3 x 53215), float32 components (79 x 3 x 53215).
EXP_BIN_BYTES = 4 + 4 * 3 * TRIMMED_VERTICES * (1 + EXP_COMPONENTS)
TO_CM = 10.0 / 1e5  # Deep3DFaceRecon's 1e-5, then decimetres to centimetres
DEEP3D_TO_CM = 10.0  # a converted file's decimetres to centimetres
LICENCE = "Basel Face Model 2009: non-commercial research licence of the University of Basel; not redistributable"
#: 3DDFA-V3's annotation order -> fit3dmm part names.
DDFA_V3_PARTS = ("right_eye", "left_eye", "right_eyebrow", "left_eyebrow", "nose", "up_lip", "down_lip", "skin")


def _loadmat(path: Path, keys: dict[str, tuple | None]) -> dict:
    """Read a .mat file and check that each key holds a numeric array of its shape (None: any)."""
    mat = read_mat(path)
    for key, shape in keys.items():
        if key not in mat:
            raise ModelError(f"{path}: key '{key}' missing (has {', '.join(k for k in mat if not k.startswith('__'))})")
        if not isinstance(mat[key], np.ndarray) or mat[key].dtype.kind not in "fiu":
            raise ModelError(f"{path}: '{key}' is not a numeric array")
        if shape is not None and mat[key].shape != shape:
            raise ModelError(f"{path}: '{key}' has shape {mat[key].shape}, expected {shape}")
    return mat


def read_exp_pca(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Exp_Pca.bin -> (mean (3·53215,), components (3·53215, 79)), refusing a file of the wrong size."""
    path = check_file(Path(path), ModelError)
    size = path.stat().st_size
    if size != EXP_BIN_BYTES:
        raise ModelError(f"{path}: {size:,} bytes, expected {EXP_BIN_BYTES:,} (truncated or not Exp_Pca.bin)")
    with open(path, "rb") as f:
        n = int(np.fromfile(f, np.int32, 1)[0])
        if n != EXP_COMPONENTS:
            raise ModelError(f"{path}: {n} components, expected {EXP_COMPONENTS}")
        mean = np.fromfile(f, np.float32, 3 * TRIMMED_VERTICES)
        components = np.fromfile(f, np.float32, EXP_COMPONENTS * 3 * TRIMMED_VERTICES).reshape(EXP_COMPONENTS, -1).T
    return mean, components


@contextmanager
def _malformed(path):
    """Files with the right keys but wrong contents (shapes, types) fail inside numpy; name the file."""
    try:
        yield
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise ModelError(f"{path}: malformed model data ({reason(e)})") from None


def _xyz_rows(vertex_ids: np.ndarray) -> np.ndarray:
    """Vertex ids -> the rows of their x, y, z in a (3V, K) basis."""
    return (3 * vertex_ids[:, None] + np.arange(3)).ravel()


def _modes(rows: np.ndarray, k: int) -> np.ndarray:
    """(3V, K) basis columns -> (k, V, 3)."""
    return np.ascontiguousarray(rows[:, :k].T.reshape(k, -1, 3), dtype=np.float32)


def oriented_outward(triangles: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Triangles counter-clockwise seen from outside: the face looks along +z, so most normals must too."""
    a, b, c = (mean[triangles[:, k]] for k in range(3))
    facing = np.cross(b - a, c - a)[:, 2]
    return triangles if (facing > 0).sum() >= (facing < 0).sum() else triangles[:, ::-1].copy()


def _model(name: str, source: str, mean, id_basis, exp_basis, albedo_mean, albedo_basis, triangles, landmarks68,
           parts=None) -> ModelData:
    v = len(mean)
    triangles = np.asarray(triangles, np.int64)
    if triangles.ndim != 2 or triangles.shape[1] != 3 or not len(triangles):
        raise ModelError(f"{source}: triangles must be (F, 3), not {triangles.shape}")
    if triangles.min() < 0 or triangles.max() >= v:
        raise ModelError(f"{source}: triangle indices outside 0..{v - 1}")
    triangles = oriented_outward(triangles, mean)
    landmarks68 = np.asarray(landmarks68, np.int64).ravel()
    if landmarks68.shape != (68,) or landmarks68.min() < 0 or landmarks68.max() >= v:
        raise ModelError(f"{source}: expected 68 landmark vertex ids in 0..{v - 1}")
    data = ModelData(
        mean=np.asarray(mean, np.float32), id_basis=id_basis, exp_basis=exp_basis, triangles=triangles,
        landmarks68=landmarks68, contour=contour_candidates(mean, landmarks68, np.ones(v, bool)),
        parts=-np.ones(v, np.int64) if parts is None else parts, skin_subset=np.zeros(0, np.int64),
        albedo_mean=np.asarray(albedo_mean, np.float32), albedo_basis=albedo_basis,
        meta={"name": name, "units": "cm", "source": source, "licence": LICENCE},
    )
    data.validate()
    return data


def convert_bfm(bfm: str | Path, exp: str | Path, index: str | Path, name: str = "bfm") -> ModelData:
    """Deep3DFaceRecon's conversion: identity = shapePC·shapeEV, expression = expPC·std_exp (both
    scaled as shapes), albedo = texPC·texEV; the first 80/64/80 components; vertices trimIndex[idx]
    of the original model (idx of the expression basis's), both index lists 1-based."""
    # The small files first, so that a broken one fails before the 0.5 GB model is read.
    index = Path(index)
    _, exp_pc = read_exp_pca(Path(exp))
    trim = _loadmat(index / "BFM_exp_idx.mat", {"trimIndex": (TRIMMED_VERTICES, 1)})["trimIndex"].ravel().astype(np.int64)
    front = _loadmat(index / "BFM_front_idx.mat", {"idx": (FRONT_VERTICES, 1)})["idx"].ravel().astype(np.int64)
    info = _loadmat(index / "facemodel_info.mat", {"tri": None, "keypoints": (1, 68), "point_buf": (FRONT_VERTICES, 8),
                                                    "skinmask": (1, FRONT_VERTICES)})
    try:
        std_exp = np.loadtxt(check_file(index / "std_exp.txt", ModelError), dtype=np.float64).ravel()
    except (OSError, ValueError) as e:
        raise ModelError(f"{index / 'std_exp.txt'}: not readable ({reason(e)})") from None
    if std_exp.shape != (EXP_COMPONENTS,):
        raise ModelError(f"{index / 'std_exp.txt'}: {std_exp.size} values, expected {EXP_COMPONENTS}")
    if not (1 <= trim.min() and trim.max() <= BFM_VERTICES and 1 <= front.min() and front.max() <= TRIMMED_VERTICES):
        raise ModelError(f"{index}: index files out of range (they are 1-based)")
    n = 3 * BFM_VERTICES
    m = _loadmat(Path(bfm), {"shapeMU": (n, 1), "shapePC": (n, 199), "shapeEV": (199, 1),
                             "texMU": (n, 1), "texPC": (n, 199), "texEV": (199, 1)})
    exp_ids = front - 1  # into the trimmed model (the expression basis)
    shape_ids = trim[exp_ids] - 1  # into the original model
    rows, exp_rows = _xyz_rows(shape_ids), _xyz_rows(exp_ids)
    mean = m["shapeMU"][rows, 0].reshape(-1, 3) * TO_CM
    id_basis = _modes(m["shapePC"][rows, :N_ID] * m["shapeEV"][:N_ID, 0] * TO_CM, N_ID)
    exp_basis = _modes(exp_pc[exp_rows, :N_EXP] * std_exp[:N_EXP] * TO_CM, N_EXP)
    albedo_mean = m["texMU"][rows, 0].reshape(-1, 3) / 255.0
    albedo_basis = _modes(m["texPC"][rows, :N_ALBEDO] * m["texEV"][:N_ALBEDO, 0] / 255.0, N_ALBEDO)
    return _model(name, f"Basel Face Model 2009 ({Path(bfm).name}, {Path(exp).name}), Deep3DFaceRecon conversion",
                  mean, id_basis, exp_basis, albedo_mean, albedo_basis, info["tri"] - 1, info["keypoints"] - 1)


def load_deep3d_front(path: str | Path, name: str = "bfm") -> ModelData:
    """Deep3DFaceRecon's ``BFM_model_front.mat`` (meanshape, meantex, idBase, exBase, texBase, tri and
    keypoints 1-based)."""
    with _malformed(path):
        return _from_deep3d_front(Path(path), name)


def _from_deep3d_front(path: Path, name: str) -> ModelData:
    m = _loadmat(Path(path), {"meanshape": None, "meantex": None, "idBase": None, "exBase": None, "texBase": None,
                              "tri": None, "keypoints": None})
    mean = m["meanshape"].reshape(-1, 3) * DEEP3D_TO_CM
    v = len(mean)
    for key in ("idBase", "exBase", "texBase"):
        if m[key].shape[0] != 3 * v:
            raise ModelError(f"{path}: '{key}' has {m[key].shape[0]} rows, expected {3 * v} (3 x the mean's vertices)")
    return _model(name, f"Deep3DFaceRecon {Path(path).name}", mean,
                  _modes(m["idBase"] * DEEP3D_TO_CM, m["idBase"].shape[1]),
                  _modes(m["exBase"] * DEEP3D_TO_CM, m["exBase"].shape[1]),
                  m["meantex"].reshape(-1, 3) / 255.0, _modes(m["texBase"] / 255.0, m["texBase"].shape[1]),
                  m["tri"] - 1, m["keypoints"] - 1)


def load_3ddfa_v3(path: str | Path, name: str = "bfm") -> ModelData:
    """3DDFA-V3's ``face_model.npy``: a pickled dict with u, id, exp, u_alb, alb, tri, ldm68 and the
    part annotation (8 vertex lists in the order of :data:`DDFA_V3_PARTS`); 0-based, decimetres, albedo
    in [0, 1]."""
    d = read_pickled_arrays(path)
    if not isinstance(d, dict):
        raise ModelError(f"{path}: not a 3DDFA-V3 face_model.npy (holds a {type(d).__name__}, not a dict)")
    missing = [k for k in ("u", "id", "exp", "u_alb", "alb", "tri", "ldm68", "annotation") if k not in d]
    if missing:
        raise ModelError(f"{path}: keys {', '.join(missing)} missing")
    with _malformed(path):
        return _from_3ddfa_v3(path, d, name)


def _from_3ddfa_v3(path: Path, d: dict, name: str) -> ModelData:
    mean = np.asarray(d["u"], np.float64).reshape(-1, 3) * DEEP3D_TO_CM
    v = len(mean)
    if len(d["annotation"]) != len(DDFA_V3_PARTS):
        raise ModelError(f"{path}: 'annotation' has {len(d['annotation'])} lists, expected {len(DDFA_V3_PARTS)}")
    parts = -np.ones(v, np.int64)
    for part, ids in zip(DDFA_V3_PARTS, d["annotation"]):
        ids = np.asarray(ids, np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= v):
            raise ModelError(f"{path}: 'annotation' lists vertex ids outside 0..{v - 1}")
        parts[ids] = PART_NAMES.index(part)
    data = _model(name, f"3DDFA-V3 {Path(path).name}", mean,
                  _modes(np.asarray(d["id"]) * DEEP3D_TO_CM, np.asarray(d["id"]).shape[1]),
                  _modes(np.asarray(d["exp"]) * DEEP3D_TO_CM, np.asarray(d["exp"]).shape[1]),
                  np.asarray(d["u_alb"]).reshape(-1, 3), _modes(np.asarray(d["alb"]), np.asarray(d["alb"]).shape[1]),
                  d["tri"], d["ldm68"], parts)
    data.skin_subset = skin_subset(data.mean, data.parts)
    return data

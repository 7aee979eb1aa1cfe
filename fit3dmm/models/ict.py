"""Build the default face model from ICT-FaceKit (MIT licence, github.com/ICT-VGL/ICT-FaceKit).

Accepts either the upstream folder (``FaceXModel/*.obj`` + ``FaceXModel/vertex_indices.json``, or that
folder itself) or the single-file re-encoding ``ict_facekit_light.npz`` (+ ``vertex_indices.json`` beside it).

Kept from the full head: the face surface (vertices 0-9408, with eyelids and lips) and both eyeballs
(21451-24590). The visible eye of a photo is the eyeball between the lids, so the eyeballs are the eye
part in renders (closing the lids with eyeBlink_L/R covers them and the z-buffer hides them), and the
part losses' eye point sets are the openings between the lid margins found here (:mod:`.eyes`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..files import read_json, read_npz, reason
from .contour import contour_candidates
from .eyes import lid_margins
from .facemodel import ModelData, with_landmarks

N_VERTICES = 26719
FACE = (0, 9409)
EYEBALLS = (21451, 24591)
RIGHT_EYEBALL = 23021  # the first vertex of the right eyeball (the left one's start at EYEBALLS[0])
LICENSE_NOTE = "ICT-FaceKit, MIT licence, (c) USC Institute for Creative Technologies"
#: Part annotation shipped with the package, produced by `fit3dmm model annotate` (see README).
PARTS_RESOURCE = "ict_parts.npz"
_SOURCE_KEYS = ("neutral", "faces", "identity", "expression", "expression_names")
#: Texture atlas of the kept surfaces. ICT lays the face and each eyeball out over the whole unit square
#: (its textures are separate files), so they are packed into one: the face squeezed into the lower 7/8
#: (its left-right mirror symmetry u -> 1 - u is kept), the left and right eyeballs in 1/8-wide squares
#: in the strip above. Rows: (u offset, v offset, u scale, v scale), OBJ convention (v up).
UV_ATLAS = {"face": (0.0, 0.0, 1.0, 0.875), "left_eyeball": (0.0, 0.875, 0.125, 0.125),
            "right_eyeball": (0.125, 0.875, 0.125, 0.125)}


def _read_obj_positions(path: Path) -> np.ndarray:
    # trimesh re-indexes vertices when an OBJ has texture coordinates, and the bases need the file's
    # exact vertex order, so the ``v`` lines are read directly.
    with open(path) as f:
        rows = [line.split()[1:4] for line in f if line.startswith("v ")]
    return np.asarray(rows, dtype=np.float32)


def _read_obj_faces(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(faces (F, 4), texture coordinates (T, 2), per-corner texture ids (F, 4)); -1 pads triangles."""
    faces, face_uv, uv = [], [], []
    with open(path) as f:
        for line in f:
            if line.startswith("vt "):
                uv.append(line.split()[1:3])
            elif line.startswith("f "):
                corners = [tok.split("/") for tok in line.split()[1:]]
                faces.append(([int(c[0]) - 1 for c in corners] + [-1])[:4])
                face_uv.append(([int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners] + [-1])[:4])
    return (np.asarray(faces, dtype=np.int64), np.asarray(uv, dtype=np.float32).reshape(-1, 2),
            np.asarray(face_uv, dtype=np.int64))


def _load_upstream(folder: Path) -> dict:
    if (folder / "FaceXModel").is_dir():
        folder = folder / "FaceXModel"
    indices = read_json(folder / "vertex_indices.json", ModelError)
    neutral_obj = folder / "generic_neutral_mesh.obj"
    identities = sorted(folder.glob("identity[0-9][0-9][0-9].obj"))
    if not neutral_obj.is_file() or not identities:
        raise ModelError(f"{folder} lacks generic_neutral_mesh.obj or identityNNN.obj files")
    names = indices["expressions"]
    missing = [n for n in names if not (folder / f"{n}.obj").is_file()]
    if missing:
        raise ModelError(f"{folder} lacks expression files: {', '.join(missing[:5])}")
    faces, uv, face_uv = _read_obj_faces(neutral_obj)
    return {
        "neutral": _read_obj_positions(neutral_obj),
        "faces": faces,
        **({"uv": uv, "face_uv": face_uv} if len(uv) else {}),  # an OBJ without texture coordinates: no UVs
        "identity": np.stack([_read_obj_positions(p) for p in identities]),
        "expression": np.stack([_read_obj_positions(folder / f"{n}.obj") for n in names]),
        "expression_names": np.asarray(names),
        "indices": indices,
    }


def _load_npz(path: Path) -> dict:
    indices_file = path.parent / "vertex_indices.json"
    if not indices_file.is_file():
        raise ModelError(f"{indices_file} not found (it ships beside the npz)")
    z = read_npz(path)
    missing = [k for k in _SOURCE_KEYS if k not in z]
    if missing:
        raise ModelError(f"{path}: keys {', '.join(missing)} missing (not ict_facekit_light.npz?)")
    uv = {k: z[k] for k in ("uv", "face_uv") if k in z}  # older re-encodings lack them
    return {**{k: z[k] for k in _SOURCE_KEYS}, **uv, "indices": read_json(indices_file, ModelError)}


def load_ict_source(src: str | Path) -> dict:
    src = Path(src)
    try:
        raw = _load_npz(src) if src.is_file() and src.suffix == ".npz" else _load_upstream(src)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot read ICT-FaceKit from {src}: {reason(e)}") from None
    _check_source(src, raw)
    return raw


def _check_source(src: Path, raw: dict) -> None:
    """Shapes, dtypes and index ranges of what the importer uses, so that a broken source fails here."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ModelError(f"{src}: {message}")

    neutral, identity, expression, faces = (np.asarray(raw[k]) for k in ("neutral", "identity", "expression", "faces"))
    need(neutral.shape == (N_VERTICES, 3), f"expected {N_VERTICES} ICT-FaceKit vertices, got shape {neutral.shape}")
    for name, a in (("neutral", neutral), ("identity", identity), ("expression", expression)):
        need(a.dtype.kind in "fiu" and bool(np.isfinite(a).all()), f"{name} must hold finite numbers")
    need(identity.ndim == 3 and identity.shape[1:] == (N_VERTICES, 3), "identity must be (K, 26719, 3)")
    need(expression.ndim == 3 and expression.shape[1:] == (N_VERTICES, 3), "expression must be (E, 26719, 3)")
    need(len(raw["expression_names"]) == len(expression), "one expression name per expression")
    need(faces.ndim == 2 and faces.shape[1] == 4 and faces.dtype.kind in "iu", "faces must be (F, 4) integers")
    need(faces.size > 0 and faces.min() >= -1 and faces.max() < N_VERTICES, "face indices out of range")
    if "uv" in raw:
        uv, face_uv = np.asarray(raw["uv"]), np.asarray(raw["face_uv"])
        need(uv.ndim == 2 and uv.shape[1] == 2 and uv.dtype.kind == "f" and bool(np.isfinite(uv).all()),
             "uv must be (T, 2) finite numbers")
        need(face_uv.shape == faces.shape and face_uv.dtype.kind in "iu" and face_uv.min() >= -1
             and face_uv.max() < len(uv) and bool(((face_uv < 0) == (faces < 0)).all()),
             "face_uv must match faces, with texture ids in range")
    indices = raw["indices"]
    landmarks = np.asarray(indices.get("idx_to_landmark_verts", []) if isinstance(indices, dict) else [])
    need(landmarks.shape == (68,) and landmarks.dtype.kind in "iu" and landmarks.min() >= 0
         and landmarks.max() < N_VERTICES, "vertex_indices.json needs 68 landmark vertex ids (idx_to_landmark_verts)")


def _select(faces: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Old->new vertex map, the triangles (quads split) whose corners are all kept, and which face and
    corners each triangle came from ((F, 3) flat indices into ``faces``, for per-corner data)."""
    remap = -np.ones(len(keep), dtype=np.int64)
    remap[keep] = np.arange(keep.sum())
    kept = np.nonzero(np.where(faces < 0, True, keep[np.where(faces < 0, 0, faces)]).all(1))[0]
    quads = kept[faces[kept, 3] >= 0]
    corners = np.concatenate([kept[:, None] * 4 + [0, 1, 2], quads[:, None] * 4 + [0, 2, 3]])
    return remap, remap[faces.reshape(-1)[corners]], corners


def _atlas_uv(uv: np.ndarray, face_uv: np.ndarray, triangles: np.ndarray, starts: list[int]) -> tuple:
    """Texture coordinates of the kept triangles packed into :data:`UV_ATLAS`, whose regions start at the
    vertex ids ``starts``: (uv (T, 2), face_uv (F, 3)). A coordinate used by two regions is copied."""
    region = np.searchsorted(starts, triangles.min(1), side="right") - 1
    key, inverse = np.unique(np.stack([np.broadcast_to(region[:, None], face_uv.shape), face_uv], -1).reshape(-1, 2),
                             axis=0, return_inverse=True)
    atlas = np.asarray(list(UV_ATLAS.values()), dtype=np.float32)[key[:, 0]]
    packed = atlas[:, :2] + np.clip(uv[key[:, 1]], 0, 1) * atlas[:, 2:]
    return packed.astype(np.float32), inverse.reshape(face_uv.shape)


def shipped_parts(n_vertices: int) -> dict[str, np.ndarray] | None:
    """The packaged annotation (parts, skin_subset, and where present mean_texture and the voted
    landmarks68) if it matches this vertex count."""
    res = resources.files("fit3dmm.data") / PARTS_RESOURCE
    if not res.is_file():
        return None
    with res.open("rb") as f, np.load(f) as z:
        if z["parts"].shape != (n_vertices,):
            return None
        out = {"parts": z["parts"].astype(np.int64), "skin_subset": z["skin_subset"].astype(np.int64)}
        if "mean_texture" in z:
            out["mean_texture"] = z["mean_texture"].astype(np.float32) / 255.0
        if "landmarks68" in z:
            out["landmarks68"] = z["landmarks68"].astype(np.int64)
        return out


def import_ict(src: str | Path, name: str = "ict", with_parts: bool = True) -> ModelData:
    raw = load_ict_source(src)
    keep = np.zeros(N_VERTICES, dtype=bool)
    keep[FACE[0] : FACE[1]] = True
    keep[EYEBALLS[0] : EYEBALLS[1]] = True
    remap, triangles, corners = _select(raw["faces"], keep)
    neutral = raw["neutral"][keep]
    landmarks = remap[np.asarray(raw["indices"]["idx_to_landmark_verts"])]
    if (landmarks < 0).any():
        raise ModelError("ICT landmark vertices fall outside the kept face region")
    face_region = np.zeros(len(neutral), dtype=bool)
    face_region[remap[FACE[0] : FACE[1]]] = True
    uv = face_uv = None
    if "uv" in raw:
        starts = [0, int(remap[EYEBALLS[0]]), int(remap[RIGHT_EYEBALL])]
        uv, face_uv = _atlas_uv(np.asarray(raw["uv"]), np.asarray(raw["face_uv"]).reshape(-1)[corners], triangles, starts)
    data = ModelData(
        lid_margins=lid_margins(neutral, triangles, face_region, landmarks),
        mean=neutral,
        id_basis=raw["identity"][:, keep] - neutral,
        exp_basis=raw["expression"][:, keep] - neutral,
        triangles=triangles,
        landmarks68=landmarks,
        contour=contour_candidates(neutral, landmarks, face_region),
        parts=-np.ones(len(neutral), dtype=np.int64),
        skin_subset=np.zeros(0, dtype=np.int64),
        uv=uv,
        face_uv=face_uv,
        meta={
            "name": name,
            "units": "cm",
            "source": "ICT-FaceKit light",
            "licence": LICENSE_NOTE,
            "expression_names": [str(n) for n in raw["expression_names"]],
            # Blendshape weights mean something only in [0, 1].
            "expression_range": [0.0, 1.0],
            "regions": {"face": [0, int(face_region.sum())], "eyeballs": [int(face_region.sum()), int(keep.sum())]},
        },
    )
    if uv is not None:
        data.meta["uv_mirror"] = [0.0, 0.0, 1.0, UV_ATLAS["face"][3]]  # the face's UVs are left-right symmetric
    if with_parts:  # the lid margins above stay derived from ICT's own landmark vertices
        annotation = shipped_parts(len(neutral))
        if annotation is not None:
            landmarks68 = annotation.pop("landmarks68", None)
            for key, value in annotation.items():
                setattr(data, key, value)
            if landmarks68 is not None:  # the voted ones, with the jaw's lines drawn through them
                data = with_landmarks(data, landmarks68)
            data.meta["parts_source"] = "fit3dmm/data/" + PARTS_RESOURCE
    return data

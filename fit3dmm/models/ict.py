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
from .facemodel import ModelData

N_VERTICES = 26719
FACE = (0, 9409)
EYEBALLS = (21451, 24591)
LICENSE_NOTE = "ICT-FaceKit, MIT licence, (c) USC Institute for Creative Technologies"
#: Part annotation shipped with the package, produced by `fit3dmm model annotate` (see README).
PARTS_RESOURCE = "ict_parts.npz"
_SOURCE_KEYS = ("neutral", "faces", "identity", "expression", "expression_names")


def _read_obj_positions(path: Path) -> np.ndarray:
    # trimesh re-indexes vertices when an OBJ has texture coordinates, and the bases need the file's
    # exact vertex order, so the ``v`` lines are read directly.
    with open(path) as f:
        rows = [line.split()[1:4] for line in f if line.startswith("v ")]
    return np.asarray(rows, dtype=np.float32)


def _read_obj_faces(path: Path) -> np.ndarray:
    faces = []
    with open(path) as f:
        for line in f:
            if line.startswith("f "):
                ids = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
                faces.append((ids + [-1])[:4])
    return np.asarray(faces, dtype=np.int64)


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
    return {
        "neutral": _read_obj_positions(neutral_obj),
        "faces": _read_obj_faces(neutral_obj),
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
    return {**{k: z[k] for k in _SOURCE_KEYS}, "indices": read_json(indices_file, ModelError)}


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
    indices = raw["indices"]
    landmarks = np.asarray(indices.get("idx_to_landmark_verts", []) if isinstance(indices, dict) else [])
    need(landmarks.shape == (68,) and landmarks.dtype.kind in "iu" and landmarks.min() >= 0
         and landmarks.max() < N_VERTICES, "vertex_indices.json needs 68 landmark vertex ids (idx_to_landmark_verts)")


def _select(faces: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Old->new vertex map and the triangles (quads split) whose corners are all kept."""
    remap = -np.ones(len(keep), dtype=np.int64)
    remap[keep] = np.arange(keep.sum())
    quads = faces[(np.where(faces < 0, 0, faces) >= 0).all(1)]
    corners_kept = np.where(quads < 0, True, keep[np.where(quads < 0, 0, quads)]).all(1)
    quads = quads[corners_kept]
    tri_a = quads[:, [0, 1, 2]]
    tri_b = quads[quads[:, 3] >= 0][:, [0, 2, 3]]
    return remap, remap[np.concatenate([tri_a, tri_b])]


def shipped_parts(n_vertices: int) -> dict[str, np.ndarray] | None:
    """The packaged annotation (parts, skin_subset, and where present mean_texture) if it matches this
    vertex count."""
    res = resources.files("fit3dmm.data") / PARTS_RESOURCE
    if not res.is_file():
        return None
    with res.open("rb") as f, np.load(f) as z:
        if z["parts"].shape != (n_vertices,):
            return None
        out = {"parts": z["parts"].astype(np.int64), "skin_subset": z["skin_subset"].astype(np.int64)}
        if "mean_texture" in z:
            out["mean_texture"] = z["mean_texture"].astype(np.float32) / 255.0
        return out


def import_ict(src: str | Path, name: str = "ict", with_parts: bool = True) -> ModelData:
    raw = load_ict_source(src)
    keep = np.zeros(N_VERTICES, dtype=bool)
    keep[FACE[0] : FACE[1]] = True
    keep[EYEBALLS[0] : EYEBALLS[1]] = True
    remap, triangles = _select(raw["faces"], keep)
    neutral = raw["neutral"][keep]
    landmarks = remap[np.asarray(raw["indices"]["idx_to_landmark_verts"])]
    if (landmarks < 0).any():
        raise ModelError("ICT landmark vertices fall outside the kept face region")
    face_region = np.zeros(len(neutral), dtype=bool)
    face_region[remap[FACE[0] : FACE[1]]] = True
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
    if with_parts:
        annotation = shipped_parts(len(neutral))
        if annotation is not None:
            for key, value in annotation.items():
                setattr(data, key, value)
            data.meta["parts_source"] = "fit3dmm/data/" + PARTS_RESOURCE
    return data

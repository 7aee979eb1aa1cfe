"""A glTF 2.0 binary (.glb) writer for a head with expression morph targets, a texture and an animation.

Hand-written because trimesh, the project's mesh library, writes neither morph targets nor animations;
the format is small (one JSON chunk and one binary chunk, spec: registry.khronos.org/glTF). Morph targets
are sparse accessors holding only the vertices a blendshape moves (by more than :data:`MORPH_EPS_M`):
ICT's 53 move 30% of the head's (seam-split) vertices on average, so this is 2.8x smaller than dense
targets. Units are metres and the axes glTF's (+y up, the viewer on +z): the model frame's axes already (x the subject's
left, y up, z out of the face), so only its units change. The camera frame (OpenCV's: y down, z forward)
maps to glTF's by F = diag(1, -1, -1), the same flip as the model's.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

from .texture import UVMesh

_FLOAT, _UINT32, _UINT16 = 5126, 5125, 5123
_DTYPES = {_FLOAT: np.float32, _UINT32: np.uint32, _UINT16: np.uint16}
#: Morph offsets below this (metres, 10 micrometres) are left out of the sparse targets.
MORPH_EPS_M = 1e-5
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLIP = np.diag([1.0, -1.0, -1.0])


def quaternion(rotation: np.ndarray) -> np.ndarray:
    """(T, 3, 3) proper rotations -> (T, 4) unit quaternions (x, y, z, w), glTF's order."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rotation).as_quat().astype(np.float32)


@dataclass
class Animation:
    """Keyframes at ``times`` (T,) seconds: morph weights (T, K), and the head's pose in the camera frame:
    rotation (T, 3, 3) R(angles) and translation (T, 3), X_cam = R diag(1, -1, -1) X + t (model units)."""

    times: np.ndarray
    weights: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray


@dataclass
class _Builder:
    buffer: bytearray = field(default_factory=bytearray)
    views: list = field(default_factory=list)
    accessors: list = field(default_factory=list)

    def view(self, data: bytes, target: int | None = None) -> int:
        """Append bytes (4-byte aligned) as a buffer view; returns its index."""
        while len(self.buffer) % 4:
            self.buffer.append(0)
        view = {"buffer": 0, "byteOffset": len(self.buffer), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.buffer.extend(data)
        self.views.append(view)
        return len(self.views) - 1

    def add(self, array: np.ndarray, kind: str, target: int | None = None, minmax: bool = False) -> int:
        """Append an array as a buffer view and accessor; returns the accessor index."""
        array = np.ascontiguousarray(array)
        accessor = {"bufferView": self.view(array.tobytes(), target), "componentType": _component(array),
                    "count": int(array.shape[0]), "type": kind}
        if minmax:
            flat = array.reshape(array.shape[0], -1)
            accessor["min"], accessor["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def add_sparse(self, offsets: np.ndarray) -> int:
        """A VEC3 float accessor of (V, 3) ``offsets`` stored sparsely: only the rows with a component
        above MORPH_EPS_M (the rest read as zeros); returns the accessor index."""
        rows = np.nonzero(np.abs(offsets).max(1) > MORPH_EPS_M)[0]
        values = np.ascontiguousarray(offsets[rows], np.float32)
        stored = np.zeros((len(offsets), 3), np.float32)  # what a reader sees: min and max must match it
        stored[rows] = values
        accessor = {"componentType": _FLOAT, "count": len(offsets), "type": "VEC3",
                    "min": stored.min(0).tolist(), "max": stored.max(0).tolist()}
        if len(rows):
            index = rows.astype(np.uint16 if len(offsets) <= 1 << 16 else np.uint32)
            accessor["sparse"] = {"count": len(rows),
                                  "indices": {"bufferView": self.view(index.tobytes()), "componentType": _component(index)},
                                  "values": {"bufferView": self.view(values.tobytes())}}
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def _component(array: np.ndarray) -> int:
    return {np.dtype(v): k for k, v in _DTYPES.items()}[array.dtype]


def write_glb(path, vertices: np.ndarray, triangles: np.ndarray, targets: np.ndarray, target_names: list[str],
              units_per_metre: float, colours: np.ndarray | None = None, weights: np.ndarray | None = None,
              uv_mesh: UVMesh | None = None, texture_png: bytes | None = None, animation: Animation | None = None,
              camera: dict | None = None) -> None:
    """Write a .glb: one mesh (vertices (V, 3) in the model's frame and units, triangles (F, 3)) with morph
    targets (K, V, 3) of vertex offsets named in ``mesh.extras.targetNames``, and default ``weights`` (K,)
    (else the animation's first frame, else zeros). Colour: with ``uv_mesh`` (the mesh split at UV seams)
    and ``texture_png``, a base colour texture; else ``colours`` (V, 3) in [0, 1] as vertex colours, if
    given. With ``animation``, one animation of the weights and head pose; with ``camera`` ({"yfov":
    radians, "aspect": w/h}), a perspective camera at the origin looking down -z, so the animation plays
    as the video saw it."""
    scale = 1.0 / units_per_metre
    normals = _normals(vertices, triangles)  # on the unsplit mesh, so seams do not show in the shading
    if uv_mesh is not None:
        vertices, normals, targets = vertices[uv_mesh.vertex], normals[uv_mesh.vertex], targets[:, uv_mesh.vertex]
        colours = None if colours is None else colours[uv_mesh.vertex]
        triangles = uv_mesh.triangles
    b = _Builder()
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    attributes = {"POSITION": b.add(f32(vertices * scale), "VEC3", _ARRAY_BUFFER, minmax=True),
                  "NORMAL": b.add(f32(normals), "VEC3", _ARRAY_BUFFER)}
    material = {"name": "skin", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                          "roughnessFactor": 0.7}}
    doc = {"asset": {"version": "2.0", "generator": "fit3dmm"}, "scene": 0, "scenes": [{"nodes": [0]}]}
    if uv_mesh is not None and texture_png is not None:
        flipped = np.stack([uv_mesh.uv[:, 0], 1 - uv_mesh.uv[:, 1]], 1)  # glTF's v runs down the image
        attributes["TEXCOORD_0"] = b.add(f32(flipped), "VEC2", _ARRAY_BUFFER)
        doc["images"] = [{"bufferView": b.view(texture_png), "mimeType": "image/png"}]
        doc["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
        doc["textures"] = [{"sampler": 0, "source": 0}]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0}
    elif colours is not None:
        attributes["COLOR_0"] = b.add(f32(np.clip(colours, 0, 1)), "VEC3", _ARRAY_BUFFER)
    indices = b.add(np.asarray(triangles, np.uint32).reshape(-1), "SCALAR", _ELEMENT_ARRAY_BUFFER)
    morphs = [{"POSITION": b.add_sparse(f32(t * scale))} for t in targets]
    if weights is None:
        weights = animation.weights[0] if animation is not None else np.zeros(len(targets))
    mesh = {"name": "head", "primitives": [{"attributes": attributes, "indices": indices, "material": 0,
                                            "targets": morphs}],
            "weights": [float(w) for w in weights], "extras": {"targetNames": list(target_names)}}
    head = {"name": "head", "mesh": 0}
    nodes = [head]
    doc["meshes"], doc["materials"] = [mesh], [material]
    if animation is not None:
        rot = _FLIP @ animation.rotation @ _FLIP  # model -> glTF world, through the camera frame
        trans = animation.translation @ _FLIP * scale
        head["rotation"], head["translation"] = quaternion(rot[:1])[0].tolist(), trans[0].astype(float).tolist()
        times = b.add(f32(animation.times - animation.times[0]), "SCALAR", minmax=True)
        samplers = [
            {"input": times, "output": b.add(f32(animation.weights.reshape(-1)), "SCALAR"), "interpolation": "LINEAR"},
            {"input": times, "output": b.add(quaternion(rot), "VEC4"), "interpolation": "LINEAR"},
            {"input": times, "output": b.add(f32(trans), "VEC3"), "interpolation": "LINEAR"},
        ]
        channels = [{"sampler": k, "target": {"node": 0, "path": path}}
                    for k, path in enumerate(("weights", "rotation", "translation"))]
        doc["animations"] = [{"name": "performance", "samplers": samplers, "channels": channels}]
    if camera is not None:
        doc["cameras"] = [{"type": "perspective", "perspective": {"yfov": camera["yfov"], "aspectRatio": camera["aspect"],
                                                                   "znear": 0.01}}]
        nodes.append({"name": "camera", "camera": 0})
        doc["scenes"][0]["nodes"].append(1)
    doc["nodes"] = nodes
    doc["bufferViews"], doc["accessors"] = b.views, b.accessors
    doc["buffers"] = [{"byteLength": len(b.buffer)}]
    _write(path, doc, bytes(b.buffer))


def _normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    import trimesh

    mesh = trimesh.Trimesh(vertices, triangles, process=False)
    return np.asarray(mesh.vertex_normals)


def _write(path, doc: dict, binary: bytes) -> None:
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    with open(path, "wb") as f:
        f.write(struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(text) + 8 + len(binary)))
        f.write(struct.pack("<II", len(text), 0x4E4F534A) + text)
        f.write(struct.pack("<II", len(binary), 0x004E4942) + binary)


def read_glb(path) -> tuple[dict, bytes]:
    """(JSON document, binary chunk) of a .glb (for checks)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, length = struct.unpack_from("<III", data)
    if magic != 0x46546C67 or version != 2 or length != len(data):
        raise ValueError("not a glTF 2.0 binary")
    n, kind = struct.unpack_from("<II", data, 12)
    doc = json.loads(data[20 : 20 + n])
    m, _ = struct.unpack_from("<II", data, 20 + n)
    return doc, data[28 + n : 28 + n + m]


def accessor_array(doc: dict, binary: bytes, index: int) -> np.ndarray:
    """An accessor's data as an (count, components) array (tightly packed; sparse ones expanded)."""
    acc = doc["accessors"][index]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    dtype = _DTYPES[acc["componentType"]]

    def read(view_index: int, count: int, kind=dtype, offset: int = 0) -> np.ndarray:
        start = doc["bufferViews"][view_index].get("byteOffset", 0) + offset
        return np.frombuffer(binary, kind, count, start)

    if "bufferView" in acc:
        out = read(acc["bufferView"], acc["count"] * width, offset=acc.get("byteOffset", 0)).reshape(-1, width).copy()
    else:
        out = np.zeros((acc["count"], width), dtype)
    if "sparse" in acc:
        sp = acc["sparse"]
        rows = read(sp["indices"]["bufferView"], sp["count"], _DTYPES[sp["indices"]["componentType"]])
        out[rows] = read(sp["values"]["bufferView"], sp["count"] * width).reshape(-1, width)
    return out

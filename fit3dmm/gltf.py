"""A glTF 2.0 binary (.glb) writer for a head with expression morph targets and an animation.

Hand-written because trimesh, the project's mesh library, writes neither morph targets nor animations;
the format is small (one JSON chunk and one binary chunk, spec: registry.khronos.org/glTF). Units are
metres and the axes glTF's (+y up, the viewer on +z): the model frame's axes already (x the subject's
left, y up, z out of the face), so only its units change. The camera frame (OpenCV's: y down, z forward)
maps to glTF's by F = diag(1, -1, -1), the same flip as the model's.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

_FLOAT, _UINT32 = 5126, 5125
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

    def add(self, array: np.ndarray, kind: str, target: int | None = None, minmax: bool = False) -> int:
        """Append an array (4-byte aligned) as a buffer view and accessor; returns the accessor index."""
        array = np.ascontiguousarray(array)
        while len(self.buffer) % 4:
            self.buffer.append(0)
        view = {"buffer": 0, "byteOffset": len(self.buffer), "byteLength": array.nbytes}
        if target is not None:
            view["target"] = target
        self.buffer.extend(array.tobytes())
        self.views.append(view)
        accessor = {"bufferView": len(self.views) - 1, "componentType": _UINT32 if array.dtype == np.uint32 else _FLOAT,
                    "count": int(array.shape[0]), "type": kind}
        if minmax:
            flat = array.reshape(array.shape[0], -1)
            accessor["min"], accessor["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def write_glb(path, vertices: np.ndarray, triangles: np.ndarray, colours: np.ndarray | None,
              targets: np.ndarray, target_names: list[str], units_per_metre: float,
              animation: Animation | None = None, camera: dict | None = None) -> None:
    """Write a .glb: one mesh (vertices (V, 3) in the model's frame and units, triangles (F, 3), optional
    linear RGB colours (V, 3) in [0, 1]) with morph targets (K, V, 3) of vertex offsets named in
    ``mesh.extras.targetNames``; with ``animation``, one animation of the weights and head pose; with
    ``camera`` ({"yfov": radians, "aspect": w/h}), a perspective camera at the origin looking down -z, so
    the animation plays as the video saw it. Default weights: the animation's first frame (else zeros)."""
    scale = 1.0 / units_per_metre
    b = _Builder()
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    pos = b.add(f32(vertices * scale), "VEC3", _ARRAY_BUFFER, minmax=True)
    normals = _normals(vertices, triangles)
    attributes = {"POSITION": pos, "NORMAL": b.add(f32(normals), "VEC3", _ARRAY_BUFFER)}
    if colours is not None:
        attributes["COLOR_0"] = b.add(f32(np.clip(colours, 0, 1)), "VEC3", _ARRAY_BUFFER)
    indices = b.add(np.asarray(triangles, np.uint32).reshape(-1), "SCALAR", _ELEMENT_ARRAY_BUFFER)
    morphs = [{"POSITION": b.add(f32(t * scale), "VEC3", _ARRAY_BUFFER, minmax=True)} for t in targets]
    first = animation.weights[0] if animation is not None else np.zeros(len(targets))
    mesh = {"name": "head", "primitives": [{"attributes": attributes, "indices": indices, "material": 0,
                                            "targets": morphs}],
            "weights": [float(w) for w in first], "extras": {"targetNames": list(target_names)}}
    head = {"name": "head", "mesh": 0}
    nodes = [head]
    doc = {
        "asset": {"version": "2.0", "generator": "fit3dmm"},
        "scene": 0, "scenes": [{"nodes": [0]}],
        "meshes": [mesh],
        "materials": [{"name": "skin", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                                "roughnessFactor": 0.7}}],
    }
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
    """An accessor's data as an (count, components) array (non-sparse, tightly packed)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    dtype = np.uint32 if acc["componentType"] == _UINT32 else np.float32
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype, acc["count"] * width, start).reshape(acc["count"], width)

"""Artist-ready files of a fitted head (README, "Outputs"): a textured OBJ, a GLB whose morph targets are
the model's expressions under their ARKit names, and the expression weights.

A :class:`Head` is what these need: a model, an identity, expression weights and colour (a texture over
the model's UVs, else per-vertex albedo: models without UVs, such as the BFM, export vertex colours).
It comes from a fit (:func:`fit3dmm.outputs.fitted_head`) or from a result folder (:func:`load_head`,
for ``fit3dmm export`` and ``retarget``), never from fitting again.
"""

from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch
import trimesh

from .camera import Camera
from .errors import InputError
from .datasets import read_mask
from .files import read_image, read_json, read_vertex_colours, reason
from .gltf import write_glb
from .models import FaceModel, load_model, resolve_model
from .render import vertex_normals
from .target import FACE_SURFACE_IDS, CropTransform
from .texture import DEFAULT_SIZE, UVMesh, extract_texture, split_seams

_UNITS_PER_METRE = {"m": 1.0, "cm": 100.0, "mm": 1000.0}


@contextmanager
def held_interrupts():
    """Hold Ctrl-C (SIGINT) off until the block ends, then deliver it as the process would have. trimesh's
    OBJ exporter catches BaseException around its slow parts (formatting normals, materials), so a Ctrl-C
    landing there was swallowed: the batch went on and the file lost its normals. (Only the main thread
    gets Python's signal handlers; elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)  # now under the previous handling: KeyboardInterrupt, ignored, ...


def units_per_metre(model: FaceModel) -> float:
    return _UNITS_PER_METRE.get(model.data.meta.get("units", "cm"), 100.0)


def expression_names(model: FaceModel) -> list[str]:
    """The model's expression names (ICT-FaceKit's are ARKit's blendshape names), else exp00, exp01, ..."""
    names = model.data.meta.get("expression_names")
    return [str(n) for n in names] if names and len(names) == model.n_exp else [f"exp{k:02d}" for k in range(model.n_exp)]


@dataclass(frozen=True)
class Head:
    """A head to export, in the model frame and units (pose not applied)."""

    model: FaceModel
    identity: np.ndarray  # (Ki,) identity coefficients
    expression: np.ndarray  # (Ke,) expression weights
    albedo: np.ndarray  # (V, 3) per-vertex colour in [0, 1]
    texture: np.ndarray | None = None  # (S, S, 3) RGB uint8 over the model's UVs

    def vertices(self, with_expression: bool = True) -> np.ndarray:
        """(V, 3) the shape, neutral or with the expression."""
        model = self.model
        dev = model.mean.device
        exp = self.expression if with_expression else np.zeros(model.n_exp)
        with torch.no_grad():
            out = model(torch.as_tensor(self.identity, dtype=torch.float32, device=dev)[None],
                        torch.as_tensor(exp, dtype=torch.float32, device=dev)[None])
        return out[0].cpu().numpy()

    @property
    def textured(self) -> bool:
        return self.texture is not None and self.model.data.has_uv

    @cached_property
    def seams(self) -> UVMesh:
        """The model's mesh split at UV seams (for the OBJ and the GLB)."""
        data = self.model.data
        return split_seams(data.triangles, data.face_uv, data.uv)

    @cached_property
    def texture_png(self) -> bytes:
        """The texture as PNG bytes (encoded once for the OBJ's texture.png and the GLB)."""
        return png_bytes(self.texture)

    def expression_weights(self) -> dict[str, float]:
        return {name: round(float(w), 5) for name, w in zip(expression_names(self.model), self.expression)}


def write_expression(head: Head, path: Path) -> None:
    Path(path).write_text(json.dumps(head.expression_weights(), indent=1))


def write_textured(head: Head, folder: Path) -> None:
    """``folder``/mesh.obj (with normals and UVs, the model's units), mesh.mtl and texture.png."""
    data = head.model.data
    split = head.seams
    # trimesh writes the OBJ and MTL; the texture is linked and encoded here (OpenCV's PNG encoder is 10x
    # faster than Pillow's, which trimesh would use).
    material = trimesh.visual.material.SimpleMaterial(name="texture", diffuse=(255, 255, 255, 255),
                                                      ambient=(255, 255, 255, 255), specular=(20, 20, 20, 255))
    vertices = head.vertices()
    normals = trimesh.Trimesh(vertices, data.triangles, process=False).vertex_normals[split.vertex]
    mesh = trimesh.Trimesh(vertices[split.vertex], split.triangles, vertex_normals=normals, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=split.uv, material=material))
    with held_interrupts():
        text, files = trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_texture=True,
                                                      return_texture=True, mtl_name="mesh.mtl")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mesh.obj").write_text(text)
    (folder / "mesh.mtl").write_bytes(files["mesh.mtl"] + b"\nmap_Kd texture.png\n")
    (folder / "texture.png").write_bytes(head.texture_png)


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("cannot encode PNG")
    return data.tobytes()


def write_head_glb(head: Head, path: Path) -> None:
    """mesh.glb: the neutral head with one morph target per expression (the model's expression modes, named
    in ``mesh.extras.targetNames``), default weights the head's, so it opens showing its expression."""
    model, data = head.model, head.model.data
    textured = head.textured
    write_glb(path, head.vertices(with_expression=False), data.triangles, data.exp_basis, expression_names(model),
              units_per_metre(model), colours=None if textured else head.albedo, weights=head.expression,
              uv_mesh=head.seams if textured else None,
              texture_png=head.texture_png if textured else None)


def read_params(folder: Path) -> dict:
    """A result folder's params.json with its coefficients ``id`` and ``exp`` as float32 arrays and the
    camera's numbers checked, or InputError in words."""
    path = Path(folder) / "params.json"
    if not path.is_file():
        raise InputError(f"{folder} holds no fit3dmm result (params.json missing)")
    doc = read_json(path)
    try:
        for key in ("id", "exp"):
            doc["coefficients"][key] = np.asarray(doc["coefficients"][key], np.float32).reshape(-1)
        str(doc["model"]["name"])
        cam = doc["camera"]
        numbers = [cam["focal_px_crop"], cam["crop_size"], *cam["angles_rad_pitch_yaw_roll"], *cam["translation"],
                   cam["crop_from_photo"]["scale"], *cam["crop_from_photo"]["offset"]]
        if not np.isfinite(np.asarray(numbers, np.float64)).all():
            raise ValueError("the camera has non-finite numbers")
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise InputError(f"{path}: not a fit3dmm params.json ({reason(e)})") from None
    return doc


def load_head(folder: Path, model: FaceModel | None = None, photo: Path | None = None,
              texture_size: int = DEFAULT_SIZE) -> Head:
    """The head of a result folder, without fitting again: shape and expression from params.json, albedo
    from mesh.ply's vertex colours (the model's mean texture if absent), and the texture from
    textured/texture.png, else taken again from the photo (``photo``, else the one params.json names) with
    the pose and camera of params.json and the occluders of target_labels.png."""
    folder = Path(folder)
    doc = read_params(folder)
    if model is None:
        model = FaceModel(load_model(resolve_model(doc["model"]["name"])))
    identity, expression = doc["coefficients"]["id"], doc["coefficients"]["exp"]
    if identity.shape != (model.n_id,) or expression.shape != (model.n_exp,):
        raise InputError(f"{folder}: its coefficients do not fit model '{model.name}'")
    n = model.data.n_vertices
    albedo = model.data.mean_texture if model.data.mean_texture is not None else np.full((n, 3), 0.6, np.float32)
    if (folder / "mesh.ply").is_file():
        colours = read_vertex_colours(folder / "mesh.ply")
        if len(colours) == n:
            albedo = colours.astype(np.float32) / 255
    head = Head(model, identity, expression, albedo)
    if not model.data.has_uv:
        return head
    saved = folder / "textured" / "texture.png"
    if saved.is_file():
        return replace(head, texture=read_image(saved))
    source = Path(photo) if photo is not None else Path(doc.get("image", ""))
    if not source.is_file():
        raise InputError(f"{folder}: the photo {source} is gone and no textured/texture.png is there "
                         "(--photo names where the photo is now)")
    image = read_image(source)
    labels = read_mask(folder / "target_labels.png") if (folder / "target_labels.png").is_file() else None
    cam = doc["camera"]
    vertices = head.vertices()
    screen = photo_screen_from(vertices, cam)
    normals = vertex_normals(_to_camera(vertices, cam)[None], torch.as_tensor(model.data.triangles))[0].numpy()
    occluded = None if labels is None or labels.shape != image.shape[:2] else ~np.isin(labels, FACE_SURFACE_IDS)
    texture = extract_texture(image, screen, normals, model.data.triangles, model.data.face_uv, model.data.uv,
                              albedo, occluded, model.data.meta.get("uv_mirror"), texture_size)
    return replace(head, texture=texture)


def _to_camera(vertices: np.ndarray, cam: dict) -> torch.Tensor:
    camera = Camera(float(cam["focal_px_crop"]), int(cam["crop_size"]))
    return camera.to_camera(torch.as_tensor(vertices), torch.tensor(cam["angles_rad_pitch_yaw_roll"]).reshape(3),
                            torch.tensor(cam["translation"]).reshape(3))


def photo_screen_from(vertices: np.ndarray, cam: dict) -> np.ndarray:
    """(V, 3) photo pixels and depth of model-frame ``vertices`` under params.json's camera block."""
    size = int(cam["crop_size"])
    crop = Camera(float(cam["focal_px_crop"]), size).project(_to_camera(vertices, cam)).numpy()
    transform = CropTransform(float(cam["crop_from_photo"]["scale"]), tuple(cam["crop_from_photo"]["offset"]), size)
    return np.concatenate([transform.to_photo(crop[:, :2]), crop[:, 2:]], 1).astype(np.float32)

"""Writing one fit's result folder (documented in README, "Outputs").

Everything is written into a temporary sibling folder that is renamed into place at the end, so an
interrupted or failed fit never leaves a half-written ``OUT/<stem>/``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
import trimesh

from . import __version__
from .appearance import vertex_albedo
from .config import EXPORTS, SETTINGS_BEFORE_THEY_EXISTED, FitConfig
from .datasets import LABEL_NAMES
from .errors import InputError
from .models.bands import apply_bands, choose_bands, model_fields
from .models.facemodel import PART_CELEBA_IDS, PART_NAMES
from .pipeline import FitOutput
from .render import rasterize_region, vertex_normals
from .export import (Head, expression_names, held_interrupts, load_head, png_bytes, read_params, write_expression, write_head_glb,
                     write_textured)
from .target import FACE_SURFACE_IDS, OCCLUDER_IDS, CropTransform
from .texture import DEFAULT_SIZE, extract_texture
from .viewer import gallery_html, viewer_html

#: Colours (RGB) of the CelebAMask-HQ part ids in parts.png.
PART_COLOURS = {
    1: (230, 180, 140), 2: (255, 120, 0), 4: (0, 200, 255), 5: (0, 90, 255), 6: (150, 255, 0),
    7: (0, 160, 60), 10: (90, 0, 90), 11: (255, 0, 110), 12: (200, 0, 255), 13: (120, 80, 40),
    3: (60, 60, 60), 14: (120, 80, 40),  # occluders: glasses, hat (as hair)
    8: (255, 255, 0), 9: (200, 200, 0), 17: (80, 160, 160),  # ears, neck (parse overlays)
}
OVERLAY_ALPHA = 0.75
#: The pictures index.html shows beside the head: (caption, file of the result folder).
VIEWER_IMAGES = (("overlay", "overlay.png"), ("parts: target | fitted", "parts.png"))


def photo_screen(output: FitOutput) -> torch.Tensor:
    """(V, 3) fitted vertices in photo pixels (x, y) with camera depth z."""
    crop = output.target.crop
    s = output.result.screen.detach()
    offset = s.new_tensor(crop.offset)
    return torch.cat([(s[:, :2] - offset) / crop.scale, s[:, 2:]], 1)


def render_photo(output: FitOutput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterize the fit at the photo's resolution, only over the face's bounding box.

    Returns (tri_id (H, W) long, bary (H, W, 3), camera normals (V, 3)), tri_id -1 where uncovered.
    """
    h, w = output.observation.image.shape[:2]
    model = output.model
    frags = rasterize_region(photo_screen(output), model.triangles, h, w)
    tri, bary = frags.tri_id[0].cpu().numpy(), frags.bary[0].cpu().numpy().astype(np.float32)
    res = output.result
    cam = output.camera.to_camera(res.vertices, res.params["angles"], res.params["translation"]).detach()
    normals = vertex_normals(cam[None], model.triangles)[0].cpu().numpy()
    return tri, bary, normals


def part_label_map(model, tri: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(H, W) uint8 CelebAMask-HQ ids of a rasterized FaceModel's parts: each covered pixel takes the part
    of its triangle's corner nearest to it (largest barycentric); 0 where uncovered or unlabelled."""
    triangles = model.triangles.cpu().numpy()
    to_celeba = np.zeros(len(PART_NAMES) + 1, dtype=np.uint8)
    to_celeba[: len(PART_NAMES)] = PART_CELEBA_IDS  # index -1 (unlabelled) maps to the last entry, 0
    parts = model.parts.cpu().numpy()
    covered = tri >= 0
    corner = triangles[tri[covered], bary[covered].argmax(1)]
    labels = np.zeros(tri.shape, dtype=np.uint8)
    labels[covered] = to_celeba[parts[corner]]
    return labels


def camera_light(model, tri: np.ndarray, bary: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N,) brightness of the N covered pixels lit by a light at the camera, 0.2 to 0.95, from the
    interpolated camera-frame vertex normals (V, 3)."""
    covered = tri >= 0
    n = np.einsum("nk,nkc->nc", bary[covered], normals[model.triangles.cpu().numpy()[tri[covered]]])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    return 0.2 + 0.75 * np.clip(-n[:, 2], 0, 1)


def fitted_parts(output: FitOutput, tri: np.ndarray | None = None, bary: np.ndarray | None = None
                 ) -> tuple[np.ndarray, dict[str, tuple[float, ...]] | None]:
    """(labels, bands): the (H, W) uint8 label map of the visible fitted parts at the photo's resolution,
    and the part bands chosen for it (:mod:`fit3dmm.models.bands`; None when the configuration keeps the
    annotated parts). Visible means what the rendered fit shows where the segmenter sees no occluder
    (hair, hat, glasses): a brow under a fringe is hidden in the photo, and so in the fit's parts. ``tri``,
    ``bary``: the fit's :func:`render_photo`, if done."""
    if tri is None:
        tri, bary, _ = render_photo(output)
    model = output.model
    labels = part_label_map(model, tri, bary)
    occluded = np.isin(output.observation.labels, OCCLUDER_IDS)
    labels[occluded] = 0
    if not output.config.part_bands:
        return labels, None
    fields, triangles = model_fields(model), model.triangles.cpu().numpy()
    bands = choose_bands(fields, labels, tri, bary, triangles, output.observation.labels, occluded)
    # Bands relabel only the part's and skin pixels, so occluded ones (0) stay 0.
    return apply_bands(labels, fields, bands, tri, bary, triangles), bands


def fitted_labels(output: FitOutput, tri: np.ndarray | None = None, bary: np.ndarray | None = None) -> np.ndarray:
    """The label map of :func:`fitted_parts`."""
    return fitted_parts(output, tri, bary)[0]


def texture_render(output: FitOutput, texture: np.ndarray, faces: np.ndarray | None = None) -> np.ndarray:
    """The photo with the fitted surface painted in a fixed per-vertex texture (V, 3) in [0, 1] (no
    lighting: the texture is the model's, not the photo's), RGB uint8; with ``faces`` ((F,) bool over the
    model's triangles), only the pixels those triangles cover."""
    tri, bary, _ = render_photo(output)
    covered = tri >= 0
    if faces is not None:
        covered &= faces[np.maximum(tri, 0)]
    corners = output.model.triangles.cpu().numpy()[tri[covered]]
    out = output.observation.image.copy()
    out[covered] = (np.einsum("nk,nkc->nc", bary[covered], texture[corners]) * 255).clip(0, 255).round().astype(np.uint8)
    return out


def shaded_overlay(output: FitOutput, tri: np.ndarray, bary: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """The fitted surface shaded grey by a light at the camera, blended onto the photo (RGB uint8)."""
    covered = tri >= 0
    shade = camera_light(output.model, tri, bary, normals)[:, None] * np.array([235, 225, 215])
    out = output.observation.image.astype(np.float32)
    out[covered] = OVERLAY_ALPHA * shade + (1 - OVERLAY_ALPHA) * out[covered]
    return out.clip(0, 255).astype(np.uint8)


def colourize(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    for label, colour in PART_COLOURS.items():
        m = labels == label
        out[m] = 0.45 * out[m] + 0.55 * np.array(colour)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    return out.clip(0, 255).astype(np.uint8)


def parts_panel(output: FitOutput, fitted: np.ndarray, panel: int = 512) -> np.ndarray:
    """PRDL's target after preprocessing (left: parts, occluders, the brow line above which the forehead
    is cut; ears and stray blobs removed; dimmed where the segmenter did not look) and the fitted parts
    (right), on the face crop."""
    crop = output.target.crop
    scale = panel / crop.size
    view = CropTransform(crop.scale * scale, (crop.offset[0] * scale, crop.offset[1] * scale), panel)
    image = view.warp(output.observation.image)
    target = cv2.resize(output.target.labels, (panel, panel), interpolation=cv2.INTER_NEAREST)
    left = colourize(image, target)
    if output.observation.seen is not None:
        unseen = view.warp(output.observation.seen.astype(np.uint8), nearest=True) == 0
        left[unseen] = left[unseen] // 3
    right = colourize(image, view.warp(fitted, nearest=True))
    if output.target.brow_line is not None:
        a, b, c = output.target.brow_line
        # The line in crop pixels, drawn across the panel (scaled by `scale`).
        if abs(b) > 1e-9:
            xs = np.array([0, crop.size - 1], dtype=np.float64)
            ys = -(a * xs + c) / b
            p0, p1 = (np.stack([xs, ys], 1) * scale).round().astype(int)
            cv2.line(left, tuple(p0), tuple(p1), (255, 255, 255), 1, cv2.LINE_AA)
    for img, text in ((left, "target"), (right, "fitted")):
        cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return np.concatenate([left, right], axis=1)


def mesh_files(output: FitOutput) -> trimesh.Trimesh:
    """The fitted shape in the model frame (pose not applied), albedo as vertex colours."""
    model = output.model
    params = output.result.params
    verts = output.result.vertices.detach().cpu().numpy()
    albedo = vertex_albedo(model, params).detach().clamp(0, 1).cpu().numpy()
    colours = np.concatenate([albedo * 255, np.full((len(albedo), 1), 255)], 1).round().astype(np.uint8)
    return trimesh.Trimesh(verts, model.triangles.cpu().numpy(), vertex_colors=colours, process=False)


def fitted_head(output: FitOutput, normals: np.ndarray, texture_size: int = DEFAULT_SIZE) -> Head:
    """The fitted head for export, textured from the photo where the model has UVs (``normals``: the
    camera-frame vertex normals of :func:`render_photo`)."""
    model, params = output.model, output.result.params
    data = model.data
    albedo = vertex_albedo(model, params).detach().clamp(0, 1).cpu().numpy()
    texture = None
    if data.has_uv:
        occluded = ~np.isin(output.observation.labels, FACE_SURFACE_IDS)
        texture = extract_texture(output.observation.image, photo_screen(output).cpu().numpy(), normals, data.triangles,
                                  data.face_uv, data.uv, albedo, occluded, data.meta.get("uv_mirror"), texture_size)
    coeffs = {k: params[k].detach().cpu().numpy().reshape(-1) for k in ("id", "exp")}
    return Head(model, coeffs["id"], coeffs["exp"], albedo, texture)


def params_document(output: FitOutput, source: str) -> dict:
    res, target, model = output.result, output.target, output.model
    tolist = lambda t: t.detach().cpu().numpy().round(6).tolist()  # noqa: E731
    meta = model.data.meta
    return {
        "image": source,
        "model": {k: meta.get(k) for k in ("name", "units", "source", "licence")},
        "coefficients": {k: tolist(v) for k, v in res.params.items() if k != "albedo" or model.has_albedo_basis},
        "camera": {
            "model_to_camera": "X_cam = R(angles) @ diag(1,-1,-1) @ X_model + translation",
            "angles_rad_pitch_yaw_roll": tolist(res.params["angles"]),
            "rotation": tolist(res.rotation),
            "translation": tolist(res.params["translation"]),
            "focal_px_crop": output.camera.focal,
            "crop_size": target.crop.size,
            "crop_from_photo": {"scale": target.crop.scale, "offset": list(target.crop.offset)},
            "projection": "crop_xy = focal * X_cam[:2] / X_cam[2] + (crop_size - 1) / 2; "
            "photo_xy = (crop_xy - offset) / scale; pixel centres at integers",
        },
        "faces_detected": output.observation.n_faces,
        "detection_score": output.observation.detection.score,
        "stage_losses": res.stage_losses,
        "timings_s": {k: round(v, 4) for k, v in output.timings.items()},
        "config": output.config.to_dict(),
        "versions": {
            "fit3dmm": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "trimesh": trimesh.__version__, "python": platform.python_version(),
        },
    }


def legend(labels: np.ndarray, height: int) -> np.ndarray:
    """A (height, 160, 3) panel naming the colours of the ids present in ``labels``."""
    out = np.full((height, 160, 3), 255, np.uint8)
    present = [i for i in sorted(PART_COLOURS) if (labels == i).any()]
    for k, label in enumerate(present):
        y = 12 + 24 * k
        cv2.rectangle(out, (10, y), (30, y + 16), PART_COLOURS[label], -1)
        cv2.putText(out, LABEL_NAMES[label], (38, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def holds_fit(folder: Path, config: FitConfig) -> bool:
    """True if ``folder`` holds a finished fit made with ``config`` (its params.json; the device it ran
    on aside); InputError if it holds something else, which only ``--overwrite`` may replace."""
    params = Path(folder) / "params.json"
    if not params.is_file():
        raise InputError(f"{folder} exists but holds no fit3dmm result (--overwrite replaces it)")
    try:
        saved = json.loads(params.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{params} is unreadable (--overwrite fits the photo again)") from None
    wanted = json.loads(json.dumps(config.to_dict()))
    # A setting added since the result was written counts as what the fit did before it, or else as its default.
    before = {**json.loads(json.dumps(FitConfig().to_dict())), **SETTINGS_BEFORE_THEY_EXISTED}
    saved = {**{k: v for k, v in before.items() if k not in saved}, **saved}
    if {k: v for k, v in saved.items() if k != "device"} != {k: v for k, v in wanted.items() if k != "device"}:
        raise InputError(f"{folder} holds a fit made with other settings (--overwrite refits it with these)")
    return True


def holds_parse(folder: Path) -> bool:
    """True if ``folder`` holds a finished ``fit3dmm parse`` result; InputError if it holds something else."""
    if not (Path(folder) / "labels.png").is_file():
        raise InputError(f"{folder} exists but holds no fit3dmm parse result (--overwrite replaces it)")
    return True


def write_parse_result(image: np.ndarray, labels: np.ndarray, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """``folder``/labels.png (uint8 CelebAMask-HQ ids, photo size) and overlay.png (the photo with
    coloured parts and a legend), written atomically."""
    with atomic_folder(folder, overwrite) as tmp:
        _write_png(tmp / "labels.png", labels)
        overlay = colourize(image, labels)
        _write_png(tmp / "overlay.png", np.concatenate([overlay, legend(labels, overlay.shape[0])], axis=1))
    return Path(folder)


@contextmanager
def atomic_folder(folder: str | os.PathLike, overwrite: bool):
    """Yields a temporary sibling of ``folder`` that replaces it on success and is removed on failure.
    Raises FileExistsError if the folder exists and ``overwrite`` is False."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists (use --overwrite to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the result private
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_png(path: Path, rgb_or_labels: np.ndarray) -> None:
    img = rgb_or_labels if rgb_or_labels.ndim == 2 else cv2.cvtColor(rgb_or_labels, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


def write_atomic(path: Path, write) -> None:
    """Write one file through ``write(temporary path)`` (same folder, same suffix), then rename it into
    place: a crash never leaves it half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_png(path: Path, rgb_or_labels: np.ndarray) -> None:
    """uint8 (H, W) labels or (H, W, 3) RGB, atomically."""
    write_atomic(path, lambda p: _write_png(p, rgb_or_labels))


def write_head(head: Head, folder: Path, exports: tuple[str, ...], title: str, images: dict[str, bytes]) -> None:
    """A head's artist files in ``folder`` (already a temporary folder), as chosen by ``exports`` (names of
    :data:`fit3dmm.config.EXPORTS`): textured/ (mesh.obj with vertex colours where the model has no UVs),
    mesh.glb, expression.json, index.html (``images``: caption -> PNG shown beside the head)."""
    if "textured" in exports:
        if head.textured:
            write_textured(head, folder / "textured")
        else:  # no UVs (e.g. the BFM): the colour lives in the vertices
            mesh = trimesh.Trimesh(head.vertices(), head.model.data.triangles, process=False,
                                   vertex_colors=(head.albedo * 255).round().astype(np.uint8))
            (folder / "textured").mkdir()
            with held_interrupts():
                mesh.export(folder / "textured" / "mesh.obj", include_texture=False)
    if "glb" in exports or "viewer" in exports:
        write_head_glb(head, folder / "mesh.glb")
        if "viewer" in exports:
            page = viewer_html(title, (folder / "mesh.glb").read_bytes(), expression_names(head.model),
                               head.expression.tolist(), images)
            (folder / "index.html").write_text(page, encoding="utf-8")
        if "glb" not in exports:
            (folder / "mesh.glb").unlink()
    if "expression" in exports:
        write_expression(head, folder / "expression.json")


def write_result(output: FitOutput, folder: str | os.PathLike, source: str, overwrite: bool = False,
                 exports: tuple[str, ...] = tuple(EXPORTS), texture_size: int = DEFAULT_SIZE) -> Path:
    """Write the output files of one fit into ``folder``, atomically: those ``exports`` chooses (see
    :data:`fit3dmm.config.EXPORTS`), and always params.json and landmarks.json. Raises FileExistsError if
    the folder exists and ``overwrite`` is False."""
    with atomic_folder(folder, overwrite) as tmp:
        tri, bary, normals = render_photo(output)
        fitted, bands = fitted_parts(output, tri, bary)
        if "mesh" in exports:
            mesh = mesh_files(output)
            with held_interrupts():
                mesh.export(tmp / "mesh.obj", include_texture=False)
                mesh.export(tmp / "mesh.ply")
        if "images" in exports or "viewer" in exports:
            overlay, parts = shaded_overlay(output, tri, bary, normals), parts_panel(output, fitted)
        if "images" in exports:
            _write_png(tmp / "overlay.png", overlay)
            _write_png(tmp / "parts.png", parts)
            _write_png(tmp / "fitted_labels.png", fitted)
            _write_png(tmp / "target_labels.png", output.observation.labels)
        if {"textured", "glb", "expression", "viewer"} & set(exports):
            images = {}
            if "viewer" in exports:
                pictures = {"overlay.png": overlay, "parts.png": parts}
                images = {caption: png_bytes(pictures[name]) for caption, name in VIEWER_IMAGES}
            write_head(fitted_head(output, normals, texture_size), tmp, exports, Path(source).name, images)
        crop = output.target.crop
        landmarks = {
            "detected_68": output.observation.landmarks68.round(3).tolist(),
            "fitted_68": crop.to_photo(output.result.landmarks68.detach().cpu().numpy()).round(3).tolist(),
            "fitted_68_vertices": crop.to_photo(
                output.result.screen[output.model.landmarks68, :2].detach().cpu().numpy()).round(3).tolist(),
            "detected_jaw_on_outline": round(output.observation.outline_weight, 3),
        }
        (tmp / "landmarks.json").write_text(json.dumps(landmarks))
        doc = {**params_document(output, source), "part_bands": bands, "exports": list(exports), "texture_size": texture_size}
        (tmp / "params.json").write_text(json.dumps(doc, indent=1))
    return Path(folder)


def write_gallery(out: str | os.PathLike) -> Path | None:
    """``out``/index.html, a gallery of the fit results in ``out`` (folders holding params.json), atomically;
    None if there are none."""
    out = Path(out)
    folders = sorted(p.parent for p in out.glob("*/params.json") if not p.parent.name.startswith("."))
    if not folders:
        return None
    write_text(out / "index.html", gallery_html(folders, out))
    return out / "index.html"


#: ``fit3dmm export --format``: each format and the exports (EXPORTS names) it writes.
EXPORT_FORMATS = {"glb": ("glb",), "obj": ("textured",), "viewer": ("viewer",)}


def _images(folder: Path) -> dict[str, bytes]:
    """The viewer's pictures of a result folder (those present)."""
    return {caption: (folder / name).read_bytes() for caption, name in VIEWER_IMAGES if (folder / name).is_file()}


def export_result(folder: str | os.PathLike, formats: tuple[str, ...], photo: str | os.PathLike | None = None,
                  texture_size: int = DEFAULT_SIZE) -> list[Path]:
    """Write ``formats`` (keys of :data:`EXPORT_FORMATS`) of a fit result folder again from its params.json,
    without fitting (:func:`fit3dmm.export.load_head`); each file or folder replaced atomically. Returns
    what was written."""
    folder = Path(folder)
    head = load_head(folder, photo=photo, texture_size=texture_size)
    exports = tuple(e for f in formats for e in EXPORT_FORMATS[f])
    written = []
    tmp = Path(tempfile.mkdtemp(prefix=".export.", dir=folder))  # built aside, then moved in one by one
    try:
        write_head(head, tmp, exports, Path(str(read_params(folder).get("image", folder.name))).name, _images(folder))
        for item in sorted(tmp.iterdir()):
            target = folder / item.name
            if item.is_dir() and target.exists():
                shutil.rmtree(target)
            os.replace(item, target)
            written.append(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def retarget(identity: str | os.PathLike, expression: str | os.PathLike, out: str | os.PathLike,
             overwrite: bool = False, texture_size: int = DEFAULT_SIZE) -> Path:
    """``out``/: the head of the fit in ``identity`` (shape and texture) with the expression of the fit in
    ``expression`` (same model): textured/, mesh.glb, expression.json, index.html and retarget.json."""
    identity, expression = Path(identity), Path(expression)
    source = read_params(expression)
    head = load_head(identity, texture_size=texture_size)
    if source["model"]["name"] != head.model.name:
        raise InputError(f"{expression} was fitted with model '{source['model']['name']}' and {identity} with "
                         f"'{head.model.name}': retarget needs one model")
    weights = source["coefficients"]["exp"]
    if weights.shape != head.expression.shape:
        raise InputError(f"{expression}: its expression does not fit model '{head.model.name}'")
    head = replace(head, expression=weights)
    with atomic_folder(out, overwrite) as tmp:
        write_head(head, tmp, ("textured", "glb", "expression", "viewer"), f"{identity.name} with {expression.name}'s "
                   "expression", {})
        (tmp / "retarget.json").write_text(json.dumps({"identity": str(identity), "expression": str(expression),
                                                        "model": head.model.name, "fit3dmm": __version__}, indent=1))
    return Path(out)

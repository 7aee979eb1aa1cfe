"""Writing one tracked video's result folder (documented in README, "Video"), atomically.

The overlay video is encoded as the frames are tracked (a window at a time), so memory does not grow with
the video's length; everything goes into a temporary sibling folder renamed into place at the end.
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

import numpy as np
import torch
import trimesh

from . import __version__
from .appearance import vertex_albedo
from .camera import rotation_matrix
from .export import expression_names, held_interrupts, units_per_metre
from .gltf import Animation, write_glb
from .outputs import atomic_folder, render_photo, shaded_overlay
from .tracking import Followed, Track, TrackedFrame, Tracker, TrackProgress
from .video import H264Writer, VideoReader

FILES = ("blendshapes.csv", "landmarks.npz", "params.npz", "overlay.mp4", "animation.glb", "mesh.obj", "track.json")


def overlay_frame(tracked: TrackedFrame) -> np.ndarray:
    """The frame with the fitted surface shaded over it; the bare frame where no face was found."""
    if tracked.output is None:
        return tracked.frame.image
    tri, bary, normals = render_photo(tracked.output)
    return shaded_overlay(tracked.output, tri, bary, normals)


def holds_track(folder: Path) -> bool:
    """True if ``folder`` holds a finished track (every file of :data:`FILES`)."""
    return all((Path(folder) / name).is_file() for name in FILES)


def write_track(tracker: Tracker, reader: VideoReader, followed: Followed, folder: str | Path,
                overwrite: bool = False, progress: TrackProgress | None = None) -> Track:
    """Track the video (``followed``: :meth:`Tracker.follow`'s pass) and write ``folder``/ atomically."""
    model = tracker.model
    with atomic_folder(folder, overwrite) as tmp:
        with H264Writer(tmp / "overlay.mp4", reader.fps, reader.width, reader.height) as video:
            track = tracker.track(reader, followed, lambda tracked: video.write(overlay_frame(tracked)), progress)
        names = expression_names(model)
        T = len(track.valid)
        with open(tmp / "blendshapes.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["frame", "time", *names])
            for t in range(T):
                writer.writerow([t, f"{track.times[t]:.4f}", *(f"{w:.5f}" for w in track.params["exp"][t])])
        np.savez(tmp / "landmarks.npz", detected_68=track.detected68, fitted_68=track.fitted68, valid=track.valid)
        cam = track.camera
        np.savez(tmp / "params.npz", **track.params, valid=track.valid, times=track.times, fps=track.fps,
                 focal=cam.focal, center=np.array(cam.center), width=track.width, height=track.height,
                 keyframes=np.array(track.keyframes), expression_names=np.array(names),
                 convention=np.array("X_cam = R(angles) @ diag(1,-1,-1) @ X_model + translation; "
                                     "frame_xy = focal * X_cam[:2] / X_cam[2] + center; pixel centres at integers"))

        dev = model.mean.device
        params = {"id": torch.as_tensor(track.params["id"], device=dev)[None],
                  "albedo": torch.as_tensor(track.params["albedo"], device=dev)[None]}
        with torch.no_grad():
            neutral = model(params["id"], torch.zeros(1, model.n_exp, device=dev))[0].cpu().numpy()
            albedo = vertex_albedo(model, params)[0].clamp(0, 1).cpu().numpy()
            rotation = rotation_matrix(torch.as_tensor(track.params["angles"])).numpy()
        triangles = model.triangles.cpu().numpy()
        colours = np.concatenate([albedo * 255, np.full((len(albedo), 1), 255)], 1).round().astype(np.uint8)
        with held_interrupts():
            trimesh.Trimesh(neutral, triangles, vertex_colors=colours, process=False).export(tmp / "mesh.obj",
                                                                                            include_texture=False)
        write_glb(tmp / "animation.glb", neutral, triangles, model.data.exp_basis, names, units_per_metre(model),
                  colours=albedo,
                  animation=Animation(track.times, track.params["exp"], rotation, track.params["translation"]),
                  camera={"yfov": float(2 * np.arctan(track.height / 2 / cam.focal)), "aspect": track.width / track.height})
        (tmp / "track.json").write_text(json.dumps({
            "video": str(reader.path), "frames": T, "frames_with_face": int(track.valid.sum()), "fps": track.fps,
            "keyframes": track.keyframes, "detector_runs": followed.detections,
            "config": tracker.config.to_dict(),
            "versions": {"fit3dmm": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
        }, indent=1))
    return track

"""Video tracking: one identity for the whole video, pose, expression and lighting per frame, smooth in time.

Three passes over the frames, none holding more than a window of them:

1. **Follow** the face: the face mesh predicted where the previous frame's mesh was (no detector), the
   detector again only when the face is lost; frames without a face are marked invalid. Only the meshes
   are kept (468 points a frame).
2. **Identity**: ``keyframes`` frames spread over the video are fitted as one batch sharing one identity
   and one albedo (the configuration's usual stages). Their crop scale fixes the video's camera
   (:class:`VideoCamera`): every frame's crop is a view of that one camera, so poses are comparable
   from frame to frame.
3. **Track**: windows of consecutive frames are fitted as batches, identity and albedo fixed, each frame
   starting from the fit of the frame before, with the temporal term (:mod:`.losses.temporal`) across the
   window and the previous window's last two frames. A window after a gap (or the first) starts cold,
   from the landmark rigid stage. Invalid frames take coefficients interpolated from their neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .camera import VideoCamera
from .config import TrackConfig, default_stages
from .errors import NoFaceError
from .fitting import Fitter
from .losses.temporal import TemporalLoss
from .perception.landmarks import to_ibug68
from .pipeline import FitOutput, Pipeline
from .target import TargetBatch
from .video import VideoFrame, VideoReader

#: A window whose first face comes more than this many frames after the last fitted one starts cold.
MAX_GAP = 5
#: Per-frame coefficient groups (identity and albedo are the video's).
FRAME_PARAMS = ("angles", "translation", "exp", "gamma")

TrackProgress = Callable[[str, int, int], None]
"""progress(phase, done, total): phase "follow", "identity" (iterations) or "track" (frames)."""


@dataclass
class Followed:
    """Pass 1's result: meshes (T, 468, 3) in frame pixels (NaN where invalid), valid (T,) bool, times (T,)
    seconds, and the frames where the detector ran (the first, and wherever the face was lost)."""

    meshes: np.ndarray
    valid: np.ndarray
    times: np.ndarray
    detections: int

    @property
    def landmarks68(self) -> np.ndarray:
        """(T, 68, 2) the detected iBUG-68 points, NaN where invalid."""
        return np.stack([to_ibug68(m) for m in self.meshes]) if len(self.meshes) else np.zeros((0, 68, 2))


@dataclass
class TrackedFrame:
    """One frame as it is finished (in order): its fit, or None without a face."""

    frame: VideoFrame
    output: FitOutput | None


@dataclass
class Track:
    """A tracked video. params: "id" (Ki,), "albedo" (the model's albedo coefficients or (V, 3) colours),
    and per frame (T, ...) "angles", "translation", "exp", "gamma", interpolated where ``valid`` is False;
    detected68 (T, 68, 2) frame pixels (NaN where invalid); fitted68 (T, 68, 2) frame pixels (jaw marched
    on valid frames; the model's landmark vertices on interpolated ones); camera: the video's pinhole.
    The pose maps the model into the camera as everywhere (X_cam = R(angles) diag(1,-1,-1) X + t)."""

    fps: float
    width: int
    height: int
    times: np.ndarray
    valid: np.ndarray
    detected68: np.ndarray
    fitted68: np.ndarray
    params: dict[str, np.ndarray]
    camera: VideoCamera
    keyframes: list[int]


class Tracker:
    """Tracks the face of videos with a pipeline's models and a :class:`TrackConfig`."""

    def __init__(self, pipeline: Pipeline, config: TrackConfig):
        self.pipeline = pipeline
        self.config = config
        self.model = pipeline.model
        # The video's identity and albedo are one for all frames: (1, ...) tensors, fitted on the keyframes
        # and then fixed.
        self.fitter = Fitter(self.model, config.fit, shared=frozenset({"id", "albedo"}))
        self.rigid = default_stages()[0]

    def follow(self, reader: VideoReader, progress: TrackProgress | None = None) -> Followed:
        """Pass 1 over the whole video (refuses a truncated one, and one with no face at all)."""
        detector, predictor = self.pipeline.detector, self.pipeline.mesh_predictor
        meshes, valid, times, detections = [], [], [], 0
        previous = None
        for frame in reader.frames():
            mesh = None
            if previous is not None:
                try:
                    mesh = predictor.follow(frame.image, previous)
                except NoFaceError:
                    mesh = None
            if mesh is None:
                detections += 1
                faces = detector.detect(frame.image)
                if len(faces) > self.config.fit.face_index:
                    try:
                        mesh = predictor.predict(frame.image, faces[self.config.fit.face_index])
                    except NoFaceError:
                        mesh = None
            previous = mesh
            meshes.append(mesh if mesh is not None else np.full((468, 3), np.nan, np.float32))
            valid.append(mesh is not None)
            times.append(frame.time)
            if progress:
                progress("follow", frame.index + 1, reader.declared or frame.index + 1)
        reader.check_count(len(meshes))
        if not any(valid):
            raise NoFaceError(f"no face in any of the {len(meshes)} frames")
        return Followed(np.stack(meshes), np.array(valid), np.array(times), detections)

    def keyframes(self, followed: Followed) -> list[int]:
        """Frame indices of the identity fit: evenly spread over the frames with a face."""
        faces = np.flatnonzero(followed.valid)
        picks = np.linspace(0, len(faces) - 1, min(self.config.keyframes, len(faces))).round().astype(int)
        return sorted(set(faces[picks].tolist()))

    def track(self, reader: VideoReader, followed: Followed, on_frame: Callable[[TrackedFrame], None] | None = None,
              progress: TrackProgress | None = None) -> Track:
        """Passes 2 and 3; ``on_frame`` receives every frame, in order, as soon as its window is fitted."""
        cfg, pipe = self.config, self.pipeline
        keys = self.keyframes(followed)
        scales = [pipe.crop(followed.landmarks68[k]).scale for k in keys]
        camera = VideoCamera.for_frames(reader.width, reader.height, float(np.median(scales)), cfg.fit.crop_size,
                                        cfg.fit.focal_ratio)

        # Pass 2: the identity, from the keyframes fitted together.
        images = {f.index: f.image for f in reader.frames(stop=keys[-1] + 1) if f.index in set(keys)}
        prepared = [pipe.prepare(images[k], pipe.observe_mesh(images[k], followed.meshes[k]), camera) for k in keys]
        del images
        total = sum(stage.iterations for stage in cfg.fit.stages)
        done = [0]

        def on_identity(p):
            done[0] += 1
            if progress:
                progress("identity", done[0], total)

        key_fits = self.fitter.fit([p.target for p in prepared], on_identity)
        fixed = {name: key_fits[0].params[name][None] for name in ("id", "albedo")}
        gamma0 = torch.stack([r.params["gamma"] for r in key_fits]).mean(0)

        # Pass 3: windows of consecutive frames.
        T = len(followed.valid)
        out = {name: np.zeros((T, *key_fits[0].params[name].shape), np.float32) for name in FRAME_PARAMS}
        fitted68 = np.full((T, 68, 2), np.nan, np.float32)
        state: dict = {"last": None, "context": None, "last_index": -10**9}
        window: list[VideoFrame] = []

        def flush():
            outputs = self._fit_window(window, followed, camera, fixed, gamma0, state)
            for frame in window:
                output = outputs.get(frame.index)
                if output is not None:
                    for name in FRAME_PARAMS:
                        out[name][frame.index] = output.result.params[name].cpu().numpy()
                    fitted68[frame.index] = output.target.crop.to_photo(output.result.landmarks68.cpu().numpy())
                if on_frame:
                    on_frame(TrackedFrame(frame, output))
                if progress:
                    progress("track", frame.index + 1, T)
            window.clear()

        for frame in reader.frames():
            window.append(frame)
            if len(window) == cfg.window:
                flush()
        if window:
            flush()

        valid = followed.valid
        self._interpolate(out, valid)
        if not valid.all():
            fitted68[~valid] = self._project_landmarks(out, fixed, camera, ~valid)
        params = {"id": fixed["id"][0].cpu().numpy(), "albedo": fixed["albedo"][0].cpu().numpy(), **out}
        return Track(fps=reader.fps, width=reader.width, height=reader.height, times=followed.times, valid=valid,
                     detected68=followed.landmarks68.astype(np.float32), fitted68=fitted68, params=params,
                     camera=camera, keyframes=keys)

    def _fit_window(self, window: list[VideoFrame], followed: Followed, camera: VideoCamera,
                    fixed: dict[str, Tensor], gamma0: Tensor, state: dict) -> dict[int, FitOutput]:
        """Fit a window's frames that have a face, as one batch; their outputs by frame index."""
        faces = [f for f in window if followed.valid[f.index]]
        if not faces:
            return {}
        pipe, cfg = self.pipeline, self.config
        prepared = [pipe.prepare(f.image, pipe.observe_mesh(f.image, followed.meshes[f.index]), camera) for f in faces]
        targets = [p.target for p in prepared]
        B = len(targets)
        cold = state["last"] is None or faces[0].index - state["last_index"] > MAX_GAP
        if cold:
            params = self.fitter.init_params(TargetBatch.stack(targets))
            params["gamma"] = gamma0.expand(B, *gamma0.shape).clone()
            stages = (self.rigid, *cfg.stages)
            state["context"] = None
        else:
            params = {name: state["last"][name].expand(B, *state["last"][name].shape).clone() for name in FRAME_PARAMS}
            stages = cfg.stages
        params.update({name: value.clone() for name, value in fixed.items()})
        temporal = TemporalLoss(self.model, None, context=state["context"], exp_weight=cfg.exp_smooth)
        results = self.fitter.fit(targets, params=params, stages=stages, extra_losses={"temporal": temporal})

        # The last two fits are the next window's context.
        with torch.no_grad():
            points = torch.stack([r.vertices[self.model.landmarks68] @ r.rotation.T + r.params["translation"]
                                  for r in results])
            exp = torch.stack([r.params["exp"] for r in results])
            if state["context"] is not None:
                points = torch.cat([state["context"]["points"], points])
                exp = torch.cat([state["context"]["exp"], exp])
        state["context"] = {"points": points[-2:], "exp": exp[-2:]} if len(points) >= 2 else None
        state["last"] = {name: results[-1].params[name] for name in FRAME_PARAMS}
        state["last_index"] = faces[-1].index
        fits = pipe.fit_outputs(prepared, results, self.fitter)
        return {f.index: o for f, o in zip(faces, fits)}

    @staticmethod
    def _interpolate(params: dict[str, np.ndarray], valid: np.ndarray) -> None:
        """Fill invalid frames in place, linearly between the nearest valid ones (held at the ends)."""
        if valid.all():
            return
        t, known = np.arange(len(valid)), np.flatnonzero(valid)
        for name, values in params.items():
            flat = values.reshape(len(valid), -1)
            for j in range(flat.shape[1]):
                flat[~valid, j] = np.interp(t[~valid], known, flat[known, j])

    def _project_landmarks(self, params: dict[str, np.ndarray], fixed: dict[str, Tensor], camera: VideoCamera,
                           which: np.ndarray) -> np.ndarray:
        """(N, 2) frame pixels of the model's 68 landmark vertices for the frames ``which`` (no jaw marching:
        there is no photo to march against)."""
        dev = self.model.mean.device
        get = lambda name: torch.as_tensor(params[name][which], device=dev)  # noqa: E731
        with torch.no_grad():
            verts = self.model(fixed["id"], get("exp"))[:, self.model.landmarks68]
            cam = self.fitter.camera.to_camera(verts, get("angles"), get("translation"))
            return camera.project(cam).cpu().numpy()

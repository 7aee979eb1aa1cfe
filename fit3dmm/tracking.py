"""Video tracking: one identity for the whole video, pose, expression and lighting per frame, smooth in time.

Three passes over the frames, none holding more than a window of them:

1. **Follow** the face: the face mesh predicted where the previous frame's mesh was (no detector), the
   detector again only when the face is lost; frames without a face are marked invalid. Only the meshes
   are kept (468 points a frame).
2. **Identity**: ``keyframes`` frames spread over the video are fitted as one batch sharing one identity
   and one albedo (the configuration's usual stages). Their crop scale fixes the video's camera
   (:class:`VideoCamera`): every frame's crop is a view of that one camera, so poses are comparable
   from frame to frame.
3. **Track**: windows of consecutive frames (plus a few look-ahead frames) are fitted as batches, identity
   and albedo fixed, each frame starting from the fit of the frame before; then each window's per-frame
   coefficients are smoothed in time (:func:`smooth`, a second-difference penalty solved in closed form),
   after the previous window's last two frames, held fixed. A window after a gap (or the first) starts
   cold, from the landmark rigid stage. Invalid frames take coefficients interpolated from their neighbours.

A second-difference term inside the loss (on the landmark vertices and expression coefficients) was tried
first: at the same smoothing it gave more jitter and a larger distance from the detected landmarks than
smoothing the fitted coefficients (README, "Video"), and it slowed the fit's response to fast head turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .camera import VideoCamera
from .config import TrackConfig, default_stages
from .errors import NoFaceError
from .fitting import Fitter
from .perception.landmarks import to_ibug68
from .pipeline import FitOutput, Pipeline, Prepared
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


def smoothing_weight(cutoff_hz: float, fps: float) -> float:
    """λ of :func:`smooth` whose amplitude response, 1 / (1 + λ (2 - 2 cos ω)²) away from a window's ends,
    is 1/2 at ``cutoff_hz``."""
    omega = 2 * np.pi * min(cutoff_hz / fps, 0.5)
    return float(1.0 / (2 - 2 * np.cos(omega)) ** 2)


def smooth(x: Tensor, lam: Tensor, fixed: int = 0) -> Tensor:
    """Whittaker smoother: the z closest to x (n, C) in least squares with λ_c (C,) times the squared second
    differences of each column, z's first ``fixed`` rows held at x's (the frames already finished). One
    (n, n) solve per column; n is a window's length."""
    n = len(x)
    if n < 3 or n == fixed:
        return x
    x64, lam = x.to(torch.float64), lam.to(torch.float64)[:, None, None]
    d = torch.zeros(n - 2, n, dtype=torch.float64, device=x.device)
    k = torch.arange(n - 2, device=x.device)
    d[k, k], d[k, k + 1], d[k, k + 2] = 1.0, -2.0, 1.0
    held, free = d[:, :fixed], d[:, fixed:]
    # Normal equations of |z_f - x_f|² + λ |held x_h + free z_f|², per column.
    a = torch.eye(n - fixed, dtype=torch.float64, device=x.device) + lam * (free.T @ free)  # (C, m, m)
    rhs = x64[fixed:].T[..., None] - lam * (free.T @ (held @ x64[:fixed])).T[..., None]
    z = torch.linalg.solve(a, rhs)[..., 0].T
    return torch.cat([x[:fixed], z.to(x.dtype)])


@dataclass
class _Progress:
    """What pass 3 carries from one window to the next: the last two finished frames' coefficients (held
    fixed when the next window is smoothed; the last one is the next frame's start) and that frame's index,
    and the look-ahead frames' targets and fits (by frame index), which the next window starts from."""

    history: dict[str, Tensor] | None = None
    last_index: int = -(10**9)
    carry: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    prepared: dict[int, Prepared] = field(default_factory=dict)


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
        detected68 = followed.landmarks68
        scales = [pipe.crop(detected68[k]).scale for k in keys]
        camera = VideoCamera.for_frames(reader.width, reader.height, float(np.median(scales)), cfg.fit.crop_size,
                                        cfg.fit.focal_ratio)

        # Pass 2: the identity, from the keyframes fitted together.
        images = {f.index: f.image for f in reader.frames(stop=keys[-1] + 1) if f.index in set(keys)}
        prepared = [self._prepare(images[k], followed.meshes[k], camera) for k in keys]
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
        state = _Progress()
        window: list[VideoFrame] = []

        def flush(commit: int):
            """Fit the window, finish its first ``commit`` frames; the rest are fitted again with the next."""
            outputs = self._fit_window(window, commit, followed, camera, fixed, gamma0, state, reader.fps)
            for frame in window[:commit]:
                output = outputs.get(frame.index)
                if output is not None:
                    for name in FRAME_PARAMS:
                        out[name][frame.index] = output.result.params[name].cpu().numpy()
                    fitted68[frame.index] = output.target.crop.to_photo(output.result.landmarks68.cpu().numpy())
                if on_frame:
                    on_frame(TrackedFrame(frame, output))
                if progress:
                    progress("track", frame.index + 1, T)
            del window[:commit]

        for frame in reader.frames():
            window.append(frame)
            if len(window) == cfg.window + cfg.lookahead:
                flush(cfg.window)
        if window:
            flush(len(window))

        valid = followed.valid
        self._interpolate(out, valid)
        if not valid.all():
            fitted68[~valid] = self._project_landmarks(out, fixed, camera, ~valid)
        params = {"id": fixed["id"][0].cpu().numpy(), "albedo": fixed["albedo"][0].cpu().numpy(), **out}
        return Track(fps=reader.fps, width=reader.width, height=reader.height, times=followed.times, valid=valid,
                     detected68=detected68.astype(np.float32), fitted68=fitted68, params=params,
                     camera=camera, keyframes=keys)

    def _prepare(self, image: np.ndarray, mesh: np.ndarray, camera: VideoCamera) -> Prepared:
        """A frame's fit target from its followed mesh, its crop a view of the video's camera."""
        return self.pipeline.prepare(image, self.pipeline.observe_mesh(image, mesh), camera)

    def _fit_window(self, window: list[VideoFrame], commit: int, followed: Followed, camera: VideoCamera,
                    fixed: dict[str, Tensor], gamma0: Tensor, state: _Progress, fps: float) -> dict[int, FitOutput]:
        """Fit a window's frames that have a face as one batch; the outputs of its first ``commit`` frames by
        frame index. The others (the look-ahead) keep their fits only as the next window's starting point."""
        faces = [f for f in window if followed.valid[f.index]]
        if not faces:
            return {}
        prepared = [state.prepared.get(f.index) or self._prepare(f.image, followed.meshes[f.index], camera)
                    for f in faces]
        targets = [p.target for p in prepared]
        B = len(targets)
        cold = state.history is None or faces[0].index - state.last_index > MAX_GAP
        history = None if cold else state.history
        if cold:
            params = self.fitter.init_params(TargetBatch.stack(targets))
            params["gamma"] = gamma0.expand(B, *gamma0.shape).clone()
            stages = (self.rigid, *self.config.stages)
        else:
            # Each frame starts from its own fit in the previous window (look-ahead frames), else from the
            # latest fit before it.
            starts, latest = [], {name: v[-1] for name, v in history.items()}
            for f in faces:
                latest = state.carry.get(f.index, latest)
                starts.append(latest)
            params = {name: torch.stack([p[name] for p in starts]) for name in FRAME_PARAMS}
            stages = self.config.stages
        params.update({name: value.clone() for name, value in fixed.items()})
        results = self.fitter.fit(targets, params=params, stages=stages, finish=lambda p: self._smooth(p, history, fps))

        done = [k for k, f in enumerate(faces) if f.index <= window[commit - 1].index]
        state.carry = {f.index: {n: results[k].params[n] for n in FRAME_PARAMS}
                       for k, f in enumerate(faces) if k not in done}
        state.prepared = {f.index: prepared[k] for k, f in enumerate(faces) if k not in done}
        if done:
            finished = {name: torch.stack([results[k].params[name] for k in done]) for name in FRAME_PARAMS}
            if history is not None:
                finished = {name: torch.cat([history[name], v]) for name, v in finished.items()}
            state.history = {name: v[-2:] for name, v in finished.items()}
            state.last_index = faces[done[-1]].index
        fits = self.pipeline.fit_outputs([prepared[k] for k in done], [results[k] for k in done], self.fitter)
        return {faces[k].index: o for k, o in zip(done, fits)}

    def _smooth(self, params: dict[str, Tensor], history: dict[str, Tensor] | None, fps: float) -> None:
        """Smooth the window's per-frame coefficients in place (:func:`smooth`), after the finished frames'
        last two (``history``, held fixed) so windows join without a kink."""
        cfg = self.config
        groups = {"angles": cfg.pose_cutoff_hz, "translation": cfg.pose_cutoff_hz, "gamma": cfg.pose_cutoff_hz,
                  "exp": cfg.exp_cutoff_hz}
        for name, cutoff in groups.items():
            x = params[name]
            fixed = 0 if history is None else len(history[name])
            flat = (x if history is None else torch.cat([history[name], x])).reshape(fixed + len(x), -1)
            lam = flat.new_full((flat.shape[1],), smoothing_weight(cutoff, fps))
            params[name].copy_(smooth(flat, lam, fixed)[fixed:].reshape(x.shape))

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

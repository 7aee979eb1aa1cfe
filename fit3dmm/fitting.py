"""The fitting loop: runs the configured stages (Adam) over the coefficients of a batch of targets."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .camera import MODEL_TO_CAMERA, Camera, View, rotation_matrix, solve_pose
from .config import FitConfig, Stage
from .losses import Frame, make_loss
from .models.facemodel import PART_NAMES, FaceModel
from .render import rasterize, vertex_normals, vertex_visibility
from .render.shading import SH_COEFFS
from .target import FitTarget, TargetBatch

#: Initial lighting: ambient only, as Deep3DFaceRecon's.
AMBIENT_INIT = 0.8
#: Occlusion depth tolerance as a fraction of the outer-eye-corner distance (about 0.5 mm on a face).
#: Measured on the ICT model: closing the lids hides 91% of the eyeball vertices seen with open eyes at
#: this tolerance, 67% at 2 mm, while the face's visible vertices change by under 1%.
DEPTH_TOL = 0.005


@dataclass(frozen=True)
class Progress:
    """Reported after each iteration: stage name, its index and count, iteration within it, the
    stage's iteration count and the current weighted loss values (each the mean over the batch)."""

    stage: str
    stage_index: int
    n_stages: int
    iteration: int
    iterations: int
    losses: dict[str, float]


ProgressCallback = Callable[[Progress], None]


@dataclass
class FitResult:
    """One photo's fit. params: its coefficient tensors (no batch dimension); vertices (V, 3) model frame,
    screen (V, 3) crop pixels + depth, rotation (3, 3) model->camera, visible (V,) bool, all of the final
    geometry; landmarks68 (68, 2) fitted landmarks in crop pixels (jaw marched); stage_losses: each stage's
    final weighted loss values; timings: seconds per stage, the photo's share of its batch's (the batch's
    time over its size)."""

    params: dict[str, Tensor]
    vertices: Tensor
    screen: Tensor
    rotation: Tensor
    visible: Tensor
    landmarks68: Tensor
    stage_losses: dict[str, dict[str, float]]
    timings: dict[str, float] = field(default_factory=dict)


class Fitter:
    """Fits a face model to a batch of targets with the stages of a FitConfig.

    Every tensor of the loop carries a leading batch dimension B, and every loss gives one value per
    photo that depends on that photo's coefficients only; Adam's update is elementwise, so each photo's fit
    is the one it would get alone (up to float rounding). Loss values are read back only when progress is
    reported; the rasterizer still sizes its candidate lists from the data (README, "How a fit works").
    """

    def __init__(self, model: FaceModel, config: FitConfig, shared: frozenset[str] | None = None):
        self.model = model
        self.config = config
        self._shared = shared
        self.camera = Camera.for_crop(config.crop_size, config.focal_ratio)
        self.flip = model.mean.new_tensor(MODEL_TO_CAMERA)
        lm = model.mean[model.landmarks68]
        self.depth_tol = DEPTH_TOL * (lm[36] - lm[45]).norm().item()

    @property
    def shared(self) -> frozenset[str]:
        """Parameter groups one for the whole batch, (1, ...) instead of (B, ...): those given to the
        constructor, else with ``config.same_person`` the identity. Broadcasting does the rest (the model adds
        a (1, V, 3) identity offset to (B, V, 3) expressions; its gradient sums over the photos)."""
        if self._shared is not None:
            return self._shared
        return frozenset({"id"}) if self.config.same_person else frozenset()

    def view(self, targets: TargetBatch) -> View | None:
        """The crops' own pinholes if the targets carry them (video frames), else None (the crop camera)."""
        if all(t.view is None for t in targets.targets):
            return None
        own = (self.camera.focal, self.camera.center, self.camera.center)
        v = targets.image.new_tensor([t.view or own for t in targets.targets])  # (B, 3)
        return View(focal=v[:, None, :1], center=v[:, None, 1:])

    def init_params(self, targets: TargetBatch) -> dict[str, Tensor]:
        """Per photo, the mean face's pose on the landmarks (from a frontal pose placed and scaled so the
        model's eye corners and landmark centroid match); each tensor (B, ...), or (1, ...) for a shared group."""
        photos = [self._init_one(t) for t in targets.targets]
        return {name: torch.stack([p[name] for p in (photos[:1] if name in self.shared else photos)])
                for name in photos[0]}

    def _init_one(self, target: FitTarget) -> dict[str, Tensor]:
        m, dev = self.model, self.model.mean.device
        lm_model = m.mean[m.landmarks68]
        lm_target = target.landmarks68
        eye_model = (lm_model[36] - lm_model[45]).norm().item()
        eye_px = (lm_target[36] - lm_target[45]).norm().item()
        focal, cx, cy = target.view or (self.camera.focal, self.camera.center, self.camera.center)
        tz = focal * eye_model / max(eye_px, 1e-6)
        centroid_px = lm_target.mean(0)
        centroid_model = (lm_model.mean(0) * self.flip)[:2]
        txy = (centroid_px - centroid_px.new_tensor([cx, cy])) * tz / focal - centroid_model
        # The mean face's pose on the 51 inner points (the jaw's convention varies, FitTarget.outline_weight):
        # from a frontal start the rigid stage's 60 steps turned a 71° profile to 36° only, from this to 56°.
        angles, translation = solve_pose(lm_model[17:].cpu().numpy(), lm_target[17:].cpu().numpy(), focal, cx, cy,
                                         np.array([txy[0].item(), txy[1].item(), tz]))
        face = target.face_mask & ~target.occluded
        mean_colour = target.image[face].mean(0) if face.any() else target.image.reshape(-1, 3).mean(0)
        params = {
            "angles": torch.tensor(angles, dtype=torch.float32, device=dev),
            "translation": torch.tensor(translation, dtype=torch.float32, device=dev),
            "id": torch.zeros(m.n_id, device=dev),
            "exp": torch.zeros(m.n_exp, device=dev),
            "gamma": torch.zeros(3, SH_COEFFS, device=dev),
        }
        params["gamma"][:, 0] = AMBIENT_INIT
        if m.has_albedo_basis:
            params["albedo"] = torch.zeros(m.n_albedo, device=dev)
        else:
            # Start the free albedo at the face's mean colour undone by the initial ambient light: the model's
            # mean texture scaled per channel to that colour on its skin, else that colour everywhere.
            ambient = AMBIENT_INIT * math.pi / math.sqrt(4 * math.pi)
            colour = (mean_colour / ambient).clamp(0, 1)
            if m.texture is not None:
                skin = m.parts == PART_NAMES.index("skin")
                reference = (m.texture[skin] if skin.any() else m.texture).mean(0)  # a model without parts: all
                params["albedo"] = (m.texture * (colour / reference.clamp(min=1e-3))).clamp(0, 1)
            else:
                params["albedo"] = colour.expand(m.n_vertices, 3).clone()
        return params

    def frame(self, params: dict[str, Tensor], raster: bool, vertices: Tensor | None = None,
              view: View | None = None, reuse: Frame | None = None) -> Frame:
        """One iteration's geometry for the batch; ``vertices`` (B, V, 3) skips the model when its
        coefficients are fixed; ``view``: the crops' own pinholes (:meth:`view`), if any; ``reuse``: a
        recent frame whose hard rasterization and visibility to take instead of redoing them."""
        verts = self.model(params["id"], params["exp"]) if vertices is None else vertices
        rotation = rotation_matrix(params["angles"]) * self.flip  # scales columns: R @ diag(flip)
        cam = verts @ rotation.transpose(-1, -2) + params["translation"][:, None]
        screen = self.camera.project(cam, view)
        frame = Frame(vertices=verts, screen=screen, rotation=rotation, params=params)
        if raster:
            tris = self.model.fit_triangles
            frame.normals = vertex_normals(cam, tris)
            if reuse is not None:
                frame.frags, frame.visible, frame.depth_tol = reuse.frags, reuse.visible, reuse.depth_tol
                return frame
            size = self.camera.size
            frame.frags = rasterize(screen.detach(), tris, size, size)
            tol = self.depth_tol / params["translation"][:, 2].detach()  # vertex_visibility's tolerance is relative
            frame.visible = vertex_visibility(screen.detach(), tris, frame.frags, frame.normals.detach(), tol)
            frame.depth_tol = tol
        return frame

    def _clamp(self, params: dict[str, Tensor]) -> None:
        with torch.no_grad():
            if self.model.expression_range is not None:
                params["exp"].clamp_(*self.model.expression_range)
            if not self.model.has_albedo_basis:
                params["albedo"].clamp_(0, 1)

    def run_stage(self, stage: Stage, params: dict[str, Tensor], losses: dict, report=None,
                  view: View | None = None) -> dict[str, Tensor]:
        """Run one stage in place on the batch's ``params``; returns its final weighted loss values, (B,)
        each. ``report(it, values)`` is called every iteration if given, with each loss's mean over the
        batch (reading them syncs a GPU, so only then)."""
        groups = [{"params": [params[name]], "lr": lr} for name, lr in stage.lrs]
        for name, _ in stage.lrs:
            params[name].requires_grad_(True)
        opt = torch.optim.Adam(groups)
        gamma = stage.lr_final ** (1.0 / max(stage.iterations - 1, 1))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
        raster = any(losses[name].needs_raster for name, _ in stage.losses)
        shape_fixed = not {"id", "exp"} & {name for name, _ in stage.lrs}
        vertices = self.model(params["id"], params["exp"]).detach() if shape_fixed else None
        terms: dict[str, Tensor] = {}
        frame = None
        for it in range(stage.iterations):
            opt.zero_grad(set_to_none=True)
            frame = self.frame(params, raster, vertices, view, None if it % stage.raster_every == 0 else frame)
            # A term of shared coefficients only (e.g. a shared albedo's smoothness) is (1,): every photo's.
            B = frame.screen.shape[0]
            terms = {name: (weight * losses[name](frame)).expand(B) for name, weight in stage.losses}
            # Photos are independent: the sum's gradient on each photo's coefficients is its own loss's.
            sum(terms.values()).sum().backward()
            opt.step()
            sched.step()
            self._clamp(params)
            if report is not None:
                report(it, {k: float(v.detach().mean()) for k, v in terms.items()})
        for name, _ in stage.lrs:
            params[name].requires_grad_(False)
        return {k: v.detach() for k, v in terms.items()}

    def fit(self, targets: list[FitTarget], progress: ProgressCallback | None = None,
            params: dict[str, Tensor] | None = None, stages: tuple[Stage, ...] | None = None,
            finish: Callable[[dict[str, Tensor]], None] | None = None) -> list[FitResult]:
        """Fit a batch of targets (same crop size) at once; one result per target, in order.

        By default from :meth:`init_params` through the configuration's stages. A caller may start from
        its own ``params`` (B, ...) each (a warm start; updated in place), run other ``stages``, and
        ``finish`` the coefficients in place after the stages (e.g. a temporal smoother) before the results.
        """
        batch = TargetBatch.stack(targets)
        view = self.view(batch)
        params = self.init_params(batch) if params is None else params
        stages = self.config.stages if stages is None else stages
        names = {name for stage in stages for name, _ in stage.losses}
        losses = {name: make_loss(name, self.model, batch, self.config) for name in names}
        stage_losses, timings = {}, {}
        n = len(stages)
        for k, stage in enumerate(stages):
            t0 = time.perf_counter()

            def report(it, values, stage=stage, k=k):
                progress(Progress(stage.name, k, n, it + 1, stage.iterations, values))

            stage_losses[stage.name] = self.run_stage(stage, params, losses, report if progress else None, view)
            timings[f"stage_{stage.name}"] = (time.perf_counter() - t0) / len(targets)
        with torch.no_grad():
            if finish is not None:
                finish(params)
                self._clamp(params)
            final = self.frame(params, raster=True, view=view)
            landmark = losses.get("landmark") or make_loss("landmark", self.model, batch)
            # Reported in 300-W's convention whatever the targets': the jaw on the outline.
            lm = landmark.fitted_points(final, torch.ones(len(targets), device=final.screen.device))
        values = {stage: {k: v.tolist() for k, v in terms.items()} for stage, terms in stage_losses.items()}
        return [
            FitResult(
                params={k: v[0 if k in self.shared else b] for k, v in params.items()},
                vertices=final.vertices[b], screen=final.screen[b], rotation=final.rotation[b],
                visible=final.visible[b], landmarks68=lm[b],
                stage_losses={stage: {k: v[b] for k, v in terms.items()} for stage, terms in values.items()},
                timings=dict(timings),
            )
            for b in range(len(targets))
        ]

"""Configuration as frozen dataclasses; every result folder gets a copy in params.json.

A fit is a sequence of stages, each plain data: which parameter groups Adam moves (with their learning
rates), for how many iterations, and which losses with which weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

#: Loss weights, in the units of fit3dmm's losses (pixels of a 224² crop, colours in [0, 1]): the paper's
#: λlmk, λpho and λreg. PRDL's weight was tuned with every baseline's (SEG_WEIGHTS).
LANDMARK_WEIGHT = 1.6e-3
PHOTOMETRIC_WEIGHT = 1.9
PRDL_WEIGHT = 4.8e-3
REG_WEIGHT = 3e-4
ALBEDO_SMOOTH_WEIGHT = 1.0
#: The free albedo's pull toward the model's mean texture (losses.regularizer.AlbedoPrior), with the albedo
#: starting at that texture: PRDL's Part IoU on 134 tuning photos +0.16 points [+0.01, +0.31] over a uniform
#: start without it (0.3: +0.11, 3: +0.16, 10: +0.08; the start alone +0.07); on the 60 headline photos PRDL
#: +0.04 [-0.24, +0.31], the landmark-and-photometric fit +1.75 [+1.02, +2.54] (README, "Comparing losses").
ALBEDO_PRIOR_WEIGHT = 1.0

#: Default weight of each segmentation loss, tuned the same way for all (README, "Comparing losses"):
#: each loss ran at 1/4, 1 and 4 times its previous default on the tuning photos (validation photos
#: 120-139, full mode), and further in steps of 4 while the best was at an end of the tried range; the
#: peak is kept (PRDL's tie between 1.2e-3 and 4.8e-3 went to the better fit against its target). Re-tuned
#: with the part bands: only ICP's peak moved (0.128 -> 0.032).
SEG_WEIGHTS = {"prdl": PRDL_WEIGHT, "iou": 0.025, "chamfer": 0.008, "dcd": 2.0, "icp": 0.032, "icp-rev": 0.0025}
#: "full": the segmentation loss joins the landmark and photometric terms. "seg-only" (the paper's
#: ablation): after the landmark-only rigid stage, shape and pose follow the segmentation loss alone.
MODES = ("full", "seg-only")
#: Where the 68 target points come from (FitConfig.landmarks).
LANDMARK_SOURCES = ("dlib", "mesh")
#: What a fit did before a FitConfig setting existed, where that is not the setting's default: results
#: written then are read with these values (outputs.holds_fit). Before `landmarks`, the mesh's points.
SETTINGS_BEFORE_THEY_EXISTED = {"landmarks": "mesh"}
#: PRDL's anchors per side of the square crop grid (8x8 = 64, one every 28 px of the 224 crop). Denser
#: grids (28x28, 56x56) gave the same Part IoU at up to 4x the cost (README, "PRDL").
ANCHOR_GRID = 8


@dataclass(frozen=True)
class Stage:
    """One optimization stage.

    lrs: (parameter group, Adam learning rate) pairs; groups are angles, translation, id, exp, gamma,
    albedo. losses: (registered loss name, weight) pairs. The learning rate decays exponentially to
    ``lr_final`` times its start over the stage. raster_every: the hard rasterization and the vertex
    visibility are redone every this many iterations and reused in between (the losses interpolate with
    barycentrics recomputed from the current vertices, so only which triangle covers a pixel, and which
    vertices are seen, lag behind).
    """

    name: str
    iterations: int
    lrs: tuple[tuple[str, float], ...]
    losses: tuple[tuple[str, float], ...]
    lr_final: float = 0.1
    raster_every: int = 1


#: Iterations of the final stage, and where its learning rates end (a fraction of their start). PRDL on 134
#: tuning photos, paired against the earlier 80 iterations ending at 0.1: Part IoU +0.45 at 160, +0.74 at
#: 320; ending at 0.3, +0.63 at 160 [+0.34, +0.90] and +0.77 at 240. 160 keeps the 68-point NME of the
#: large-pose photos below the detector's (240 does not) at 2.6 s per fit in a batch of 16 against 1.6 s
#: (README, "Iterations").
FULL_ITERATIONS = 160
FULL_LR_FINAL = 0.3
#: The final stage's landmark weight, 3x λlmk: with 160 iterations PRDL pulled the 68 points off the
#: hand-placed ones (NME 6.18 -> 6.34%); 2x gave 6.20% at the same Part IoU (+0.03 [-0.15, +0.26] on the
#: tuning photos; README, "Iterations"); with the voted landmark vertices 3x gave 5.48% against 5.62% at 2x
#: (README, "Part annotation").
FULL_LANDMARK_WEIGHT = 3 * LANDMARK_WEIGHT


def default_stages(
    seg_loss: str = "prdl", seg_weight: float | None = None, iterations: int = FULL_ITERATIONS, mode: str = "full"
) -> tuple[Stage, ...]:
    """Full mode: rigid pose on landmarks, then shape on landmarks, then everything with every loss.
    Seg-only mode: the same rigid stage, then pose and shape on the segmentation loss (and the
    coefficient prior) for as many iterations as the other two stages.

    ``seg_loss`` "none" leaves the segmentation term out (landmark + photometric only; in seg-only mode
    the rigid fit alone). ``seg_weight`` None takes the loss's entry in SEG_WEIGHTS.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; known: {', '.join(MODES)}")
    seg = [] if seg_loss == "none" else [(seg_loss, SEG_WEIGHTS.get(seg_loss, PRDL_WEIGHT) if seg_weight is None else seg_weight)]
    rigid = Stage("rigid", 60, (("angles", 0.03), ("translation", 1.0)), (("landmark", 1.0),))
    if mode == "seg-only":
        lrs = (("angles", 0.005), ("translation", 0.1), ("id", 0.03), ("exp", 0.02))
        # Ending at FULL_LR_FINAL as the full stage does: PRDL +0.20 [+0.06, +0.36] on the 134 tuning photos
        # against 0.1 (README, "Comparing losses").
        return rigid, Stage("segmentation", 60 + iterations, lrs, (*seg, ("reg", REG_WEIGHT)), lr_final=FULL_LR_FINAL)
    full_losses = [("landmark", FULL_LANDMARK_WEIGHT), ("photometric", PHOTOMETRIC_WEIGHT), ("reg", REG_WEIGHT),
                   ("albedo_smooth", ALBEDO_SMOOTH_WEIGHT), ("albedo_prior", ALBEDO_PRIOR_WEIGHT), *seg]
    return (
        rigid,
        Stage(
            "shape", 60,
            (("angles", 0.01), ("translation", 0.3), ("id", 0.05), ("exp", 0.03)),
            (("landmark", LANDMARK_WEIGHT), ("reg", REG_WEIGHT)),
        ),
        # The hard raster every 2nd iteration: 12% less time per iteration, Part IoU and NME unchanged (README,
        # "Measured").
        Stage(
            "full", iterations,
            (("angles", 0.005), ("translation", 0.1), ("id", 0.03), ("exp", 0.02), ("gamma", 0.02), ("albedo", 0.01)),
            tuple(full_losses), raster_every=2, lr_final=FULL_LR_FINAL,
        ),
    )


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a fit's result. ``device`` is "auto", "cpu", "cuda" or "cuda:N"."""

    model: str = "ict"
    loss: str = "prdl"
    mode: str = "full"
    segmenter: str = "parser"
    # The 68 target points: "dlib" refines the face mesh's with dlib's shape predictor where the two agree
    # (fit3dmm.perception.ibug68), "mesh" keeps the mesh's.
    landmarks: str = "dlib"
    device: str = "auto"
    crop_size: int = 224
    crop_margin: float = 1.7  # crop side / larger side of the landmarks' bounding box
    focal_ratio: float = 4.53  # focal length / crop side (≈12.6° field of view, as Deep3DFaceRecon's)
    face_index: int = 0  # which detected face, by size (0 = largest)
    anchor_grid: int = ANCHOR_GRID  # PRDL's anchors per side of the crop
    same_person: bool = False  # the photos fitted together share one identity (id coefficients)
    # The rendered parts take per-fit eye, brow and upper-lip extents chosen against the segmentation
    # (fit3dmm.models.bands); False keeps the model's annotated parts.
    part_bands: bool = True
    stages: tuple[Stage, ...] = field(default_factory=default_stages)

    @classmethod
    def create(
        cls, loss: str = "prdl", iterations: int = FULL_ITERATIONS, seg_weight: float | None = None, mode: str = "full",
        **kwargs,
    ) -> "FitConfig":
        """The default stages with the given segmentation loss, its weight (None: the loss's default),
        final-stage iterations and mode."""
        return cls(loss=loss, mode=mode, stages=default_stages(loss, seg_weight, iterations, mode), **kwargs)

    def with_(self, **changes) -> "FitConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


#: Cut-off frequencies (half amplitude) of the smoother applied to each window's fitted coefficients: pose and
#: lighting, and expression (speech and blinks move faster than heads). Chosen on d3.mp4 (README, "Video").
POSE_CUTOFF_HZ = 1.2
EXP_CUTOFF_HZ = 3.0
#: Iterations per tracking window: the landmark stages (no rendering: ~2 ms a frame-iteration on this CPU),
#: then the stage with every loss (~50 ms).
TRACK_POSE_ITERATIONS = 30
TRACK_EXPRESSION_ITERATIONS = 20
TRACK_ITERATIONS = 5


def track_stages(seg_loss: str = "prdl", seg_weight: float | None = None, iterations: int = TRACK_ITERATIONS
                 ) -> tuple[Stage, ...]:
    """Per-frame stages of video tracking, each frame starting from the fit of the frame before: pose on the
    landmarks (with the rigid stage's step sizes: a window's last frame may have turned well away from the
    frame before the window), then pose and expression on the landmarks, then pose, expression and lighting
    on every loss. Identity and albedo are fixed (fitted once on keyframes)."""
    seg = [] if seg_loss == "none" else [(seg_loss, SEG_WEIGHTS.get(seg_loss, PRDL_WEIGHT) if seg_weight is None else seg_weight)]
    lmk = ("landmark", LANDMARK_WEIGHT)
    return (
        Stage("pose", TRACK_POSE_ITERATIONS, (("angles", 0.03), ("translation", 1.0)), (("landmark", 1.0),)),
        Stage("expression", TRACK_EXPRESSION_ITERATIONS, (("angles", 0.005), ("translation", 0.1), ("exp", 0.03)),
              (lmk, ("reg", REG_WEIGHT))),
        Stage("track", iterations, (("angles", 0.002), ("translation", 0.03), ("exp", 0.01), ("gamma", 0.01)),
              (lmk, ("photometric", PHOTOMETRIC_WEIGHT), ("reg", REG_WEIGHT), *seg)),
    )


@dataclass(frozen=True)
class TrackConfig:
    """Video tracking: ``fit`` fits the identity (and albedo) once, on ``keyframes`` frames spread over the
    video, as one batch with one identity; then windows of ``window`` consecutive frames are fitted as
    batches through ``stages``, each frame starting from the fit of the frame before, and their coefficients
    smoothed in time: a second-difference penalty solved in closed form (a Whittaker smoother) whose
    strength is given as the frequency at which it halves a motion's amplitude, for pose and lighting
    (``pose_cutoff_hz``) and expression (``exp_cutoff_hz``). Each window also fits the ``lookahead`` frames
    after it, so its last frames are smoothed against what follows (they are fitted again, and kept, with
    the next window)."""

    fit: FitConfig = field(default_factory=FitConfig)
    keyframes: int = 6
    window: int = 16
    lookahead: int = 2
    pose_cutoff_hz: float = POSE_CUTOFF_HZ
    exp_cutoff_hz: float = EXP_CUTOFF_HZ
    stages: tuple[Stage, ...] = field(default_factory=track_stages)

    def to_dict(self) -> dict:
        return asdict(self)


#: What ``fit --export`` may choose (default: all). params.json and landmarks.json are always written.
EXPORTS = {
    "mesh": "mesh.obj and mesh.ply: the fitted shape with albedo vertex colours",
    "textured": "textured/mesh.obj, mesh.mtl, texture.png: the shape with the photo's texture",
    "glb": "mesh.glb: textured head with one morph target per expression, set to the fitted weights",
    "expression": "expression.json: expression name -> fitted weight",
    "viewer": "index.html: an offline 3D viewer of mesh.glb with a slider per expression",
    "images": "overlay.png, parts.png, fitted_labels.png, target_labels.png",
}

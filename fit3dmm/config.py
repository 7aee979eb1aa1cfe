"""Configuration as frozen dataclasses; every result folder gets a copy in params.json.

A fit is a sequence of stages, each plain data: which parameter groups Adam moves (with their learning
rates), for how many iterations, and which losses with which weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

#: Loss weights, in the units of fit3dmm's losses (pixels of a 224² crop, colours in [0, 1]): the paper's
#: λlmk, λpho and λreg. Its λprdl (0.8e-3) overshot here: on 12 validation photos the fitted parts matched
#: the PRDL target less well (73.2% part IoU) than with 0.3e-3 (75.0%; 72.8% without PRDL) — README.
LANDMARK_WEIGHT = 1.6e-3
PHOTOMETRIC_WEIGHT = 1.9
PRDL_WEIGHT = 0.3e-3
REG_WEIGHT = 3e-4
ALBEDO_SMOOTH_WEIGHT = 1.0


@dataclass(frozen=True)
class Stage:
    """One optimization stage.

    lrs: (parameter group, Adam learning rate) pairs; groups are angles, translation, id, exp, gamma,
    albedo. losses: (registered loss name, weight) pairs. The learning rate decays exponentially to
    ``lr_final`` times its start over the stage.
    """

    name: str
    iterations: int
    lrs: tuple[tuple[str, float], ...]
    losses: tuple[tuple[str, float], ...]
    lr_final: float = 0.1


#: Iterations of the final stage. 80, 100 and 120 gave the same accuracy (68-landmark NME 6.71/6.72/6.71%
#: on 6 photos, part IoU 58.8/58.7/58.8% on 8 validation photos) at 5.4/6.5/7.4 s per fit.
FULL_ITERATIONS = 80


def default_stages(
    seg_loss: str = "prdl", seg_weight: float = PRDL_WEIGHT, iterations: int = FULL_ITERATIONS
) -> tuple[Stage, ...]:
    """Rigid pose on landmarks, then shape on landmarks, then everything with every loss.

    ``seg_loss`` "none" leaves the segmentation term out (landmark + photometric only).
    """
    full_losses = [("landmark", LANDMARK_WEIGHT), ("photometric", PHOTOMETRIC_WEIGHT), ("reg", REG_WEIGHT),
                   ("albedo_smooth", ALBEDO_SMOOTH_WEIGHT)]
    if seg_loss != "none":
        full_losses.append((seg_loss, seg_weight))
    return (
        Stage("rigid", 60, (("angles", 0.03), ("translation", 1.0)), (("landmark", 1.0),)),
        Stage(
            "shape", 60,
            (("angles", 0.01), ("translation", 0.3), ("id", 0.05), ("exp", 0.03)),
            (("landmark", LANDMARK_WEIGHT), ("reg", REG_WEIGHT)),
        ),
        Stage(
            "full", iterations,
            (("angles", 0.005), ("translation", 0.1), ("id", 0.03), ("exp", 0.02), ("gamma", 0.02), ("albedo", 0.01)),
            tuple(full_losses),
        ),
    )


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a fit's result. ``device`` is "auto", "cpu", "cuda" or "cuda:N"."""

    model: str = "ict"
    loss: str = "prdl"
    segmenter: str = "parser"
    device: str = "auto"
    crop_size: int = 224
    crop_margin: float = 1.7  # crop side / larger side of the landmarks' bounding box
    focal_ratio: float = 4.53  # focal length / crop side (≈12.6° field of view, as Deep3DFaceRecon's)
    face_index: int = 0  # which detected face, by size (0 = largest)
    stages: tuple[Stage, ...] = field(default_factory=default_stages)

    @classmethod
    def create(
        cls, loss: str = "prdl", iterations: int = FULL_ITERATIONS, seg_weight: float = PRDL_WEIGHT, **kwargs
    ) -> "FitConfig":
        """The default stages with the given segmentation loss, its weight and final-stage iterations."""
        return cls(loss=loss, stages=default_stages(loss, seg_weight, iterations), **kwargs)

    def with_(self, **changes) -> "FitConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

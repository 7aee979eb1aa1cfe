"""iBUG-68 landmarks refined by dlib's shape predictor, where it agrees with the face mesh.

The face mesh's iBUG-68 view (:func:`fit3dmm.perception.landmarks.to_ibug68`) picks mesh points for the 68
iBUG points; MediaPipe was never trained on that convention, and its jaw in particular follows its own face
oval. dlib's 68-point shape predictor (an ensemble of regression trees, trained on iBUG 300-W; the
``face-recognition-models`` package ships it) was: on the hand-labelled photos it is far more accurate on
near-frontal faces, but it starts from a mean shape and fails on large poses (Breaking Bad's profile: 44%
NME). So it runs in the mesh's box, and its points are trusted by how well they agree with the mesh's.

Measured on CelebAMask-HQ train photos 400-750 (never the photos the README reports; distances from the
points to the human masks' boundaries, % of the eye-corner distance, mean of 299 photos): jaw points 4-12
3.40 (mesh) -> 2.28, eye points 1.74 -> 1.53, outer lip points 1.54 -> 1.31. Blending the non-jaw points
half and half was better there than taking dlib's alone (eyes 2.22, lips 1.97 with the outliers), as two
detectors with independent errors are.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fit3dmm.errors import ModelError
from fit3dmm.perception.landmarks import eye_line_angle, rotation_2d, warp_crop

# dlib's boxes relative to the 68 points' bounding box in the eye-levelled frame: centre offset (x, y) and
# side, in units of the box's larger side. Medians over 395 CelebAMask-HQ train photos 0-399 where dlib's
# own HOG detector found the face (its boxes are what the shape predictor was trained on).
_BOX_OFFSET = (-0.028, -0.117)
_BOX_SIDE = 1.057
_MAX_BOX = 480.0
# Agreement gate: the mean distance between dlib's and the mesh's points, in eye-corner distances. On
# those 395 photos its 95th percentile is 0.065 and its 99th 0.096: full trust up to the first, none from
# about the second (a failed fit of the mean shape, e.g. on a turned head), linear between.
_TRUST_UNTIL, _DISTRUST_FROM = 0.06, 0.10
#: Weight of dlib's points where trusted: the jaw (points 0-16) is dlib's, the rest half each.
JAW_WEIGHT, INNER_WEIGHT = 1.0, 0.5


def _default_model() -> Path:
    # The package's __init__ needs setuptools' pkg_resources, so locate its data without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("dlib's 68-point model is missing: pip install face-recognition-models "
                         "(or use --landmarks mesh)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"


class Ibug68Refiner:
    """Refines a face's 68 iBUG points (from the mesh) with dlib's shape predictor.

    ``refine(image, points)`` takes the photo (H, W, 3) uint8 RGB and the mesh's (68, 2) points in photo
    pixels (pixel centres at integers) and returns (68, 2) float32 points; ``trust`` then holds the weight
    (0-1) dlib's points got.
    """

    def __init__(self, model: str | Path | None = None):
        try:
            import dlib
        except ImportError as error:
            raise ModelError("dlib is missing: pip install dlib-bin (or use --landmarks mesh)") from error
        path = Path(model) if model is not None else _default_model()
        if not path.is_file():
            raise ModelError(f"dlib's 68-point model is missing: {path}")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(path))
        self.trust = float("nan")

    def predict(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """dlib's (68, 2) points in the box derived from ``points`` (68, 2), in an eye-levelled crop."""
        rot = rotation_2d(eye_line_angle(points[36], points[45]))
        local = points @ rot  # photo -> eye-levelled frame
        lo, hi = local.min(0), local.max(0)
        size = float((hi - lo).max())
        centre = (lo + hi) / 2 + np.asarray(_BOX_OFFSET) * size
        side = _BOX_SIDE * size
        # Faces much larger than those the box was calibrated on (boxes of 270-320 px) are shrunk: a face
        # filling a 4K photo would otherwise mean a crop of 60 MB for the same points (NME on the hand-placed
        # photos upscaled 4x: within 0.7 points of the originals').
        zoom = min(1.0, _MAX_BOX / side)
        crop_side = max(int(round(2 * side * zoom)), 8)
        # crop pixel q -> photo point linear @ q + t (pixel centres); warp_crop takes continuous coordinates.
        linear = rot / zoom
        t = rot @ centre - linear @ np.full(2, crop_side / 2)
        crop = warp_crop(image, linear, t + 0.5 - linear @ np.full(2, 0.5), crop_side)
        half, mid = side * zoom / 2, crop_side / 2
        box = self._dlib.rectangle(*(int(round(v)) for v in (mid - half, mid - half, mid + half, mid + half)))
        shape = self._predictor(np.ascontiguousarray(crop), box)
        q = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)
        return q @ linear.T + t

    @property
    def jaw_share(self) -> float:
        """The weight dlib's jaw points got in the last refined face (its jaw lies on the outline, the mesh's
        on the face)."""
        return JAW_WEIGHT * self.trust

    def refine(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64)
        dlib_points = self.predict(image, points)
        scale = float(np.linalg.norm(points[45] - points[36]))
        disagreement = float(np.linalg.norm(dlib_points - points, axis=1).mean()) / max(scale, 1e-6)
        self.trust = float(np.clip((_DISTRUST_FROM - disagreement) / (_DISTRUST_FROM - _TRUST_UNTIL), 0.0, 1.0))
        weight = np.full((68, 1), INNER_WEIGHT * self.trust)
        weight[:17] = self.jaw_share
        return (weight * dlib_points + (1 - weight) * points).astype(np.float32)

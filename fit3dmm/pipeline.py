"""From a photo to a fitted face: perception, target preparation and fitting, on one device."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .camera import Camera, VideoCamera
from .config import LANDMARK_SOURCES, FitConfig
from .errors import InputError, ModelError, NoFaceError
from .fitting import FitResult, Fitter, ProgressCallback
from .losses import REGISTRY
from .models import FaceModel, load_model, resolve_model
from .parser.inference import FaceParser
from .perception.detector import Detection, FaceDetector
from .perception.ibug68 import Ibug68Refiner
from .perception.landmarks import FaceMeshPredictor, to_ibug68
from .perception.segmentation import make_segmenter
from .target import CropTransform, FitTarget, make_target


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    return device


@dataclass
class Observation:
    """What perception found in a photo, in photo pixels: the chosen face's detection, its 468-point
    mesh, its 68 iBUG landmarks, the part label map (H, W) in CelebAMask-HQ ids, how far the 68 points'
    jaw follows the face's outline (:attr:`fit3dmm.target.FitTarget.outline_weight`), and the pixels the
    segmenter labelled ((H, W) bool, None for all; :meth:`Segmenter.seen`)."""

    image: np.ndarray
    detection: Detection
    n_faces: int
    mesh: np.ndarray
    landmarks68: np.ndarray
    labels: np.ndarray
    outline_weight: float
    seen: np.ndarray | None = None


@dataclass
class Prepared:
    """A photo ready to fit: what perception found and the fit target built from it (seconds in timings)."""

    observation: Observation
    target: FitTarget
    timings: dict[str, float]


@dataclass
class FitOutput:
    """One photo's fit with what produced it: the model, the camera and the configuration."""

    observation: Observation
    target: FitTarget
    result: FitResult
    model: FaceModel
    camera: Camera
    config: FitConfig
    timings: dict[str, float]


class Pipeline:
    """Holds the face model and the perception models, and fits photos one after another."""

    def __init__(self, config: FitConfig, model: FaceModel | None = None):
        if config.landmarks not in LANDMARK_SOURCES:
            raise InputError(f"unknown landmark source '{config.landmarks}'; known: {', '.join(LANDMARK_SOURCES)}")
        self.config = config
        self.device = resolve_device(config.device)
        if model is None:
            model = FaceModel(load_model(resolve_model(config.model)))
        self.model = model.to(self.device)
        self.fitter = self.make_fitter(config)
        self.detector = FaceDetector()
        self.mesh_predictor = FaceMeshPredictor()
        self.segmenter = make_segmenter(config.segmenter, self.device)
        self.refiner = Ibug68Refiner() if config.landmarks == "dlib" else None

    def make_fitter(self, config: FitConfig) -> Fitter:
        """A fitter of this pipeline's model with another configuration's stages (same crop and camera
        settings expected), e.g. to fit one prepared photo with several losses."""
        for stage in config.stages:
            for name, _ in stage.losses:
                if name in REGISTRY and REGISTRY[name].needs_parts and not self.model.data.has_parts:
                    raise ModelError(f"model '{self.model.name}' has no part annotation, which loss '{name}' needs")
        return Fitter(self.model, config)

    def observe(self, image: np.ndarray) -> Observation:
        faces = self.detector.detect(image)
        if not faces:
            raise NoFaceError("no face found")
        if self.config.face_index >= len(faces):
            raise NoFaceError(f"face {self.config.face_index} asked for, but only {len(faces)} found")
        detection = faces[self.config.face_index]
        mesh = self.mesh_predictor.predict(image, detection)
        landmarks68, outline_weight = self.landmarks68(image, mesh)
        return Observation(
            image=image, detection=detection, n_faces=len(faces), mesh=mesh, landmarks68=landmarks68,
            labels=self.segmenter.segment(image, mesh), outline_weight=outline_weight,
            seen=self.segmenter.seen(image.shape[:2], mesh),
        )

    def landmarks68(self, image: np.ndarray, mesh: np.ndarray) -> tuple[np.ndarray, float]:
        """The (68, 2) iBUG points of a face whose mesh (468, 3) was found in the photo, and how far their
        jaw follows the outline: dlib's jaw does (300-W's convention), the mesh's stays on the face, so it is
        dlib's share of the jaw."""
        points = to_ibug68(mesh)
        if self.refiner is None:
            return points, 0.0
        points = self.refiner.refine(image, points)
        return points, self.refiner.jaw_share

    def crop(self, landmarks68: np.ndarray) -> CropTransform:
        """The fitting crop around a face's 68 landmarks (photo pixels)."""
        return CropTransform.around(landmarks68, self.config.crop_size, self.config.crop_margin)

    def observe_mesh(self, image: np.ndarray, mesh: np.ndarray) -> Observation:
        """The observation of a face whose mesh (468, 3) is known (a tracked video frame): its landmarks and
        parts; the detection is the mesh's extent."""
        lo, hi = mesh[:, :2].min(0), mesh[:, :2].max(0)
        detection = Detection((*map(float, lo), *map(float, hi)), 1.0, np.zeros((6, 2), np.float32))
        return Observation(image=image, detection=detection, n_faces=1, mesh=mesh, landmarks68=to_ibug68(mesh),
                           labels=self.segmenter.segment(image, mesh), outline_weight=0.0,
                           seen=self.segmenter.seen(image.shape[:2], mesh))

    def prepare(self, image: np.ndarray, observation: Observation | None = None,
                camera: VideoCamera | None = None) -> Prepared:
        """Perception (unless ``observation`` is given) and the fit target of a photo, once for any number
        of fits; with a video's ``camera``, the target's crop sees that camera (:attr:`FitTarget.view`)."""
        t0 = time.perf_counter()
        obs = self.observe(image) if observation is None else observation
        t1 = time.perf_counter()
        crop = self.crop(obs.landmarks68)
        view = None if camera is None else camera.in_crop(crop.scale, crop.offset)
        target = make_target(image, obs.labels, obs.landmarks68, crop, self.device, view, obs.outline_weight,
                             obs.seen)
        return Prepared(obs, target, {"perception": t1 - t0, "target": time.perf_counter() - t1})

    def fit_prepared(
        self, prepared: Prepared, progress: ProgressCallback | None = None, fitter: Fitter | None = None
    ) -> FitOutput:
        """Fit a prepared photo with this pipeline's fitter, or another from :meth:`make_fitter`."""
        return self.fit_batch([prepared], progress, fitter)[0]

    def fit_batch(
        self, prepared: list[Prepared], progress: ProgressCallback | None = None, fitter: Fitter | None = None
    ) -> list[FitOutput]:
        """Fit prepared photos as one batch (the same fits as one by one, faster per photo)."""
        fitter = fitter or self.fitter
        t0 = time.perf_counter()
        results = fitter.fit([p.target for p in prepared], progress)
        return self.fit_outputs(prepared, results, fitter, time.perf_counter() - t0)

    @staticmethod
    def fit_outputs(prepared: list[Prepared], results: list[FitResult], fitter: Fitter,
                    seconds: float = 0.0) -> list[FitOutput]:
        """The outputs of a batch's fits; each photo's "fit" timing is its share of the batch's ``seconds``."""
        fit = seconds / len(prepared)
        outputs = []
        for p, result in zip(prepared, results):
            timings = {**p.timings, **result.timings, "fit": fit, "total": sum(p.timings.values()) + fit}
            outputs.append(FitOutput(observation=p.observation, target=p.target, result=result, model=fitter.model,
                                     camera=fitter.camera, config=fitter.config, timings=timings))
        return outputs

    def fit(self, image: np.ndarray, progress: ProgressCallback | None = None) -> FitOutput:
        return self.fit_prepared(self.prepare(image), progress)


class ParsePipeline:
    """Face parsing of whole photos: every detected face, parsed in one batch."""

    def __init__(self, device: str = "auto", weights: str | Path | None = None):
        self.detector = FaceDetector()
        self.mesh_predictor = FaceMeshPredictor()
        self.parser = FaceParser.load(weights, device=resolve_device(device))

    def parse(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 CelebAMask-HQ ids. Raises NoFaceError without a face."""
        faces = self.detector.detect(image)
        meshes = []
        for detection in faces:
            try:
                meshes.append(self.mesh_predictor.predict(image, detection))
            except NoFaceError:  # a detection the mesh model rejects
                continue
        if not meshes:
            raise NoFaceError("no face found")
        return self.parser.segment_faces(image, meshes)

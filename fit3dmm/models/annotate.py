"""Part annotation of a face model by voting on labelled photos (a data-driven form of the paper's
Algorithm 1, which labels vertices by segmenting rendered views).

Each photo is fitted with landmarks only (no part term, so the annotation does not depend on itself);
every visible vertex then votes for the human label under its projection. A vertex takes the part that
won most of its votes, if it was seen often enough and a part (not background or hair) won.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config import FitConfig
from ..datasets import fix_left_right, read_mask
from ..errors import Fit3dmmError
from ..files import read_image
from ..metrics import mean_part_iou
from ..pipeline import Pipeline
from .facemodel import PART_CELEBA_IDS, PART_NAMES, FaceModel, ModelData, skin_subset, with_parts

OTHER = len(PART_NAMES)  # vote slot for any non-part label (background, hair, ears, neck, ...)
MIN_VOTES = 5


def landmark_only_config(base: FitConfig) -> FitConfig:
    """The base config without its last (all-losses) stage: rigid, then shape, on landmarks."""
    return base.with_(loss="none", stages=base.stages[:-1])


@dataclass
class Annotation:
    parts: np.ndarray  # (V,) part index or -1
    skin_subset: np.ndarray  # (S,)
    votes: np.ndarray  # (V, len(PART_NAMES) + 1)
    photos_used: int
    failures: list[tuple[str, str]] = field(default_factory=list)


def label_to_slot(labels: np.ndarray) -> np.ndarray:
    lut = np.full(256, OTHER, dtype=np.int64)
    lut[list(PART_CELEBA_IDS)] = np.arange(len(PART_NAMES))
    return lut[labels]


def parts_from_votes(votes: np.ndarray, min_votes: int = MIN_VOTES) -> np.ndarray:
    winner = votes.argmax(1)
    parts = np.where((votes.sum(1) >= min_votes) & (winner != OTHER), winner, -1)
    return parts.astype(np.int64)


def annotate(
    model: FaceModel,
    pairs: list,
    config: FitConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    min_votes: int = MIN_VOTES,
) -> Annotation:
    """Vote parts over (image path, mask path) pairs with landmark-only fits; photos that fail (no face)
    are skipped and listed in ``failures``."""
    config = landmark_only_config(config or FitConfig())
    # Vote on the model without any earlier annotation, which would restrict the fit's rendering (and so
    # visibility) to the parts already labelled.
    unlabelled = with_parts(model.data, -np.ones(model.n_vertices, dtype=np.int64), np.zeros(0, dtype=np.int64))
    pipeline = Pipeline(config, FaceModel(unlabelled).to(model.mean.device))
    votes = np.zeros((model.n_vertices, OTHER + 1), dtype=np.int64)
    failures, used = [], 0
    for i, (image_path, mask_path) in enumerate(pairs):
        try:
            image = read_image(image_path)
            mask = fix_left_right(read_mask(mask_path))
            out = pipeline.fit(image)
        except Fit3dmmError as e:  # one bad photo must not stop the vote
            failures.append((str(image_path), str(e)))
            continue
        frame, crop = out.result.frame, out.target.crop
        visible = frame.visible.cpu().numpy()
        xy = crop.to_photo(frame.screen[:, :2].cpu().numpy()).round().astype(np.int64)
        h, w = mask.shape
        inside = visible & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        ids = np.nonzero(inside)[0]
        slots = label_to_slot(mask[xy[ids, 1], xy[ids, 0]])
        np.add.at(votes, (ids, slots), 1)
        used += 1
        if progress is not None:
            progress(i + 1, len(pairs), str(image_path))
    parts = parts_from_votes(votes, min_votes)
    return Annotation(parts, skin_subset(model.data.mean, parts), votes, used, failures)


def apply_annotation(data: ModelData, annotation: Annotation, source: str) -> ModelData:
    out = with_parts(data, annotation.parts, annotation.skin_subset)
    out.meta = {**data.meta, "parts_source": source}
    return out


def score_annotation(
    model: FaceModel, pairs: list, config: FitConfig | None = None, progress: Callable[[int, int, str], None] | None = None
) -> dict[str, float]:
    """Mean part IoU (per part, and 'mean' over the seven parts) between landmark-only fits rendered with
    the model's annotation and the human masks; photos that fail are skipped."""
    return mean_part_iou(Pipeline(landmark_only_config(config or FitConfig()), model), pairs, progress)

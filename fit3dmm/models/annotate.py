"""Part annotation of a face model by voting on labelled photos (a data-driven form of the paper's
Algorithm 1, which labels vertices by segmenting rendered views).

Each photo is fitted with landmarks only (no part term, so the annotation does not depend on itself);
every visible vertex then votes for the human label under its projection. A vertex takes the part that
won most of its votes, if it was seen often enough and a part (not background or hair) won.

The annotated model is then fitted to the same photos with the full fit (PRDL and all), once
(:func:`full_fit_pass`): the human labels under these fits vote again (the iterated vote Algorithm 1
allows), and each labelled vertex takes the part that wins there (:func:`revote`); the photos' colours
under the same fits are averaged into the model's mean texture (the fixed colour ``eval --protocol
paper`` renders).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..config import FitConfig
from ..datasets import fix_left_right, read_mask
from ..errors import Fit3dmmError, InputError
from ..files import read_image
from ..metrics import mean_part_iou
from ..pipeline import Pipeline
from ..target import FACE_SURFACE_IDS
from ..losses.landmark import march_contour, outward_directions
from .contour import contour_line
from .eyes import painted_eyeballs
from .facemodel import PART_CELEBA_IDS, PART_NAMES, FaceModel, ModelData, face_region, skin_subset, with_parts

OTHER = len(PART_NAMES)  # vote slot for any non-part label (background, hair, ears, neck, ...)
MIN_VOTES = 5


def landmark_only_config(base: FitConfig) -> FitConfig:
    """The base config without its last (all-losses) stage: rigid, then shape, on landmarks; the
    annotated parts rendered as they are (no per-fit bands: the annotation is what is checked)."""
    return base.with_(loss="none", stages=base.stages[:-1], part_bands=False)


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


#: A part's connected pieces on the mesh smaller than this fraction of its largest piece take their
#: neighbours' part (as the target's stray blobs are dropped, target.MIN_BLOB_FRACTION).
MIN_PIECE_FRACTION = 0.1


def clean_parts(data: ModelData, parts: np.ndarray) -> np.ndarray:
    """Voted parts made consistent with the mesh: with lid margins (separate eyeballs, whose opening is
    the eye), each eyeball is its side's eye and the face surface is never eye; then each part's
    stray pieces (smaller than MIN_PIECE_FRACTION of its largest piece) take the part most common
    around them. Returns a new (V,) array."""
    parts = parts.copy()
    eye_ids = [PART_NAMES.index("left_eye"), PART_NAMES.index("right_eye")]
    if data.lid_margins is not None and "eyeballs" in data.meta.get("regions", {}):
        lo, hi = data.meta["regions"]["eyeballs"]
        parts[np.isin(parts, eye_ids)] = PART_NAMES.index("skin")
        parts[lo:hi] = np.where(data.mean[lo:hi, 0] > 0, eye_ids[0], eye_ids[1])  # x: the subject's left
    edges = np.concatenate([data.triangles[:, [0, 1]], data.triangles[:, [1, 2]], data.triangles[:, [2, 0]]])
    v = data.n_vertices
    for part in range(len(PART_NAMES)):
        members = parts == part
        inside = edges[members[edges[:, 0]] & members[edges[:, 1]]]
        graph = coo_matrix((np.ones(len(inside)), (inside[:, 0], inside[:, 1])), shape=(v, v))
        _, piece = connected_components(graph, directed=False)
        sizes = np.bincount(piece[members], minlength=piece.max() + 1)
        for p in np.nonzero((sizes > 0) & (sizes < MIN_PIECE_FRACTION * sizes.max()))[0]:
            stray = members & (piece == p)
            around = edges[stray[edges[:, 0]] & ~stray[edges[:, 1]], 1]
            labels = parts[around]
            labels = labels[(labels >= 0) & (labels != part)]
            parts[stray] = np.bincount(labels).argmax() if len(labels) else -1
    return parts


def annotate(
    model: FaceModel,
    pairs: list,
    config: FitConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    min_votes: int = MIN_VOTES,
) -> Annotation:
    """Vote parts over (image path, mask path) pairs with landmark-only fits; photos that fail (no face)
    are skipped and listed in ``failures``. Raises InputError when too few photos leave any vertex voted."""
    config = landmark_only_config(config or FitConfig())
    # Vote on the model without any earlier annotation, which would restrict the fit's rendering (and so
    # visibility) to the parts already labelled.
    unlabelled = with_parts(model.data, -np.ones(model.n_vertices, dtype=np.int64), np.zeros(0, dtype=np.int64))
    pipeline = Pipeline(config, FaceModel(unlabelled).to(model.mean.device))
    votes = np.zeros((model.n_vertices, OTHER + 1), dtype=np.int64)
    failures, used = [], 0
    for i, (image_path, mask_path) in enumerate(pairs):
        try:
            mask = fix_left_right(read_mask(mask_path))
            out = pipeline.fit(read_image(image_path))
        except Fit3dmmError as e:  # one bad photo must not stop the vote
            failures.append((str(image_path), str(e)))
            continue
        add_votes(votes, out, mask)
        used += 1
        if progress is not None:
            progress(i + 1, len(pairs), str(image_path))
    voted = parts_from_votes(votes, min_votes)
    if not (voted >= 0).any():
        raise InputError(f"the vote on {used} photos labelled no vertex (a vertex needs {min_votes} votes); give more photos")
    parts = clean_parts(model.data, voted)
    return Annotation(parts, skin_subset(model.data.mean, parts), votes, used, failures)


def seen_vertices(out, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (n, 2) photo pixels) of a fit's visible vertices that project inside a photo of ``shape``."""
    res = out.result
    xy = out.target.crop.to_photo(res.screen[:, :2].cpu().numpy()).round().astype(np.int64)
    h, w = shape
    inside = res.visible.cpu().numpy() & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    ids = np.nonzero(inside)[0]
    return ids, xy[ids]


def add_votes(votes: np.ndarray, out, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add one fit's votes to ``votes`` (V, len(PART_NAMES) + 1): each visible vertex inside the photo votes
    for the human label under it. Returns those vertices' (ids, (n, 2) photo pixels, labels)."""
    ids, xy = seen_vertices(out, mask.shape)
    labels = mask[xy[:, 1], xy[:, 0]]
    np.add.at(votes, (ids, label_to_slot(labels)), 1)
    return ids, xy, labels


def full_fit_pass(
    model: FaceModel,
    pairs: list,
    config: FitConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(mean texture (V, 3) in [0, 1], votes (V, len(PART_NAMES) + 1), failures) of an annotated model:
    each photo fitted with the full fit (``config``, default the default fit); each visible vertex votes
    for the human label under it, and the photo's colour there is averaged over the photos whose human
    mask shows the head's surface (not hair, glasses, hat or background), then :func:`mean_texture`.
    Full fits rather than the vote's landmark-only ones, because they place the parts on the photo's
    (README, "Comparing losses", paper protocol: a sharper average, +1.7 points of that protocol on tuning
    photos). Photos that fail are skipped and listed. The fits ignore the model's current texture (their
    albedo starts uniform), so the result does not depend on it."""
    untextured = FaceModel(replace(model.data, mean_texture=None)).to(model.mean.device)
    pipeline = Pipeline(config or FitConfig(), untextured)
    colour_sum, count = np.zeros((model.n_vertices, 3)), np.zeros(model.n_vertices)
    votes = np.zeros((model.n_vertices, OTHER + 1), dtype=np.int64)
    failures = []
    for start in range(0, len(pairs), batch_size):
        ready = []
        for image_path, mask_path in pairs[start : start + batch_size]:
            try:
                image = read_image(image_path)
                ready.append((image, fix_left_right(read_mask(mask_path)), pipeline.prepare(image)))
            except Fit3dmmError as e:
                failures.append((str(image_path), str(e)))
        outs = pipeline.fit_batch([p for _, _, p in ready]) if ready else []
        for (image, mask, _), out in zip(ready, outs):
            ids, xy, labels = add_votes(votes, out, mask)
            keep = np.isin(labels, FACE_SURFACE_IDS)
            np.add.at(colour_sum, ids[keep], image[xy[keep, 1], xy[keep, 0]] / 255.0)
            np.add.at(count, ids[keep], 1)
        done = min(start + batch_size, len(pairs))
        if progress is not None:
            progress(done, len(pairs), str(pairs[done - 1][0]))
    return mean_texture(model.data, model.data.parts, colour_sum, count), votes, failures


def revote(data: ModelData, votes: np.ndarray, min_votes: int = MIN_VOTES) -> ModelData:
    """The model with its parts after a second vote (:func:`full_fit_pass`'s ``votes``): each labelled
    vertex with at least ``min_votes`` votes for parts takes the part most of them name (votes for hair or
    background, which hide a part as often as they replace it, do not count); the others, and the
    annotation's extent, stay. Then :func:`clean_parts`, and the skin subset is chosen again. On
    CelebAMask-HQ's 703 train photos with the ICT model this moved 33 vertices (18 of the nose's edge to
    the skin, a few at the brows' and lips' edges) and raised Part IoU (README, "Part annotation")."""
    part_votes = votes[:, :OTHER]
    moved = (data.parts >= 0) & (part_votes.sum(1) >= min_votes)
    parts = clean_parts(data, np.where(moved, part_votes.argmax(1), data.parts))
    return with_parts(data, parts, skin_subset(data.mean, parts))


#: The landmark vote (:func:`vote_landmarks`): a point's candidates lie within this many eye-corner distances
#: of its current vertex, and it moves only when its median distance drops by more than LANDMARK_MIN_GAIN.
LANDMARK_RADIUS = 0.11
LANDMARK_MIN_GAIN = 0.005


@dataclass
class LandmarkVote:
    landmarks68: np.ndarray  # (68,) the voted vertex ids
    before: np.ndarray  # (68,) median distance of the previous vertices to the detected points (eye-corner distances)
    after: np.ndarray  # (68,) the same for the voted vertices
    photos_used: int
    failures: list[tuple[str, str]] = field(default_factory=list)


def vote_landmarks(
    model: FaceModel,
    images: list,
    config: FitConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    batch_size: int = 16,
) -> LandmarkVote:
    """Vote the model's 68 landmark vertices on photos (paths; the vote's step after the parts): each photo
    is fitted with the full fit whose last stage has no landmark term (PRDL and the photometric term place
    the face, so the vertices do not pull themselves onto the points), and each point takes the candidate
    vertex (outside the eye parts: an eyeball turns with the gaze, not the lids) whose projection lies
    nearest the detected point in the median over the photos. A jaw point is judged where it marches to
    (:func:`fit3dmm.losses.landmark.march_contour` along the contour line through the candidate), so the vote
    chooses the height of its line. Only photos whose 68 points are dlib's in full
    (:class:`fit3dmm.perception.ibug68.Ibug68Refiner` trust 1: iBUG 300-W's convention, which the points
    follow) vote. Photos that fail are skipped and listed."""
    base = (config or FitConfig()).with_(landmarks="dlib")
    last = base.stages[-1]
    stages = (*base.stages[:-1], replace(last, losses=tuple(x for x in last.losses if x[0] != "landmark")))
    pipeline = Pipeline(base.with_(stages=stages), model)
    data = model.data
    mean, current = data.mean, data.landmarks68
    eye_distance = float(np.linalg.norm(mean[current[36]] - mean[current[45]]))
    eyes = np.isin(data.parts, [PART_NAMES.index("left_eye"), PART_NAMES.index("right_eye")])
    region = face_region(data)
    candidates = [np.flatnonzero((np.linalg.norm(mean - mean[current[k]], axis=1) < LANDMARK_RADIUS * eye_distance)
                                 & (~eyes | (np.arange(len(mean)) == current[k])) & (region | (k >= 17)))
                  for k in range(68)]
    fits, failures = [], []  # per voting photo: (its points, scale, xy (V, 2), rotation, visible)
    for start in range(0, len(images), batch_size):
        ready = []
        for path in images[start : start + batch_size]:
            try:
                prepared = pipeline.prepare(read_image(path))
            except Fit3dmmError as e:
                failures.append((str(path), str(e)))
                continue
            if pipeline.refiner.trust == 1.0:
                ready.append(prepared)
        for prepared, out in zip(ready, pipeline.fit_batch(ready) if ready else []):
            points = prepared.target.landmarks68.cpu()
            fits.append((points, (points[36] - points[45]).norm(), out.result.screen[:, :2].cpu(),
                         out.result.rotation.cpu(), out.result.visible.cpu()))
        done = min(start + batch_size, len(images))
        if progress is not None:
            progress(done, len(images), str(images[done - 1]))
    if not fits:
        raise InputError("no photo's landmarks were dlib's in full; the landmark vote needs near-frontal photos")

    def median_distances(k: int, placed) -> np.ndarray:
        """(candidates,) median over the photos of the distance from point k to where each candidate puts it
        (``placed(xy, rotation, visible)`` -> (candidates, 2))."""
        per_photo = [((placed(xy, rot, vis) - points[k]).norm(dim=-1) / scale).numpy()
                     for points, scale, xy, rot, vis in fits]
        return np.median(np.stack(per_photo), axis=0)

    def vote(k: int, median: np.ndarray) -> None:
        ids = candidates[k]
        own, best = int(np.flatnonzero(ids == current[k])[0]), int(np.argmin(median))
        if median[own] - median[best] > LANDMARK_MIN_GAIN:
            voted[k] = ids[best]
        before[k], after[k] = median[own], median[int(np.flatnonzero(ids == voted[k])[0])]

    voted = current.copy()
    before, after = np.full(68, np.nan), np.full(68, np.nan)
    for k in range(17, 68):
        vote(k, median_distances(k, lambda xy, rot, vis, ids=torch.from_numpy(candidates[k]): xy[ids]))
    # The jaw's lines are drawn as the model will draw them: from the voted nose and eye corners.
    mean_t, voted_t = torch.from_numpy(mean).float(), torch.from_numpy(voted)
    for k in range(17):
        ids = candidates[k]
        lines = torch.from_numpy(np.stack([contour_line(mean, voted, region, int(c)) for c in ids]))
        outward = outward_directions(mean_t, voted_t, torch.from_numpy(ids))

        def marched(xy, rot, vis, lines=lines, outward=outward):
            pick = march_contour(xy[None], lines.clamp(min=0), lines >= 0, outward, rot[None], vis[None])
            return xy[pick[0]]

        vote(k, median_distances(k, marched))
    return LandmarkVote(voted, before, after, len(fits), failures)


def mean_texture(data: ModelData, parts: np.ndarray, colour_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(V, 3) mean colour per vertex; vertices never seen take the mean of their seen neighbours, spread
    over the mesh until all have one (or the overall mean where nothing connects). With lid margins
    (separate eyeballs: each eye part is an eyeball), the eyeballs are painted as a generic eye
    (:func:`.eyes.painted_eyeballs`)."""
    seen = count > 0
    colour = np.where(seen[:, None], colour_sum / np.maximum(count, 1)[:, None], 0.0)
    edges = np.concatenate([data.triangles[:, [0, 1]], data.triangles[:, [1, 2]], data.triangles[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    while not seen.all():
        reach = edges[seen[edges[:, 0]] & ~seen[edges[:, 1]]]
        if not len(reach):
            colour[~seen] = colour[seen].mean(0) if seen.any() else 0.5
            break
        total, n = np.zeros_like(colour), np.zeros(len(colour))
        np.add.at(total, reach[:, 1], colour[reach[:, 0]])
        np.add.at(n, reach[:, 1], 1)
        grown = n > 0
        colour[grown] = total[grown] / n[grown, None]
        seen = seen | grown
    if data.lid_margins is not None:
        eyeballs = [np.flatnonzero(parts == PART_NAMES.index(eye)) for eye in ("left_eye", "right_eye")]
        colour = painted_eyeballs(data.mean, [ids for ids in eyeballs if len(ids)], colour)
    return colour.astype(np.float32)


def apply_annotation(data: ModelData, annotation: Annotation, source: str) -> ModelData:
    """The model with the annotation's parts (its mean texture, from the previous parts, is dropped: paint
    a new one with :func:`full_fit_pass`)."""
    out = with_parts(data, annotation.parts, annotation.skin_subset)
    out.mean_texture = None
    out.meta = {**data.meta, "parts_source": source}
    return out


def score_annotation(
    model: FaceModel, pairs: list, config: FitConfig | None = None, progress: Callable[[int, int, str], None] | None = None
) -> dict[str, float]:
    """Mean part IoU (per part, and 'mean' over the seven parts) between landmark-only fits rendered with
    the model's annotation and the human masks; photos that fail are skipped."""
    return mean_part_iou(Pipeline(landmark_only_config(config or FitConfig()), model), pairs, progress)

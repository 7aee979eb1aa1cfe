"""What the part-guided losses share: per part, the target mask's pixels and the model's part vertices,
and which projected vertices count in an iteration (the paper's preprocessing).

The predicted set of a part is the 2D projection of its visible model vertices, minus those on hair or
other occluders, minus (skin) those above the brow line; the target set is the part mask's pixels
(skin reduced by farthest point sampling). PRDL, chamfer, DCD and both ICPs compare these sets.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from scipy.spatial import cKDTree
from torch import Tensor

from ..models.facemodel import PART_NAMES, SKIN_POINTS
from ..render import point_visibility
from ..sampling import farthest_point_sampling_batch
from .base import Frame, Loss, gather_vertices

#: Default per-part weights: 1, but 0.2 for the skin and 0.25 for the brows. The paper weighs parts equally;
#: with PRDL the large skin set's term then outweighs the small parts' (the Part IoU benchmark scores those):
#: skin 0.2 gave PRDL 70.3% against 68.7%, chamfer 71.9% against 71.4%, DCD 72.1% against 72.2% (tuning
#: photos). A brow is a fixed band of the mesh that cannot match thin or thick brows, so at any fit its
#: term stays large (half of PRDL's value) and bends the other parts toward a compromise: brows at 0.25
#: gave, on 134 tuning photos, paired, PRDL +0.51 points [+0.30, +0.70], chamfer +0.43 [+0.09, +0.89],
#: DCD +0.21 [-0.07, +0.59] (README, "Comparing losses").
PART_WEIGHTS = {"skin": 0.2, "left_eyebrow": 0.25, "right_eyebrow": 0.25}
#: Blended points (the eye openings) lie on the chord between the lid margins, which the eyeball bulges
#: through: on the ICT model, frontal, up to 0.25% of the depth (2 mm) behind the visible eyeball. They are
#: tested with 10x the vertices' depth tolerance (about 5 mm); the nose, which hides the far eye at large
#: yaw, stands centimetres in front.
BLEND_DEPTH_FACTOR = 10.0


def _mask_pixels(mask: Tensor, max_points: int | None) -> Tensor:
    """(N, 2) float pixel coordinates (x, y) of a mask; with ``max_points``, only a strided sub-grid of
    about 4x max_points of a larger mask (mask pixels are uniformly dense, so this bounds FPS's cost; FPS
    then evens out what the stride leaves)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    pts = torch.stack([xs, ys], 1).float()
    if max_points is None or len(pts) <= max_points:
        return pts
    stride = int((len(pts) / (4 * max_points)) ** 0.5)
    if stride > 1:
        keep = (xs % stride == 0) & (ys % stride == 0)
        pts = pts[keep]
    return pts


def mask_points(masks: list[Tensor], max_points: int | None = None) -> list[Tensor]:
    """Per mask (S, S) bool, the (N, 2) float pixel coordinates (x, y) of its pixels, reduced by farthest
    point sampling to ``max_points`` if given (all masks' samplings in one batched pass)."""
    pts = [_mask_pixels(m, max_points) for m in masks]
    big = [i for i, p in enumerate(pts) if max_points is not None and len(p) > max_points]
    if big:
        lengths = torch.tensor([len(pts[i]) for i in big], device=pts[big[0]].device)
        padded = torch.nn.utils.rnn.pad_sequence([pts[i] for i in big], batch_first=True)
        picks = farthest_point_sampling_batch(padded, lengths, max_points)
        for row, i in enumerate(big):
            pts[i] = pts[i][picks[row]]
    return pts


def nearest(a: Tensor, b: Tensor, tree: cKDTree | None = None) -> tuple[Tensor, Tensor]:
    """For each point of a (N, 2): the squared distance to its nearest point of b (M, 2), with autograd
    to both, and that point's index. The search runs without autograd; only the N chosen distances are
    recomputed with it, so the backward pass costs O(N), not O(N·M). ``tree``: b's k-d tree, if built
    already (a fixed target's is built once per image)."""
    # A k-d tree on the CPU (whatever the device): for 3000 x 3000 skin points it takes 2 ms here, against
    # 34 ms for cdist + argmin; the points are few, so the copy costs little on a GPU.
    tree = tree or cKDTree(b.detach().cpu().numpy())
    idx = tree.query(a.detach().cpu().numpy())[1]
    idx = torch.as_tensor(idx, dtype=torch.long, device=a.device)
    return ((a - b[idx]) ** 2).sum(1), idx


class PartSetLoss(Loss):
    """Base of the losses that compare, per part, the predicted and target 2D point sets of each photo of
    a batch (the shared set-up; PRDL evaluates all parts and photos at once, :class:`PairwiseSetLoss` part
    by part).

    ``part_weights``: part name -> weight (default :data:`PART_WEIGHTS`; unnamed parts 1). After
    construction: ``part_names`` (the P parts with model points), ``target_points`` (per photo, one
    (M_p, 2) tensor per part, empty where the photo's mask of the part is), ``weights`` (B, P): the part
    weights, 0 where a photo's target part is empty (the part is left out of that photo's loss); and the
    predicted points as blends of vertices (``FaceModel.part_points``: a part's vertices, or for the eyes
    of a model with lid margins the opening between the lids), one contiguous segment per part, the same
    for every photo: ``sources`` (N, 4) vertex ids and ``blend`` (N, 4) weights, ``ids`` (N,) each
    point's first vertex (the point itself unless blended), ``blended`` (N,) bool, ``blend_triangles``
    (T, 3) over the N points where blended points stand for an area (else None), ``segment`` (N,) each
    point's part index, ``bounds`` the segments' start offsets (P+1 ints).
    """

    needs_raster = True
    needs_parts = True

    def __init__(self, model, target, part_weights: dict[str, float] | None = None):
        part_weights = PART_WEIGHTS if part_weights is None else part_weights
        super().__init__(model, target)
        device = target.image.device
        names, sources, blends, triangles = [], [], [], []
        n = 0
        for name in PART_NAMES:
            ids, blend, tris = model.part_points(name)
            if len(ids) == 0:
                continue
            names.append(name)
            sources.append(ids)
            blends.append(blend)
            triangles.append(None if tris is None else tris + n)
            n += len(ids)
        self.part_names = names
        per_part = [mask_points([t.part_masks[name] for t in target.targets], SKIN_POINTS if name == "skin" else None)
                    for name in names]
        self.target_points = [[part[b] for part in per_part] for b in range(len(target))]
        present = torch.tensor([[len(p) > 0 for p in photo] for photo in self.target_points], device=device)
        base = torch.tensor([part_weights.get(name, 1.0) for name in names], device=device)
        self.weights = base * present.reshape(len(target), len(names))
        empty = torch.zeros(0, dtype=torch.long, device=device)
        self.sources = torch.cat(sources) if sources else empty.reshape(0, 4)
        self.blend = torch.cat(blends) if blends else torch.zeros(0, 4, device=device)
        self.ids = self.sources[:, 0]
        self.blended = torch.cat([torch.full((len(i),), t is not None, device=device) for i, t in zip(sources, triangles)]) \
            if sources else empty.bool()
        self.blended_index = torch.nonzero(self.blended).squeeze(1)  # once, not a mask per iteration (a host sync)
        blend_tris = [t for t in triangles if t is not None]
        self.blend_triangles = torch.cat(blend_tris) if blend_tris else None
        self.segment = torch.cat([torch.full((len(i),), k, device=device) for k, i in enumerate(sources)]) if sources else empty
        self.bounds = [0, *torch.tensor([len(i) for i in sources], dtype=torch.long).cumsum(0).tolist()]
        self.is_skin = self.segment == (names.index("skin") if "skin" in names else -1)

    def points(self, frame: Frame) -> Tensor:
        """(B, N, 3) the predicted points in screen space (crop pixels and depth), with autograd."""
        if self.blend_triangles is None:
            return gather_vertices(frame.screen, self.ids)
        return (gather_vertices(frame.screen, self.sources) * self.blend[..., None]).sum(2)

    def kept(self, frame: Frame, points: Tensor) -> Tensor:
        """(B, N) bool: visible, not on hair/occluders, and (skin) not above the brow line. A vertex's
        visibility is the frame's; a blended point's is tested against the z-buffer."""
        xy = points[..., :2].detach()
        visible = frame.visible.index_select(1, self.ids)
        if self.blend_triangles is not None:
            blended = points.detach().index_select(1, self.blended_index)
            seen = point_visibility(blended, frame.frags, BLEND_DEPTH_FACTOR * frame.depth_tol)
            visible = visible.index_copy(1, self.blended_index, seen)
        keep = visible & ~self.target.pixel_lookup(self.target.occluded, xy)
        return keep & ~(self.is_skin & self.target.above_brows(xy))

    def predicted_sets(self, frame: Frame) -> list[list[tuple[int, Tensor]]]:
        """Per photo: (part index, (N_p, 2) kept projected points) for each part with at least one kept
        point and a target. A part hidden in the fit (e.g. lids closed) has no points and no gradient to
        give. Sizes vary, so this reads the masks on the host (the pairwise baselines' cost, not PRDL's)."""
        points = self.points(frame)
        keep = self.kept(frame, points).cpu()
        xy = points[..., :2]
        out = []
        for b, targets in enumerate(self.target_points):
            sets = []
            for k in range(len(self.part_names)):
                lo, hi = self.bounds[k], self.bounds[k + 1]
                mask = keep[b, lo:hi]
                if len(targets[k]) and mask.any():
                    sets.append((k, xy[b, lo:hi][mask.to(xy.device)]))
            out.append(sets)
        return out


class PairwiseSetLoss(PartSetLoss):
    """A part-set loss defined by point-to-point nearest neighbours, summed over parts with their weights
    (chamfer, DCD, both ICPs). The target sets' k-d trees are built once, here. The nearest-neighbour
    searches run per photo and part on the CPU (k-d trees), so these baselines loop over the batch."""

    def __init__(self, model, target, part_weights: dict[str, float] | None = None):
        super().__init__(model, target, part_weights)
        self.target_trees = [[cKDTree(p.cpu().numpy()) if len(p) else None for p in photo] for photo in self.target_points]

    @abstractmethod
    def part_term(self, pred: Tensor, target: Tensor, target_tree: cKDTree | None = None) -> Tensor:
        """The loss of one part: predicted (N, 2) against target (M, 2) points (with its k-d tree)."""

    def __call__(self, frame: Frame) -> Tensor:
        totals = []
        for b, sets in enumerate(self.predicted_sets(frame)):
            total = frame.screen.new_zeros(())
            for k, pred in sets:
                total = total + self.weights[b, k] * self.part_term(pred, self.target_points[b][k], self.target_trees[b][k])
            totals.append(total)
        return torch.stack(totals)

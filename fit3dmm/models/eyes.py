"""The eye as the opening between the lids, for models with separate eyeballs (ICT-FaceKit).

In a photo the eye part is the eyeball seen between the lids. With eyeball vertices as the eye's point
set, the set changes only through visibility when the lids move, which has no gradient: no part loss
could open or close the lids. Here the eye's point set is the opening itself, spanned by the lid
margins: points at fixed blends of the upper and lower margin vertices, so blinks, squints and wide eyes
move them, with a gradient.

The margin is found from the mesh: the face surface has a hole at each eye, and its boundary lies on
the inner surface of the lids, hidden in the photo. The ring of vertices next to it is where the lid
turns inward, the visible rim: on the ICT model, frontal at 512 px, the polygon through that ring covers
the rendered visible eyeball with IoU 0.96 (eyes open), 0.90 (half closed), 0.96 (wide), 0.94 (squint);
the hole's own boundary only 0.68.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

#: Rows of ``lid_margins``: (eye, lid) in this order; left = the subject's.
MARGIN_ROWS = (("left_eye", "upper"), ("left_eye", "lower"), ("right_eye", "upper"), ("right_eye", "lower"))
#: The opening's grid: columns from corner to corner, rows from the upper to the lower margin.
GRID_COLUMNS, GRID_ROWS = 24, 7


def _boundary_loops(triangles: np.ndarray) -> list[list[int]]:
    """Closed loops of boundary edges (edges of one triangle only), each in walking order."""
    edges = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), axis=1)
    unique, count = np.unique(edges, axis=0, return_counts=True)
    nxt = defaultdict(list)
    for a, b in unique[count == 1]:
        nxt[a].append(b)
        nxt[b].append(a)
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            step = [n for n in nxt[cur] if n != prev and n not in seen]
            if not step:
                break
            prev, cur = cur, step[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def lid_margins(mean: np.ndarray, triangles: np.ndarray, face: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """(4, L) vertex ids of the visible lid margins (rows :data:`MARGIN_ROWS`), each from the eye's
    corner at smaller x to the one at larger x (model frame), both corners in both rows; padded with -1.

    ``face``: (V,) bool, the face surface (its triangles are searched for the eye holes);
    ``landmarks68`` place the eyes (iBUG 36-41: subject's right eye, 42-47: left)."""
    face_tris = triangles[face[triangles].all(1)]
    loops = _boundary_loops(face_tris)
    neighbours = defaultdict(set)
    for a, b, c in face_tris:
        neighbours[a] |= {b, c}
        neighbours[b] |= {a, c}
        neighbours[c] |= {a, b}
    eye_dist = np.linalg.norm(mean[landmarks68[36]] - mean[landmarks68[45]])
    rows = []
    for eye, lm in (("left_eye", landmarks68[42:48]), ("right_eye", landmarks68[36:42])):
        centre = mean[lm].mean(0)
        # The hole nearest the eye's landmarks, and not the face's outer border (much longer, far away).
        loop = min(loops, key=lambda lp: np.linalg.norm(mean[lp].mean(0) - centre))
        if np.linalg.norm(mean[loop].mean(0) - centre) > 0.25 * eye_dist:
            raise ValueError(f"no hole in the face surface at the {eye.replace('_', ' ')}")
        ring = sorted({n for v in loop for n in neighbours[v]} - set(loop))
        pts = mean[ring]
        # Order around the eye in the front plane, then split at the corners (smallest and largest x).
        order = np.argsort(np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0]))
        ring = np.asarray(ring)[order]
        pts = mean[ring]
        lo, hi = int(np.argmin(pts[:, 0])), int(np.argmax(pts[:, 0]))
        # Angles increase counter-clockwise (x right, y up): from the larger-x corner over the top to the smaller.
        upper = np.roll(ring, -hi)[: (lo - hi) % len(ring) + 1][::-1]
        lower = np.roll(ring, -lo)[: (hi - lo) % len(ring) + 1]
        rows += [upper, lower]
    width = max(len(r) for r in rows)
    out = -np.ones((4, width), np.int64)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out


def _arc_weights(mean: np.ndarray, arc: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points at arc-length fractions ``t`` along a vertex path, as (len(t), 2) vertex ids and weights."""
    seg = np.linalg.norm(np.diff(mean[arc], axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-12)
    k = np.clip(np.searchsorted(s, t, side="right") - 1, 0, len(arc) - 2)
    u = np.clip((t - s[k]) / np.maximum(s[k + 1] - s[k], 1e-12), 0, 1)
    return np.stack([arc[k], arc[k + 1]], 1), np.stack([1 - u, u], 1)


def opening_grid(mean: np.ndarray, upper: np.ndarray, lower: np.ndarray, columns: int = GRID_COLUMNS,
                 rows: int = GRID_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The opening between two margins as a grid of points at fixed blends of margin vertices.

    Columns at even arc-length fractions of each margin (corners excluded: there the lids meet), rows
    evenly from the upper (row 0) to the lower margin. Returns (N, 4) vertex ids and (N, 4) weights
    (a point is the weighted sum of its vertices), and (T, 3) triangles over the N points."""
    t = (np.arange(columns) + 0.5) / columns
    (iu, wu), (il, wl) = _arc_weights(mean, upper, t), _arc_weights(mean, lower, t)
    s = np.linspace(0.0, 1.0, rows)[:, None, None]  # (rows, 1, 1)
    ids = np.broadcast_to(np.concatenate([iu, il], 1), (rows, columns, 4)).reshape(-1, 4)
    weights = np.concatenate([(1 - s) * wu, s * wl], axis=2).reshape(-1, 4)
    return ids.astype(np.int64), weights.astype(np.float32), grid_triangles(rows, columns)


def grid_triangles(rows: int, columns: int) -> np.ndarray:
    """(T, 3) triangles over a rows x columns grid of points numbered row by row."""
    g = np.arange(rows * columns).reshape(rows, columns)
    a, b, c, d = g[:-1, :-1].ravel(), g[:-1, 1:].ravel(), g[1:, :-1].ravel(), g[1:, 1:].ravel()
    return np.concatenate([np.stack([a, b, c], 1), np.stack([b, d, c], 1)]).astype(np.int64)


#: A generic eye for the mean texture, by the angle from the eyeball's forward axis (model +z): the iris
#: (11.7 mm across on a 24 mm eyeball: 29 degrees), the pupil (13 degrees, about 5 mm), colours in [0, 1].
IRIS_DEGREES, PUPIL_DEGREES, EDGE_DEGREES = 29.0, 13.0, 2.0
SCLERA, IRIS, PUPIL = (0.78, 0.72, 0.70), (0.32, 0.24, 0.20), (0.06, 0.05, 0.05)


def painted_eyeballs(mean: np.ndarray, eyeballs: list[np.ndarray], texture: np.ndarray) -> np.ndarray:
    """A copy of a per-vertex texture (V, 3) with each eyeball (its vertex ids) painted as a generic eye
    looking forward. A mean of photos cannot show the iris: gazes differ and the fit does not follow
    them, so the average under an eyeball vertex is a grey blur, which a face parser does not take for an
    eye (``eval --protocol paper`` renders the mean texture and parses it)."""
    out = texture.copy()
    for ids in eyeballs:
        points = mean[ids]
        direction = points - (points.max(0) + points.min(0)) / 2
        direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
        angle = np.degrees(np.arccos(np.clip(direction[:, 2], -1.0, 1.0)))

        def inside(edge: float) -> np.ndarray:  # 1 within `edge` degrees, 0 beyond, a soft 2-degree rim
            return np.clip((edge - angle) / EDGE_DEGREES + 0.5, 0.0, 1.0)[:, None]

        colour = np.array(SCLERA) * (1 - inside(IRIS_DEGREES)) + np.array(IRIS) * inside(IRIS_DEGREES)
        out[ids] = colour * (1 - inside(PUPIL_DEGREES)) + np.array(PUPIL) * inside(PUPIL_DEGREES)
    return out.astype(texture.dtype)

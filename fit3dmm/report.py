"""Pictures: bar charts of Part IoU (matplotlib), the compare grid, and a model's annotated views."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .metrics import IOU_PARTS

CELL = 160  # grid cell side in pixels


def iou_chart(path: Path, series: dict[str, dict], title: str) -> None:
    """Grouped bars: mean Part IoU per part (and the mean), one bar per series (label -> part stats, as a
    summary's ``part_iou``), std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .outputs import write_atomic

    parts = (*IOU_PARTS, "mean")
    x = np.arange(len(parts))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(min(14, 5 + 0.16 * len(series) * len(parts)), 4.5))
    for k, (run, part_stats) in enumerate(series.items()):
        stats = [part_stats[p] for p in parts]
        means = [np.nan if s["mean"] is None else s["mean"] for s in stats]
        stds = [0 if s["std"] is None else s["std"] for s in stats]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=run)
    ax.set_xticks(x, [p.replace("_", " ") for p in parts])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Part IoU (mean ± std over photos)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, ncols=min(len(series), 8), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def face_box(labels: np.ndarray, margin: float = 0.15) -> tuple[int, int, int, int]:
    """Square (x0, y0, x1, y1) around the face parts of a label map (ids 1-12), widened by ``margin``."""
    ys, xs = np.nonzero((labels >= 1) & (labels <= 12))
    if len(xs) == 0:
        return 0, 0, labels.shape[1], labels.shape[0]
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    half = max(xs.max() - xs.min(), ys.max() - ys.min()) * (0.5 + margin)
    return int(cx - half), int(cy - half), int(cx + half), int(cy + half)


def _cell(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    crop = padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    return cv2.resize(crop, (CELL, CELL), interpolation=cv2.INTER_AREA)


def _header(text: str) -> np.ndarray:
    out = np.full((24, CELL, 3), 255, np.uint8)
    cv2.putText(out, text[:22], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def compare_grid(rows: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]) -> np.ndarray:
    """One row per photo: the photo, its human mask and each run's fitted parts, all coloured on the
    photo and cropped around the face. rows: (photo RGB, human labels, run -> fitted labels)."""
    from .outputs import colourize

    runs = list(rows[0][2])
    lines = [np.concatenate([_header("photo"), _header("human mask"), *(_header(r) for r in runs)], axis=1)]
    for photo, truth, fitted in rows:
        box = face_box(truth)
        cells = [_cell(photo, box), _cell(colourize(photo, truth), box)]
        cells += [_cell(colourize(photo, fitted[r]), box) for r in runs]
        lines.append(np.concatenate(cells, axis=1))
    return np.concatenate(lines, axis=0)


#: Views of `fit3dmm model show`: yaw in degrees (the subject turning to its left, front, right).
SHOW_YAWS = (-60.0, 0.0, 60.0)


def model_views(model, size: int = 360) -> np.ndarray:
    """The mean shape from three sides (:data:`SHOW_YAWS`), each pixel coloured by its part (grey where
    unlabelled, shaded by a light at the camera), visible 68 landmarks as red dots numbered every 5th,
    and a legend: the check-by-eye of a model's annotation. ``model`` is a FaceModel."""

    from .camera import Camera
    from .outputs import PART_COLOURS, camera_light, legend, part_label_map
    from .render import rasterize, vertex_normals, vertex_visibility

    camera = Camera.for_crop(size, 4.53)
    mean = model.mean
    lo, hi = mean.min(0).values, mean.max(0).values
    centre = (lo + hi) / 2
    depth = camera.depth_for_width(float((hi - lo)[:2].max()), 0.8 * size)
    palette = np.full((256, 3), 200, np.float32)  # unlabelled: grey
    for label, rgb in PART_COLOURS.items():
        palette[label] = rgb
    views, shown = [], np.zeros(1, np.uint8)
    for yaw in SHOW_YAWS:
        angles = mean.new_tensor([0.0, np.radians(yaw), 0.0])
        cam = camera.to_camera(mean - centre, angles, mean.new_tensor([0.0, 0.0, depth]))
        screen = camera.project(cam)[None]
        frags = rasterize(screen, model.triangles, size, size)
        normals = vertex_normals(cam[None], model.triangles)
        tri, bary = frags.tri_id[0].cpu().numpy(), frags.bary[0].cpu().numpy()
        covered = tri >= 0
        labels = part_label_map(model, tri, bary)
        light = camera_light(model, tri, bary, normals[0].cpu().numpy())
        image = np.full((size, size, 3), 255, np.uint8)
        image[covered] = (palette[labels[covered]] * (0.5 + 0.5 * light[:, None])).clip(0, 255).astype(np.uint8)
        visible = vertex_visibility(screen, model.triangles, frags, normals)[0].cpu().numpy()
        points = screen[0, model.landmarks68, :2].cpu().numpy()
        for k, (lm, (x, y)) in enumerate(zip(model.landmarks68.tolist(), points)):
            if visible[lm]:
                cv2.circle(image, (int(round(x)), int(round(y))), 2, (220, 0, 0), -1, cv2.LINE_AA)
                if k % 5 == 0:
                    cv2.putText(image, str(k + 1), (int(x) + 3, int(y) - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (120, 0, 0), 1)
        cv2.putText(image, f"yaw {yaw:+.0f}", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        views.append(image)
        shown = np.union1d(shown, labels)
    return np.concatenate([*views, legend(shown.reshape(1, -1), size)], axis=1)

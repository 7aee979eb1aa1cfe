"""Pictures of evaluation results: bar charts of Part IoU (matplotlib) and the compare grid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .metrics import IOU_PARTS

CELL = 160  # grid cell side in pixels


def iou_chart(path: Path, summaries: dict[str, dict], title: str) -> None:
    """Grouped bars: mean Part IoU per part (and the mean), one bar per run, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluation import write_atomic

    parts = (*IOU_PARTS, "mean")
    x = np.arange(len(parts))
    width = 0.8 / max(len(summaries), 1)
    fig, ax = plt.subplots(figsize=(min(14, 5 + 0.16 * len(summaries) * len(parts)), 4.5))
    for k, (run, summary) in enumerate(summaries.items()):
        stats = [summary["part_iou"][p] for p in parts]
        means = [np.nan if s["mean"] is None else s["mean"] for s in stats]
        stds = [0 if s["std"] is None else s["std"] for s in stats]
        ax.bar(x + (k - (len(summaries) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=run)
    ax.set_xticks(x, [p.replace("_", " ") for p in parts])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Part IoU (mean ± std over photos)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(summaries) > 1:
        ax.legend(fontsize=8, ncols=min(len(summaries), 8), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
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

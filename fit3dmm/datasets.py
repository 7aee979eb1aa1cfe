"""Reading evaluation data: CelebAMask-HQ style folders (``images/<stem>.jpg`` with ``masks/<stem>.png``
label maps) and 300-W ``.pts`` landmark files.

About 7% of CelebAMask-HQ masks swap the subject's left and right eyes/brows, so left/right are
decided here by image position: the subject's left appears on the image's right.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import IMAGE_SUFFIXES, check_file, open_image, reason

#: CelebAMask-HQ label ids -> names (l_ = the subject's left).
LABEL_NAMES = {
    0: "background", 1: "skin", 2: "nose", 3: "eyeglasses", 4: "l_eye", 5: "r_eye", 6: "l_brow", 7: "r_brow",
    8: "l_ear", 9: "r_ear", 10: "mouth", 11: "u_lip", 12: "l_lip", 13: "hair", 14: "hat", 15: "earring",
    16: "necklace", 17: "neck", 18: "cloth",
}
#: (subject's left id, subject's right id) pairs whose sides are decided by position.
SIDED_PAIRS = ((4, 5), (6, 7), (8, 9))


def fix_left_right(labels: np.ndarray) -> np.ndarray:
    """Relabel each sided pair so the part lying farther right in the image is the subject's left.

    With both parts present their centroids decide; with one, the face's (skin) centroid does.
    """
    out = labels.copy()
    skin_x = np.nonzero(labels == 1)[1]
    centre = skin_x.mean() if len(skin_x) else labels.shape[1] / 2
    for left, right in SIDED_PAIRS:
        xl, xr = np.nonzero(labels == left)[1], np.nonzero(labels == right)[1]
        if len(xl) and len(xr):
            swap = xl.mean() < xr.mean()
        elif len(xl) or len(xr):
            x = (xl if len(xl) else xr).mean()
            swap = (x > centre) != bool(len(xl))
        else:
            continue
        if swap:
            out[labels == left], out[labels == right] = right, left
    return out


def read_mask(path: str | Path) -> np.ndarray:
    """(H, W) uint8 label ids. Pillow, not OpenCV: CelebAMask-HQ masks are palette PNGs, whose indices
    are the labels, and OpenCV would expand them to the palette's colours."""
    with open_image(path) as im:
        if im.mode not in ("P", "L"):
            raise InputError(f"{path}: not a single-channel label image (mode {im.mode})")
        return np.asarray(im, dtype=np.uint8)


def image_mask_pairs(images: str | Path, masks: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem, sorted by stem; other files beside the images (e.g. a
    landmark .pts) are not images."""
    masks_by_stem = {p.stem: p for p in Path(masks).glob("*.png")}
    pairs = [(p, masks_by_stem[p.stem]) for p in sorted(Path(images).iterdir())
             if p.stem in masks_by_stem and p.suffix.lower() in IMAGE_SUFFIXES]
    if not pairs:
        raise InputError(f"no image in {images} has a mask of the same name in {masks}")
    return pairs


def split_of(stem: str) -> str:
    """Fixed split by a hash of the file stem: 'val' (20%) or 'train'. The learned parser never trains
    on 'val', and the model annotation votes on 'train' only, so 'val' scores stay honest."""
    return "val" if int(hashlib.md5(stem.encode()).hexdigest(), 16) % 5 == 0 else "train"


def split_pairs(pairs: list[tuple[Path, Path]], split: str) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of one split ('train' or 'val'), in order."""
    return [p for p in pairs if split_of(p[0].stem) == split]


def read_pts(path: str | Path) -> np.ndarray:
    """A 300-W ``.pts`` file -> (N, 2) float points, 0-based (the files are 1-based)."""
    try:
        text = check_file(Path(path)).read_text()
        body = text[text.index("{") + 1 : text.index("}")]
        points = np.array(body.split(), dtype=np.float64).reshape(-1, 2) - 1.0
    except (OSError, ValueError) as e:  # ValueError: no braces, odd count, not numbers, not UTF-8
        raise InputError(f"{path}: not a readable .pts file ({reason(e)})") from None
    if not np.isfinite(points).all():
        raise InputError(f"{path}: not a readable .pts file (non-finite coordinates)")
    return points

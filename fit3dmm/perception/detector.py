"""Face detection with MediaPipe's BlazeFace TFLite models.

The photo is letterboxed (resized to fit, padded, never stretched) to the model's square input; the
SSD anchor grid and box decoding follow each model's training configuration, and overlapping boxes are
merged with score-weighted non-max suppression. The short-range model runs first; only when it finds
nothing does the full-range model run: it finds smaller faces (Einstein's 84-pixel face in an 817x1024
photo, which short range misses) but places its boxes less precisely, so it is only the fallback.

Coordinates: decoding works in "continuous" input pixels (pixel i covers [i, i+1)); results are in the
project's convention where pixel centres sit on integer coordinates, i.e. continuous - 0.5.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fit3dmm.errors import InputError, ModelError

ASSETS = Path(__file__).resolve().parent / "assets"

# The models' six keypoints; right/left are the subject's.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear_tragion", "left_ear_tragion")
_NUM_KEYPOINTS = 6
_SCORE_CLIP = 100.0  # logits are clipped before the sigmoid, as MediaPipe does
_NMS_IOU = 0.3
# The full-range model fires more easily on texture: at 0.5 it found "faces" in 4 of 300 random-noise
# images, at 0.6 in none.
_FULL_RANGE_MIN_SCORE = 0.6


def make_interpreter(path: Path):
    """Load a TFLite model for the CPU.

    One thread: these models take 1-2 ms, and a second thread measured slower (thread hand-off costs
    more than it saves), on a 2-core machine. The runtime writes an INFO line to the process's stderr
    when it sets up its XNNPACK delegate; a library must not print, so that fd is muted meanwhile.
    """
    from ai_edge_litert.interpreter import Interpreter

    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    with _native_stderr_muted():
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
    return interpreter


@contextlib.contextmanager
def _native_stderr_muted():
    """Point file descriptor 2 at /dev/null for the duration (C++ logging bypasses sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to mute
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an HxWx3 uint8 RGB photo."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"expected an HxWx3 uint8 RGB image, got shape {shape} dtype {dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"image too small: {image.shape}")
    return image


def ssd_anchors(input_size: int, strides: tuple[int, ...], anchors_per_layer: int) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1] of the model input.

    BlazeFace uses fixed-size anchors (w = h = 1), so only the centres matter. Consecutive layers that
    share a stride are merged into one grid with their anchors stacked per cell (short range: 16x16x2 +
    8x8x6 = 896).
    """
    centres = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        repeats = 0
        while layer < len(strides) and strides[layer] == stride:
            repeats += anchors_per_layer
            layer += 1
        cells = input_size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, repeats, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou_threshold: float = _NMS_IOU):
    """Merge overlapping detections into their score-weighted mean.

    Averaging the cluster (instead of keeping only the best box) steadies the box and keypoints; the
    cluster keeps its best member's score. Returns a list of (box (4,), keypoints (K, 2), score).
    """
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.ones(len(scores), dtype=bool)
    merged = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        cluster = remaining & (_iou(boxes[i], boxes) > iou_threshold)
        cluster[i] = True
        remaining &= ~cluster
        w = scores[cluster] / scores[cluster].sum()
        merged.append(
            (
                (boxes[cluster] * w[:, None]).sum(0),
                (keypoints[cluster] * w[:, None, None]).sum(0),
                float(scores[i]),
            )
        )
    return merged


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in photo pixels
    score: float
    keypoints: np.ndarray  # (6, 2) float32 photo pixels, order of KEYPOINT_NAMES

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class _BlazeFace:
    """One BlazeFace SSD model: letterbox, run, decode, merge."""

    def __init__(self, filename: str, input_size: int, strides: tuple[int, ...], anchors_per_layer: int):
        self.input_size = input_size
        self._interpreter = make_interpreter(ASSETS / filename)
        inp = self._interpreter.get_input_details()[0]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: d["shape"][-1])
        self._anchors = ssd_anchors(input_size, strides, anchors_per_layer)
        n = len(self._anchors)
        shapes = [tuple(d["shape"]) for d in outputs]
        if tuple(inp["shape"]) != (1, input_size, input_size, 3) or shapes != [(1, n, 1), (1, n, 16)]:
            raise ModelError(f"{filename} does not have the expected inputs/outputs")
        self._input_index = inp["index"]
        self._scores_index, self._regressors_index = outputs[0]["index"], outputs[1]["index"]

    def _letterbox(self, image: np.ndarray):
        """Resize to fit the square input and pad around it.

        Returns the input tensor, scale and offset such that, in continuous coordinates,
        photo = (input - offset) * scale.
        """
        h, w = image.shape[:2]
        size = self.input_size
        scale = max(h, w) / size
        rw, rh = max(1, round(w / scale)), max(1, round(h / scale))
        # Resize before padding: the area filter avoids aliasing on big photos.
        small = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((size, size, 3), np.float32)
        ox, oy = (size - rw) // 2, (size - rh) // 2
        canvas[oy : oy + rh, ox : ox + rw] = small
        tensor = canvas * (2.0 / 255.0) - 1.0
        return tensor[None], np.array([w / rw, h / rh], np.float32), np.array([ox, oy], np.float32)

    def __call__(self, image: np.ndarray, min_score: float) -> list[Detection]:
        tensor, scale, offset = self._letterbox(image)
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._regressors_index)[0]
        logits = self._interpreter.get_tensor(self._scores_index)[0, :, 0].astype(np.float64)

        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -_SCORE_CLIP, _SCORE_CLIP)))
        keep = scores >= min_score
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep], scores[keep], self._anchors[keep] * self.input_size

        # Regressors are offsets in input pixels from the anchor centre: box (cx, cy, w, h), then keypoints.
        centre = anchors + raw[:, 0:2]
        half = raw[:, 2:4] / 2.0
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = anchors[:, None, :] + raw[:, 4 : 4 + 2 * _NUM_KEYPOINTS].reshape(-1, _NUM_KEYPOINTS, 2)

        detections = []
        for box, kp, score in weighted_nms(boxes, kps, scores):
            box_px = ((box.reshape(2, 2) - offset) * scale - 0.5).reshape(-1)
            kp_px = ((kp - offset) * scale - 0.5).astype(np.float32)
            detections.append(Detection(tuple(float(v) for v in box_px), score, kp_px))
        return detections


class FaceDetector:
    """Finds faces; the short-range model first, the full-range model only if that finds none."""

    def __init__(self, min_score: float = 0.5):
        self.min_score = float(min_score)
        self._short = _BlazeFace("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2)
        self._full: _BlazeFace | None = None  # loaded on first need

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: HxWx3 uint8 RGB. Returns detections sorted by box area, largest first."""
        check_image(image)
        detections = self._short(image, self.min_score)
        if not detections:
            if self._full is None:
                self._full = _BlazeFace("face_detection_full_range_sparse.tflite", 192, (4,), 1)
            detections = self._full(image, max(self.min_score, _FULL_RANGE_MIN_SCORE))
        detections.sort(key=lambda d: d.area, reverse=True)
        return detections

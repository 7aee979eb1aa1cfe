"""Running the face parser: photo + face mesh -> CelebAMask-HQ label map at the photo's size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..files import read_torch, reason
from ..perception.polygons import draw_polygons
from .align import AlignedCrop
from .network import CLASS_IDS, FLIP_CLASSES, PRIOR_FLIP, ParserNet, inference_network, network_input

#: The weights shipped with the package (see fit3dmm/data/README.md).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "parser.pt"
WEIGHTS_FORMAT = "fit3dmm-parser-2"
#: Single-network files written before ensembles (the network's fields at the top level); still read.
_FORMAT_1 = "fit3dmm-parser-1"
_IDS = np.array(CLASS_IDS, np.uint8)
#: Test-time zooms: each face is parsed in its aligned crop and in that crop magnified about its centre by
#: each further factor; the logits, mapped back onto the crop, are averaged. Chosen among zooms 1.12, 1.2,
#: (1.12, 1.25) and shifted 1.12 views on 100 validation photos (the tuning and headline ones among them);
#: on the 94 other validation photos, (1.0, 1.12) against (1.0,) raised the parser's mean part IoU by
#: +0.56 points (95% bootstrap interval +0.41 to +0.72; README, "Face parser").
ZOOMS = (1.0, 1.12)


def save_weights(nets: ParserNet | Sequence[ParserNet], size: int, path: str | os.PathLike, meta: dict) -> None:
    """Write the networks' weights (one, or an ensemble whose logits are averaged) and what is needed to
    rebuild them (atomically)."""
    path = Path(path)
    nets = [nets] if isinstance(nets, ParserNet) else list(nets)
    doc = {
        "format": WEIGHTS_FORMAT, "size": size, "class_ids": list(CLASS_IDS), "meta": meta,
        "members": [{"prior": n.prior, "widths": list(n.widths),
                     "state_dict": {k: v.detach().cpu() for k, v in n.state_dict().items()}} for n in nets],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(doc, tmp)
    os.replace(tmp, path)


def crops_for(image: np.ndarray, meshes: list[np.ndarray], size: int, prior: bool,
              crops: list[AlignedCrop] | None = None):
    """Aligned crops (B, S, S, 3), polygon priors (B, S, S) or None, and the crops' transforms (given, or
    aligned to the meshes)."""
    crops = crops or [AlignedCrop.from_mesh(m, size) for m in meshes]
    images = np.stack([c.warp(image) for c in crops])
    priors = np.stack([draw_polygons(c.to_crop(m[:, :2]), (size, size)) for c, m in zip(crops, meshes)]) if prior else None
    return images, priors, crops


def zoom_affine(zoom: float, size: int) -> np.ndarray:
    """(2, 3) map of crop pixels to the pixels of the same crop magnified ``zoom`` times about its centre."""
    c = (size - 1) / 2
    return np.array([[zoom, 0.0, c * (1 - zoom)], [0.0, zoom, c * (1 - zoom)]])


def unzoom_logits(logits: torch.Tensor, zoom: float) -> torch.Tensor:
    """Logits (B, C, h, w) of crops magnified ``zoom`` times (:func:`zoom_affine`) resampled onto the unmagnified
    crops, bilinearly; beyond what the magnified crop saw (its border, for zoom > 1) the edge logits repeat.
    In normalized coordinates the magnification is a plain scaling, whatever the logits' resolution."""
    theta = logits.new_tensor([[zoom, 0.0, 0.0], [0.0, zoom, 0.0]]).expand(len(logits), 2, 3)
    grid = F.affine_grid(theta, list(logits.shape), align_corners=False)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mirror_input(x: torch.Tensor) -> torch.Tensor:
    """The network input of the mirrored crops: flipped, with the left/right prior channels swapped.
    Averaging the logits of both views (test-time flip) raised the validation part IoU from 76.6% to 77.3%."""
    channels = torch.arange(x.shape[1], device=x.device)
    if x.shape[1] > 3:
        channels[3:] = 3 + torch.as_tensor(PRIOR_FLIP, device=x.device)
    return x.flip(-1)[:, channels]


def mirror_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits of mirrored crops mapped back onto the original crops (flipped, sided classes swapped)."""
    return logits.flip(-1)[:, torch.as_tensor(FLIP_CLASSES, device=logits.device)]


def _network(member: dict) -> ParserNet:
    """The network of one weights entry (``prior``, ``widths``, ``state_dict``)."""
    widths = tuple(int(w) for w in member["widths"])
    if not (2 <= len(widths) <= 8 and all(1 <= w <= 512 for w in widths)):  # bounds what the net allocates
        raise ValueError(f"layer widths {widths}")
    net = ParserNet(prior=bool(member["prior"]), widths=widths)
    net.load_state_dict(member["state_dict"])
    return net


class FaceParser:
    """The learned segmenter (``--segmenter parser``): an aligned crop per face, the networks (their logits
    averaged), and the labels mapped back to photo pixels. Faces are parsed in one batch."""

    name = "parser"

    def __init__(self, nets: ParserNet | Sequence[ParserNet], size: int, device: torch.device | str = "cpu",
                 meta: dict | None = None, mirror: bool = True, zooms: tuple[float, ...] = ZOOMS):
        self.mirror = mirror  # also parse the mirrored crop and average (see mirror_input)
        self.zooms = zooms  # the magnifications parsed and averaged (see ZOOMS)
        self.device = torch.device(device)
        self.size = size
        self.meta = meta or {}
        # An ensemble: every network sees the same views and their logits are averaged (README, "Face parser").
        self.nets = [n.to(self.device).eval() for n in ([nets] if isinstance(nets, ParserNet) else nets)]
        if not self.nets or len({n.prior for n in self.nets}) != 1:
            raise ValueError("a parser needs one or more networks that agree on the polygon prior")
        self.prior = self.nets[0].prior
        self._fast = [inference_network(n) for n in self.nets]

    @classmethod
    def load(cls, weights: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> "FaceParser":
        """The parser of a weights file (default: the shipped weights)."""
        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        doc = read_torch(path, what="parser weights")
        if not isinstance(doc, dict) or doc.get("format") not in (WEIGHTS_FORMAT, _FORMAT_1):
            raise ModelError(f"{path}: not {WEIGHTS_FORMAT} parser weights")
        try:
            if tuple(doc["class_ids"]) != CLASS_IDS:
                raise ValueError(f"classes {doc['class_ids']}, expected {CLASS_IDS}")
            members = [doc] if doc["format"] == _FORMAT_1 else list(doc["members"])
            if not 1 <= len(members) <= 8:
                raise ValueError(f"{len(members)} networks")
            nets = [_network(m) for m in members]
            size = int(doc["size"])
            if not 32 <= size <= 1024:
                raise ValueError(f"crop size {size}")
            return cls(nets, size, device, doc.get("meta"))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # RuntimeError: load_state_dict's mismatch
            raise ModelError(f"{path}: malformed parser weights ({reason(e)})") from None

    def segment(self, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
        """image (H, W, 3) uint8 RGB, mesh (468, 2|3) photo pixels -> (H, W) uint8 CelebAMask-HQ ids."""
        return self.segment_faces(image, [mesh])

    def seen(self, shape: tuple[int, int], mesh: np.ndarray) -> np.ndarray:
        """(H, W) bool: the photo pixels of the face's aligned crop, the only ones :meth:`segment` labels (its
        zoomed views lie inside it). On a strong turn the crop, sized by the eye-to-mouth distance, ends
        before the ear: the face beyond it is unknown, not background."""
        crop = AlignedCrop.from_mesh(mesh, self.size)
        return crop.unwarp(np.ones((self.size, self.size), np.uint8), shape).astype(bool)

    def segment_faces(self, image: np.ndarray, meshes: list[np.ndarray]) -> np.ndarray:
        """One label map for several faces of a photo; where crops overlap, larger faces win."""
        crops = [AlignedCrop.from_mesh(m, self.size) for m in meshes]
        n = len(crops)
        with torch.inference_mode():
            # Every view (zooms, mirrored) of every face in one batch: one call per network and photo.
            zoomed = [c.then(zoom_affine(z, self.size)) for z in self.zooms for c in crops]
            images, priors, _ = crops_for(image, meshes * len(self.zooms), self.size, self.prior, zoomed)
            x = network_input(images, priors, self.device)
            if self.mirror:
                x = torch.cat([x, mirror_input(x)])
            x = x.contiguous(memory_format=torch.channels_last)
            views = sum(net(x) for net in self._fast) / len(self._fast)
            if self.mirror:
                plain, mirrored = views.chunk(2)
                views = (plain + mirror_logits(mirrored)) / 2
            logits = sum(v if z == 1.0 else unzoom_logits(v, z) for z, v in zip(self.zooms, views.split(n))) / len(self.zooms)
        out = np.zeros(image.shape[:2], np.uint8)
        for i in np.argsort([-c.photo_pixels_per_crop_pixel for c in crops]):  # smallest face first
            crop = crops[i]
            # Upsample to about photo resolution before the nearest-neighbour warp back (at most 4x).
            k = int(np.clip(np.ceil(crop.photo_pixels_per_crop_pixel), 1, 4))
            up = F.interpolate(logits[i : i + 1], size=(self.size * k,) * 2, mode="bilinear", align_corners=False)
            # max(0).indices, not argmax(0): the same first maximum, 5x faster on the CPU (6 against 31 ms at 512²).
            labels = _IDS[up[0].max(0).indices.cpu().numpy()]
            face = crop.upsampled(k).unwarp(labels, image.shape[:2])
            out = np.where(face > 0, face, out)
        return out


def combine_weights(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> FaceParser:
    """One weights file holding the networks of several (an ensemble: their logits are averaged)."""
    parsers = [FaceParser.load(p) for p in paths]
    if len({p.size for p in parsers}) != 1:
        raise ModelError(f"the weights differ in crop size ({sorted({p.size for p in parsers})}); they cannot be combined")
    nets = [n for p in parsers for n in p.nets]
    if len({n.prior for n in nets}) != 1:
        raise ModelError("some weights take the landmark-polygon prior and some do not; they cannot be combined")
    meta = {"members": [p.meta for p in parsers], "sources": [Path(p).name for p in paths]}
    save_weights(nets, parsers[0].size, out, meta)
    return FaceParser.load(out)

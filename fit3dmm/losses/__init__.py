"""Losses behind one interface (:class:`Loss`), looked up by name in :data:`REGISTRY`.

Importing this package registers the built-in losses; ``--loss NAME`` picks the segmentation term.
"""

from . import chamfer, icp, iou, landmark, photometric, prdl, regularizer  # noqa: F401  (registration)
from .base import REGISTRY, Frame, Loss, make_loss, register

#: Losses `--loss` may name: segmentation-guided terms, plus "none" for landmark + photometric only.
SEGMENTATION_LOSSES = ("prdl", "iou", "chamfer", "dcd", "icp", "icp-rev")

__all__ = ["REGISTRY", "Frame", "Loss", "make_loss", "register", "SEGMENTATION_LOSSES"]

"""The loss interface and registry: ``--loss NAME`` is a lookup, and a new loss is one file."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..config import FitConfig
    from ..models.facemodel import FaceModel
    from ..render import Fragments
    from ..target import TargetBatch


@dataclass
class Frame:
    """What one fitting iteration computed for a batch of B photos, shared by every loss.

    vertices (B, V, 3) model frame; screen (B, V, 3) crop pixels + depth; rotation (B, 3, 3)
    model->camera (including the axis flip); params: the fit's coefficient tensors by name, each with a
    leading B. With rasterization: normals (B, V, 3) camera frame, frags (hard pass, no grad, triangle ids
    into ``model.fit_triangles``), visible (B, V) bool, and the relative ``depth_tol`` (B,) its test used.
    Without, those are None.
    """

    vertices: Tensor
    screen: Tensor
    rotation: Tensor
    params: dict[str, Tensor]
    normals: Tensor | None = None
    frags: "Fragments | None" = None
    visible: Tensor | None = None
    depth_tol: "Tensor | float" = 0.005  # relative depth tolerance of the visibility test (render.vertex_visibility)


def gather_vertices(values: Tensor, index: Tensor) -> Tensor:
    """values (B, V, C) at vertex ids index (...) -> (B, ..., C), differentiable. Done as one dim-0
    index_select over the B*V rows: its backward, an index_add along dim 0, measured 4x faster on CPU than
    index_select's along dim 1 (and 2x advanced indexing's sorting index_put)."""
    B, V, C = values.shape
    flat = (torch.arange(B, device=values.device)[:, None] * V + index.reshape(1, -1)).reshape(-1)
    return values.reshape(B * V, C).index_select(0, flat).view(B, *index.shape, C)


class Loss(ABC):
    """A term of the objective for a batch of photos. Constructed once per batch (precompute target-side
    data there), then called once per iteration; returns one value per photo, each depending on that
    photo's parameters only, so a batch fits each photo as if alone. Set ``needs_raster`` if the loss
    reads normals, frags or visibility, and ``needs_parts`` if it needs the model's part annotation."""

    name: ClassVar[str]
    needs_raster: ClassVar[bool] = False
    needs_parts: ClassVar[bool] = False

    def __init__(self, model: "FaceModel", target: "TargetBatch"):
        self.model = model
        self.target = target

    @classmethod
    def config_options(cls, config: "FitConfig") -> dict:
        """Constructor keywords this loss takes from the fit's configuration (e.g. PRDL's anchor grid)."""
        return {}

    @abstractmethod
    def __call__(self, frame: Frame) -> Tensor:
        """(B,) the loss value of each photo for this iteration's frame."""


REGISTRY: dict[str, type[Loss]] = {}


def register(cls: type[Loss]) -> type[Loss]:
    REGISTRY[cls.name] = cls
    return cls


def make_loss(name: str, model: "FaceModel", target: "TargetBatch", config: "FitConfig | None" = None) -> Loss:
    """The registered loss ``name`` for this model and batch of targets, with its options from ``config``
    if given."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown loss '{name}'; known: {', '.join(sorted(REGISTRY))}") from None
    return cls(model, target, **(cls.config_options(config) if config is not None else {}))

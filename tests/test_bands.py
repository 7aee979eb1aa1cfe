"""Part bands: per-fit brow and upper-lip extents (fit3dmm.models.bands)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fit3dmm.camera import Camera
from fit3dmm.cli import main
from fit3dmm.config import FitConfig
from fit3dmm.datasets import fix_left_right, read_mask
from fit3dmm.files import read_image
from fit3dmm.metrics import part_iou
from fit3dmm.models.bands import BROWS, CANDIDATES, DEFAULT_BAND, EYES, apply_bands, choose_bands, kind, model_fields
from fit3dmm.outputs import fitted_parts, part_label_map, render_photo
from fit3dmm.pipeline import Pipeline
from fit3dmm.render import rasterize

BANDED = (*EYES, *BROWS, "up_lip")
PART_IDS = (1, 4, 5, 6, 7, 11)  # skin and the banded parts' CelebAMask-HQ ids
CELEBA_PHOTO = "00f3cdb789584cd59706977dcb122a3f"  # validation split


@pytest.fixture(scope="module")
def frontal(ict_model):
    """The mean face rendered frontally at 512 px: (annotated labels, tri, bary, triangles)."""
    size = 512
    camera = Camera.for_crop(size, 4.53)
    mean = ict_model.mean
    lo, hi = mean.min(0).values, mean.max(0).values
    depth = camera.depth_for_width(float((hi - lo)[:2].max()), 0.9 * size)
    cam = camera.to_camera(mean - (lo + hi) / 2, torch.zeros(3), mean.new_tensor([0.0, 0.0, depth]))
    frags = rasterize(camera.project(cam)[None], ict_model.triangles, size, size)
    tri, bary = frags.tri_id[0].numpy(), frags.bary[0].numpy()
    return part_label_map(ict_model, tri, bary), tri, bary, ict_model.triangles.numpy()


def test_annotated_bands_reproduce_the_annotation(ict_model, frontal):
    """The fields are built so that the annotated band is the annotated part: rendered, the two agree."""
    labels, tri, bary, triangles = frontal
    fields = model_fields(ict_model)
    assert set(fields) == set(BANDED)
    banded = apply_bands(labels, fields, {name: DEFAULT_BAND[kind(name)] for name in fields}, tri, bary, triangles)
    scores = part_iou(banded, labels, BANDED)
    # The brows' band edges are smooth where the annotation's follow the mesh's rows (RENDERED_MARGIN).
    assert min(scores["left_eyebrow"], scores["right_eyebrow"]) > 0.75 and scores["up_lip"] > 0.95, scores
    assert scores["left_eye"] == scores["right_eye"] == 1.0  # the eyeball seen between the lids, as annotated
    # Only the banded parts and skin change.
    changed = banded != labels
    assert np.isin(labels[changed], PART_IDS).all() and np.isin(banded[changed], PART_IDS).all()


def test_search_recovers_a_planted_band(ict_model, frontal):
    """A target drawn with thick, short or tilted brows, a higher lip border and eyes taking in the lash
    line: the search finds those bands."""
    labels, tri, bary, triangles = frontal
    fields = model_fields(ict_model)
    planted = {"left_eyebrow": (0.1, 0.9, -1.625, 1.375, 0.0), "right_eyebrow": (-0.1, 1.05, -0.75, 0.625, 0.5),
               "up_lip": (0.02,), "left_eye": (0.015,), "right_eye": (0.0075,)}
    target = apply_bands(labels, fields, planted, tri, bary, triangles)
    found = choose_bands(fields, labels, tri, bary, triangles, target, np.zeros(labels.shape, bool))
    scores = part_iou(apply_bands(labels, fields, found, tri, bary, triangles), target, BANDED)
    assert min(scores.values()) > 0.98, (found, scores)
    for name, band in planted.items():
        steps = [np.diff(c[:2])[0] for c in CANDIDATES[kind(name)]]
        assert np.all(np.abs(np.subtract(found[name], band)) <= 1.01 * np.array(steps)), (name, found[name])


def test_a_part_the_target_lacks_or_hides_keeps_its_annotated_region(ict_model, frontal):
    labels, tri, bary, triangles = frontal
    fields = model_fields(ict_model)
    target = labels.copy()
    target[target == 6] = 1  # no left brow in the segmentation
    thick = apply_bands(labels, fields, {"right_eyebrow": (0.0, 1.0, -2.0, 2.0, 0.0)}, tri, bary, triangles)
    ignore = thick == 7  # the right brow's region is all occluded
    found = choose_bands(fields, labels, tri, bary, triangles, np.where(ignore, 7, target), ignore)
    assert "left_eyebrow" not in found and "right_eyebrow" not in found
    # A band refines a part the fit shows; it never makes one (a closed eye's lid stays skin).
    closed = np.where(labels == 4, 1, labels)
    assert "left_eye" not in choose_bands(fields, closed, tri, bary, triangles, labels, np.zeros(labels.shape, bool))
    # A target that is the annotation itself: no band matches it better than the annotated region.
    assert choose_bands(fields, labels, tri, bary, triangles, labels, np.zeros(labels.shape, bool)) == {}


def test_bands_bring_a_real_fit_closer_to_its_target(ict_model, shared_dir):
    """A real photo: the banded parts overlap the segmentation (the fit's target) at least as well as the
    annotated ones, the brows better, and only the banded parts and skin change."""
    root = shared_dir / "data" / "celebamask-hq"
    out = Pipeline(FitConfig.create(iterations=20), ict_model).fit(read_image(root / "images" / f"{CELEBA_PHOTO}.jpg"))
    tri, bary, _ = render_photo(out)
    banded, bands = fitted_parts(out, tri, bary)
    out.config = out.config.with_(part_bands=False)
    fixed, none = fitted_parts(out, tri, bary)
    assert none is None and bands and set(bands) <= set(BANDED)
    target = out.observation.labels
    with_bands, without = part_iou(banded, target, BANDED), part_iou(fixed, target, BANDED)
    assert all(with_bands[p] >= without[p] for p in BANDED)
    assert with_bands["left_eyebrow"] + with_bands["right_eyebrow"] > without["left_eyebrow"] + without["right_eyebrow"]
    changed = banded != fixed
    assert changed.any() and np.isin(fixed[changed], PART_IDS).all() and np.isin(banded[changed], PART_IDS).all()
    human = fix_left_right(read_mask(root / "masks" / f"{CELEBA_PHOTO}.png"))
    assert np.nanmean(list(part_iou(banded, human, BROWS).values())) > 0.4


def test_params_json_records_the_bands_and_fixed_parts_turns_them_off(shared_dir, tmp_path):
    photo = shared_dir / "data" / "celebamask-hq" / "images" / f"{CELEBA_PHOTO}.jpg"
    docs = {}
    for flags in ((), ("--fixed-parts",)):
        out = tmp_path / ("fixed" if flags else "banded")
        result = CliRunner().invoke(main, ["fit", str(photo), "-o", str(out), "--iterations", "10", "--export", "images", *flags])
        assert result.exit_code == 0, result.output
        docs[out.name] = json.loads((out / CELEBA_PHOTO / "params.json").read_text())
    assert docs["fixed"]["part_bands"] is None and docs["fixed"]["config"]["part_bands"] is False
    bands = docs["banded"]["part_bands"]
    assert docs["banded"]["config"]["part_bands"] is True and bands and set(bands) <= set(BANDED)
    assert all(len(band) == len(DEFAULT_BAND[kind(name)]) for name, band in bands.items())

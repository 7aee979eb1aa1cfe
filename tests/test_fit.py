"""Fitting real photos end to end (default settings)."""

import numpy as np
import pytest
import torch

from fit3dmm.config import FitConfig
from fit3dmm.datasets import fix_left_right, read_mask, read_pts
from fit3dmm.errors import InputError
from fit3dmm.files import read_image
from fit3dmm.metrics import IOU_PARTS, landmark_nme, part_iou
from fit3dmm.outputs import fitted_labels
from fit3dmm.pipeline import Pipeline
from fit3dmm.target import MIN_LIP_COVERAGE, OCCLUDER_IDS, lip_coverage, lip_ring, make_target

#: Photos with hand-placed landmarks. breakingbad (strong head turn) and einstein (an 84-pixel face)
#: are left to the benchmark to keep the suite short.
LANDMARK_PHOTOS = ("lenna.png", "takeo.png", "image_0010.png")
#: Bound on the fitted landmarks' NME. The detected 68 points (refined by dlib) score 2.8-4.0% on these
#: photos, the fit measured 3.4% (image_0010), 3.7% (takeo) and 5.2% (lenna) with the voted landmark
#: vertices (4.0, 4.3 and 6.0% with ICT's): it follows the model's shape space and
#: the part term as well. 8% leaves room for numerical differences between machines and stays below
#: what even the two hard photos of the benchmark score (9.1% and 8.6%: a strong head turn, an 84-pixel face).
MAX_FIT_NME = 0.08
CELEBA_PHOTO = "00f3cdb789584cd59706977dcb122a3f"  # in the validation split: the annotation never saw it


@pytest.fixture(scope="module")
def pipeline(ict_model):
    return Pipeline(FitConfig(), ict_model)


@pytest.mark.parametrize("name", LANDMARK_PHOTOS)
def test_fitted_landmarks_match_hand_placed(pipeline, shared_dir, name):
    photo = shared_dir / "data" / "landmarks-68" / name
    out = pipeline.fit(read_image(photo))
    fitted = out.target.crop.to_photo(out.result.landmarks68.numpy())
    truth = read_pts(photo.with_suffix(".pts"))
    assert landmark_nme(fitted, truth) < MAX_FIT_NME


def test_the_target_jaw_follows_the_outline_as_far_as_it_is_dlibs(pipeline, shared_dir):
    """dlib's jaw (300-W's convention) lies on the face's outline, the face mesh's on the face: the target
    says which, so the fit's jaw marches only towards the one that does. A frontal face takes dlib's points,
    breakingbad's strong turn the mesh's (dlib is not trusted there)."""
    folder = shared_dir / "data" / "landmarks-68"
    for name, weight in (("lenna.png", 1.0), ("breakingbad.jpg", 0.0)):
        prepared = pipeline.prepare(read_image(folder / name))
        assert prepared.observation.outline_weight == prepared.target.outline_weight == weight, name


def test_the_fit_starts_from_the_pose_of_the_landmarks(pipeline, shared_dir):
    """The rigid stage starts at the mean face's pose on the inner landmarks, not frontal. Measured (pitch, yaw,
    roll): breakingbad -12°, 38°, -24° (fitted -6°, 37°, -23°); einstein -12°, -14°, 17° (fitted -13°, -16°, 18°)."""
    from fit3dmm.target import TargetBatch

    folder = shared_dir / "data" / "landmarks-68"
    start = {name: np.degrees(pipeline.fitter.init_params(TargetBatch.stack(
        [pipeline.prepare(read_image(folder / name)).target]))["angles"][0].numpy()) for name in ("breakingbad.jpg", "einstein.jpg")}
    assert abs(start["breakingbad.jpg"][1]) > 30, start
    assert abs(start["einstein.jpg"][2]) > 10 and abs(start["einstein.jpg"][1]) < 25, start


def test_an_unknown_landmark_source_is_a_clear_error(ict_model):
    with pytest.raises(InputError, match="unknown landmark source 'eos'; known: dlib, mesh"):
        Pipeline(FitConfig(landmarks="eos"), ict_model)


def _celeba_pair(shared_dir, stem):
    root = shared_dir / "data" / "celebamask-hq"
    return read_image(root / "images" / f"{stem}.jpg"), fix_left_right(read_mask(root / "masks" / f"{stem}.png"))


def test_prdl_moves_fitted_parts_towards_target(ict_model, shared_dir):
    """Same photo, same settings, with and without PRDL: the fitted parts overlap the segmentation PRDL
    aims at (and the human mask) more with it."""
    image, human = _celeba_pair(shared_dir, CELEBA_PHOTO)
    scores = {}
    for loss in ("none", "prdl"):
        out = Pipeline(FitConfig.create(loss=loss), ict_model).fit(image)
        fitted = fitted_labels(out)
        to_target = np.nanmean(list(part_iou(fitted, out.observation.labels, IOU_PARTS).values()))
        to_human = np.nanmean(list(part_iou(fitted, human, IOU_PARTS).values()))
        scores[loss] = (to_target, to_human)
    assert scores["prdl"][0] > scores["none"][0] + 0.02
    assert scores["prdl"][1] > scores["none"][1]


def test_lips_the_landmarks_do_not_confirm_leave_the_target(pipeline, shared_dir):
    """The human mask's lips cover the landmarks' lip ring and stay in the target; a segmentation that
    lost them under a moustache (upper lip gone, a sliver of the lower left) has them removed, so PRDL
    leaves the lips out instead of shrinking the mouth onto the sliver."""
    image, human = _celeba_pair(shared_dir, CELEBA_PHOTO)
    obs = pipeline.observe(image)
    crop = pipeline.crop(obs.landmarks68)
    kept = make_target(image, human, obs.landmarks68, crop, torch.device("cpu"))
    assert kept.part_masks["up_lip"].sum() > 50 and kept.part_masks["down_lip"].sum() > 50
    ring = lip_ring(obs.landmarks68, human.shape)
    assert lip_coverage(human, obs.landmarks68) > 0.4 and ring.sum() > 500
    lost = human.copy()
    lost[lost == 11] = 1
    ys, xs = np.nonzero(lost == 12)
    lost[(lost == 12) & (np.arange(human.shape[0])[:, None] > ys.min() + 0.1 * (ys.max() - ys.min()))] = 1
    assert 0 < lip_coverage(lost, obs.landmarks68) < MIN_LIP_COVERAGE
    dropped = make_target(image, lost, obs.landmarks68, crop, torch.device("cpu"))
    assert not dropped.part_masks["up_lip"].any() and not dropped.part_masks["down_lip"].any()
    assert torch.equal(dropped.part_masks["nose"], kept.part_masks["nose"])


def test_a_strong_turn_shows_face_the_parser_did_not_look_at(pipeline, shared_dir):
    """The parser labels its aligned crop alone; on breakingbad's strong turn that crop ends before the far
    cheek, so some 200 visible fitted vertices fall where the target is unknown (not background) and PRDL
    drops them. On lenna's frontal face every face-mesh point lies in the crop."""
    folder = shared_dir / "data" / "landmarks-68"
    out = pipeline.fit(read_image(folder / "breakingbad.jpg"))
    target = out.target
    unknown = target.occluded.numpy() & ~np.isin(target.labels, OCCLUDER_IDS)
    assert not target.labels[unknown].any()
    xy = np.round(out.result.screen[:, :2].numpy()).astype(int)
    inside = ((xy >= 0) & (xy < target.size)).all(1) & out.result.visible.numpy()
    assert unknown[xy[inside, 1], xy[inside, 0]].sum() > 50
    lenna = pipeline.observe(read_image(folder / "lenna.png"))
    mesh = np.round(lenna.mesh[:, :2]).astype(int)
    assert lenna.seen[mesh[:, 1], mesh[:, 0]].all()


def test_free_albedo_starts_at_the_mean_texture_in_the_photos_skin_colour(pipeline, ict_model, shared_dir):
    """The free albedo starts as the model's mean texture scaled per channel to the photo's face colour:
    proportional to the texture where it is not clipped to [0, 1] (a bright photo clips the eye whites and
    much of the skin's red), so the brows start darker than the skin."""
    from fit3dmm.models import PART_NAMES
    from fit3dmm.target import TargetBatch

    image, _ = _celeba_pair(shared_dir, CELEBA_PHOTO)
    target = pipeline.prepare(image).target
    albedo = pipeline.make_fitter(FitConfig()).init_params(TargetBatch.stack([target]))["albedo"][0]
    parts, texture = ict_model.parts, ict_model.texture
    skin = parts == PART_NAMES.index("skin")
    brows = (parts == PART_NAMES.index("left_eyebrow")) | (parts == PART_NAMES.index("right_eyebrow"))
    assert albedo[brows].mean() < albedo[skin].mean() - 0.05
    unclamped = (albedo > 0).all(1) & (albedo < 1).all(1)
    ratio = albedo[unclamped] / texture[unclamped]
    assert unclamped.float().mean() > 0.3 and torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=1e-4)


def test_albedo_prior_ignores_a_per_channel_scale_and_grows_with_the_departure_from_the_texture(ict_model, ict_npz):
    """Zero for the texture scaled per channel, larger the further the albedo is from it; zero for a model
    without a mean texture."""
    from types import SimpleNamespace

    from fit3dmm.losses import make_loss
    from fit3dmm.models import FaceModel
    from fit3dmm.models.ict import import_ict

    texture = ict_model.texture
    prior = make_loss("albedo_prior", ict_model, None)
    def value(albedo):
        return prior(SimpleNamespace(params={"albedo": albedo}, screen=albedo))
    scaled = torch.stack([texture * torch.tensor([0.5, 0.8, 1.2]), texture * 0.3])  # (2, V, 3)
    assert torch.allclose(value(scaled), torch.zeros(2), atol=1e-10)
    flat = texture.mean(0).expand_as(texture)[None]
    half = (0.5 * texture + 0.5 * texture.mean(0))[None]
    assert value(flat) > value(half) > 1e-4
    bare = FaceModel(import_ict(ict_npz, with_parts=False))
    assert bare.texture is None
    assert make_loss("albedo_prior", bare, None)(SimpleNamespace(params={"albedo": flat}, screen=flat)).item() == 0


def test_a_textured_model_without_parts_starts_its_albedo_from_the_whole_texture(ict_model, shared_dir):
    """No skin to scale by: the whole texture's mean is the reference, not NaN."""
    from dataclasses import replace

    from fit3dmm.models import FaceModel
    from fit3dmm.models.facemodel import with_parts
    from fit3dmm.target import TargetBatch

    bare = with_parts(ict_model.data, -np.ones(ict_model.n_vertices, dtype=np.int64), np.zeros(0, dtype=np.int64))
    model = FaceModel(replace(bare, mean_texture=ict_model.data.mean_texture))
    pipeline = Pipeline(FitConfig.create(loss="none"), model)
    image, _ = _celeba_pair(shared_dir, CELEBA_PHOTO)
    batch = TargetBatch.stack([pipeline.prepare(image).target])
    albedo = pipeline.make_fitter(FitConfig.create(loss="none")).init_params(batch)["albedo"][0]
    assert torch.isfinite(albedo).all() and albedo.std(0).min() > 0.05

"""Part annotation by voting on labelled photos."""

import cv2
import numpy as np

from fit3dmm.datasets import image_mask_pairs
from fit3dmm.models import PART_NAMES
from fit3dmm.models.annotate import (
    OTHER, annotate, clean_parts, full_fit_pass, mean_texture, parts_from_votes, revote, vote_landmarks,
)
from fit3dmm.models.ict import EYEBALLS, FACE


def test_parts_from_votes_needs_enough_votes_and_a_part_winner():
    votes = np.array([[6, 0, 0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 2, 9]])
    assert parts_from_votes(votes, min_votes=5).tolist() == [0, -1, -1]


def test_voting_on_photos_labels_irises_as_the_right_eye(ict_model, shared_dir):
    root = shared_dir / "data" / "celebamask-hq"
    pairs = image_mask_pairs(root / "images", root / "masks")[:3]
    result = annotate(ict_model, pairs, min_votes=2)
    assert result.photos_used == 3 and not result.failures
    # ICT's first eyeball is the subject's left (x > 0); its iris (the last 800 of its 1570 vertices).
    offset = FACE[1] - FACE[0]
    left_iris = np.arange(offset + 770, offset + 1570)
    right_iris = left_iris + (EYEBALLS[1] - EYEBALLS[0]) // 2
    assert ict_model.data.mean[left_iris, 0].min() > 0 > ict_model.data.mean[right_iris, 0].max()
    # The votes see mostly this eye on its iris (3 photos: 90-95% measured; the rest is lid-edge skin), never
    # the other one; the cleaned annotation then makes each whole eyeball its side's eye and the face none.
    for ids, name, other in ((left_iris, "left_eye", "right_eye"), (right_iris, "right_eye", "left_eye")):
        winners = result.votes[ids].argmax(1)[result.votes[ids].sum(1) >= 2]
        assert len(winners) > 50 and (winners == PART_NAMES.index(name)).mean() > 0.8
        assert not (winners == PART_NAMES.index(other)).any()
        assert (result.parts[ids] == PART_NAMES.index(name)).all()
    assert not np.isin(result.parts[: FACE[1]], [PART_NAMES.index("left_eye"), PART_NAMES.index("right_eye")]).any()
    # The vote ignores the model's existing annotation: vertices outside it (ears, scalp) were seen too.
    assert result.votes[ict_model.data.parts < 0].sum() > 1000


def test_clean_parts_gives_stray_pieces_to_their_surroundings(ict_model):
    """A few connected forehead vertices labelled upper lip (a stray piece, as votes leave) become skin."""
    data = ict_model.data
    parts = data.parts.copy()
    skin, lip = PART_NAMES.index("skin"), PART_NAMES.index("up_lip")
    top = np.argmax(np.where(parts == skin, data.mean[:, 1], -np.inf))  # the highest skin vertex
    ring = np.unique(data.triangles[(data.triangles == top).any(1)])
    ring = ring[parts[ring] == skin]
    parts[ring] = lip
    cleaned = clean_parts(data, parts)
    assert (cleaned[ring] == skin).all()
    assert (cleaned == lip).sum() == (data.parts == lip).sum()  # the lip itself stays


def test_mean_texture_fills_unseen_vertices_from_their_neighbours(ict_model):
    data = ict_model.data
    total, count = np.zeros((data.n_vertices, 3)), np.zeros(data.n_vertices)
    total[:100], count[:100] = 0.25, 1  # only the first 100 vertices were seen, all dark grey
    texture = mean_texture(data, data.parts, total, count)
    eyeballs = np.isin(data.parts, [PART_NAMES.index("left_eye"), PART_NAMES.index("right_eye")])
    assert texture.shape == (data.n_vertices, 3) and np.allclose(texture[~eyeballs], 0.25)


def test_mean_texture_paints_each_eyeball_as_an_eye_looking_forward(ict_model):
    """Gazes differ, so the photos' mean under an eyeball is a blur: each eyeball gets a generic eye, a dark
    pupil at its front, the iris around it and the white beyond."""
    data = ict_model.data
    texture = mean_texture(data, data.parts, np.full((data.n_vertices, 3), 0.5), np.ones(data.n_vertices))
    for eye in ("left_eye", "right_eye"):
        ids = np.flatnonzero(data.parts == PART_NAMES.index(eye))
        brightness = texture[ids].mean(1)
        front = ids[np.argsort(-data.mean[ids, 2])]  # the eyeball's vertices, front-most first
        assert texture[front[0]].mean() < 0.1  # the pupil
        assert ((brightness > 0.2) & (brightness < 0.35)).any()  # the iris
        side = ids[np.argmin(np.abs(data.mean[ids, 2] - np.median(data.mean[ids, 2])))]
        assert texture[side].mean() > 0.7  # the side of the eyeball is white


def test_revote_moves_labelled_vertices_to_the_part_their_votes_name(ict_model):
    """A labelled vertex takes the part most of its (part) votes name once it has enough of them; hair
    votes do not count, unlabelled vertices stay unlabelled, and the skin subset follows the new skin."""
    data = ict_model.data
    skin, nose = PART_NAMES.index("skin"), PART_NAMES.index("nose")
    votes = np.zeros((data.n_vertices, OTHER + 1), np.int64)
    nose_ids = np.flatnonzero(data.parts == nose)
    rim = nose_ids[np.argsort(data.mean[nose_ids, 0])[:3]]  # three nose vertices at its side, neighbours of skin
    votes[rim, skin] = 4
    votes[rim, nose] = 1
    votes[rim[0], OTHER] = 50  # mostly hair over it: still the skin votes decide
    few = nose_ids[np.argsort(data.mean[nose_ids, 0])[-1]]
    votes[few, skin] = 3  # below the 5 votes a move needs
    unlabelled = np.flatnonzero(data.parts < 0)[:10]
    votes[unlabelled, skin] = 20
    out = revote(data, votes)
    assert (out.parts[rim] == skin).all() and out.parts[few] == nose
    assert (out.parts[unlabelled] == -1).all()
    assert (out.parts != data.parts).sum() == 3
    assert np.isin(out.skin_subset, np.flatnonzero(out.parts == skin)).all()
    assert np.array_equal(revote(data, np.zeros_like(votes)).parts, data.parts)  # no votes: nothing moves


def test_full_fit_pass_averages_only_the_head_surface_and_skips_photos_without_a_face(ict_model, shared_dir, tmp_path):
    """Photo colour counts where the human mask shows the head's surface: a photo whose mask is all hair
    changes nothing, a photo without a face is listed and skipped, and the brows come out darker than the
    cheeks' skin. Its fits vote like the first vote's, for the human label under each visible vertex."""
    root = shared_dir / "data" / "celebamask-hq"
    (image, mask), (other, _) = image_mask_pairs(root / "images", root / "masks")[:2]
    hair = tmp_path / "hair.png"
    cv2.imwrite(str(hair), np.full((512, 512), 13, np.uint8))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((512, 512, 3), 128, np.uint8))
    alone, votes, none_failed = full_fit_pass(ict_model, [(image, mask)], batch_size=1)
    texture, more_votes, failures = full_fit_pass(ict_model, [(image, mask), (other, hair), (blank, mask)], batch_size=1)
    assert not none_failed and [f[0] for f in failures] == [str(blank)]
    assert texture.shape == (ict_model.n_vertices, 3) and np.array_equal(texture, alone)
    # One vote per visible vertex and photo; the all-hair mask's votes all go to the non-part slot.
    assert votes.shape == (ict_model.n_vertices, OTHER + 1) and votes.max() == 1 and votes.sum() > 3000
    assert np.array_equal(more_votes[:, :OTHER], votes[:, :OTHER]) and more_votes[:, OTHER].sum() > votes[:, OTHER].sum()
    # The fit puts the annotated nose on the photo's nose: most of the nose's votes say nose (79% here; the
    # rest, at its edge, skin).
    nose = ict_model.data.parts == PART_NAMES.index("nose")
    assert votes[nose, PART_NAMES.index("nose")].sum() > 0.6 * votes[nose].sum()
    parts = ict_model.data.parts
    brows = np.isin(parts, [PART_NAMES.index("left_eyebrow"), PART_NAMES.index("right_eyebrow")])
    nose_height = ict_model.data.mean[parts == PART_NAMES.index("nose"), 1].mean()
    cheeks = (parts == PART_NAMES.index("skin")) & (np.abs(ict_model.data.mean[:, 1] - nose_height) < 1)
    # One photo's fit sets the margin: cheeks minus brows is 0.052 here with dlib's landmarks (0.093 with the
    # mesh's, 0.110 with the earlier two parser networks; 0.050-0.256 over the first four photos); brows
    # painted from the skin around them would give about 0.
    assert texture[brows].mean() < texture[cheeks].mean() - 0.03


def test_annotate_command_repaints_the_texture_and_keeps_the_parts(ict_npz, shared_dir, tmp_path, monkeypatch):
    """`model annotate --texture-only` keeps a model's parts and saves a newly painted texture into the
    model and the export; a model without parts gets a one-line error instead."""
    from click.testing import CliRunner

    from fit3dmm.cli import main
    from fit3dmm.models import load_model, save_model
    from fit3dmm.models.ict import import_ict

    monkeypatch.setenv("FIT3DMM_MODELS", str(tmp_path))
    save_model(import_ict(ict_npz), tmp_path / "ict.npz")
    save_model(import_ict(ict_npz, name="bare", with_parts=False), tmp_path / "bare.npz")
    before = load_model(tmp_path / "ict.npz")
    root = shared_dir / "data" / "celebamask-hq"
    args = ["--images", str(root / "images"), "--masks", str(root / "masks"), "--limit", "2", "--check", "0", "--texture-only"]
    bare = CliRunner().invoke(main, ["model", "annotate", "bare", *args])
    assert bare.exit_code != 0 and "Traceback" not in bare.output and "has no parts" in bare.output
    export = tmp_path / "parts.npz"
    result = CliRunner().invoke(main, ["model", "annotate", "ict", *args, "--export", str(export)])
    assert result.exit_code == 0, result.output
    assert "painted the mean texture through fits of 2 photos" in result.output
    after, exported = load_model(tmp_path / "ict.npz"), np.load(export)
    assert np.array_equal(after.parts, before.parts) and np.array_equal(exported["parts"], before.parts)
    assert np.abs(after.mean_texture - before.mean_texture).max() > 0.1
    assert np.abs(exported["mean_texture"] / 255.0 - after.mean_texture).max() <= 0.5 / 255 + 1e-6


def test_annotate_command_votes_revotes_and_paints(ict_npz, shared_dir, tmp_path, monkeypatch):
    """`model annotate` on a model without parts: too few photos to label any vertex is a one-line error;
    with enough, the model gets parts (voted, then re-voted through full fits) and a mean texture, saved
    into the model and the export."""
    from click.testing import CliRunner

    from fit3dmm.cli import main
    from fit3dmm.models import load_model, save_model
    from fit3dmm.models.ict import import_ict

    monkeypatch.setenv("FIT3DMM_MODELS", str(tmp_path))
    save_model(import_ict(ict_npz, name="bare", with_parts=False), tmp_path / "bare.npz")
    root = shared_dir / "data" / "celebamask-hq"
    args = ["--images", str(root / "images"), "--masks", str(root / "masks"), "--check", "0"]
    few = CliRunner().invoke(main, ["model", "annotate", "bare", *args, "--limit", "3"])
    assert few.exit_code != 0 and "Traceback" not in few.output and "labelled no vertex" in few.output
    export = tmp_path / "parts.npz"
    result = CliRunner().invoke(main, ["model", "annotate", "bare", *args, "--limit", "6", "--export", str(export)])
    assert result.exit_code == 0, result.output
    assert "re-voted through their full fits" in result.output
    model, exported = load_model(tmp_path / "bare.npz"), np.load(export)
    assert model.has_parts and model.mean_texture is not None and np.array_equal(exported["parts"], model.parts)
    for name in ("nose", "skin", "up_lip"):
        assert (model.parts == PART_NAMES.index(name)).sum() > 20, name


def test_the_landmark_vote_brings_displaced_landmark_vertices_back(ict_model, shared_dir):
    """The nose tip (iBUG 30) moved to a vertex 0.08 eye-corner distances away, and a side jaw point (3)
    moved 0.06 down the face (the vertex nearest 0.08), are voted back near their own (the vote on 119
    photos kept both; 4 photos agree to within 0.05 and 0.04; the jaw point's own came back): the jaw
    point judged by where its contour line marches to."""
    from fit3dmm.config import FitConfig
    from fit3dmm.models import FaceModel
    from fit3dmm.models.facemodel import face_region, with_landmarks

    data = ict_model.data
    mean, own = data.mean, data.landmarks68
    eye = np.linalg.norm(mean[own[36]] - mean[own[45]])
    assert (data.contour[3] >= 0).sum() > 1  # a marching point
    distance = np.linalg.norm(mean - mean[own[30]], axis=1)
    displaced = own.copy()
    displaced[30] = int(np.argmin(np.abs(distance - 0.08 * eye) + 1e3 * (data.parts < 0)))
    down = mean[own[3]] - np.array([0.0, 0.08 * eye, 0.0])
    displaced[3] = int(np.argmin(np.linalg.norm(mean - down, axis=1) + 1e3 * ~face_region(data)))
    photos = sorted((shared_dir / "data" / "celebamask-hq" / "images").glob("*.jpg"))[:4]
    model = FaceModel(with_landmarks(data, displaced))
    vote = vote_landmarks(model, photos, FitConfig.create(iterations=20))
    assert vote.photos_used >= 3 and not vote.failures
    assert np.linalg.norm(mean[vote.landmarks68[30]] - mean[own[30]]) < 0.05 * eye
    assert abs(mean[vote.landmarks68[3], 1] - mean[own[3], 1]) < 0.04 * eye
    for k in (3, 30):
        assert vote.after[k] < vote.before[k] - 0.005, k
    assert np.isfinite(vote.before).all() and (vote.after <= vote.before).all()


def test_annotate_command_votes_the_landmarks_alone(ict_npz, shared_dir, tmp_path, monkeypatch):
    """`model annotate --landmarks-only` keeps parts and texture and saves the voted landmark vertices into
    the model and the export; it needs an annotated model and is a step of its own."""
    from click.testing import CliRunner

    from fit3dmm.cli import main
    from fit3dmm.models import load_model, save_model
    from fit3dmm.models.contour import contour_candidates
    from fit3dmm.models.facemodel import face_region
    from fit3dmm.models.ict import import_ict

    monkeypatch.setenv("FIT3DMM_MODELS", str(tmp_path))
    save_model(import_ict(ict_npz), tmp_path / "ict.npz")
    save_model(import_ict(ict_npz, name="bare", with_parts=False), tmp_path / "bare.npz")
    before = load_model(tmp_path / "ict.npz")
    root = shared_dir / "data" / "celebamask-hq"
    args = ["--images", str(root / "images"), "--masks", str(root / "masks"), "--limit", "2", "--check", "0"]
    for name, extra, message in (("bare", [], "has no parts"), ("ict", ["--texture-only"], "separate steps")):
        bad = CliRunner().invoke(main, ["model", "annotate", name, *args, "--landmarks-only", *extra])
        assert bad.exit_code != 0 and "Traceback" not in bad.output and message in bad.output
    export = tmp_path / "parts.npz"
    result = CliRunner().invoke(main, ["model", "annotate", "ict", *args, "--landmarks-only", "--export", str(export)])
    assert result.exit_code == 0, result.output
    assert "voted the landmark vertices on 2 photos" in result.output
    after, exported = load_model(tmp_path / "ict.npz"), np.load(export)
    assert np.array_equal(after.parts, before.parts) and np.array_equal(after.mean_texture, before.mean_texture)
    assert np.array_equal(exported["landmarks68"], after.landmarks68)
    assert np.array_equal(after.contour, contour_candidates(after.mean, after.landmarks68, face_region(after)))

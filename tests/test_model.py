"""Face model import, format and module."""

import json

import numpy as np
import pytest
import torch

from fit3dmm.errors import ModelError
from fit3dmm.models import PART_NAMES, FaceModel, load_model, save_model
from fit3dmm.models.contour import contour_candidates
from fit3dmm.models.facemodel import face_region
from fit3dmm.models.ict import EYEBALLS, FACE, import_ict, shipped_parts


@pytest.fixture(scope="module")
def raw(ict_npz):
    with np.load(ict_npz) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ict(ict_npz):
    return import_ict(ict_npz)


def test_import_shapes_and_selection(ict, raw):
    n = (FACE[1] - FACE[0]) + (EYEBALLS[1] - EYEBALLS[0])
    assert ict.mean.shape == (n, 3)
    assert ict.id_basis.shape == (100, n, 3) and ict.exp_basis.shape == (53, n, 3)
    assert ict.triangles.max() < n and ict.triangles.shape[1] == 3
    # Face vertices keep their ids; eyeballs follow. Bases are deltas from the neutral mesh.
    assert np.array_equal(ict.mean[: FACE[1]], raw["neutral"][: FACE[1]])
    assert np.array_equal(ict.mean[FACE[1] :], raw["neutral"][EYEBALLS[0] : EYEBALLS[1]])
    kept = np.concatenate([raw["identity"][3][: FACE[1]], raw["identity"][3][EYEBALLS[0] : EYEBALLS[1]]])
    assert np.allclose(ict.id_basis[3], kept - ict.mean)


def test_landmark_ids_follow_upstream_or_the_shipped_vote(ict, raw, ict_npz):
    """Without the shipped annotation the landmarks are ICT's; with it, the voted ones (README, "Part
    annotation"), the jaw's contour lines drawn through them and the lid margins still ICT's."""
    upstream = json.loads((ict_npz.parent / "vertex_indices.json").read_text())["idx_to_landmark_verts"]
    bare = import_ict(ict_npz, with_parts=False)
    assert np.array_equal(bare.mean[bare.landmarks68], raw["neutral"][upstream])
    assert np.array_equal(ict.landmarks68, shipped_parts(len(ict.mean))["landmarks68"])
    assert (ict.landmarks68 != bare.landmarks68).sum() > 10
    assert np.array_equal(ict.contour, contour_candidates(ict.mean, ict.landmarks68, face_region(ict)))
    assert not np.array_equal(ict.contour, bare.contour) and np.array_equal(bare.lid_margins, ict.lid_margins)
    # Outer eye corners are mirror images; the subject's right eye (36) is at negative x.
    assert ict.mean[ict.landmarks68[36], 0] < 0 < ict.mean[ict.landmarks68[45], 0]
    # Each jaw landmark is among its own contour candidates.
    for i in range(17):
        assert ict.landmarks68[i] in ict.contour[i]


def test_shipped_annotation_labels_every_part(ict):
    assert ict.has_parts
    for k, name in enumerate(PART_NAMES):
        assert (ict.parts == k).sum() > 20, name
    eyes = np.isin(ict.parts, [0, 1])
    # Eye vertices are eyeballs (the visible eye between the lids), not skin of the face surface.
    assert (np.nonzero(eyes)[0] >= FACE[1]).mean() > 0.9
    assert 0 < len(ict.skin_subset) <= 3000 and (ict.parts[ict.skin_subset] == PART_NAMES.index("skin")).all()


def test_save_load_round_trip(ict, tmp_path):
    path = save_model(ict, tmp_path / "m.npz")
    back = load_model(path)
    assert np.array_equal(back.triangles, ict.triangles) and np.array_equal(back.parts, ict.parts)
    assert back.meta["expression_names"][26] == "jawOpen"
    assert not list(tmp_path.glob("*.tmp"))


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="nope.npz: no such file"):
        load_model(tmp_path / "nope.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(ModelError, match="not a fit3dmm model"):
        load_model(tmp_path / "foreign.npz")


def test_module_maps_coefficients_to_vertices(ict):
    m = FaceModel(ict)
    ident = torch.zeros(m.n_id)
    ident[5] = 1.0
    expr = torch.zeros(m.n_exp)
    expr[26] = 0.5  # jawOpen
    v = m(ident, expr)
    expected = ict.mean + ict.id_basis[5] + 0.5 * ict.exp_basis[26]
    assert torch.allclose(v, torch.from_numpy(expected), atol=1e-4)
    assert m.expression_range == (0.0, 1.0)
    batch = m(torch.stack([ident, -ident, torch.zeros_like(ident)]), torch.stack([expr, expr, 2 * expr]))
    assert batch.shape == (3, m.n_vertices, 3) and torch.allclose(batch[0], v)
    assert torch.allclose(batch[2], m(torch.zeros_like(ident), 2 * expr))


def _write_obj(path, verts, faces=None, uv=None, face_uv=None):
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    if uv is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
        lines += ["f " + " ".join(f"{i + 1}/{t + 1}" for i, t in zip(f, ft) if i >= 0) for f, ft in zip(faces, face_uv)]
    elif faces is not None:
        lines += ["f " + " ".join(f"{i + 1}" for i in f if i >= 0) for f in faces]
    path.write_text("\n".join(lines) + "\n")


def test_import_upstream_folder_layout(tmp_path, raw, ict_npz):
    """The upstream FaceXModel folder (OBJs + vertex_indices.json) gives the same model as the npz."""
    folder = tmp_path / "ICT-FaceKit" / "FaceXModel"
    folder.mkdir(parents=True)
    (folder / "vertex_indices.json").write_text((ict_npz.parent / "vertex_indices.json").read_text())
    _write_obj(folder / "generic_neutral_mesh.obj", raw["neutral"], raw["faces"], raw["uv"], raw["face_uv"])
    for i in range(2):
        _write_obj(folder / f"identity{i:03d}.obj", raw["identity"][i])
    for name, mesh in zip(raw["expression_names"], raw["expression"]):
        _write_obj(folder / f"{name}.obj", mesh)
    got = import_ict(folder.parent)
    ref = import_ict(ict_npz)
    assert got.id_basis.shape[0] == 2
    assert np.allclose(got.mean, ref.mean, atol=1e-5)
    assert np.array_equal(got.triangles, ref.triangles)
    assert np.allclose(got.exp_basis, ref.exp_basis, atol=1e-4)
    assert np.allclose(got.id_basis, ref.id_basis[:2], atol=1e-4)
    assert np.array_equal(got.face_uv, ref.face_uv) and np.allclose(got.uv, ref.uv, atol=1e-5)


def test_import_packs_the_uv_layout_into_one_atlas(raw, ict_npz):
    """Face and eyeballs get disjoint texture regions (ICT lays each over the whole square); every corner
    of a kept triangle keeps its upstream texture coordinate, moved into its region; an OBJ without
    texture coordinates imports without UVs."""
    from fit3dmm.models.ict import UV_ATLAS

    data = import_ict(ict_npz)
    assert data.has_uv and data.face_uv.shape == data.triangles.shape
    n_face = data.meta["regions"]["face"][1]
    for region, rows in (("face", data.triangles.max(1) < n_face), ("eyeballs", data.triangles.min(1) >= n_face)):
        uv = data.uv[np.unique(data.face_uv[rows])]
        if region == "face":
            u0, v0, su, sv = UV_ATLAS["face"]
            assert uv[:, 1].max() <= v0 + sv + 1e-6
        else:
            assert uv[:, 1].min() >= UV_ATLAS["left_eyeball"][1] - 1e-6
            assert uv[:, 0].max() <= UV_ATLAS["right_eyeball"][0] + UV_ATLAS["right_eyeball"][2] + 1e-6
    # A face-region corner's coordinate is the upstream one squeezed into the face's rectangle.
    corner_vertex, corner_uv = data.triangles[0, 0], data.uv[data.face_uv[0, 0]]
    upstream = raw["uv"][raw["face_uv"][raw["faces"] == corner_vertex][0]]
    assert np.allclose(corner_uv, [upstream[0], upstream[1] * UV_ATLAS["face"][3]], atol=1e-6)


def test_import_rejects_incomplete_folder(tmp_path):
    (tmp_path / "vertex_indices.json").write_text('{"expressions": []}')
    with pytest.raises(ModelError):
        import_ict(tmp_path)


def test_model_show_draws_three_views_with_parts_and_a_legend(tmp_path):
    import cv2
    from click.testing import CliRunner

    from fit3dmm.cli import main
    from fit3dmm.outputs import PART_COLOURS

    result = CliRunner().invoke(main, ["model", "show", "ict", "-o", str(tmp_path / "ict.png")])
    assert result.exit_code == 0, result.output
    image = cv2.cvtColor(cv2.imread(str(tmp_path / "ict.png")), cv2.COLOR_BGR2RGB)
    assert image.shape == (360, 3 * 360 + 160, 3)
    front = image[:, 360:720].reshape(-1, 3)
    # The front view shows the nose and both eyes in their part colours (shaded, so compare hue roughly).
    for label in (2, 4, 5):
        colour = np.array(PART_COLOURS[label], float)
        shaded = front.astype(float) / (np.linalg.norm(front, axis=1, keepdims=True) + 1e-9)
        assert (shaded @ (colour / np.linalg.norm(colour)) > 0.995).sum() > 20
    bad = CliRunner().invoke(main, ["model", "show", "nosuchmodel", "-o", str(tmp_path / "x.png")])
    assert bad.exit_code == 1 and "not found" in bad.output and not (tmp_path / "x.png").exists()

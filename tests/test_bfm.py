"""The Basel Face Model: Deep3DFaceRecon's conversion on stand-ins of the user's files (exact keys, shapes
and binary layout, synthetic values), with the real index files, and the two converted formats."""

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.io import loadmat, savemat

from fit3dmm.cli import main
from fit3dmm.errors import ModelError
from fit3dmm.models import FaceModel, load_model
from fit3dmm.models.bfm import EXP_BIN_BYTES, TO_CM, convert_bfm, oriented_outward

N = 3 * 53490


@pytest.fixture(scope="module")
def index_dir(shared_dir):
    return shared_dir / "models" / "bfm-deep3d-index"


def _write_exp_bin(path, n_bytes=EXP_BIN_BYTES, seed=1):
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.array([79], np.int32).tofile(f)
        rng.standard_normal((EXP_BIN_BYTES - 4) // 4, dtype=np.float32).tofile(f)
    with open(path, "r+b") as f:
        f.truncate(n_bytes)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """01_MorphableModel.mat with shapeMU = row index (so a vertex's coordinates name its source row)
    and random components; Exp_Pca.bin with random values."""
    folder = tmp_path_factory.mktemp("bfm")
    rng = np.random.default_rng(0)
    savemat(folder / "01_MorphableModel.mat", {
        "shapeMU": np.arange(N, dtype=np.float32)[:, None], "shapePC": rng.standard_normal((N, 199), dtype=np.float32),
        "shapeEV": rng.uniform(1, 2, (199, 1)).astype(np.float32),
        "texMU": (np.arange(N) % 256).astype(np.float32)[:, None], "texPC": rng.standard_normal((N, 199), dtype=np.float32),
        "texEV": rng.uniform(1, 2, (199, 1)).astype(np.float32), "tl": np.ones((106466, 3), np.float64),
    })
    _write_exp_bin(folder / "Exp_Pca.bin")
    return folder


@pytest.fixture(scope="module")
def converted(stand_ins, index_dir):
    return convert_bfm(stand_ins / "01_MorphableModel.mat", stand_ins / "Exp_Pca.bin", index_dir)


def test_conversion_selects_deep3d_vertices_and_components(converted, stand_ins, index_dir):
    d = converted
    assert d.mean.shape == (35709, 3)
    assert d.id_basis.shape == (80, 35709, 3) and d.exp_basis.shape == (64, 35709, 3)
    assert d.albedo_basis.shape == (80, 35709, 3) and d.albedo_mean.shape == (35709, 3)
    trim = loadmat(index_dir / "BFM_exp_idx.mat")["trimIndex"].ravel().astype(int)
    front = loadmat(index_dir / "BFM_front_idx.mat")["idx"].ravel().astype(int)
    bfm = loadmat(stand_ins / "01_MorphableModel.mat")
    raw = np.fromfile(stand_ins / "Exp_Pca.bin", np.float32)[1 + 3 * 53215:].reshape(79, -1)
    std_exp = np.loadtxt(index_dir / "std_exp.txt")
    for k in (0, 1234, 35708):
        t = front[k] - 1  # 1-based into the trimmed model...
        s = trim[t] - 1  # ...whose trimIndex is 1-based into the original
        rows = 3 * s + np.arange(3)
        assert d.mean[k] == pytest.approx(rows * TO_CM, rel=1e-6)  # shapeMU holds its own row numbers
        assert d.id_basis[5, k] == pytest.approx(bfm["shapePC"][rows, 5] * bfm["shapeEV"][5, 0] * TO_CM, rel=1e-5)
        assert d.exp_basis[7, k] == pytest.approx(raw[7, 3 * t + np.arange(3)] * std_exp[7] * TO_CM, rel=1e-5)
        assert d.albedo_mean[k] == pytest.approx((rows % 256) / 255.0, rel=1e-6)
    info = loadmat(index_dir / "facemodel_info.mat")
    assert len(d.triangles) == len(info["tri"]) and d.triangles.min() == 0
    assert {tuple(sorted(t)) for t in d.triangles[:50]} == {tuple(sorted(t)) for t in info["tri"][:50] - 1}
    assert d.landmarks68.tolist() == (info["keypoints"].ravel().astype(int) - 1).tolist()
    assert not d.has_parts


def test_conversion_refuses_wrong_inputs(stand_ins, index_dir, tmp_path):
    _write_exp_bin(tmp_path / "short.bin", EXP_BIN_BYTES - 1000)
    with pytest.raises(ModelError, match="truncated"):
        convert_bfm(stand_ins / "01_MorphableModel.mat", tmp_path / "short.bin", index_dir)
    savemat(tmp_path / "bad.mat", {"shapeMU": np.zeros((N, 1)), "shapePC": np.zeros((N, 10)), "shapeEV": np.zeros((199, 1)),
                                   "texMU": np.zeros((N, 1)), "texPC": np.zeros((N, 199)), "texEV": np.zeros((199, 1))})
    with pytest.raises(ModelError, match=r"'shapePC' has shape \(160470, 10\), expected \(160470, 199\)"):
        convert_bfm(tmp_path / "bad.mat", stand_ins / "Exp_Pca.bin", index_dir)
    result = CliRunner().invoke(main, ["model", "convert-bfm", "--bfm", str(stand_ins / "01_MorphableModel.mat"),
                                       "--exp", str(tmp_path / "short.bin"), "--index", str(index_dir),
                                       "-o", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "truncated" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.npz").exists()
    # The user's 01_MorphableModel.mat cut short (as a broken download is): one line, nothing written.
    with open(stand_ins / "01_MorphableModel.mat", "rb") as src, open(tmp_path / "cut.mat", "wb") as dst:
        dst.write(src.read(100_000_000))
    result = CliRunner().invoke(main, ["model", "convert-bfm", "--bfm", str(tmp_path / "cut.mat"), "--exp",
                                       str(stand_ins / "Exp_Pca.bin"), "--index", str(index_dir), "-o", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [result.output.strip()] and "cut.mat: not a readable .mat" in result.output
    assert not (tmp_path / "x.npz").exists()


def test_converted_formats_load_to_the_same_model(converted, tmp_path):
    """Deep3DFaceRecon's BFM_model_front.mat and 3DDFA-V3's face_model.npy, written from the conversion in
    their units and index bases, load to the same arrays and module interface."""
    d = converted
    to_deep3d = lambda b: (b.reshape(len(b), -1).T / 10.0)  # noqa: E731  (K, V, 3) cm -> (3V, K) dm
    savemat(tmp_path / "BFM_model_front.mat", {
        "meanshape": d.mean.reshape(1, -1) / 10.0, "meantex": d.albedo_mean.reshape(1, -1) * 255.0,
        "idBase": to_deep3d(d.id_basis), "exBase": to_deep3d(d.exp_basis), "texBase": to_deep3d(d.albedo_basis) * 2550.0,
        "tri": d.triangles + 1, "keypoints": d.landmarks68[None] + 1, "point_buf": np.zeros((35709, 8)),
        "skinmask": np.ones((1, 35709)),
    })
    annotation = [np.arange(i * 100, i * 100 + 100) for i in range(7)] + [np.arange(700, 5000)]
    np.save(tmp_path / "face_model.npy", {
        "u": d.mean.reshape(-1, 1) / 10.0, "id": to_deep3d(d.id_basis), "exp": to_deep3d(d.exp_basis),
        "u_alb": d.albedo_mean.reshape(-1, 1), "alb": to_deep3d(d.albedo_basis) * 10.0, "tri": d.triangles,
        "ldm68": d.landmarks68, "annotation": annotation, "point_buf": np.zeros((35709, 8)),
    }, allow_pickle=True)
    for name in ("BFM_model_front.mat", "face_model.npy"):
        loaded = load_model(tmp_path / name)
        assert np.allclose(loaded.mean, d.mean, rtol=1e-5, atol=1e-6)
        assert np.allclose(loaded.id_basis, d.id_basis, rtol=1e-4, atol=1e-6)
        assert np.allclose(loaded.albedo_basis, d.albedo_basis, rtol=1e-4, atol=1e-6)
        # (The stand-in's mean is degenerate, so only the corner sets are compared, not their orientation.)
        assert (np.sort(loaded.triangles, 1) == np.sort(d.triangles, 1)).all()
        assert (loaded.landmarks68 == d.landmarks68).all()
        model = FaceModel(loaded)
        assert model.n_id == 80 and model.n_exp == 64 and model.n_albedo == 80
        assert model(model.id_basis.new_zeros(80), model.id_basis.new_zeros(64)).shape == (35709, 3)
    ddfa = load_model(tmp_path / "face_model.npy")
    assert ddfa.parts[:100].tolist() == [1] * 100  # 3DDFA-V3's first list is the right eye (PART_NAMES index 1)
    assert ddfa.has_parts and len(ddfa.skin_subset) == 3000


def _face_like(data, landmarks_3d):
    """The stand-in's degenerate mean replaced by a smooth surface with the BFM's topology: a harmonic
    interpolation pinned at the 68 landmark vertices (placed at the BFM mean's landmarks, ``landmarks_3d``
    in decimetres) and at the mesh border (spread on an ellipse behind them, in the directions a first,
    landmarks-only interpolation gives)."""
    from dataclasses import replace

    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import splu

    tris, v = data.triangles, data.n_vertices
    edges = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), 1)
    unique, count = np.unique(edges, axis=0, return_counts=True)
    border = np.unique(unique[count == 1])
    ends = (np.r_[unique[:, 0], unique[:, 1]], np.r_[unique[:, 1], unique[:, 0]])
    adjacency = coo_matrix((np.ones(2 * len(unique)), ends), shape=(v, v)).tocsr()
    laplacian = (diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency).tocsr()

    def harmonic(pinned: np.ndarray, values: np.ndarray) -> np.ndarray:
        free = np.setdiff1d(np.arange(v), pinned)
        lu = splu(laplacian[free][:, free].tocsc())
        rhs = -laplacian[free][:, pinned] @ values[pinned]
        out = values.copy()
        out[free] = np.stack([lu.solve(rhs[:, k]) for k in range(3)], 1)
        return out

    lms = data.landmarks68
    pins = np.zeros((v, 3))
    pins[lms] = landmarks_3d * 10.0  # to centimetres
    first = harmonic(lms, pins)
    angle = np.arctan2(first[border, 1], first[border, 0])
    pins[border] = np.stack([9.0 * np.cos(angle), 11.0 * np.sin(angle) - 1.0, np.full(len(border), -5.0)], 1)
    mean = harmonic(np.union1d(lms, border), pins).astype(np.float32)
    return replace(data, mean=mean, triangles=oriented_outward(data.triangles, mean))


def test_fit_runs_on_a_bfm_topology_model_with_its_albedo_basis(converted, shared_dir):
    from fit3dmm.config import FitConfig
    from fit3dmm.files import read_image
    from fit3dmm.pipeline import Pipeline

    landmarks_3d = loadmat(shared_dir / "models" / "bfm-deep3d-index" / "similarity_Lm3D_all.mat")["lm"]
    model = FaceModel(_face_like(converted, landmarks_3d))
    photo = read_image(shared_dir / "data" / "photos" / "000050.jpg")
    out = Pipeline(FitConfig.create(loss="none", iterations=5), model).fit(photo)
    params = out.result.params
    assert params["albedo"].shape == (80,) and params["albedo"].abs().sum() > 0  # the photometric loss moved the basis
    assert all(bool(p.isfinite().all()) for p in params.values())
    # The surface faces the camera: wrongly wound triangles would cull every vertex. How many pass depends on
    # the fitted shape, which the stand-in bases (random) make crumpled and sensitive to any change in the
    # optimizer: 1734 of 35709 with the hard raster every iteration, 518 with it every 2nd.
    assert out.result.visible.sum() > 200
    with pytest.raises(ModelError, match="no part annotation"):
        Pipeline(FitConfig.create(loss="prdl"), model)
